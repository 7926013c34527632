"""The command line: flags from the configs, one-line errors, thin shell wrappers."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


class Result:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


@pytest.fixture
def vla_rl(capsys):
    """Run the command line in-process (fast) and return its exit status and output."""
    from vla_rl_lib.cli import main

    def run(*args):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's --help and usage errors
            code = exc.code
        out = capsys.readouterr()
        return Result(code, out.out, out.err)

    return run


def one_line_error(result):
    assert result.returncode != 0
    lines = [l for l in result.stderr.strip().splitlines() if l.strip()]
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    return lines[0]


def test_unknown_algorithm(vla_rl):
    line = one_line_error(vla_rl("train", "dqn"))
    assert "unknown algorithm 'dqn'" in line and "iql" in line and "ppo" in line


def test_unknown_command(vla_rl):
    assert "invalid choice" in one_line_error(vla_rl("fly"))


def test_unknown_flag(vla_rl):
    line = one_line_error(vla_rl("train", "ppo", "--env", "CartPole-v1", "--bogus", "3"))
    assert "--bogus" in line


@pytest.mark.parametrize("args,words", [
    (["--ppo_clip_range", "-1"], "ppo_clip_range=-1.0 is out of range"),
    (["--total_timesteps", "many"], "total_timesteps='many' is not a valid int"),
    (["--env", "NoSuchEnv-v9"], "NoSuchEnv-v9"),
])
def test_invalid_values_and_unknown_env(vla_rl, args, words, tmp_path):
    line = one_line_error(vla_rl("train", "ppo", "--total_timesteps", "64", "--output_dir", str(tmp_path), *args))
    assert words in line


def test_offline_without_dataset(vla_rl):
    assert "needs --dataset" in one_line_error(vla_rl("train", "iql"))


def test_help_lists_every_flag_with_default(vla_rl):
    out = " ".join(vla_rl("train", "ppo", "--help").stdout.split())
    for flag, default in [("--total_timesteps", "1000000"), ("--rollout_steps", "2048"), ("--ppo_epochs", "4"),
                          ("--ppo_clip_range", "0.2"), ("--learning_rate", "0.0003"), ("--output_dir", "./output/online_rl"),
                          ("--num_envs", "1"), ("--model_path", "None")]:
        assert flag in out and f"default: {default}" in out.replace("'", ""), flag
    assert "--use-wandb" in out and "--use_wandb" in out
    out = vla_rl("train", "iql", "--help").stdout
    for flag in ("--dataset", "--num_epochs", "--batch_size", "--expectile", "--temperature", "--output_dir"):
        assert flag in out, flag


def test_evaluate_missing_checkpoint(vla_rl, tmp_path):
    line = one_line_error(vla_rl("evaluate", str(tmp_path / "nothing.pt")))
    assert "does not exist" in line


WRAPPERS = {"run_offline_rl_iql.sh": "iql", "run_offline_rl_cql.sh": "cql", "run_offline_rl_td3bc.sh": "td3_bc",
            "run_offline_rl_dt.sh": "dt", "run_online_rl_ppo.sh": "ppo", "run_online_rl_sac.sh": "sac",
            "run_online_rl_grpo.sh": "grpo"}


@pytest.mark.parametrize("name,algo", sorted(WRAPPERS.items()))
def test_shell_wrappers_pass_arguments_through(name, algo, tmp_path):
    # a stand-in python records the arguments the wrapper passes on
    fake = tmp_path / "python"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$ARGS_OUT"\n')
    fake.chmod(0o755)
    out = tmp_path / "args.txt"
    result = subprocess.run(["bash", str(ROOT / "scripts" / name), "--dataset", "a b", "--x", "1"], capture_output=True,
                            text=True, env={"PYTHON": str(fake), "ARGS_OUT": str(out), "PATH": "/usr/bin:/bin"}, timeout=60)
    assert result.returncode == 0, result.stderr
    assert out.read_text().splitlines() == ["-m", "vla_rl_lib", "train", algo, "--dataset", "a b", "--x", "1"]


def test_python_dash_m_and_wrapper_run_for_real():
    result = subprocess.run(["bash", str(ROOT / "scripts" / "run_online_rl_ppo.sh"), "--help"], capture_output=True,
                            text=True, env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "--ppo_clip_range" in result.stdout


def test_train_evaluate_and_resume_from_the_command_line(vla_rl, tmp_path):
    run = tmp_path / "ppo"
    common = ["--env", "CartPole-v1", "--num_envs", "2", "--rollout_steps", "64", "--eval_episodes", "2",
              "--save_freq", "0", "--log_freq", "128", "--seed", "3", "--output_dir", str(run), "--no-progress"]
    result = vla_rl("train", "ppo", "--total_timesteps", "256", *common)
    assert result.returncode == 0, result.stderr
    assert "ppo: 256 steps" in result.stdout and "mean_reward=" in result.stdout
    for name in ("config.yaml", "metrics.csv", "checkpoint.pt"):
        assert (run / name).exists()

    result = vla_rl("evaluate", str(run), "--num_episodes", "3")
    assert result.returncode == 0, result.stderr
    assert '"episodes": 3' in result.stdout and '"mean_reward"' in result.stdout

    # a finished run resumes as a no-op; a longer budget in its config continues from step 256
    import yaml

    from vla_rl_lib.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(run / "checkpoint.pt")
    state["meta"]["config"]["total_timesteps"] = 512
    save_checkpoint(run / "checkpoint.pt", state)
    result = vla_rl("resume", str(run), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "resuming ppo at step 256 of 512" in result.stdout and "ppo: 512 steps" in result.stdout
    assert yaml.safe_load((run / "config.yaml").read_text())["config"]["total_timesteps"] == 512
