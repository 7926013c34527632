"""A running environment's state as checkpoint values, and back: what makes a resume exact.

``get_env_state(envs)`` returns everything the environment's next steps depend on (the worlds'
physical state, step counters, pending autoresets, random generators, the current difficulty) as
tensors and plain values, or ``None`` for an environment it does not know; ``set_env_state(envs,
state)`` writes it into an environment built the same way, after which both continue identically.
A checkpoint stays pickle-free: numpy arrays become tensors of the same dtype, a numpy
``Generator`` its ``bit_generator.state`` (a dict of ints).

Known environments:

* :class:`~vla_rl_lib.envs.batched.BatchedDrivingEnv`, numpy and torch backends, both samplers
  (the per-world generators, or the counter-based streams' keys and episode counters);
* :class:`~vla_rl_lib.envs.driving.DrivingEnv`, alone or inside the kit's stateless wrappers
  (``StateObservation``, ``DiscretizeActions``);
* a gymnasium ``SyncVectorEnv`` of such ``DrivingEnv`` s (plus its pending NEXT_STEP autoresets);
* gymnasium's numpy-batched ``CartPoleVectorEnv`` (what the trainers build for ``CartPole-v1``).

Anything else (other gymnasium envs and their wrappers, CARLA) gives ``None``: a trainer then
resumes with fresh episodes. The gymnasium internals read here go through :mod:`vla_rl_lib.compat`.

``as_checkpoint_value`` / ``from_checkpoint_value`` do the same for a trainer's own per-env bookkeeping
(the current observation, which may be a dict of arrays, tensors and instructions).
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Optional

import gymnasium as gym
import numpy as np
import torch

from vla_rl_lib import compat
from vla_rl_lib.envs.text import IndexedText
from vla_rl_lib.errors import IncompatibleError

__all__ = ["get_env_state", "set_env_state", "restore_env_state", "as_checkpoint_value",
           "from_checkpoint_value"]


# ------------------------------------------------------------------------------------------------
# values <-> checkpoint values (tensors and plain values only)
# ------------------------------------------------------------------------------------------------
def as_checkpoint_value(value: Any) -> dict:
    """``value`` (arrays, tensors, dicts, lists, tuples, instructions, numbers, strings) as a tree of
    ``{"type": ..., ...}`` nodes holding only tensors and plain values; :func:`from_checkpoint_value` inverts it."""
    if isinstance(value, dict):
        return {"type": "dict", "items": {str(k): as_checkpoint_value(v) for k, v in value.items()}}
    if isinstance(value, IndexedText):
        return {"type": "indexed_text", "ids": as_checkpoint_value(value.ids), "vocabulary": list(value.vocabulary)}
    if isinstance(value, torch.Tensor):
        return {"type": "tensor", "data": value.detach().to("cpu", copy=True), "device": str(value.device)}
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "biuf":
            return {"type": "ndarray", "data": torch.from_numpy(np.array(value, copy=True))}
        return {"type": "ndarray", "items": [as_checkpoint_value(v) for v in value.tolist()], "dtype": value.dtype.str}
    if isinstance(value, (list, tuple)):
        return {"type": type(value).__name__ if type(value) in (list, tuple) else "list",
                "items": [as_checkpoint_value(v) for v in value]}
    if isinstance(value, np.generic):
        return {"type": "scalar", "data": torch.from_numpy(np.array([value]))}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"type": "value", "value": value}
    raise IncompatibleError(f"a {type(value).__name__} cannot be stored in a checkpoint (tensors, arrays, "
                            "numbers, strings and dicts/lists of them can)")


def _device(name: str) -> torch.device:
    """The device a tensor was saved from, where this machine has it (else the CPU)."""
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        return torch.device("cpu")
    return device


def from_checkpoint_value(node: dict) -> Any:
    """The value :func:`as_checkpoint_value` stored (tensors go back to their device where it exists)."""
    kind = node["type"]
    if kind == "dict":
        return {k: from_checkpoint_value(v) for k, v in node["items"].items()}
    if kind == "indexed_text":
        return IndexedText(from_checkpoint_value(node["ids"]), node["vocabulary"])
    if kind == "tensor":
        return node["data"].to(_device(node["device"]))
    if kind == "ndarray":
        if "data" in node:
            return node["data"].numpy().copy()
        return np.array([from_checkpoint_value(v) for v in node["items"]], dtype=np.dtype(node["dtype"]))
    if kind in ("list", "tuple"):
        items = [from_checkpoint_value(v) for v in node["items"]]
        return items if kind == "list" else tuple(items)
    if kind == "scalar":
        return node["data"].numpy()[0]
    if kind == "value":
        return node["value"]
    raise IncompatibleError(f"unknown checkpoint value type {kind!r}")


def _tensor(array) -> torch.Tensor:
    """A copy of a numpy array or tensor as a CPU tensor of the same dtype."""
    if isinstance(array, torch.Tensor):
        return array.detach().to("cpu", copy=True)
    return torch.from_numpy(np.array(array, copy=True))


def _write(target, saved: torch.Tensor) -> None:
    """Write a saved tensor into a live array or tensor in place (views of it see the change)."""
    if isinstance(target, torch.Tensor):
        target.copy_(saved.to(target.device))
    else:
        target[...] = saved.cpu().numpy()


def _rng_state(rng: np.random.Generator) -> dict:
    return rng.bit_generator.state  # a fresh dict of plain ints and strings


def _set_rng(rng: np.random.Generator, state: dict) -> None:
    rng.bit_generator.state = state


def _difficulty(state: dict):
    from vla_rl_lib.envs.driving import Difficulty

    return Difficulty(**{k: tuple(v) if isinstance(v, list) else v for k, v in state.items()})


def _check(state: dict, expected: dict, what: str) -> None:
    for key, value in expected.items():
        if state.get(key) != value:
            raise IncompatibleError(f"the saved environment state is for a {what} with {key}={state.get(key)!r}, "
                                    f"but this one has {key}={value!r}")


# ------------------------------------------------------------------------------------------------
# the environments it knows
# ------------------------------------------------------------------------------------------------
_BATCHED_ARRAYS = ("_floats", "_ints", "_flags", "_fixed", "_keys", "_episode")


def _autoreset_mode(envs) -> str:
    mode = envs.metadata.get("autoreset_mode")
    return str(getattr(mode, "value", mode))


def _batched_signature(env) -> dict:
    return {"num_envs": env.num_envs, "backend": env.backend, "sampler": env.sampler, "dtype": str(env.dtype),
            "num_lanes": env.num_lanes, "autoreset_mode": _autoreset_mode(env)}


def _get_batched(env) -> dict:
    state = {"kind": "batched_driving", **_batched_signature(env),
             "difficulty": dataclasses.asdict(env.difficulty), "loaded": bool(env._loaded),
             "any_noise": bool(env._any_noise),
             "rngs": None if env._rngs is None else [_rng_state(r) for r in env._rngs]}
    state.update({name.lstrip("_"): _tensor(getattr(env, name)) for name in _BATCHED_ARRAYS})
    return state


def _set_batched(env, state: dict) -> None:
    _check(state, _batched_signature(env), "BatchedDrivingEnv")
    for name in _BATCHED_ARRAYS:
        _write(getattr(env, name), state[name.lstrip("_")])
    if env._rngs is not None:
        for rng, saved in zip(env._rngs, state["rngs"]):
            _set_rng(rng, saved)
    env.difficulty = _difficulty(state["difficulty"])
    env._loaded, env._any_noise = bool(state["loaded"]), bool(state["any_noise"])
    env._refresh()  # the cached lane offsets follow from the state


_DRIVING_VALUES = ("x", "y", "v", "heading", "stop_line_y", "noise", "progress", "steps", "task", "start_lane",
                   "passed", "failed")
_DRIVING_ARRAYS = ("npc_x", "npc_y", "npc_v", "prev_action")


def _driving_core(env):
    """The DrivingEnv inside the kit's stateless wrappers, or None."""
    from vla_rl_lib.envs.driving import DrivingEnv
    from vla_rl_lib.envs.wrappers import DiscretizeActions, StateObservation

    while type(env) in (StateObservation, DiscretizeActions):
        env = env.env
    return env if type(env) is DrivingEnv else None


