"""Environments: the kit's language-conditioned driving simulator, its wrappers, and a way to make
any gymnasium environment by name.

``make_env("driving")`` (or ``"vla_rl_lib/Driving-v0"``) builds the driving simulator; any other
gymnasium id goes to ``gymnasium.make``. ``make_vector_env`` does the same for vector envs and uses
the batched torch simulator for driving when ``batched=True``. Importing this package registers
``vla_rl_lib/Driving-v0`` with gymnasium; heavier modules (torch, the simulator itself) are imported
only when used.
"""
from __future__ import annotations

from vla_rl_lib._lazy import lazy_exports

import difflib

import gymnasium as gym

from vla_rl_lib.errors import UnknownEnvironmentError

ENV_ID = "vla_rl_lib/Driving-v0"
DRIVING_NAMES = ("driving", ENV_ID, "Driving-v0")

if ENV_ID not in gym.registry:
    gym.register(id=ENV_ID, entry_point="vla_rl_lib.envs.driving:DrivingEnv")
# the point-mass maze of the stitching datasets (vla_rl_lib.envs.maze)
MAZE_IDS = {"vla_rl_lib/PointMaze-v0": "sparse", "vla_rl_lib/PointMazeDense-v0": "dense"}
for _id, _reward in MAZE_IDS.items():
    if _id not in gym.registry:
        gym.register(id=_id, entry_point="vla_rl_lib.envs.maze:PointMazeEnv", max_episode_steps=100,
                     kwargs={"reward_type": _reward})

_LAZY = {
    "DrivingEnv": "vla_rl_lib.envs.driving",
    "INSTRUCTIONS": "vla_rl_lib.envs.driving",
    "STATE_FIELDS": "vla_rl_lib.envs.driving",
    "DIFFICULTIES": "vla_rl_lib.envs.driving",
    "compute_reward": "vla_rl_lib.envs.driving",
    "BatchedDrivingEnv": "vla_rl_lib.envs.batched",
    "DrivingExpert": "vla_rl_lib.envs.expert",
    "collect_dataset": "vla_rl_lib.envs.expert",
    "DiscretizeActions": "vla_rl_lib.envs.wrappers",
    "tokenize_actions": "vla_rl_lib.envs.wrappers",
    "detokenize_actions": "vla_rl_lib.envs.wrappers",
    "StateObservation": "vla_rl_lib.envs.wrappers",
    "CarlaDrivingEnv": "vla_rl_lib.envs.carla_adapter",
    "PointMazeEnv": "vla_rl_lib.envs.maze",
    "collect_stitching_dataset": "vla_rl_lib.envs.maze",
}

__getattr__, _dir, _names = lazy_exports(__name__, _LAZY)
__all__ = ["ENV_ID", "MAZE_IDS", "make_env", "make_vector_env", "is_driving"] + _names


def is_driving(name: str) -> bool:
    """Whether ``name`` refers to the kit's driving simulator."""
    return isinstance(name, str) and name.strip() in DRIVING_NAMES


def _check_known(name: str) -> None:
    if not isinstance(name, str) or not name.strip():
        raise UnknownEnvironmentError(f"environment name must be a non-empty string, got {name!r}")
    if name in gym.registry:
        return
    known = list(gym.registry.keys()) + ["driving", "carla"]
    close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
    hint = f" Did you mean: {', '.join(close)}?" if close else ""
    raise UnknownEnvironmentError(
        f"unknown environment {name!r}.{hint} The kit's simulator is 'driving' "
        f"({ENV_ID}); list gymnasium ids with `python -c \"import gymnasium; "
        f"gymnasium.pprint_registry()\"`."
    )


def make_env(name: str, **kwargs) -> gym.Env:
    """A gymnasium environment by name.

    ``"driving"`` / ``"vla_rl_lib/Driving-v0"`` -> :class:`DrivingEnv` (unwrapped, so that
    ``env.set_difficulty(...)`` works); ``"carla"`` -> :class:`CarlaDrivingEnv` (needs a CARLA
    server); any other gymnasium id -> ``gymnasium.make(name, **kwargs)``. An unknown name raises
    :class:`UnknownEnvironmentError` listing close matches.
    """
    if is_driving(name):
        from vla_rl_lib.envs.driving import DrivingEnv

        return DrivingEnv(**kwargs)
    if isinstance(name, str) and name.strip().lower() == "carla":
        from vla_rl_lib.envs.carla_adapter import CarlaDrivingEnv

        return CarlaDrivingEnv(**kwargs)
    _check_known(name)
    return gym.make(name, **kwargs)


def make_vector_env(name: str, num_envs: int = 1, seed: int | None = None, batched: bool = False, **kwargs):
    """A gymnasium vector env of ``num_envs`` copies of ``name``.

    For driving with ``batched=True`` this is the torch :class:`BatchedDrivingEnv` (``device=``,
    ``return_tensors=`` go to it); otherwise a ``SyncVectorEnv`` of :func:`make_env` copies. When
    ``seed`` is given the env is reset once with it, so its next ``reset()`` continues a seeded,
    reproducible stream (sub-env ``i`` gets ``seed + i``, as gymnasium does).
    """
    if int(num_envs) < 1:
        from vla_rl_lib.errors import ConfigError

        raise ConfigError(f"num_envs={num_envs!r} must be >= 1")
    if batched and not is_driving(name):
        from vla_rl_lib.errors import ConfigError

        raise ConfigError(f"batched=True is only available for the driving simulator, not {name!r}; "
                          "leave it out to get a SyncVectorEnv")
    if is_driving(name) and batched:
        from vla_rl_lib.envs.batched import BatchedDrivingEnv

        envs = BatchedDrivingEnv(num_envs=int(num_envs), **kwargs)
    else:
        if not is_driving(name) and not (isinstance(name, str) and name.strip().lower() == "carla"):
            _check_known(name)
        envs = gym.vector.SyncVectorEnv([lambda: make_env(name, **kwargs) for _ in range(int(num_envs))])
    if seed is not None:
        envs.reset(seed=int(seed))
        envs.action_space.seed(int(seed))
    return envs
