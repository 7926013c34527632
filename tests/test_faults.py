"""The fault matrix: careless and hostile input, each answered by one clear line (and a non-zero exit
status on the command line) or by data that is kept intact. Issue 17 lists the cases; the grader's
hostile submissions are in test_grading_sandbox.py.
"""
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from test_cli import one_line_error, vla_rl  # noqa: F401 - the fixture
from toy import ToyBC, ToyBuffer

from vla_rl_lib.checkpoint import load_checkpoint, save_checkpoint
from vla_rl_lib.config import OfflineRLConfig
from vla_rl_lib.errors import CheckpointError, ConfigError, DatasetError, IncompatibleError, TrainingDivergedError
from vla_rl_lib.exercises import answers as wire

UNWRITABLE = "/sys/vla_rl_fault_test"  # sysfs: even root cannot create anything there
TINY_IQL = ["--dataset", "pendulum-medium-v0", "--num_epochs", "1", "--steps_per_epoch", "5", "--eval_episodes", "0",
            "--hidden_dim", "16", "--batch_size", "32", "--no-progress"]


def digest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Files to feed the command line: a finished IQL run, broken configs, a checkpoint without meta, ..."""
    import h5py

    from vla_rl_lib.cli import main

    tmp = tmp_path_factory.mktemp("faults")
    iql = tmp / "iql_run"
    assert main(["train", "iql", *TINY_IQL, "--output_dir", str(iql)]) == 0
    (tmp / "a_file").write_text("not a folder")
    (tmp / "list.yaml").write_text("- learning_rate\n- 0.1\n")
    (tmp / "broken.yaml").write_text("learning_rate: [0.1\nbatch_size: 3\n")
    (tmp / "sections.yaml").write_text("config: [1, 2]\n")
    (tmp / "bad_value.yaml").write_text("learning_rate: -1\n")
    state = load_checkpoint(iql / "checkpoint.pt")
    save_checkpoint(tmp / "nometa" / "checkpoint.pt", {k: v for k, v in state.items() if k != "meta"})
    torch.save({"a": 1, "f": print}, tmp / "pickled.pt")
    (tmp / "truncated.pt").write_bytes((iql / "checkpoint.pt").read_bytes()[:2000])
    with h5py.File(tmp / "noactions.hdf5", "w") as f:
        f["observations"] = np.zeros((10, 3), np.float32)
        f["rewards"] = np.zeros(10, np.float32)
        f["terminals"] = np.zeros(10, bool)
        f["timeouts"] = np.zeros(10, bool)
    nb = tmp / "nb.ipynb"
    import nbformat

    book = nbformat.v4.new_notebook()
    book.cells = [nbformat.v4.new_code_cell("x = 1")]
    book.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(book, nb)
    (tmp / "subs").mkdir()
    return tmp


# (id, argv with {tmp} for the world's folder, words the one line must contain)
CLI_CASES = [
    ("dataset without actions", ["train", "iql", "--dataset", "{tmp}/noactions.hdf5", "--output_dir", "{tmp}/new1"],
     ["actions"]),
    ("output_dir is a file, checked before the data loads",
     ["train", "iql", "--dataset", "no-such-dataset-v9", "--output_dir", "{tmp}/a_file"], ["is a file"]),
    ("output_dir inside a file", ["train", "iql", *TINY_IQL, "--output_dir", "{tmp}/a_file/run"], ["is a file"]),
    ("output_dir not writable", ["train", "iql", "--dataset", "no-such-dataset-v9", "--output_dir", UNWRITABLE],
     ["not writable"]),
    ("online output_dir not writable", ["train", "ppo", "--env", "CartPole-v1", "--output_dir", UNWRITABLE + "/x"],
     ["not writable"]),
    ("output_dir holds another run", ["train", "ppo", "--env", "CartPole-v1", "--output_dir", "{tmp}/iql_run"],
     ["already holds an iql run", "vla-rl resume", "--overwrite"]),
    ("output_dir holds a run of the same algorithm", ["train", "iql", *TINY_IQL, "--output_dir", "{tmp}/iql_run"],
     ["already holds an iql run"]),
    ("--config missing", ["train", "iql", *TINY_IQL, "--config", "{tmp}/nope.yaml"], ["--config", "no such file"]),
    ("--config is a folder", ["train", "iql", *TINY_IQL, "--config", "{tmp}/subs"], ["not a file"]),
    ("--config holds a YAML list", ["train", "iql", *TINY_IQL, "--config", "{tmp}/list.yaml"], ["list, not a mapping"]),
    ("--config broken YAML", ["train", "iql", *TINY_IQL, "--config", "{tmp}/broken.yaml"], ["not valid YAML", "line"]),
    ("--config sections not mappings", ["train", "iql", *TINY_IQL, "--config", "{tmp}/sections.yaml"],
     ["must be mappings"]),
    ("--config value out of range", ["train", "iql", *TINY_IQL, "--config", "{tmp}/bad_value.yaml"], ["learning_rate"]),
    ("negative learning rate in exponent form", ["train", "iql", *TINY_IQL, "--learning_rate", "-1e-3"],
     ["learning_rate", "-0.001"]),
    ("negative integer", ["train", "iql", *TINY_IQL, "--num_epochs", "-2"], ["num_epochs"]),
    ("unknown dataset", ["train", "iql", "--dataset", "no-such-dataset-v9", "--output_dir", "{tmp}/new2"],
     ["no-such-dataset-v9"]),
    ("evaluate --num_episodes -1", ["evaluate", "{tmp}/iql_run", "--num_episodes", "-1"], ["num_episodes=-1", ">= 1"]),
    ("evaluate --num_episodes 0", ["evaluate", "{tmp}/iql_run", "--num_episodes", "0"], ["num_episodes=0"]),
    ("evaluate on an env with other observation sizes", ["evaluate", "{tmp}/iql_run", "--env", "CartPole-v1"],
     ["observations of shape (4,)", "(3,)"]),
    ("evaluate a checkpoint with the marker but no meta", ["evaluate", "{tmp}/nometa/checkpoint.pt"], ["no valid 'meta'"]),
    ("resume a checkpoint with the marker but no meta", ["resume", "{tmp}/nometa"], ["no valid 'meta'"]),
    ("evaluate a pickle", ["evaluate", "{tmp}/pickled.pt"], ["not a checkpoint of this kit"]),
    ("evaluate a truncated checkpoint", ["evaluate", "{tmp}/truncated.pt"], ["truncated"]),
    ("evaluate a missing checkpoint", ["evaluate", "{tmp}/none.pt"], ["does not exist"]),
    ("resume a folder without a run", ["resume", "{tmp}/subs"], ["does not exist"]),
    ("run-notebook into an unwritable folder", ["run-notebook", "{tmp}/nb.ipynb", "--output", UNWRITABLE],
     ["not writable"]),
    ("run-notebook into a file", ["run-notebook", "{tmp}/nb.ipynb", "--output", "{tmp}/a_file"], ["is a file"]),
    ("sweep into an unwritable folder", ["sweep", "{tmp}/nb.ipynb", "--grid", "x=1,2", "--output", UNWRITABLE],
     ["not writable"]),
    ("sweep with bad seeds", ["sweep", "{tmp}/nb.ipynb", "--seeds", "a,b", "--output", "{tmp}/sw"], ["--seeds"]),
    ("grade a missing submissions folder", ["assignments", "grade", "{tmp}/nothing", "--output", "{tmp}/g.csv"],
     ["does not exist"]),
    ("grade into a folder", ["assignments", "grade", "{tmp}/subs", "--output", "{tmp}/subs"], ["is a folder"]),
    ("grade into an unwritable folder", ["assignments", "grade", "{tmp}/subs", "--output", UNWRITABLE + "/g.csv"],
     ["not writable"]),
]


@pytest.mark.parametrize("argv,words", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_fault_is_one_line(world, vla_rl, argv, words):  # noqa: F811 - the fixture
    before = digest(world / "iql_run")
    line = one_line_error(vla_rl(*[a.replace("{tmp}", str(world)) for a in argv]))
    for word in words:
        assert word in line, line
    assert digest(world / "iql_run") == before  # the finished run is never touched
    assert not (world / "a_file").is_dir() and (world / "a_file").read_text() == "not a folder"


def test_negative_numbers_are_values_everywhere():
    from vla_rl_lib.cli import build_parser

    args = build_parser().parse_args(["run-notebook", "nb.ipynb", "-p", "lr", "-1e-3", "-p", "b", "-.5"])
    assert args.parameter == [["lr", "-1e-3"], ["b", "-.5"]]
    args = build_parser(["sac"]).parse_args(["train", "sac", "--learning_rate", "-3E+2"])
    assert args.learning_rate == "-3E+2"  # converted and range-checked by the config


def test_overwrite_replaces_the_run(world, vla_rl, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    assert vla_rl("train", "iql", *TINY_IQL, "--output_dir", str(run)).returncode == 0
    (run / "tb" / "old_event").write_text("old")
    result = vla_rl("train", "td3_bc", *TINY_IQL, "--output_dir", str(run), "--overwrite")
    assert result.returncode == 0, result.stderr
    assert "removed an iql run" in result.stdout
    assert not (run / "tb" / "old_event").exists()
    assert load_checkpoint(run / "checkpoint.pt")["meta"]["algorithm"] == "td3_bc"


# -- the Python API ---------------------------------------------------------------------------------

class NoSeedEnv(gym.Env):
    """An environment written against the old gym API: reset() without a seed."""

    observation_space = gym.spaces.Box(-1, 1, (3,), np.float32)
    action_space = gym.spaces.Box(-1, 1, (1,), np.float32)

    def reset(self):
        return np.zeros(3, np.float32), {}

    def step(self, action):
        return np.zeros(3, np.float32), 0.0, True, False, {}


@pytest.mark.parametrize("algo", ["grpo", "ppo", "sac"])
def test_env_without_seeded_reset(algo, tmp_path):
    from vla_rl_lib.config import RLConfig
    from vla_rl_lib.trainer import get_trainer_class

    with pytest.raises(IncompatibleError, match=r"NoSeedEnv.reset\(\) takes no `seed`.*super\(\).reset\(seed=seed\)"):
        get_trainer_class(algo)(env=NoSeedEnv(), config=RLConfig(algorithm=algo, output_dir=str(tmp_path)))


def toy(tmp_path, **kw):
    cfg = OfflineRLConfig(num_epochs=1, steps_per_epoch=20, batch_size=16, eval_episodes=0, log_freq=5,
                          output_dir=str(tmp_path / "run"), device="cpu", **kw)
    return ToyBC(obs_dim=3, action_dim=2, config=cfg)


def test_nan_without_a_checkpoint_says_none_was_written(tmp_path):
    trainer = toy(tmp_path, save_freq=0)
    trainer.scale = float("nan")
    with pytest.raises(TrainingDivergedError, match="No checkpoint was written"):
        trainer.train(ToyBuffer())
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_nan_names_the_checkpoint_that_exists(tmp_path):
    trainer = toy(tmp_path)
    trainer.train(ToyBuffer())
    trainer.config = trainer.config.replace(num_epochs=2)
    trainer.scale = float("nan")
    with pytest.raises(TrainingDivergedError) as info:
        trainer.train(ToyBuffer())
    named = str(info.value).split("kept in ")[1].split(". ")[0].rstrip(".")
    assert Path(named).is_file() and load_checkpoint(named)["global_step"] == 20


@pytest.mark.parametrize("sizes,words", [((17, 6), ["HalfCheetah-v5", "Walker2d-v5", "env"]), ((5, 2), ["env"])],
                         ids=["ambiguous", "unknown"])
def test_offline_trainer_without_env_fails_before_training(tmp_path, sizes, words):
    cfg = OfflineRLConfig(num_epochs=1, steps_per_epoch=50, batch_size=16, eval_episodes=2, output_dir=str(tmp_path))
    trainer = ToyBC(obs_dim=sizes[0], action_dim=sizes[1], config=cfg)
    with pytest.raises(ConfigError, match="no environment to evaluate on") as info:
        trainer.train(ToyBuffer(obs_dim=sizes[0], action_dim=sizes[1]))
    assert all(w in str(info.value) for w in words)
    assert trainer.global_step == 0


@pytest.mark.parametrize("sizes,env_id", [((3, 1), "Pendulum-v1"), ((11, 3), "Hopper-v5")])
def test_offline_trainer_infers_an_unambiguous_env_and_says_so(tmp_path, capsys, sizes, env_id):
    """The specification's IQL example trains on a d4rl get_dataset() dict, which names no environment."""
    cfg = OfflineRLConfig(num_epochs=1, steps_per_epoch=5, batch_size=16, eval_episodes=1, output_dir=str(tmp_path))
    trainer = ToyBC(obs_dim=sizes[0], action_dim=sizes[1], config=cfg)
    trainer.train(ToyBuffer(obs_dim=sizes[0], action_dim=sizes[1]))
    assert trainer.env_id == env_id and f"evaluating on {env_id}" in capsys.readouterr().out
    assert trainer.last_evaluation["step"] == 5 and trainer.last_evaluation["mean_length"] > 0


