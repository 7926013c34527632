"""The gymnasium internals vla_rl_lib/compat.py reads still exist and mean what the kit assumes.
A failure here names the attribute a gymnasium release moved: update vla_rl_lib/compat.py."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

from vla_rl_lib import compat
from vla_rl_lib.errors import IncompatibleError


def test_sync_vector_env_autoreset_flags_mark_the_next_step_reset():
    envs = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1", max_episode_steps=3) for _ in range(2)])
    envs.reset(seed=0)
    assert compat.vector_autoreset_flags(envs).tolist() == [False, False]
    for _ in range(3):
        envs.step(np.zeros(2, dtype=np.int64))
    assert compat.vector_autoreset_flags(envs).tolist() == [True, True]  # the time limit ended both
    compat.set_vector_autoreset_flags(envs, [False, True])
    obs, reward, *_ = envs.step(np.zeros(2, dtype=np.int64))
    assert reward.tolist() == [1.0, 0.0]  # env 0 stepped on (its episode continues), env 1 reset


def test_cartpole_vector_env_state_is_where_compat_reads_it():
    envs = compat.cartpole_vector_env_class()(num_envs=2)
    obs, _ = envs.reset(seed=0)
    state = compat.cartpole_vector_state(envs)
    assert set(state) == set(compat.CARTPOLE_VECTOR_STATE)
    assert state["state"].shape == (4, 2) and np.allclose(state["state"].T, obs)
    assert state["steps"].shape == (2,) and state["prev_done"].dtype == np.bool_
    envs.step(np.zeros(2, dtype=np.int64))
    compat.set_cartpole_vector_state(envs, state)
    assert np.array_equal(envs.state, state["state"]) and envs.steps.tolist() == [0, 0]


def test_a_missing_internal_is_one_clear_error():
    class NotSync:
        num_envs = 2

    with pytest.raises(IncompatibleError, match="_autoreset_envs.*compat.py"):
        compat.vector_autoreset_flags(NotSync())
