"""Wrappers and helpers around the driving simulator.

* :func:`tokenize_actions` / :func:`detokenize_actions`: continuous actions in [-1, 1] <-> integer
  tokens, ``bins`` per dimension, as OpenVLA and RT-2 discretise robot actions. Bin ``k`` covers
  ``[-1 + 2k/bins, -1 + 2(k+1)/bins)`` and decodes to its centre ``-1 + (2k + 1)/bins``. Both work
  on numpy arrays and on torch tensors (no torch import needed here).
* :class:`DiscretizeActions`: an env with ``MultiDiscrete([bins] * action_dim)`` actions, for policies
  with token action heads.
* :class:`StateObservation`: keeps only ``obs["state"]`` (a flat Box), for state-based MLP agents.
"""
from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from vla_rl_lib.errors import ConfigError, IncompatibleError


def _check_bins(bins) -> int:
    if int(bins) != bins or int(bins) < 2:
        raise ConfigError(f"bins={bins!r} must be an integer >= 2")
    return int(bins)


def tokenize_actions(actions, bins: int = 256):
    """Continuous actions in [-1, 1] -> integer tokens in ``[0, bins)`` (values outside are clipped).

    ``token = clip(floor((a + 1) / 2 * bins), 0, bins - 1)``; numpy in -> int64 numpy out,
    torch in -> int64 torch out.
    """
    bins = _check_bins(bins)
    if hasattr(actions, "detach"):  # a torch tensor
        t = ((actions.clamp(-1.0, 1.0) + 1.0) * 0.5 * bins).floor().long()
        return t.clamp(0, bins - 1)
    a = np.clip(np.asarray(actions, dtype=np.float64), -1.0, 1.0)
    return np.clip(np.floor((a + 1.0) * 0.5 * bins), 0, bins - 1).astype(np.int64)


def detokenize_actions(tokens, bins: int = 256):
    """Integer tokens in ``[0, bins)`` -> the centres of their bins, ``-1 + (2 token + 1) / bins``.

    numpy in -> float32 numpy out, torch in -> float32 torch out. Tokens outside the range raise
    :class:`IncompatibleError`.
    """
    bins = _check_bins(bins)
    if hasattr(tokens, "detach"):
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= bins):
            raise IncompatibleError(f"action tokens must lie in [0, {bins}), got min {int(tokens.min())}, "
                                    f"max {int(tokens.max())}")
        return -1.0 + (2.0 * tokens.float() + 1.0) / bins
    t = np.asarray(tokens)
    if t.size and (t.min() < 0 or t.max() >= bins):
        raise IncompatibleError(f"action tokens must lie in [0, {bins}), got min {t.min()}, max {t.max()}")
    return (-1.0 + (2.0 * t.astype(np.float64) + 1.0) / bins).astype(np.float32)


class DiscretizeActions(gym.ActionWrapper):
    """Turn a Box([-1, 1]^d) action space into ``MultiDiscrete([bins] * d)`` (bin centres)."""

    def __init__(self, env: gym.Env, bins: int = 256):
        super().__init__(env)
        box = env.action_space
        if not isinstance(box, spaces.Box) or len(box.shape) != 1 or not (
                np.allclose(box.low, -1.0) and np.allclose(box.high, 1.0)):
            raise IncompatibleError(f"DiscretizeActions needs a Box action space in [-1, 1]^d, got {box}")
        self.bins = _check_bins(bins)
        self.action_space = spaces.MultiDiscrete([self.bins] * box.shape[0])

    def action(self, action):
        tokens = np.asarray(action)
        if tokens.shape != self.action_space.shape:
            raise IncompatibleError(f"token action must have shape {self.action_space.shape}, got {tokens.shape}")
        return detokenize_actions(tokens, self.bins)


class StateObservation(gym.ObservationWrapper):
    """Only the ``state`` vector of the driving observation (drops image and instruction)."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        if not isinstance(env.observation_space, spaces.Dict) or "state" not in env.observation_space.spaces:
            raise IncompatibleError("StateObservation needs a Dict observation space with a 'state' entry")
        self.observation_space = env.observation_space["state"]

    def observation(self, observation):
        return observation["state"]
