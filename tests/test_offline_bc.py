"""Behaviour cloning and %BC (vla_rl_lib.offline.bc): the loss, the episode filter, the trainer's API and CLI."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vla_rl_lib import BCTrainer
from vla_rl_lib.config import OfflineRLConfig
from vla_rl_lib.data.buffer import EpisodeSubset, OfflineReplayBuffer
from vla_rl_lib.errors import ConfigError, DatasetError
from vla_rl_lib.offline.bc import bc_loss
from vla_rl_lib.trainer import Trainer, get_trainer_class


def _episodes_data(returns_per_episode=(-3.0, 5.0, 1.0, 10.0), length=20, seed=0):
    """Episodes of 1-d states where each episode's action is a constant equal to its index."""
    rng = np.random.default_rng(seed)
    n = length * len(returns_per_episode)
    obs = rng.normal(size=(n, 2)).astype(np.float32)
    actions = np.repeat(np.arange(len(returns_per_episode), dtype=np.float32) / 10.0, length)[:, None]
    rewards = np.repeat(np.asarray(returns_per_episode, np.float32) / length, length)
    timeouts = np.zeros(n, bool)
    timeouts[length - 1::length] = True
    return {"observations": obs, "next_observations": obs, "actions": actions, "rewards": rewards,
            "terminals": np.zeros(n, bool), "timeouts": timeouts}


def _config(tmp_path, steps, **kw):
    return OfflineRLConfig(**{"num_epochs": 1, "steps_per_epoch": steps, "eval_episodes": 0, "save_freq": 0,
                              "log_freq": max(1, steps // 2), "device": "cpu", "hidden_dim": 32, "batch_size": 32,
                              "output_dir": str(tmp_path / "run"), **kw})


def test_bc_loss_is_mean_squared_error():
    pi, a = torch.tensor([[0.5, -1.0], [0.0, 0.0]]), torch.tensor([[0.0, 0.0], [1.0, 1.0]])
    assert bc_loss(pi, a).item() == pytest.approx((0.25 + 1 + 1 + 1) / 4)


def test_top_episodes_keeps_the_best_by_return():
    buffer = OfflineReplayBuffer(2, 1).load_dataset(_episodes_data())
    np.testing.assert_allclose(buffer.episode_returns(), [-3.0, 5.0, 1.0, 10.0], rtol=1e-5)
    top = buffer.top_episodes(0.5)  # the two best: returns 10 and 5, actions 0.3 and 0.1
    assert isinstance(top, EpisodeSubset) and len(top) == 40 and top.min_return == pytest.approx(5.0)
    actions = top.get(torch.arange(len(top)))["actions"].unique().tolist()
    assert actions == pytest.approx([0.1, 0.3])
    batch = top.sample(256, generator=torch.Generator().manual_seed(0))
    assert set(np.round(batch["actions"].numpy().ravel().tolist(), 3)) <= {0.1, 0.3}
    assert top.obs_dim == 2 and top.env_id == buffer.env_id  # the rest is the parent's
    assert len(buffer.top_episodes(0.01)) == 20  # at least one episode
    with pytest.raises(DatasetError, match="fraction"):
        buffer.top_episodes(0.0)


def test_top_episodes_without_next_observations_skips_timeout_rows():
    data = _episodes_data()
    del data["next_observations"]  # D4RL v2 layout: a row ending on a timeout is no transition
    buffer = OfflineReplayBuffer(2, 1).load_dataset(data)
    top = buffer.top_episodes(0.25)
    assert len(top) == 19
    assert top.get(torch.arange(len(top)))["actions"].unique().tolist() == pytest.approx([0.3])


def test_filtered_bc_clones_only_the_best_episodes(tmp_path):
    """10 %BC of this data imitates the best episode's action (0.3); plain BC the average (0.15)."""
    buffer = OfflineReplayBuffer(2, 1).load_dataset(_episodes_data())
    obs = np.random.default_rng(1).normal(size=(200, 2)).astype(np.float32)
    plain = BCTrainer(2, 1, config=_config(tmp_path / "plain", 400, learning_rate=3e-3)).train(buffer)
    top = BCTrainer(2, 1, config=_config(tmp_path / "top", 400, learning_rate=3e-3), top_fraction=0.1).train(buffer)
    assert float(plain.predict(obs).mean()) == pytest.approx(0.15, abs=0.05)
    assert float(top.predict(obs).mean()) == pytest.approx(0.3, abs=0.03)
    assert len(top.buffer) == 20
    top.train(buffer)  # training again filters the original buffer again, not the filtered one twice
    assert len(top.buffer) == 20


def test_resume_and_checkpoint(tmp_path):
    buffer = OfflineReplayBuffer(2, 1).load_dataset(_episodes_data())
    straight = BCTrainer(2, 1, config=_config(tmp_path / "a", 40), top_fraction=0.5).train(buffer)
    first = BCTrainer(2, 1, config=_config(tmp_path / "b", 20), top_fraction=0.5).train(buffer)
    path = first.save(tmp_path / "half.pt")
    resumed = BCTrainer(2, 1, config=_config(tmp_path / "c", 40), top_fraction=0.5).load(path)
    resumed.train(buffer)
    for a, b in zip(straight.policy.parameters(), resumed.policy.parameters()):
        torch.testing.assert_close(a, b)
    rebuilt = Trainer.from_checkpoint(path)
    assert isinstance(rebuilt, BCTrainer) and rebuilt.hparams.top_fraction == 0.5


def test_names_and_bad_input(tmp_path):
    assert get_trainer_class("bc") is BCTrainer and get_trainer_class("%bc") is BCTrainer
    from vla_rl_lib.vla.bc import BCTrainer as VLABCTrainer

    assert get_trainer_class("vla_bc") is VLABCTrainer and VLABCTrainer.algorithm == "vla_bc"
    with pytest.raises(ConfigError, match="top_fraction"):
        BCTrainer(2, 1, config=_config(tmp_path, 10), top_fraction=0.0)
    with pytest.raises(DatasetError, match="obs_dim=3"):
        BCTrainer(3, 1, config=_config(tmp_path, 10)).train(OfflineReplayBuffer(2, 1).load_dataset(_episodes_data()))


def test_command_line_trains_bc_on_a_shipped_dataset(tmp_path, capsys):
    from vla_rl_lib.cli import main

    out = tmp_path / "bc"
    code = main(["train", "bc", "--dataset", "pendulum-medium-expert-v0", "--num_epochs", "1", "--steps_per_epoch",
                 "50", "--top_fraction", "0.2", "--hidden_dim", "32", "--eval_episodes", "1", "--output_dir", str(out),
                 "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert (out / "checkpoint.pt").is_file() and "policy_loss" in (out / "metrics.csv").read_text()
