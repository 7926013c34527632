"""The on-policy rollout machinery (vla_rl_lib/online/rollout.py) on its own: VectorRollout under both
gymnasium autoreset modes, RolloutBuffer.transitions and minibatches."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

from vla_rl_lib.online.rollout import RolloutBuffer, RunningMeanStd, VectorRollout, minibatches


class Counter(gym.Env):
    """Observes how many steps its episode has taken; truncated after 3 (reward 1 per step)."""

    observation_space = gym.spaces.Box(0, 10, (1,), np.float32)
    action_space = gym.spaces.Box(-1, 1, (1,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([float(self.t)], np.float32), 1.0, False, self.t >= 3, {}


def act(obs, with_value):
    n = obs.shape[0]
    values = obs[:, 0].clone() if with_value else None
    return torch.zeros(n, 1), torch.zeros(n), values


def value(obs):  # V(s) = the step count: bootstrapping shows which observation it was given
    return obs[:, 0].clone()


@pytest.mark.parametrize("mode", ["next_step", "same_step"])
@pytest.mark.parametrize("late_values", [False, True])
def test_vector_rollout_marks_reset_steps_and_bootstraps_from_final_observations(mode, late_values):
    autoreset = {"next_step": gym.vector.AutoresetMode.NEXT_STEP, "same_step": gym.vector.AutoresetMode.SAME_STEP}
    envs = gym.vector.SyncVectorEnv([Counter, Counter], autoreset_mode=autoreset[mode])
    obs_rms = RunningMeanStd((1,))
    rollout = VectorRollout(envs, torch.device("cpu"), envs.single_action_space, obs_rms=obs_rms)
    buffer = RolloutBuffer(8, 2, (1,), False, torch.device("cpu"))
    finished = rollout.collect(buffer, act, value, late_values=late_values, seed=0)

    obs = buffer.flat_obs().reshape(8, 2)  # (step, env)
    if mode == "next_step":  # 0 1 2 3 | reset step | 0 1 2 ... : the step after an episode's end is no transition
        assert obs[:, 0].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
        assert buffer.valid[:, 0].tolist() == [True, True, True, False, True, True, True, False]
    else:  # 0 1 2 | 0 1 2 | 0 1: the ending step already returns the reset observation
        assert obs[:, 0].tolist() == [0, 1, 2, 0, 1, 2, 0, 1]
        assert bool(buffer.valid.all())
    valid = buffer.valid[:, 0]
    # V(s_{t+1}) of every transition is the true next count: 3 at the truncation, never the reset's 0
    torch.testing.assert_close(buffer.next_values[:, 0][valid], obs[:, 0][valid] + 1)
    torch.testing.assert_close(buffer.values[:, 0], obs[:, 0])
    assert buffer.dones[:, 0][valid].tolist() == [v == 2 for v in obs[:, 0][valid].tolist()]
    assert not bool(buffer.terminations.any())  # truncations are not terminal
    assert finished == [(3.0, 3)] * 4  # two envs, two episodes each
    assert obs_rms.count.item() == pytest.approx(int(buffer.valid.sum()) + 1e-4)  # statistics of valid steps only

    state = rollout.state()
    other = VectorRollout(envs, torch.device("cpu"), envs.single_action_space)
    other.load_state(state)
    assert other.after_done.tolist() == rollout.after_done.tolist()


def test_transitions_leave_out_reset_steps():
    buffer = RolloutBuffer(2, 2, (), True, torch.device("cpu"))
    for t in range(2):
        buffer.add(torch.full((2, 1), float(t)), torch.tensor([t, t]), torch.zeros(2), torch.zeros(2),
                   torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.tensor([True, t == 0]))
    buffer.finish()
    data = buffer.transitions(torch.arange(4.0).reshape(2, 2), torch.zeros(2, 2))
    assert data["advantages"].tolist() == [0.0, 1.0, 2.0]  # (t=1, env 1) was a reset step
    assert all(len(v) == 3 for v in data.values())


def test_minibatches_cover_every_row_once_per_epoch_and_normalise_each():
    data = {"advantages": torch.arange(10.0), "returns": torch.arange(10.0) * 2}
    seen = list(minibatches(data, 4, 2, torch.Generator().manual_seed(0), normalize=lambda a: a - a.mean()))
    assert [len(mb["returns"]) for mb in seen] == [4, 4, 2] * 2
    for epoch in (seen[:3], seen[3:]):
        assert sorted(torch.cat([mb["returns"] for mb in epoch]).tolist()) == data["returns"].tolist()
    for mb in seen:
        torch.testing.assert_close(mb["advantages"], mb["returns"] / 2 - (mb["returns"] / 2).mean())


def test_one_minibatch_is_the_whole_rollout_normalised_once():
    data = {"advantages": torch.arange(5.0), "returns": torch.arange(5.0)}
    calls = []
    seen = list(minibatches(data, 64, 3, torch.Generator().manual_seed(0),
                            normalize=lambda a: calls.append(1) or a - a.mean()))
    assert len(seen) == 3 and len(calls) == 1
    assert all(mb["returns"] is data["returns"] for mb in seen)  # no shuffle, no copy
    assert data["advantages"].tolist() == [0, 1, 2, 3, 4]  # the caller's data are left as they were
