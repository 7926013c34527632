"""The command line: flags from the configs, one-line errors, thin shell wrappers."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def vla_rl(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "vla_rl_lib", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def one_line_error(result):
    assert result.returncode != 0
    lines = [l for l in result.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_unknown_algorithm():
    line = one_line_error(vla_rl("train", "dqn"))
    assert "unknown algorithm 'dqn'" in line and "iql" in line and "ppo" in line


def test_unknown_command():
    assert "invalid choice" in one_line_error(vla_rl("fly"))


def test_unknown_flag():
    line = one_line_error(vla_rl("train", "ppo", "--env", "CartPole-v1", "--bogus", "3"))
    assert "--bogus" in line


@pytest.mark.parametrize("args,words", [
    (["--ppo_clip_range", "-1"], "ppo_clip_range=-1.0 is out of range"),
    (["--total_timesteps", "many"], "total_timesteps='many' is not a valid int"),
    (["--env", "NoSuchEnv-v9"], "NoSuchEnv-v9"),
])
def test_invalid_values_and_unknown_env(args, words, tmp_path):
    line = one_line_error(vla_rl("train", "ppo", "--total_timesteps", "64", "--output_dir", str(tmp_path), *args))
    assert words in line


def test_offline_without_dataset():
    assert "needs --dataset" in one_line_error(vla_rl("train", "iql"))


def test_help_lists_every_flag_with_default():
    out = " ".join(vla_rl("train", "ppo", "--help").stdout.split())
    for flag, default in [("--total_timesteps", "1000000"), ("--rollout_steps", "2048"), ("--ppo_epochs", "4"),
                          ("--ppo_clip_range", "0.2"), ("--learning_rate", "0.0003"), ("--output_dir", "./output/online_rl"),
                          ("--num_envs", "1"), ("--model_path", "None")]:
        assert flag in out and f"default: {default}" in out.replace("'", ""), flag
    assert "--use-wandb" in out and "--use_wandb" in out
    out = vla_rl("train", "iql", "--help").stdout
    for flag in ("--dataset", "--num_epochs", "--batch_size", "--expectile", "--temperature", "--output_dir"):
        assert flag in out, flag


def test_evaluate_missing_checkpoint(tmp_path):
    line = one_line_error(vla_rl("evaluate", str(tmp_path / "nothing.pt")))
    assert "does not exist" in line


def test_shell_wrappers_pass_arguments_through():
    names = ["run_offline_rl_iql.sh", "run_offline_rl_cql.sh", "run_offline_rl_td3bc.sh", "run_offline_rl_dt.sh",
             "run_online_rl_ppo.sh", "run_online_rl_sac.sh", "run_online_rl_grpo.sh"]
    for name in names:
        script = ROOT / "scripts" / name
        result = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True,
                                env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}, timeout=120)
        assert result.returncode == 0, (name, result.stderr)
        assert "--output_dir" in result.stdout, name
