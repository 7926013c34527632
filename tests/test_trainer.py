"""The shared loop: callbacks, stop, run directory, resume, atomic and safe checkpoints, NaN stop."""
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from toy import ToyBC, ToyBuffer
from vla_rl_lib import OfflineRLConfig
from vla_rl_lib.callbacks import Callback, MetricsHistory, StopAfterSteps
from vla_rl_lib.checkpoint import load_checkpoint, save_checkpoint
from vla_rl_lib.errors import CheckpointError, MissingDependencyError, TrainingDivergedError
from vla_rl_lib.logging import read_metrics


def cfg(tmp_path, name="run", **kw):
    base = dict(num_epochs=4, steps_per_epoch=25, batch_size=32, eval_episodes=0, save_freq=1, log_freq=10,
                learning_rate=1e-2, device="cpu", output_dir=str(tmp_path / name))
    base.update(kw)
    return OfflineRLConfig(**base)


def weights(trainer):
    return [p.detach().clone() for p in trainer.policy.parameters()]


def test_training_learns_and_writes_a_run_directory(tmp_path):
    history = MetricsHistory()
    trainer = ToyBC(3, 2, cfg(tmp_path)).train(ToyBuffer(), callbacks=[history])
    assert trainer.global_step == 100
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.csv", "checkpoint.pt"):
        assert (run / name).exists(), name
    assert any(p.name.startswith("events.out.tfevents") for p in (run / "tb").iterdir())
    rows = read_metrics(run)
    losses = [r["policy_loss"] for r in rows if "policy_loss" in r]
    assert losses[-1] < 0.5 * losses[0]           # it really learns
    assert [r["step"] for r in history.logs][:2] == [10, 20]


def test_callbacks_are_called_and_can_stop_training(tmp_path):
    calls = []

    class Spy(Callback):
        def on_train_start(self, trainer):
            calls.append("start")

        def on_step(self, trainer):
            calls.append("step")
            return False if trainer.global_step == 7 else None

        def on_train_end(self, trainer):
            calls.append("end")

    trainer = ToyBC(3, 2, cfg(tmp_path)).train(ToyBuffer(), callbacks=[Spy()])
    assert trainer.global_step == 7
    assert calls[0] == "start" and calls[-1] == "end" and calls.count("step") == 7
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["global_step"] == 7


def test_resume_continues_the_same_run(tmp_path):
    full = ToyBC(3, 2, cfg(tmp_path, "full")).train(ToyBuffer())
    part = ToyBC(3, 2, cfg(tmp_path, "part")).train(ToyBuffer(), callbacks=[StopAfterSteps(37)])
    assert part.global_step == 37
    resumed = ToyBC(3, 2, cfg(tmp_path, "part"))
    resumed.load(tmp_path / "part" / "checkpoint.pt")
    assert resumed.global_step == 37
    resumed.train(ToyBuffer())
    assert resumed.global_step == full.global_step
    for a, b in zip(weights(full), weights(resumed)):
        assert torch.equal(a, b)
    # and from_checkpoint rebuilds the trainer class from the file alone
    again = ToyBC.from_checkpoint(tmp_path / "part" / "checkpoint.pt")
    assert again.global_step == 100 and torch.equal(weights(again)[0], weights(full)[0])


def test_same_seed_same_numbers_different_seed_different(tmp_path):
    a = weights(ToyBC(3, 2, cfg(tmp_path, "a")).train(ToyBuffer()))
    b = weights(ToyBC(3, 2, cfg(tmp_path, "b")).train(ToyBuffer()))
    c = weights(ToyBC(3, 2, cfg(tmp_path, "c", seed=1)).train(ToyBuffer()))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a[0], c[0])


def test_non_finite_loss_stops_with_named_metric_and_keeps_last_checkpoint(tmp_path):
    trainer = ToyBC(3, 2, cfg(tmp_path, save_freq=1, log_freq=5), scale=1.0)

    class Poison(Callback):
        def on_step(self, t):
            if t.global_step == 60:
                t.scale = float("nan")

    with pytest.raises(TrainingDivergedError, match=r"policy_loss became nan by step 6\d"):
        trainer.train(ToyBuffer(), callbacks=[Poison()])
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert state["global_step"] == 50  # the last good epoch boundary
    assert all(torch.isfinite(v).all() for v in state["objects"]["_policy"].values())


def test_ctrl_c_saves_a_checkpoint_and_returns(tmp_path, capsys):
    class CtrlC(Callback):
        def on_step(self, t):
            if t.global_step == 13:
                raise KeyboardInterrupt

    trainer = ToyBC(3, 2, cfg(tmp_path)).train(ToyBuffer(), callbacks=[CtrlC()])
    assert trainer.interrupted and trainer.global_step == 13
    assert load_checkpoint(tmp_path / "run")["global_step"] == 13
    assert "vla-rl resume" in capsys.readouterr().out


def test_atomic_save_interrupted_write_keeps_previous(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"x": torch.ones(3)})

    def dying_save(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"PK\x03\x04partial")
        raise KeyboardInterrupt  # killed half way through the write

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"x": torch.zeros(3)})
    assert torch.equal(load_checkpoint(path)["x"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temporary left behind


def test_process_killed_while_saving_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "ck.pt"
    script = textwrap.dedent(f"""
        import torch
        from vla_rl_lib.checkpoint import save_checkpoint
        i = 0
        while True:
            save_checkpoint({str(path)!r}, {{"i": i, "w": torch.full((2_000_000,), float(i))}})
            i += 1
            print(i, flush=True)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(3):
            proc.stdout.readline()  # at least three complete saves
        time.sleep(0.05)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    state = load_checkpoint(path)
    assert torch.all(state["w"] == state["i"])


def test_loading_refuses_a_pickle_with_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pt"
    torch.save({"format": "vla-rl-kit-checkpoint", "payload": Evil()}, path)
    with pytest.raises(CheckpointError, match="not a checkpoint of this kit"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("content", [b"", b"hello", pickle.dumps({"a": 1})])
def test_not_a_checkpoint_gets_a_clear_error(tmp_path, content):
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="x.pt"):
        load_checkpoint(path)
    torch.save({"weights": torch.ones(1)}, path)
    with pytest.raises(CheckpointError, match="no 'vla-rl-kit-checkpoint' marker"):
        load_checkpoint(path)


def test_checkpoint_of_other_sizes_is_rejected(tmp_path):
    ToyBC(3, 2, cfg(tmp_path, num_epochs=1)).train(ToyBuffer())
    other = ToyBC(4, 2, cfg(tmp_path, "other"))
    with pytest.raises(CheckpointError, match="does not match"):
        other.load(tmp_path / "run" / "checkpoint.pt")


def test_dataset_of_wrong_size_is_rejected_before_training(tmp_path):
    from vla_rl_lib.errors import DatasetError

    trainer = ToyBC(5, 2, cfg(tmp_path))
    with pytest.raises(DatasetError, match="obs_dim=5"):
        trainer.train(ToyBuffer(obs_dim=3))
    assert trainer.global_step == 0 and not (tmp_path / "run" / "checkpoint.pt").exists()


def test_wandb_missing_says_how_to_install(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_wandb(name, *a, **k):
        if name == "wandb":
            raise ImportError("No module named 'wandb'")
        return real_import(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    with pytest.raises(MissingDependencyError, match=r"pip install 'vla-rl-kit\[wandb\]'"):
        ToyBC(3, 2, cfg(tmp_path), use_wandb=True).train(ToyBuffer())
