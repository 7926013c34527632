"""The private torch and gymnasium API the kit relies on, in one place.

No other module of the kit calls a private (``_``-prefixed) torch or gymnasium function or reads
a private attribute: it calls the functions below. ``tests/test_compat.py`` fails loudly, naming
the API, when a release renames or removes one; where a public equivalent exists, the function
falls back to it (slower, same result), so the kit keeps working until the test is fixed.

torch
-----
* ``torch._foreach_norm``, ``torch._foreach_mul_``, ``torch._foreach_lerp_``: one fused kernel
  over a list of tensors (the global gradient clip, Polyak target updates); fallback: a loop of
  the public per-tensor ops.
* ``torch.ops.mkldnn._is_mkldnn_bf16_supported``: whether the CPU computes bfloat16 matmuls
  natively; fallback: ``False`` (the kit then keeps float32 on the CPU, always correct).

``torch._functorch.config`` and ``torch._inductor.config`` are torch.compile's documented
configuration modules; :mod:`vla_rl_lib.compile` uses them.

gymnasium
---------

An exact resume (:mod:`vla_rl_lib.envs.state`) needs some state that gymnasium keeps outside its
public API. Every such access goes through the functions below, and ``tests/test_compat.py``
fails loudly (naming the attribute) when a gymnasium release renames or removes one; until then a
missing attribute raises :class:`~vla_rl_lib.errors.IncompatibleError` here, and the caller falls
back to what the public API allows (a resumed run that starts fresh episodes).

* ``SyncVectorEnv._autoreset_envs``: which sub-envs reset on their next ``step()`` (the
  ``AutoresetMode.NEXT_STEP`` bookkeeping; gymnasium 1.x).
* ``Env._np_random``: an env's random generator, read without seeding one as the public
  ``np_random`` property would.
* ``CartPoleVectorEnv``'s per-world state: ``state`` (4 x N), ``steps``, ``prev_done`` (its own
  NEXT_STEP flags) and the reset bounds ``low`` / ``high``; its random generator is the public
  ``np_random``.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
import torch

from vla_rl_lib.errors import IncompatibleError

# ------------------------------------------------------------------------------------------------
# torch
# ------------------------------------------------------------------------------------------------
def foreach_norm(tensors: list) -> list:
    """The L2 norm of each tensor (``torch._foreach_norm``; fallback ``torch.linalg.vector_norm`` each)."""
    fused = getattr(torch, "_foreach_norm", None)
    if fused is not None:
        return fused(tensors)
    return [torch.linalg.vector_norm(t) for t in tensors]


def foreach_mul_(tensors: list, scalar) -> None:
    """Multiply every tensor in place by ``scalar`` (a number or a 0-d tensor) (``torch._foreach_mul_``)."""
    fused = getattr(torch, "_foreach_mul_", None)
    if fused is not None:
        fused(tensors, scalar)
        return
    for t in tensors:
        t.mul_(scalar)


def foreach_lerp_(targets: list, sources: list, weight: float) -> None:
    """``target <- target + weight * (source - target)`` for each pair, in place (``torch._foreach_lerp_``)."""
    fused = getattr(torch, "_foreach_lerp_", None)
    if fused is not None:
        fused(targets, sources, weight)
        return
    for t, s in zip(targets, sources):
        t.lerp_(s, weight)


def mkldnn_bf16_supported() -> bool:
    """Whether oneDNN computes bfloat16 on this CPU natively (``torch.ops.mkldnn._is_mkldnn_bf16_supported``;
    fallback ``False``: float32)."""
    try:
        check = torch.ops.mkldnn._is_mkldnn_bf16_supported
    except (AttributeError, RuntimeError):
        return False
    return bool(check())


# ------------------------------------------------------------------------------------------------
# gymnasium
# ------------------------------------------------------------------------------------------------
def env_rng_if_seeded(env: gym.Env):
    """The ``np.random.Generator`` of ``env.unwrapped``, or ``None`` if it has none yet (the public
    ``np_random`` would create and seed one). Fallback without the attribute: ``None``."""
    return getattr(env.unwrapped, "_np_random", None)


#: CartPoleVectorEnv attributes that make up its state (arrays and the reset bounds)
CARTPOLE_VECTOR_STATE = ("state", "steps", "prev_done", "low", "high")


def _missing(obj, name: str) -> IncompatibleError:
    return IncompatibleError(f"gymnasium {gym.__version__}'s {type(obj).__name__} has no attribute {name!r}, which "
                             "the kit's exact resume reads (vla_rl_lib/compat.py); update the kit or pin gymnasium")


def vector_autoreset_flags(envs: gym.vector.SyncVectorEnv) -> np.ndarray:
    """A copy of the ``(num_envs,)`` flags of the sub-envs whose next ``step()`` only resets them."""
    flags = getattr(envs, "_autoreset_envs", None)
    if not isinstance(flags, np.ndarray) or flags.shape != (envs.num_envs,):
        raise _missing(envs, "_autoreset_envs")
    return flags.astype(bool, copy=True)


def set_vector_autoreset_flags(envs: gym.vector.SyncVectorEnv, flags) -> None:
    """Put back what :func:`vector_autoreset_flags` returned."""
    if not hasattr(envs, "_autoreset_envs"):
        raise _missing(envs, "_autoreset_envs")
    envs._autoreset_envs = np.array(flags, dtype=np.bool_).reshape(envs.num_envs)


def cartpole_vector_env_class() -> type:
    """gymnasium's numpy-batched CartPole (``gym.make_vec("CartPole-v1", vectorization_mode="vector_entry_point")``)."""
    from gymnasium.envs.classic_control.cartpole import CartPoleVectorEnv

    return CartPoleVectorEnv


def cartpole_vector_state(envs) -> dict:
    """The attributes of :data:`CARTPOLE_VECTOR_STATE` (array copies and floats)."""
    out = {}
    for name in CARTPOLE_VECTOR_STATE:
        if not hasattr(envs, name):
            raise _missing(envs, name)
        value = getattr(envs, name)
        out[name] = np.array(value, copy=True) if isinstance(value, np.ndarray) else value
    return out


def set_cartpole_vector_state(envs, state: dict) -> None:
    """Put back what :func:`cartpole_vector_state` returned."""
    for name in CARTPOLE_VECTOR_STATE:
        if not hasattr(envs, name):
            raise _missing(envs, name)
        setattr(envs, name, state[name])
