"""The offline replay buffer: a D4RL-style dataset as tensors, sampled in random minibatches.

``OfflineReplayBuffer.load_dataset`` takes what ``d4rl``'s ``env.get_dataset()`` returns and turns it
into transitions with the semantics of ``d4rl.qlearning_dataset``:

* the next observation of row ``i`` is row ``i + 1``;
* a row that ends on a timeout (``timeouts[i]``) is not a transition (its next row belongs to another
  episode), and neither is the last row;
* ``dones`` are the dataset's ``terminals``.

When the dict carries ``next_observations`` explicitly (transition dicts, the kit's own files), every
row is a transition and ``timeouts`` only mark where episodes end.

Memory: rows are stored once (observations, actions, rewards, flags) and transitions are an index
into them, so a D4RL-sized dataset takes about the size of its arrays, not twice that. Sampling
draws indices with ``torch.randint`` (from the given generator) and gathers on the buffer's device.
"""
from __future__ import annotations

import os
from typing import Any, Mapping

import numpy as np
import torch

from vla_rl_lib.errors import DatasetError
from vla_rl_lib.data.hdf5 import decode_strings, meta_value, validate_dataset

#: CORL's epsilon added to the state standard deviation
STD_EPS = 1e-3
#: CORL's locomotion reward scaling uses the max episode length of the tasks (1000)
REWARD_SCALE_STEPS = 1000.0


