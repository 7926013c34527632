"""The gymnasium internals the kit relies on, in one place.

An exact resume (:mod:`vla_rl_lib.envs.state`) needs some state that gymnasium keeps outside its
public API. Every such access goes through the functions below, and ``tests/test_compat.py``
fails loudly (naming the attribute) when a gymnasium release renames or removes one; until then a
missing attribute raises :class:`~vla_rl_lib.errors.IncompatibleError` here, and the caller falls
back to what the public API allows (a resumed run that starts fresh episodes).

* ``SyncVectorEnv._autoreset_envs``: which sub-envs reset on their next ``step()`` (the
  ``AutoresetMode.NEXT_STEP`` bookkeeping; gymnasium 1.x).
* ``CartPoleVectorEnv``'s per-world state: ``state`` (4 x N), ``steps``, ``prev_done`` (its own
  NEXT_STEP flags) and the reset bounds ``low`` / ``high``; its random generator is the public
  ``np_random``.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np

from vla_rl_lib.errors import IncompatibleError

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