def test_python_api_refuses_to_mix_with_another_algorithms_run(world, tmp_path):
    before = digest(world / "iql_run")
    trainer = ToyBC(3, 2, OfflineRLConfig(num_epochs=1, steps_per_epoch=5, batch_size=16, eval_episodes=0,
                                          output_dir=str(world / "iql_run")))
    with pytest.raises(ConfigError, match="holds an iql run"):
        trainer.train(ToyBuffer())
    assert digest(world / "iql_run") == before


def test_stale_temporaries_are_removed_at_the_next_save_but_live_ones_kept(tmp_path):
    dead = tmp_path / f".checkpoint.pt.{2**22 + 12345}.abcd.tmp"   # above pid_max's default: no such process
    old_style = tmp_path / ".checkpoint.pt.x1y2z3.tmp"
    live = tmp_path / f".checkpoint.pt.{os.getppid()}.efgh.tmp"    # a running process may be writing it
    other = tmp_path / ".summary.csv.tmp"
    for p in (dead, old_style, live, other):
        p.write_bytes(b"partial")
    save_checkpoint(tmp_path / "checkpoint.pt", {"x": torch.ones(3)})
    assert not dead.exists() and not old_style.exists() and live.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, "checkpoint.pt"])


def test_stale_temporaries_are_removed_when_a_run_starts(tmp_path):
    from vla_rl_lib.callbacks import Callback

    (tmp_path / "run").mkdir()
    dead = tmp_path / "run" / f".checkpoint.pt.{2**22 + 12345}.abcd.tmp"
    dead.write_bytes(b"partial")
    seen = []

    class Look(Callback):
        def on_train_start(self, trainer):
            seen.append(dead.exists())
            return False  # stop at once

    toy(tmp_path, save_freq=0).train(ToyBuffer(), callbacks=[Look()])
    assert seen == [False]


