"""Exact resume of PPO and GRPO on the kit's own environments: N steps give bit-identical weights to
N/2 steps + checkpoint + a fresh trainer's ``load`` (or ``vla-rl resume``) + N/2 steps (on the CPU).

The first half stops the way an interrupted run does (a callback stops it; the checkpoint is written
at the stop), so the config, and with it the learning-rate schedule, is the same in both runs. The
environments end episodes mid-rollout (short time limits, NEXT_STEP autoreset), so a checkpoint
falls inside episodes and inside pending autoresets: dropping the environment state changes the
weights (checked for CartPole below), so the comparison can fail.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import gymnasium as gym
import pytest
import torch

from vla_rl_lib import RLConfig
from vla_rl_lib.callbacks import Callback
from vla_rl_lib.checkpoint import load_checkpoint
from vla_rl_lib.online.grpo import GRPOTrainer
from vla_rl_lib.online import ppo as ppo_module
from vla_rl_lib.online.ppo import PPOTrainer

ROOT = Path(__file__).resolve().parents[1]
TINY_VLA = dict(image_size=32, vision_channels=[8, 16, 16], embed_dim=32, hidden_dim=32, text_heads=2,
                state_indices=[1, 2])


class StopAfter(Callback):
    """Stops training once ``done(trainer)`` holds (as an interruption would: a checkpoint is written)."""

    def __init__(self, done):
        self.done = done

    def on_step(self, trainer):
        return False if self.done(trainer) else None


def weights(trainer) -> dict:
    nets = {"policy": trainer.policy, "value": getattr(trainer, "value_net", None)}
    return {f"{name}.{k}": v.detach().clone() for name, net in nets.items() if net is not None
            for k, v in net.state_dict().items()}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"resumed run differs in {different[:5]}"


def split_run(make, tmp_path, halfway) -> tuple:
    """(weights after the whole run, weights after half + load into a fresh trainer + the rest, resumed trainer)."""
    full = make(tmp_path / "full")
    full.train()
    first = make(tmp_path / "split")
    first.train(callbacks=[StopAfter(halfway)])
    assert 0 < first.global_step < full.global_step
    shutil.copy(tmp_path / "split" / "checkpoint.pt", tmp_path / "half.pt")  # (the resumed run overwrites it)
    resumed = make(tmp_path / "split")
    resumed.load(tmp_path / "split" / "checkpoint.pt")
    assert "env" in load_checkpoint(tmp_path / "half.pt")["extra"]
    resumed.train()
    assert resumed.global_step == full.global_step
    # the logged episode statistics continue too
    assert (resumed.episodes_done, resumed.recent_returns, resumed.recent_lengths) == \
        (full.episodes_done, full.recent_returns, full.recent_lengths)
    return weights(full), weights(resumed), resumed


def ppo_config(out, **kw) -> RLConfig:
    base = dict(eval_episodes=0, eval_freq=0, save_freq=0, log_freq=10**9, device="cpu", seed=3, output_dir=str(out))
    return RLConfig(**{**base, **kw})


def cartpole_config(out, **kw) -> RLConfig:
    base = dict(env="CartPole-v1", num_envs=4, rollout_steps=32, total_timesteps=512, batch_size=64, ppo_epochs=2,
                ppo_anneal_lr=True, ppo_normalize_obs=True, ppo_normalize_reward=True)
    return ppo_config(out, **{**base, **kw})


# ------------------------------------------------------------------------------------------------
# PPO
# ------------------------------------------------------------------------------------------------
def test_ppo_on_cartpole_vector_env_resumes_bit_identically(tmp_path):
    from vla_rl_lib.compat import cartpole_vector_env_class

    full, resumed, trainer = split_run(lambda out: PPOTrainer(config=cartpole_config(out)), tmp_path,
                                       lambda t: t.global_step >= 256)
    assert type(trainer.envs) is cartpole_vector_env_class()
    assert_same(full, resumed)

    # without the environment state (the old behaviour: fresh episodes) the weights differ
    state = load_checkpoint(tmp_path / "half.pt")
    assert bool(state["extra"]["rollout"]["items"]["episode_lengths"]["data"].gt(0).any())  # mid-episode
    fresh = PPOTrainer(config=cartpole_config(tmp_path / "fresh"))
    fresh.load(tmp_path / "half.pt")
    fresh.load_extra_state({})
    fresh.train()
    assert any(not torch.equal(full[k], v) for k, v in weights(fresh).items())


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_ppo_on_the_batched_driving_simulator_resumes_bit_identically(tmp_path, backend):
    """NEXT_STEP autoreset, action noise (medium) and the backend's sampler (per-world numpy
    generators, or the torch backend's counter-based streams) all continue from the checkpoint."""
    from vla_rl_lib.envs import BatchedDrivingEnv
    from vla_rl_lib.vla import VLAModel, VLAPolicy

    def make(out):
        env = BatchedDrivingEnv(4, difficulty="medium", image_size=32, max_episode_steps=7, backend=backend,
                                return_tensors=backend)
        torch.manual_seed(0)
        config = ppo_config(out, rollout_steps=8, total_timesteps=128, batch_size=16, ppo_epochs=1)
        return PPOTrainer(env=env, config=config, policy=VLAPolicy(VLAModel(**TINY_VLA)))

    full, resumed, trainer = split_run(make, tmp_path, lambda t: t.global_step >= 64)
    assert trainer.envs.backend == backend
    assert trainer.envs.sampler == ("per_world" if backend == "numpy" else "batched")
    assert_same(full, resumed)