def episode_bounds(terminals: np.ndarray, timeouts: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) row ranges of the episodes: an episode ends after a terminal or a timeout row.

    Rows after the last flagged row form a final (unfinished) episode.
    """
    n = len(terminals)
    ends = np.flatnonzero(np.logical_or(terminals, timeouts)) + 1
    starts = np.concatenate([[0], ends])
    ends = np.concatenate([ends, [n]])
    return [(int(s), int(e)) for s, e in zip(starts, ends) if e > s]


def returns_to_go(rewards: np.ndarray) -> np.ndarray:
    """Undiscounted returns-to-go: ``rtg[t] = sum_{t' >= t} r[t']``."""
    return np.cumsum(rewards[::-1], dtype=np.float64)[::-1].astype(np.float32)


class OfflineReplayBuffer:
    """Transitions of an offline dataset, kept as tensors on ``device``.

    Args:
        obs_dim: size of the (flat) observation vector the trainer expects.
        action_dim: size of the action vector.
        device: where the tensors live and batches are returned (``"cpu"``, ``"cuda"``).
        normalize_states: store observations standardised with the dataset's mean and std
            (``std + 1e-3`` as CORL); ``obs_mean``/``obs_std`` are kept for evaluation and checkpoints.
        normalize_rewards: scale rewards by ``1000 / (max episode return - min episode return)``,
            CORL's scaling for the locomotion tasks.
    """

    def __init__(self, obs_dim: int, action_dim: int, device: str | torch.device = "cpu",
                 normalize_states: bool = False, normalize_rewards: bool = False):
        if int(obs_dim) < 0 or int(action_dim) <= 0:
            raise DatasetError(f"OfflineReplayBuffer needs obs_dim >= 0 and action_dim > 0, "
                               f"got obs_dim={obs_dim}, action_dim={action_dim}")
        self.obs_dim = int(obs_dim)
        self.action_dim = int(action_dim)
        self.device = torch.device(device)
        self.normalize_states = bool(normalize_states)
        self.normalize_rewards = bool(normalize_rewards)
        self.obs_mean = np.zeros(self.obs_dim, dtype=np.float32)
        self.obs_std = np.ones(self.obs_dim, dtype=np.float32)
        self.reward_scale = 1.0
        self.env_id: str | None = None
        self.dataset_name: str | None = None
        self.metadata: dict[str, Any] = {}
        self._size = 0
        self._rows = 0
        self._obs: torch.Tensor | None = None
        self._next_obs: torch.Tensor | None = None  # only when the dataset gave next_observations
        self._actions: torch.Tensor | None = None
        self._rewards: torch.Tensor | None = None
        self._terminals: torch.Tensor | None = None
        self._timeouts: torch.Tensor | None = None
        self._index: torch.Tensor | None = None  # rows that are transitions (None: all rows)
        self._images: torch.Tensor | None = None
        self._next_images: torch.Tensor | None = None
        self._instructions: list[str] | None = None

    # ----------------------------------------------------------------------------------------
    # loading
    # ----------------------------------------------------------------------------------------

    def load_dataset(self, dataset: Mapping[str, Any] | str | os.PathLike) -> "OfflineReplayBuffer":
        """Fill the buffer from a d4rl-style dict (or a dataset name/path, read with ``load_dataset``).

        Raises :class:`DatasetError` naming the key and shape for missing keys, mismatched lengths,
        non-finite values, and observation/action sizes that differ from (obs_dim, action_dim).
        """
        if isinstance(dataset, (str, os.PathLike)):
            from vla_rl_lib.data.datasets import load_dataset as _load

            dataset = _load(dataset)
        source = meta_value(dataset, "name") if isinstance(dataset, Mapping) else None
        data = validate_dataset(dataset, source=source)
        where = f"{source}: " if source else ""
        obs, actions = data["observations"], data["actions"]
        if obs.shape[1] != self.obs_dim:
            raise DatasetError(
                f"{where}key 'observations' has shape {obs.shape} (obs_dim {obs.shape[1]}) but the buffer/trainer "
                f"expects obs_dim={self.obs_dim}, i.e. shape (N, {self.obs_dim}). Build the trainer with "
                f"obs_dim={obs.shape[1]} or pick the dataset of the right environment."
            )
        if actions.shape[1] != self.action_dim:
            raise DatasetError(
                f"{where}key 'actions' has shape {actions.shape} (action_dim {actions.shape[1]}) but the "
                f"buffer/trainer expects action_dim={self.action_dim}, i.e. shape (N, {self.action_dim}). Build "
                f"the trainer with action_dim={actions.shape[1]} or pick the dataset of the right environment."
            )
        n = obs.shape[0]
        terminals, timeouts = data["terminals"], data["timeouts"]
        explicit_next = "next_observations" in data
        if explicit_next:
            index = None
            size = n
        else:
            # d4rl.qlearning_dataset: rows 0..N-2 whose step did not end on a timeout
            valid = ~timeouts[:-1]
            size = int(valid.sum())
            index = np.flatnonzero(valid)
        if size == 0:
            raise DatasetError(
                f"{where}the dataset has {n} row(s) but no usable transition (every row ends on a timeout or is "
                f"the last row); it needs at least two consecutive rows of one episode or 'next_observations'"
            )

        dev = self.device
        obs_np = np.array(obs, dtype=np.float32, copy=True)
        next_np = np.array(data["next_observations"], dtype=np.float32, copy=True) if explicit_next else None
        if self.normalize_states:
            source_rows = obs_np if index is None else obs_np[index]
            mean = source_rows.mean(axis=0, dtype=np.float64).astype(np.float32)
            std = (source_rows.std(axis=0, dtype=np.float64) + STD_EPS).astype(np.float32)
            del source_rows
            self.obs_mean, self.obs_std = mean, std
            obs_np -= mean
            obs_np /= std
            if next_np is not None:
                next_np -= mean
                next_np /= std
        else:
            self.obs_mean = np.zeros(self.obs_dim, dtype=np.float32)
            self.obs_std = np.ones(self.obs_dim, dtype=np.float32)

        rewards = data["rewards"]
        self.reward_scale = 1.0
        if self.normalize_rewards:
            ep_returns = [float(rewards[s:e].sum(dtype=np.float64)) for s, e in episode_bounds(terminals, timeouts)]
            spread = max(ep_returns) - min(ep_returns)
            if spread <= 0:
                raise DatasetError(
                    f"{where}normalize_rewards needs episodes with different returns; all "
                    f"{len(ep_returns)} episode(s) return {ep_returns[0]:.6g}"
                )
            self.reward_scale = REWARD_SCALE_STEPS / spread

        self._obs = torch.from_numpy(obs_np).to(dev)
        self._next_obs = torch.from_numpy(next_np).to(dev) if next_np is not None else None
        self._actions = torch.from_numpy(np.array(actions, dtype=np.float32, copy=True)).to(dev)
        self._rewards = torch.from_numpy(np.array(rewards, dtype=np.float32, copy=True)).to(dev)
        self._terminals = torch.from_numpy(np.array(terminals, dtype=bool, copy=True)).to(dev)
        self._timeouts = torch.from_numpy(np.array(timeouts, dtype=bool, copy=True)).to(dev)
        self._index = torch.from_numpy(index.astype(np.int64)).to(dev) if index is not None else None
        self._images = self._next_images = None
        self._instructions = None
        if "images" in data:
            self._images = torch.from_numpy(np.ascontiguousarray(data["images"])).to(dev)
            if "next_images" in data:
                self._next_images = torch.from_numpy(np.ascontiguousarray(data["next_images"])).to(dev)
            elif explicit_next:
                raise DatasetError(f"{where}the dataset has 'images' and 'next_observations' but no 'next_images'; "
                                   f"give 'next_images' (N, H, W, 3) too")
        if "instructions" in data:
            self._instructions = decode_strings(data["instructions"])
        self._rows, self._size = n, size
        self.metadata = {k[len("metadata/"):]: meta_value(data, k) for k in data
                         if k.startswith("metadata/") and "/" not in k[len("metadata/"):]}
        self.dataset_name = meta_value(data, "name") or None
        env_id = meta_value(data, "env_id") or None
        if env_id is None and self.dataset_name:
            from vla_rl_lib.data.datasets import env_id_for

            env_id = env_id_for(self.dataset_name)
        self.env_id = env_id
        return self

    # ----------------------------------------------------------------------------------------
    # sampling
    # ----------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._size

    @property
    def has_images(self) -> bool:
        return self._images is not None

    @property
    def has_instructions(self) -> bool:
        return self._instructions is not None

    def _require_data(self) -> None:
        if self._obs is None:
            raise DatasetError("the buffer is empty: call buffer.load_dataset(dataset) first")

    def _rows_of(self, k: torch.Tensor) -> torch.Tensor:
        return k if self._index is None else self._index.index_select(0, k)

    def get(self, indices: torch.Tensor) -> dict:
        """The transitions with the given positions ``0 <= i < len(buffer)`` as a batch dict."""
        self._require_data()
        rows = self._rows_of(indices.to(self.device, torch.int64))
        # index_select is several times faster than advanced indexing for small batches
        take = lambda t, r=rows: t.index_select(0, r)  # noqa: E731
        if self._next_obs is not None:
            nxt, next_rows = take(self._next_obs), None
        else:
            next_rows = rows + 1
            nxt = take(self._obs, next_rows)
        rewards = take(self._rewards)
        if self.reward_scale != 1.0:
            rewards = rewards * self.reward_scale
        batch = {
            "observations": take(self._obs),
            "actions": take(self._actions),
            "rewards": rewards,
            "next_observations": nxt,
            "dones": take(self._terminals).float(),
        }
        if self._images is not None:
            batch["images"] = take(self._images)
            batch["next_images"] = (take(self._next_images) if self._next_images is not None
                                    else take(self._images, next_rows))
        if self._instructions is not None:
            batch["instructions"] = [self._instructions[i] for i in rows.tolist()]
        return batch

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> dict:
        """A random minibatch (with replacement) of ``batch_size`` transitions.

        Keys: ``observations (B, obs_dim)``, ``actions (B, act_dim)``, ``rewards (B,)``,
        ``next_observations (B, obs_dim)``, ``dones (B,)`` float32 on the buffer's device; and, when
        the dataset has them, ``images``/``next_images`` (B, H, W, 3) uint8 and ``instructions``
        (a list of B strings). The same generator state gives the same batch.
        """
        self._require_data()
        if int(batch_size) <= 0:
            raise DatasetError(f"batch_size must be positive, got {batch_size}")
        gen_device = generator.device if generator is not None else torch.device("cpu")
        k = torch.randint(self._size, (int(batch_size),), generator=generator, device=gen_device)
        return self.get(k)

    # ----------------------------------------------------------------------------------------
    # normalisation
    # ----------------------------------------------------------------------------------------

    def normalize_observations(self, obs: Any) -> Any:
        """``(obs - obs_mean) / obs_std`` for observations from the environment (numpy or torch)."""
        if isinstance(obs, torch.Tensor):
            mean = torch.as_tensor(self.obs_mean, device=obs.device)
            std = torch.as_tensor(self.obs_std, device=obs.device)
            return (obs - mean) / std
        return ((np.asarray(obs, dtype=np.float32) - self.obs_mean) / self.obs_std).astype(np.float32)

    def denormalize_observations(self, obs: Any) -> Any:
        if isinstance(obs, torch.Tensor):
            return obs * torch.as_tensor(self.obs_std, device=obs.device) + torch.as_tensor(self.obs_mean, device=obs.device)
        return (np.asarray(obs, dtype=np.float32) * self.obs_std + self.obs_mean).astype(np.float32)

    def normalization_state(self) -> dict:
        """Plain-Python normalisation statistics, for checkpoints (JSON- and weights_only-safe)."""
        return {
            "normalize_states": self.normalize_states,
            "normalize_rewards": self.normalize_rewards,
            "obs_mean": [float(x) for x in self.obs_mean],
            "obs_std": [float(x) for x in self.obs_std],
            "reward_scale": float(self.reward_scale),
        }

    def load_normalization_state(self, state: Mapping[str, Any]) -> "OfflineReplayBuffer":
        """Restore statistics saved by :meth:`normalization_state` (stored data is re-normalised)."""
        try:
            mean = np.asarray(_numpy(state["obs_mean"]), dtype=np.float32).reshape(-1)
            std = np.asarray(_numpy(state["obs_std"]), dtype=np.float32).reshape(-1)
        except KeyError as exc:
            raise DatasetError(f"normalisation state is missing key {exc.args[0]!r}; it needs obs_mean and obs_std") from exc
        if mean.shape != (self.obs_dim,) or std.shape != (self.obs_dim,):
            raise DatasetError(f"normalisation state has obs_mean shape {mean.shape} and obs_std shape {std.shape}; "
                               f"this buffer has obs_dim={self.obs_dim}")
        if not (np.isfinite(mean).all() and np.isfinite(std).all() and (std > 0).all()):
            raise DatasetError("normalisation state has non-finite obs_mean/obs_std or std <= 0")
        if self._obs is not None:  # bring stored observations from the old statistics to the new ones
            for name in ("_obs", "_next_obs"):
                t = getattr(self, name)
                if t is None:
                    continue
                raw = t * torch.as_tensor(self.obs_std, device=t.device) + torch.as_tensor(self.obs_mean, device=t.device)
                setattr(self, name, (raw - torch.as_tensor(mean, device=t.device)) / torch.as_tensor(std, device=t.device))
        self.obs_mean, self.obs_std = mean, std
        self.normalize_states = bool(state.get("normalize_states", self.normalize_states))
        if "reward_scale" in state:
            self.reward_scale = float(state["reward_scale"])
        if "normalize_rewards" in state:
            self.normalize_rewards = bool(state["normalize_rewards"])
        return self

    # ----------------------------------------------------------------------------------------
    # episodes (sequence models) and sizes
    # ----------------------------------------------------------------------------------------

    def episodes(self) -> list[dict]:
        """The dataset's episodes in order, for sequence models such as the Decision Transformer.

        Each is a dict of numpy arrays: ``observations (T, obs_dim)`` (normalised when
        ``normalize_states``), ``actions (T, act_dim)``, ``rewards (T,)`` (as in the data, without
        reward scaling), ``returns_to_go (T,)`` with ``rtg[t] = sum_{t' >= t} r[t']``,
        ``timesteps (T,)`` = 0..T-1 and ``terminals (T,)``; plus ``images`` and ``instructions`` when
        the dataset has them. Episodes end after a terminal or timeout row; rows after the last such
        row form a final, unfinished episode.
        """
        self._require_data()
        obs = self._obs.cpu().numpy()
        actions = self._actions.cpu().numpy()
        rewards = self._rewards.cpu().numpy()
        terminals = self._terminals.cpu().numpy()
        timeouts = self._timeouts.cpu().numpy()
        images = self._images.cpu().numpy() if self._images is not None else None
        out = []
        for s, e in episode_bounds(terminals, timeouts):
            ep = {
                "observations": obs[s:e],
                "actions": actions[s:e],
                "rewards": rewards[s:e],
                "returns_to_go": returns_to_go(rewards[s:e]),
                "timesteps": np.arange(e - s, dtype=np.int64),
                "terminals": terminals[s:e],
            }
            if images is not None:
                ep["images"] = images[s:e]
            if self._instructions is not None:
                ep["instructions"] = self._instructions[s:e]
            out.append(ep)
        return out

    def episode_returns(self) -> np.ndarray:
        """Undiscounted return of each episode, in order (as in the data, without reward scaling)."""
        self._require_data()
        rewards = self._rewards.cpu().numpy()
        bounds = episode_bounds(self._terminals.cpu().numpy(), self._timeouts.cpu().numpy())
        return np.array([rewards[s:e].sum(dtype=np.float64) for s, e in bounds])

    def top_episodes(self, fraction: float) -> "EpisodeSubset":
        """A view holding only the transitions of the best ``fraction`` of episodes by return
        (``ceil(fraction * episodes)`` of them; filtered behaviour cloning, ``%BC``)."""
        self._require_data()
        if not 0.0 < float(fraction) <= 1.0:
            raise DatasetError(f"fraction={fraction!r} must be in (0, 1]")
        bounds = episode_bounds(self._terminals.cpu().numpy(), self._timeouts.cpu().numpy())
        returns = self.episode_returns()
        keep = np.argsort(-returns, kind="stable")[: max(1, int(np.ceil(float(fraction) * len(bounds))))]
        rows = np.zeros(self._rows, bool)
        for i in keep:
            rows[bounds[i][0]:bounds[i][1]] = True
        if self._index is not None:
            rows = rows[self._index.cpu().numpy()]
        positions = torch.from_numpy(np.flatnonzero(rows)).to(self.device)
        if positions.numel() == 0:
            raise DatasetError(f"the best {fraction:.0%} of the episodes hold no transition; raise the fraction")
        return EpisodeSubset(self, positions, float(returns[keep].min()))

    def nbytes(self) -> int:
        """Bytes held by the buffer's tensors (the instruction strings not counted)."""
        total = 0
        for t in (self._obs, self._next_obs, self._actions, self._rewards, self._terminals, self._timeouts,
                  self._index, self._images, self._next_images):
            if t is not None:
                total += t.element_size() * t.nelement()
        return total

    def __repr__(self) -> str:
        return (f"OfflineReplayBuffer(obs_dim={self.obs_dim}, action_dim={self.action_dim}, transitions={len(self)}, "
                f"dataset={self.dataset_name!r}, env_id={self.env_id!r}, device={str(self.device)!r})")