def test_dataset_dict_without_actions(tmp_path):
    from vla_rl_lib.data.buffer import OfflineReplayBuffer

    data = {"observations": np.zeros((10, 3), np.float32), "rewards": np.zeros(10, np.float32),
            "terminals": np.zeros(10, bool), "timeouts": np.zeros(10, bool)}
    with pytest.raises(DatasetError, match="actions"):
        OfflineReplayBuffer(3, 1).load_dataset(data)


def test_from_checkpoint_without_meta(world):
    from vla_rl_lib.trainer import Trainer

    with pytest.raises(CheckpointError, match="no valid 'meta'"):
        Trainer.from_checkpoint(world / "nometa" / "checkpoint.pt")


# -- the grader's wire format: what a sandboxed process writes is never trusted ------------------------

@pytest.mark.parametrize("obj,words", [
    ({"t": "numpy", "dtype": "object", "shape": [1], "data": ""}, "header"),
    ({"t": "numpy", "dtype": "float32", "shape": [4], "data": "AAAAAA=="}, "size"),
    ({"t": "pickle", "data": "gASV"}, "unknown"),
    ({"t": "py", "v": {"nested": 1}}, "scalar"),
    ([1, 2], "not a packed value"),
], ids=["object dtype", "size mismatch", "unknown kind", "non-scalar", "not a dict"])
def test_wire_refuses_what_it_did_not_write(obj, words):
    with pytest.raises(ValueError, match=words):
        wire.unpack(obj)