def test_ppo_on_a_single_driving_env_resumes_bit_identically(tmp_path):
    """One DrivingEnv (state observations, the default MLP) in the trainer's SAME_STEP SyncVectorEnv."""
    from vla_rl_lib.envs import DrivingEnv, StateObservation

    def make(out):
        env = StateObservation(DrivingEnv(difficulty="medium", image_size=16, max_episode_steps=7))
        return PPOTrainer(env=env, config=ppo_config(out, rollout_steps=24, total_timesteps=96, batch_size=12,
                                                     ppo_epochs=2, ppo_normalize_reward=True))

    full, resumed, _ = split_run(make, tmp_path, lambda t: t.global_step >= 48)
    assert_same(full, resumed)


def test_vla_rl_resume_continues_a_cartpole_run_bit_identically(tmp_path):
    """The command line: the run stopped half-way, `vla-rl resume RUN` finishes it."""
    full = PPOTrainer(config=cartpole_config(tmp_path / "full"))
    full.train()
    PPOTrainer(config=cartpole_config(tmp_path / "split")).train(callbacks=[StopAfter(lambda t: t.global_step >= 256)])
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-m", "vla_rl_lib", "resume", str(tmp_path / "split"), "--no-progress"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming ppo at step 256 of 512" in done.stdout
    saved = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    assert saved["global_step"] == 512
    resumed = PPOTrainer(config=cartpole_config(tmp_path / "check"))
    resumed.load(tmp_path / "split" / "checkpoint.pt")
    assert_same(weights(full), weights(resumed))


def test_an_env_without_state_support_resumes_with_fresh_episodes(tmp_path):
    """gymnasium's wrapped CartPoleEnv (TimeLimit, OrderEnforcing, ...) cannot be saved: the
    checkpoint holds no env state and the resumed run starts fresh episodes (documented in
    docs/online.md and PPO's docstring)."""
    def make(out):
        return PPOTrainer(env=gym.make("CartPole-v1"), config=ppo_config(out, rollout_steps=32, total_timesteps=128,
                                                                         batch_size=32, ppo_epochs=1))

    first = make(tmp_path / "run")
    first.train(callbacks=[StopAfter(lambda t: t.global_step >= 64)])
    assert "env" not in load_checkpoint(tmp_path / "run" / "checkpoint.pt")["extra"]
    resumed = make(tmp_path / "run")
    resumed.load(tmp_path / "run" / "checkpoint.pt")
    assert resumed._next_obs is None  # the next collect resets the envs
    resumed.train()
    assert resumed.global_step == 128 and resumed.episodes_done > 0
    docs = (ROOT / "docs" / "online.md").read_text()
    assert "fresh episodes" in docs and "bit-identical" in docs
    assert "fresh episodes" in ppo_module.__doc__