def _get_driving(env) -> dict:
    state = {"kind": "driving", "num_lanes": env.num_lanes, "difficulty": dataclasses.asdict(env.difficulty),
             "rng": _rng_state(env.np_random), "scenario": None}
    if env._scenario is not None:  # (before the first reset there is no world yet)
        state["scenario"] = as_checkpoint_value(dataclasses.asdict(env._scenario))
        state.update({k: as_checkpoint_value(getattr(env, k)) for k in _DRIVING_VALUES + _DRIVING_ARRAYS})
    return state


def _set_driving(env, state: dict) -> None:
    from vla_rl_lib.envs.driving import Scenario

    _check(state, {"kind": "driving", "num_lanes": env.num_lanes}, "DrivingEnv")
    _set_rng(env.np_random, state["rng"])
    env.difficulty = _difficulty(state["difficulty"])
    if state["scenario"] is None:
        env._scenario = None
        return
    env._scenario = Scenario(**from_checkpoint_value(state["scenario"]))
    for key in _DRIVING_VALUES + _DRIVING_ARRAYS:
        setattr(env, key, from_checkpoint_value(state[key]))


def _get_cartpole(envs) -> Optional[dict]:
    saved = compat.cartpole_vector_state(envs)
    if saved["state"] is None:
        return None
    return {"kind": "cartpole_vector", "num_envs": envs.num_envs, "rng": _rng_state(envs.np_random),
            **{k: as_checkpoint_value(v) for k, v in saved.items()}}