def test_wire_round_trip_and_limits():
    value = (torch.arange(6.0).reshape(2, 3), np.int64(3), np.array(2.5), None, [1, "a"])
    back = wire.unpack(wire.pack(value))
    assert torch.equal(back[0], value[0]) and back[1] == 3 and back[2].shape == () and back[3] is None
    for data, overflow, words in [(b"", False, "no answers"), (b"{not json", False, "not valid JSON"),
                                  (b"\xff\xfe", False, "not valid JSON"), (b"{}", True, "larger than")]:
        with pytest.raises(ValueError, match=words):
            wire.parse(data, overflow)


# -- sweeps --------------------------------------------------------------------------------------------

def test_sweep_failures_exit_non_zero_and_changed_parameters_rerun(tmp_path, vla_rl):  # noqa: F811
    pytest.importorskip("papermill")
    import nbformat

    book = nbformat.v4.new_notebook()
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    book.cells = [nbformat.v4.new_code_cell("x = 1\nseed = 0\nmode = 'a'"),
                  nbformat.v4.new_code_cell("assert x != 2, 'x may not be 2'")]
    book.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(book, tmp_path / "nb.ipynb")
    out = str(tmp_path / "sweep")
    result = vla_rl("sweep", str(tmp_path / "nb.ipynb"), "--grid", "x=1,2", "--output", out, "-p", "mode", "a")
    line = one_line_error(result)
    assert "1 of 2 runs failed: x=2_seed=0" in line
    result = vla_rl("sweep", str(tmp_path / "nb.ipynb"), "--grid", "x=1", "--output", out, "-p", "mode", "b")
    assert result.returncode == 0, result.stderr
    assert "rerunning 1 run(s) whose parameters changed since they ran: x=1_seed=0" in result.stdout
    import csv
    import json

    row = next(csv.DictReader(open(tmp_path / "sweep" / "summary.csv")))
    assert row["status"] == "ok" and row["rerun"] == "parameters changed"
    assert json.loads(row["parameters"]) == {"mode": "b", "seed": 0, "x": 1}
    assert json.loads((tmp_path / "sweep" / "x=1_seed=0" / "run.json").read_text())["parameters"]["mode"] == "b"


