"""The online replay buffer of SAC: preallocated numpy arrays in D4RL's layout.

Rows are transitions ``(s, a, r, s', terminal, timeout)``:

* ``observations`` (N, obs_dim) float32, ``actions`` (N, act_dim) float32 in the environment's
  action bounds (what was sent to ``env.step``), ``rewards`` (N,) float32,
  ``next_observations`` (N, obs_dim) float32 -- for the last step of an episode this is the real
  final observation (gymnasium's ``final_obs``), never the next episode's reset observation;
* ``terminals`` (N,) bool -- the episode ended in a terminal state (``terminated``): no bootstrap;
* ``timeouts`` (N,) bool -- the episode was cut off (``truncated`` and not terminated):
  the learner bootstraps from ``next_observations``.

Only the first ``size`` rows are valid. Rows are written in insertion order at ``pos``; when the
buffer is full, writing wraps round to row 0 and overwrites the oldest rows, so after a wrap the
chronological order is rows ``pos .. N-1`` then ``0 .. pos-1`` (:meth:`chronological` returns that
order). With ``num_envs > 1`` the ``num_envs`` transitions of one vector step are written in
consecutive rows (env 0 first), so one env's trajectory is every ``num_envs``-th row; with one env
the rows are consecutive trajectories, as in a D4RL file.

Sampling works on torch views of the same memory (``torch.from_numpy``), built once, so drawing a
batch is one ``randint`` and a few ``index_select`` calls, with no per-sample Python.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from vla_rl_lib.errors import CheckpointError, ConfigError

FIELDS = ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")


class ReplayBuffer:
    """A fixed-capacity FIFO replay buffer (see the module docstring for the row layout)."""

    def __init__(self, capacity: int, obs_dim: int, action_dim: int):
        if int(capacity) < 1:
            raise ConfigError(f"buffer_size={capacity!r} must be >= 1")
        self.capacity = int(capacity)
        self.obs_dim, self.action_dim = int(obs_dim), int(action_dim)
        n = self.capacity
        self.observations = np.zeros((n, self.obs_dim), dtype=np.float32)
        self.actions = np.zeros((n, self.action_dim), dtype=np.float32)
        self.rewards = np.zeros(n, dtype=np.float32)
        self.next_observations = np.zeros((n, self.obs_dim), dtype=np.float32)
        self.terminals = np.zeros(n, dtype=bool)
        self.timeouts = np.zeros(n, dtype=bool)
        self.pos = 0   # next row to write
        self.size = 0  # valid rows
        self._views()

    def _views(self) -> None:
        # torch tensors sharing memory with the numpy arrays (no copies)
        self._t_obs = torch.from_numpy(self.observations)
        self._t_act = torch.from_numpy(self.actions)
        self._t_rew = torch.from_numpy(self.rewards)
        self._t_next = torch.from_numpy(self.next_observations)
        self._t_term = torch.from_numpy(self.terminals)

    def __len__(self) -> int:
        return self.size

    @property
    def full(self) -> bool:
        return self.size == self.capacity

    def add(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, next_obs: np.ndarray,
            terminals: np.ndarray, timeouts: np.ndarray) -> None:
        """Append a batch of ``k`` transitions (one vector step); wraps round when full."""
        k = len(rewards)
        p = self.pos
        if p + k <= self.capacity:
            sl = slice(p, p + k)
            self.observations[sl] = obs
            self.actions[sl] = actions
            self.rewards[sl] = rewards
            self.next_observations[sl] = next_obs
            self.terminals[sl] = terminals
            self.timeouts[sl] = timeouts
        else:  # split write across the wrap (or a batch larger than the buffer)
            rows = (p + np.arange(k)) % self.capacity
            self.observations[rows] = obs
            self.actions[rows] = actions
            self.rewards[rows] = rewards
            self.next_observations[rows] = next_obs
            self.terminals[rows] = terminals
            self.timeouts[rows] = timeouts
        self.pos = (p + k) % self.capacity
        self.size = min(self.size + k, self.capacity)

    def sample_indices(self, batch_size: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        return torch.randint(0, self.size, (batch_size,), generator=generator)

    def sample(self, batch_size: int, generator: Optional[torch.Generator] = None) -> dict:
        """A uniform batch (with replacement) as CPU tensors:
        ``observations, actions, rewards, next_observations, terminals`` (float 0/1)."""
        if self.size == 0:
            raise RuntimeError("cannot sample from an empty replay buffer")
        idx = self.sample_indices(batch_size, generator)
        return {
            "observations": self._t_obs.index_select(0, idx),
            "actions": self._t_act.index_select(0, idx),
            "rewards": self._t_rew.index_select(0, idx),
            "next_observations": self._t_next.index_select(0, idx),
            "terminals": self._t_term.index_select(0, idx).float(),
        }

    def chronological(self) -> dict:
        """The valid rows, oldest first, as a dict of numpy arrays (D4RL keys)."""
        if self.size < self.capacity:
            order = np.arange(self.size)
        else:
            order = (self.pos + np.arange(self.capacity)) % self.capacity
        return {name: getattr(self, name)[order] for name in FIELDS}

    # -- checkpoints ----------------------------------------------------------------------------
    def state(self, with_data: bool) -> dict:
        """``pos``/``size``/``capacity`` always; the valid rows as tensors when ``with_data``."""
        out = {"pos": self.pos, "size": self.size, "capacity": self.capacity, "has_data": bool(with_data)}
        if with_data:
            for name in FIELDS:
                out[name] = torch.from_numpy(getattr(self, name)[: self.size].copy())
        return out

    def load_state(self, state: dict) -> bool:
        """Restore from :meth:`state`; returns whether the rows were restored (else the buffer is emptied)."""
        if int(state.get("capacity", self.capacity)) != self.capacity:
            raise CheckpointError(f"the checkpoint's replay buffer holds {state['capacity']} rows but this trainer's "
                                  f"buffer_size is {self.capacity}; build the trainer with the same buffer_size")
        if not state.get("has_data"):
            self.pos, self.size = 0, 0
            return False
        size = int(state["size"])
        for name in FIELDS:
            arr = state[name].cpu().numpy()
            if arr.shape[0] != size or arr.shape[1:] != getattr(self, name).shape[1:]:
                raise CheckpointError(f"the checkpoint's replay buffer field {name!r} has shape {tuple(arr.shape)}, "
                                      f"which does not fit this trainer's buffer; check obs/action sizes")
            getattr(self, name)[:size] = arr
        self.pos, self.size = int(state["pos"]), size
        return True
