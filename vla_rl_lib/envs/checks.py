"""Checks an environment given as an instance must pass before a trainer uses it.

The trainers seed every episode they start (``reset(seed=s)``): GRPO replays one start state for a
whole group of rollouts, PPO and SAC seed their vector envs, evaluation seeds each episode. An
environment whose ``reset()`` takes no ``seed`` would fail later with a bare ``TypeError``.
"""
from __future__ import annotations

import inspect

from vla_rl_lib.errors import IncompatibleError


def takes_seed(reset) -> bool:
    """Whether ``reset`` accepts a ``seed`` keyword (a ``seed`` parameter or ``**kwargs``)."""
    try:
        params = inspect.signature(reset).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature: assume the gymnasium API
        return True
    return any(p.name == "seed" or p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def require_seeded_reset(env) -> None:
    """Raise one clear error if ``env`` (or a wrapper of it) has a ``reset()`` without ``seed``."""
    layer, seen = env, set()
    while layer is not None and id(layer) not in seen:
        seen.add(id(layer))
        reset = getattr(layer, "reset", None)
        if reset is not None and not takes_seed(reset):
            raise IncompatibleError(
                f"{type(layer).__name__}.reset() takes no `seed` argument, but the trainers start every episode "
                "with reset(seed=s) (GRPO replays one start state per group); use gymnasium's signature "
                "reset(self, *, seed=None, options=None) and call super().reset(seed=seed) in it")
        layer = getattr(layer, "env", None)
