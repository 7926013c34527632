"""vla_rl_lib.envs.state: an environment's state survives a checkpoint (tensors and plain values,
read back with weights_only=True) and, written into a fresh env, gives the same next steps."""
from __future__ import annotations

import io

import gymnasium as gym
import numpy as np
import pytest
import torch

from vla_rl_lib.envs.state import (as_checkpoint_value, from_checkpoint_value, get_env_state, restore_env_state,
                                   set_env_state)
from vla_rl_lib.errors import IncompatibleError


def through_a_checkpoint(state):
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)  # no pickled objects


def same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and not isinstance(a, str):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return np.array_equal(a, b)
    return a == b


def driving_actions(t, n, tensors=False):
    a = np.random.default_rng(t).uniform(-1, 1, (n, 2))
    return torch.as_tensor(a) if tensors else a.astype(np.float32)


def make_batched(backend, device="cpu"):
    from vla_rl_lib.envs.batched import BatchedDrivingEnv

    return BatchedDrivingEnv(3, difficulty="hard", image_size=32, max_episode_steps=6, backend=backend,
                             return_tensors=backend, device=device)


def make_sync(mode):
    from vla_rl_lib.envs import DrivingEnv

    return gym.vector.SyncVectorEnv([lambda: DrivingEnv(difficulty="hard", image_size=32, max_episode_steps=6)
                                     for _ in range(3)], autoreset_mode=mode)


def make_cartpole():
    from vla_rl_lib.online.rollout import batched_vector_env

    return batched_vector_env("CartPole-v1", 3)


CASES = {
    "batched-numpy": (lambda: make_batched("numpy"), lambda t: driving_actions(t, 3)),
    "batched-torch": (lambda: make_batched("torch"), lambda t: driving_actions(t, 3, tensors=True)),
    "sync-driving-next-step": (lambda: make_sync(gym.vector.AutoresetMode.NEXT_STEP), lambda t: driving_actions(t, 3)),
    "sync-driving-same-step": (lambda: make_sync(gym.vector.AutoresetMode.SAME_STEP), lambda t: driving_actions(t, 3)),
    "cartpole-vector": (make_cartpole, lambda t: np.random.default_rng(t).integers(0, 2, 3)),
}


CASES["batched-cuda"] = (lambda: make_batched("torch", "cuda"),
                         lambda t: driving_actions(t, 3, tensors=True).float().cuda())
NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("case", [pytest.param(c, marks=NEEDS_CUDA) if "cuda" in c else c for c in CASES])
def test_round_trip_gives_identical_next_steps(case):
    make, actions = CASES[case]
    env = make()
    env.reset(seed=5)
    for t in range(9):  # past the first episode ends (time limit 6) and their autoresets
        env.step(actions(t))
    state = through_a_checkpoint(get_env_state(env))
    other = make()
    other.reset(seed=123)  # a different world
    set_env_state(other, state)
    assert same(get_env_state(other), get_env_state(env))
    for t in range(9, 30):
        a, b = env.step(actions(t)), other.step(actions(t))
        assert same(a[:4], b[:4]), f"step {t} differs"


def test_the_difficulty_is_part_of_the_state():
    env = make_batched("numpy")
    env.reset(seed=0)
    env.set_difficulty("easy")
    other = make_batched("numpy")
    set_env_state(other, get_env_state(env))
    assert other.difficulty.name == "easy"


def test_unknown_envs_have_no_state_and_mismatches_are_refused():
    env = gym.make("CartPole-v1")  # gymnasium's wrappers hold state the kit does not save
    env.reset(seed=0)
    assert get_env_state(env) is None
    assert get_env_state(gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1")])) is None
    with pytest.raises(IncompatibleError, match="cannot be restored"):
        set_env_state(env, {"kind": "driving"})
    numpy_env, torch_env = make_batched("numpy"), make_batched("torch")
    numpy_env.reset(seed=0)
    with pytest.raises(IncompatibleError, match="backend='numpy'"):
        set_env_state(torch_env, get_env_state(numpy_env))
    with pytest.warns(UserWarning, match="starts fresh episodes"):
        assert restore_env_state(torch_env, get_env_state(numpy_env), "ppo") is False
    assert restore_env_state(torch_env, None, "ppo") is False


def test_observations_and_bookkeeping_round_trip():
    from vla_rl_lib.envs.text import IndexedText

    value = {"image": np.arange(12, dtype=np.uint8).reshape(2, 2, 3), "instruction": ("keep lane", "stop"),
             "state": torch.arange(4.0).reshape(2, 2), "ids": IndexedText(torch.tensor([0, 2]), ["a", "b", "c"]),
             "texts": np.array(["x", "y"]), "flags": [True, None, 3, 2.5, np.float64(0.1)]}
    back = from_checkpoint_value(through_a_checkpoint(as_checkpoint_value(value)))
    assert back["image"].dtype == np.uint8 and np.array_equal(back["image"], value["image"])
    assert back["instruction"] == ("keep lane", "stop") and isinstance(back["instruction"], tuple)
    assert torch.equal(back["state"], value["state"]) and back["ids"] == ["a", "c"]
    assert list(back["texts"]) == ["x", "y"] and back["flags"][:4] == [True, None, 3, 2.5]
    assert type(back["flags"][4]) is np.float64 and back["flags"][4] == np.float64(0.1)
    with pytest.raises(IncompatibleError, match="cannot be stored"):
        as_checkpoint_value(object())