# -- kill -9 while saving --------------------------------------------------------------------------------

SAVER = """
import sys, torch
from vla_rl_lib.checkpoint import save_checkpoint
path, n = sys.argv[1], 0
print("ready", flush=True)
while True:
    n += 1
    save_checkpoint(path, {"n": n, "w": torch.full((1_000_000,), float(n))})
"""


def test_kill_during_save_keeps_a_whole_checkpoint_and_the_next_save_cleans_up(tmp_path):
    """A process saving a 4 MB checkpoint in a loop is killed with SIGKILL at random moments (3 times):
    each time, checkpoint.pt is a complete checkpoint, and the next save removes the partial files."""
    path = tmp_path / "checkpoint.pt"
    rng = random.Random(0)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", SAVER, str(path)], stdout=subprocess.PIPE, text=True, env=env)
        assert proc.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 10
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        state = load_checkpoint(path)
        assert torch.all(state["w"] == float(state["n"]))  # whole: one save's values throughout
    save_checkpoint(path, {"n": 0, "w": torch.zeros(3)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]


@pytest.mark.parametrize("argv", [["train", "iql", "--dataset", "pendulum-medium-v0", "--output_dir", "{ro}/run"],
                                  ["sweep", "notebooks/00_quickstart.ipynb", "--grid", "smoke=1", "--output", "{ro}/sw"]],
                         ids=["train", "sweep"])
def test_read_only_mount(tmp_path, argv):
    """A really read-only folder (a read-only bind mount, which binds even root), via bubblewrap."""
    import shutil

    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed: the /sys cases above cover the unwritable folder")
    ro = tmp_path / "ro"
    ro.mkdir()
    cmd = ["bwrap", "--dev-bind", "/", "/", "--ro-bind", str(ro), str(ro), sys.executable, "-m", "vla_rl_lib",
           *[a.replace("{ro}", str(ro)) for a in argv]]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if "bwrap:" in result.stderr:
        pytest.skip(f"bubblewrap cannot make mounts here: {result.stderr.strip()}")
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Read-only file system" in result.stderr and not any(ro.iterdir())