def _set_cartpole(envs, state: dict) -> None:
    _check(state, {"kind": "cartpole_vector", "num_envs": envs.num_envs}, "CartPoleVectorEnv")
    saved = {k: from_checkpoint_value(state[k]) for k in compat.CARTPOLE_VECTOR_STATE}
    compat.set_cartpole_vector_state(envs, saved)
    _set_rng(envs.np_random, state["rng"])


def _get_sync(envs) -> Optional[dict]:
    cores = [_driving_core(e) for e in envs.envs]
    if any(core is None for core in cores):
        return None
    return {"kind": "sync_vector", "num_envs": envs.num_envs, "autoreset_mode": _autoreset_mode(envs),
            "autoreset": _tensor(compat.vector_autoreset_flags(envs)), "envs": [_get_driving(core) for core in cores]}


def _set_sync(envs, state: dict) -> None:
    _check(state, {"kind": "sync_vector", "num_envs": envs.num_envs, "autoreset_mode": _autoreset_mode(envs)},
           "SyncVectorEnv")
    cores = [_driving_core(e) for e in envs.envs]
    if any(core is None for core in cores):
        raise IncompatibleError("the saved state is for a SyncVectorEnv of driving simulators, but this one holds "
                                f"{type(envs.envs[0]).__name__}")
    for core, saved in zip(cores, state["envs"]):
        _check(saved, {"kind": "driving", "num_lanes": core.num_lanes}, "DrivingEnv")
    for core, saved in zip(cores, state["envs"]):
        _set_driving(core, saved)
    compat.set_vector_autoreset_flags(envs, state["autoreset"].numpy())


def _handler(envs):
    """``(get, set)`` for the environment, or None."""
    from vla_rl_lib.envs.batched import BatchedDrivingEnv

    if type(envs) is BatchedDrivingEnv:
        return _get_batched, _set_batched
    if type(envs) is gym.vector.SyncVectorEnv:
        return _get_sync, _set_sync
    if type(envs) is compat.cartpole_vector_env_class():
        return _get_cartpole, _set_cartpole
    if _driving_core(envs) is not None:
        return (lambda e: _get_driving(_driving_core(e))), (lambda e, s: _set_driving(_driving_core(e), s))
    return None


def get_env_state(envs) -> Optional[dict]:
    """The state of ``envs`` (a vector env or a single env) as tensors and plain values, or None
    when the kit cannot save this environment (see the module docstring)."""
    handler = _handler(envs)
    if handler is None:
        return None
    try:
        return handler[0](envs)
    except IncompatibleError as exc:  # a gymnasium internal moved: no exact resume, but the checkpoint is written
        warnings.warn(f"the environment's state is not saved: {exc}", stacklevel=2)
        return None


def set_env_state(envs, state: dict) -> None:
    """Write a state from :func:`get_env_state` into ``envs``, an environment built the same way;
    ``IncompatibleError`` (before anything is changed) when it does not fit."""
    handler = _handler(envs)
    if handler is None:
        raise IncompatibleError(f"the environment state cannot be restored into a {type(envs).__name__} (the kit "
                                "saves BatchedDrivingEnv, DrivingEnv, SyncVectorEnvs of them and CartPoleVectorEnv)")
    handler[1](envs, state)


def restore_env_state(envs, state: Optional[dict], trainer: str) -> bool:
    """``set_env_state`` where a state was saved; True when the run continues its episodes. A state
    that does not fit this environment is reported with a warning (the run starts fresh episodes)."""
    if not state:
        return False
    try:
        set_env_state(envs, state)
    except IncompatibleError as exc:
        warnings.warn(f"{trainer}: the checkpoint's environment state does not fit this environment ({exc}); "
                      "the resumed run starts fresh episodes", stacklevel=3)
        return False
    return True
