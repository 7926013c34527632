"""The gymnasium internals vla_rl_lib/compat.py reads still exist and mean what the kit assumes.
A failure here names the attribute a gymnasium release moved: update vla_rl_lib/compat.py."""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

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


# ------------------------------------------------------------------------------------------------
# torch's private API (vla_rl_lib/compat.py): each must still exist and agree with its public fallback
# ------------------------------------------------------------------------------------------------
def _tensors(seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, 4, generator=g), torch.randn(5, generator=g)]


@pytest.mark.parametrize("name", ["_foreach_norm", "_foreach_mul_", "_foreach_lerp_"])
def test_torch_foreach_ops_exist(name):
    assert callable(getattr(torch, name, None)), f"torch {torch.__version__} has no torch.{name}: update vla_rl_lib/compat.py"


def test_foreach_ops_match_their_public_fallbacks(monkeypatch):
    fused_norm = compat.foreach_norm(_tensors(0))
    a, b = _tensors(1), _tensors(1)
    compat.foreach_mul_(a, torch.tensor(0.3))
    t1, t2, s = _tensors(2), _tensors(2), _tensors(3)
    compat.foreach_lerp_(t1, s, 0.005)
    for name in ("_foreach_norm", "_foreach_mul_", "_foreach_lerp_"):
        monkeypatch.delattr(torch, name)
    for fused, public in zip(fused_norm, compat.foreach_norm(_tensors(0))):
        torch.testing.assert_close(fused, public)
    compat.foreach_mul_(b, torch.tensor(0.3))
    compat.foreach_lerp_(t2, s, 0.005)
    for x, y in zip(a + t1, b + t2):
        torch.testing.assert_close(x, y)
    torch.testing.assert_close(t1[1], _tensors(2)[1] + 0.005 * (s[1] - _tensors(2)[1]))


def test_mkldnn_bf16_check_exists():
    check = torch.ops.mkldnn._is_mkldnn_bf16_supported  # raises AttributeError/RuntimeError when torch drops it
    assert compat.mkldnn_bf16_supported() == bool(check())


def test_env_rng_is_read_without_seeding_one():
    env = gym.make("Pendulum-v1")
    assert "_np_random" in vars(gym.Env), "gymnasium.Env has no _np_random: update vla_rl_lib/compat.py"
    assert compat.env_rng_if_seeded(env) is None  # never reset: no generator, and none was created
    assert compat.env_rng_if_seeded(env) is None
    env.reset(seed=3)
    assert compat.env_rng_if_seeded(env) is env.unwrapped.np_random


def test_torch_compile_configuration_that_compile_py_patches_exists():
    import torch._functorch.config as functorch_config  # (torch.compile's configuration module)
    import torch._inductor.config as inductor_config

    assert hasattr(functorch_config, "donated_buffer"), "torch.compile lost donated_buffer: update vla_rl_lib/compile.py"
    assert hasattr(inductor_config, "fallback_random"), "torch.compile lost fallback_random: update tests/test_compile.py"


def test_no_module_but_compat_reads_private_torch_or_gymnasium_api():
    """``torch._x`` / ``gym....._x`` attribute chains appear only in compat.py (and compile.py's torch.compile
    configuration); every other module calls compat's functions."""
    import ast
    from pathlib import Path

    package = Path(compat.__file__).parent
    allowed = {"compat.py", "compile.py"}
    found = []
    for path in sorted(package.rglob("*.py")):
        if path.name in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Attribute):
                continue
            chain, base = [node.attr], node.value
            while isinstance(base, ast.Attribute):
                chain.append(base.attr)
                base = base.value
            if isinstance(base, ast.Name) and base.id in ("torch", "gym", "gymnasium") and \
                    any(a.startswith("_") and not a.startswith("__") for a in chain):
                found.append(f"{path.relative_to(package.parent)}:{node.lineno} {base.id}.{'.'.join(reversed(chain))}")
    assert not found, "private API outside vla_rl_lib/compat.py:\n" + "\n".join(sorted(set(found)))