def test_a_saved_env_state_that_does_not_fit_warns_and_starts_fresh_episodes(tmp_path):
    config = cartpole_config(tmp_path / "run", ppo_normalize_reward=False)
    PPOTrainer(config=config).train(callbacks=[StopAfter(lambda t: t.global_step >= 256)])
    other = PPOTrainer(config=cartpole_config(tmp_path / "other", num_envs=2, ppo_normalize_reward=False))
    with pytest.warns(UserWarning, match="num_envs=4.*fresh episodes"):
        other.load(tmp_path / "run" / "checkpoint.pt")
    assert other._next_obs is None
    other.train()
    assert other.global_step >= 512


# ------------------------------------------------------------------------------------------------
# GRPO
# ------------------------------------------------------------------------------------------------
def test_grpo_on_the_batched_driving_simulator_resumes_bit_identically(tmp_path):
    from vla_rl_lib.envs import BatchedDrivingEnv
    from vla_rl_lib.vla import VLAModel, VLAPolicy

    def make(out):
        env = BatchedDrivingEnv(4, difficulty="medium", image_size=32, max_episode_steps=6)
        torch.manual_seed(0)
        config = ppo_config(out, algorithm="grpo", group_size=2, num_groups=2, num_iterations=4, batch_size=8,
                            grpo_epochs=2, kl_coef=0.05)
        return GRPOTrainer(env, config=config, policy=VLAPolicy(VLAModel(**TINY_VLA)))

    full, resumed, trainer = split_run(make, tmp_path, lambda t: t.iteration >= 2)
    assert trainer.iteration == 4
    assert_same(full, resumed)


def test_grpo_on_a_gymnasium_env_resumes_bit_identically(tmp_path):
    """No env state to save (each round reseeds every world): exact on any env reset(seed=s) reproduces."""
    def make(out):
        config = ppo_config(out, algorithm="grpo", env="CartPole-v1", group_size=2, num_groups=2, num_iterations=4,
                            batch_size=32, grpo_epochs=1, kl_coef=0.05)
        return GRPOTrainer(config=config)

    full = make(tmp_path / "full")
    full.train()
    make(tmp_path / "split").train(callbacks=[StopAfter(lambda t: t.iteration >= 2)])
    resumed = make(tmp_path / "split")
    resumed.load(tmp_path / "split" / "checkpoint.pt")
    resumed.train()
    assert resumed.iteration == 4
    assert_same(weights(full), weights(resumed))


def test_ctrl_c_during_a_rollout_saves_no_env_state(tmp_path):
    """The envs are then ahead of the rollout's start: the resumed run starts fresh episodes."""
    trainer = PPOTrainer(config=cartpole_config(tmp_path / "run"))
    step, calls = trainer.envs.step, []

    def interrupted(actions):
        calls.append(1)
        if len(calls) == 40:  # inside the second rollout (32 steps each)
            raise KeyboardInterrupt
        return step(actions)

    trainer.envs.step = interrupted
    trainer.train()
    assert trainer.interrupted and trainer.global_step == 128
    assert "env" not in load_checkpoint(tmp_path / "run" / "checkpoint.pt")["extra"]
    resumed = PPOTrainer(config=cartpole_config(tmp_path / "run"))
    resumed.load(tmp_path / "run" / "checkpoint.pt")
    assert resumed._next_obs is None