class EpisodeSubset:
    """Some episodes of an :class:`OfflineReplayBuffer` (see ``top_episodes``): ``sample``, ``get`` and
    ``len`` see only their transitions; everything else (sizes, device, normalisation, ``env_id``)
    is the parent buffer's."""

    def __init__(self, buffer: OfflineReplayBuffer, positions: torch.Tensor, min_return: float):
        self.parent = buffer
        self.positions = positions
        self.min_return = min_return  # the lowest return among the kept episodes

    def __getattr__(self, name: str) -> Any:
        return getattr(self.parent, name)

    def __len__(self) -> int:
        return int(self.positions.numel())

    def get(self, indices: torch.Tensor) -> dict:
        return self.parent.get(self.positions.index_select(0, indices.to(self.positions.device, torch.int64)))

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> dict:
        if int(batch_size) <= 0:
            raise DatasetError(f"batch_size must be positive, got {batch_size}")
        gen_device = generator.device if generator is not None else torch.device("cpu")
        return self.get(torch.randint(len(self), (int(batch_size),), generator=generator, device=gen_device))

    def __repr__(self) -> str:
        return f"EpisodeSubset({len(self)} of {len(self.parent)} transitions, returns >= {self.min_return:.4g})"


def _numpy(x: Any) -> Any:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
