"""Readers for other dataset layouts, each returning a d4rl-style dict that the buffer loads.

* RoboMimic HDF5: ``data/demo_N/{obs/<key>, next_obs/<key>, actions, rewards, dones, states}``
  (low-dimensional observation keys are concatenated into ``observations``; one camera key becomes
  ``images``).
* V-D4RL: a folder of per-episode ``.npz`` files as V-D4RL ships them for Offline DV2
  (DreamerV2 format: ``image (T+1, H, W, 3)``, ``action``, ``reward``, ``discount``, ``is_first``,
  ``is_last``, ``is_terminal``; entry 0 is the reset step with a dummy action), and the HDF5 shards of
  the DrQ+BC datasets (``observation (N, 3, 84, 84)``, ``action``, ``reward``, ``discount``, ``step_type``).
  Pixel-only data has no state vector: ``observations`` is ``(N, 0)`` and the images carry the state.
* Minari, through the ``minari`` package, for datasets present locally.

In every layout, a row of the returned dict is one transition ``(obs, action, reward, next_obs)``
with explicit ``next_observations`` (and ``next_images``), so the buffer uses every row.
"""
from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vla_rl_lib.errors import DatasetError, DatasetNotFoundError, optional_import


def detect_layout(path: str | os.PathLike) -> str:
    """``"robomimic"``, ``"vd4rl"`` or ``"d4rl"`` for an HDF5 file (``"vd4rl"`` for a folder of .npz)."""
    import h5py

    path = Path(path)
    if path.is_dir():
        return "vd4rl"
    try:
        with h5py.File(path, "r") as f:
            keys = set(f.keys())
            if "data" in keys and isinstance(f["data"], h5py.Group) and any(k.startswith("demo") for k in f["data"]):
                return "robomimic"
            if {"observation", "action", "reward", "step_type"} <= keys:
                return "vd4rl"
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot open {str(path)!r} as HDF5: the file is truncated, corrupted or not an HDF5 "
                           f"file ({exc}). Re-download or regenerate it.") from exc
    return "d4rl"


def _concat(parts: list[np.ndarray], key: str, source: str) -> np.ndarray:
    try:
        return np.concatenate(parts, axis=0)
    except ValueError as exc:
        raise DatasetError(f"{source}: episodes disagree on the shape of {key!r} ({exc})") from exc


# --------------------------------------------------------------------------------------------
# RoboMimic
# --------------------------------------------------------------------------------------------

def _demo_order(name: str) -> tuple[int, str]:
    m = re.search(r"(\d+)$", name)
    return (int(m.group(1)) if m else -1, name)


def read_robomimic(path: str | os.PathLike, obs_keys: Sequence[str] | None = None, image_key: str | None = None,
                   filter_key: str | None = None) -> dict:
    """Read a RoboMimic HDF5 file into a d4rl-style dict.

    Args:
        obs_keys: low-dimensional ``obs/`` keys concatenated (in this order) into ``observations``;
            default: every non-image key, sorted.
        image_key: the camera key stored as ``images``/``next_images``; default: the first
            ``*image`` key, sorted (none when the file has no images).
        filter_key: a ``mask/<filter_key>`` list of demos (RoboMimic's ``train``/``valid`` splits).
    """
    import h5py

    path = Path(path)
    source = str(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"RoboMimic file {source!r} does not exist")
    try:
        f = h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise DatasetError(f"cannot open {source!r} as HDF5 ({exc}); the file is truncated or corrupted") from exc
    parts: dict[str, list[np.ndarray]] = {k: [] for k in
                                          ("observations", "next_observations", "actions", "rewards", "terminals",
                                           "timeouts", "images", "next_images")}
    current = "data"
    try:
        with f:
            if "data" not in f:
                raise DatasetError(f"{source}: missing group 'data' (RoboMimic layout data/demo_N/...)")
            demos = sorted(f["data"].keys(), key=_demo_order)
            if filter_key is not None:
                if f"mask/{filter_key}" not in f:
                    raise DatasetError(f"{source}: no filter key 'mask/{filter_key}'; it has "
                                       f"{sorted(f['mask'].keys()) if 'mask' in f else []}")
                wanted = {d.decode() if isinstance(d, bytes) else str(d) for d in f[f"mask/{filter_key}"][()]}
                demos = [d for d in demos if d in wanted]
            if not demos:
                raise DatasetError(f"{source}: the file has no demos under 'data' (empty dataset)")
            env_args = f["data"].attrs.get("env_args")
            first = f["data"][demos[0]]
            if "obs" not in first:
                raise DatasetError(f"{source}: demo {demos[0]!r} has no 'obs' group")
            all_keys = sorted(first["obs"].keys())
            image_keys = [k for k in all_keys if first["obs"][k].dtype == np.uint8 and first["obs"][k].ndim == 4]
            if image_key is None and image_keys:
                image_key = next((k for k in image_keys if k.endswith("image")), image_keys[0])
            if obs_keys is None:
                obs_keys = [k for k in all_keys if k not in image_keys]
            obs_keys = list(obs_keys)
            for demo in demos:
                g = f["data"][demo]
                for key in ("actions", "rewards", "dones"):
                    if key not in g:
                        raise DatasetError(f"{source}: demo {demo!r} is missing key {key!r}")
                current = f"data/{demo}/actions"
                actions = np.asarray(g["actions"][()], dtype=np.float32)
                t = actions.shape[0]
                obs_cols, next_cols = [], []
                for k in obs_keys:
                    current = f"data/{demo}/obs/{k}"
                    if k not in g["obs"]:
                        raise DatasetError(f"{source}: demo {demo!r} is missing key 'obs/{k}'")
                    o = np.asarray(g["obs"][k][()], dtype=np.float32).reshape(t, -1) if g["obs"][k].shape[0] == t else None
                    if o is None:
                        raise DatasetError(f"{source}: key 'data/{demo}/obs/{k}' has shape {g['obs'][k].shape} but "
                                           f"'actions' has {t} rows")
                    if "next_obs" in g and k in g["next_obs"]:
                        current = f"data/{demo}/next_obs/{k}"
                        no = np.asarray(g["next_obs"][k][()], dtype=np.float32).reshape(t, -1)
                    else:
                        no = np.concatenate([o[1:], o[-1:]], axis=0)
                    obs_cols.append(o)
                    next_cols.append(no)
                obs = np.concatenate(obs_cols, axis=1) if obs_cols else np.zeros((t, 0), np.float32)
                nxt = np.concatenate(next_cols, axis=1) if next_cols else np.zeros((t, 0), np.float32)
                current = f"data/{demo}/rewards"
                rewards = np.asarray(g["rewards"][()], dtype=np.float32).reshape(-1)
                current = f"data/{demo}/dones"
                dones = np.asarray(g["dones"][()]).reshape(-1).astype(bool)
                timeouts = np.zeros(t, dtype=bool)
                if t and not dones[-1]:
                    timeouts[-1] = True  # the demo stops here without a terminal: an episode end
                parts["observations"].append(obs)
                parts["next_observations"].append(nxt)
                parts["actions"].append(actions)
                parts["rewards"].append(rewards)
                parts["terminals"].append(dones)
                parts["timeouts"].append(timeouts)
                if image_key is not None:
                    current = f"data/{demo}/obs/{image_key}"
                    img = np.asarray(g["obs"][image_key][()])
                    if "next_obs" in g and image_key in g["next_obs"]:
                        nimg = np.asarray(g["next_obs"][image_key][()])
                    else:
                        nimg = np.concatenate([img[1:], img[-1:]], axis=0)
                    parts["images"].append(img)
                    parts["next_images"].append(nimg)
    except DatasetError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise DatasetError(f"cannot read key {current!r} from {source!r}: {exc}") from exc
    out = {k: _concat(v, k, source) for k, v in parts.items() if v}
    env_name = ""
    if env_args is not None:
        try:
            env_name = json.loads(env_args).get("env_name", "")
        except (TypeError, ValueError):
            env_name = ""
    out["metadata/name"] = path.stem
    out["metadata/env_id"] = env_name
    out["metadata/source_layout"] = "robomimic"
    out["metadata/obs_keys"] = json.dumps(obs_keys)
    if image_key is not None:
        out["metadata/image_key"] = image_key
    return out


# --------------------------------------------------------------------------------------------
# V-D4RL
# --------------------------------------------------------------------------------------------

def _episode_to_rows(images: np.ndarray, actions: np.ndarray, rewards: np.ndarray, terminal_next: np.ndarray,
                     source: str) -> dict:
    """DreamerV2/DrQ-v2 steps -> transitions: step 0 is the reset (dummy action, no reward);
    transition t uses image t, action t+1, reward t+1, image t+1 and terminal flag t+1."""
    t = images.shape[0] - 1
    if t < 1:
        raise DatasetError(f"{source}: an episode has {images.shape[0]} step(s); it needs at least 2")
    for key, arr in (("action", actions), ("reward", rewards)):
        if arr.shape[0] != images.shape[0]:
            raise DatasetError(f"{source}: length mismatch: {key!r} has {arr.shape[0]} steps (shape {arr.shape}) "
                               f"but the images have {images.shape[0]}")
    terminals = np.asarray(terminal_next[1:], dtype=bool)
    timeouts = np.zeros(t, dtype=bool)
    if not terminals[-1]:
        timeouts[-1] = True
    return {
        "images": images[:-1],
        "next_images": images[1:],
        "actions": np.asarray(actions[1:], dtype=np.float32),
        "rewards": np.asarray(rewards[1:], dtype=np.float32).reshape(-1),
        "terminals": terminals,
        "timeouts": timeouts,
    }


def _channels_last(img: np.ndarray, key: str, source: str) -> np.ndarray:
    if img.ndim != 4:
        raise DatasetError(f"{source}: key {key!r} has shape {img.shape}; expected (T, H, W, 3) or (T, 3, H, W)")
    if img.shape[-1] != 3 and img.shape[1] in (3, 9):
        img = img[:, -3:] if img.shape[1] == 9 else img  # frame-stacked shards: keep the latest frame
        img = img.transpose(0, 2, 3, 1)
    if img.dtype != np.uint8:
        raise DatasetError(f"{source}: key {key!r} has dtype {img.dtype}; V-D4RL images are uint8")
    return np.ascontiguousarray(img)


def _finish_pixels(rows: list[dict], source: str, name: str, layout: str) -> dict:
    if not rows:
        raise DatasetError(f"{source}: no episodes found (empty dataset)")
    out = {k: _concat([r[k] for r in rows], k, source) for k in rows[0]}
    n = out["actions"].shape[0]
    out["observations"] = np.zeros((n, 0), dtype=np.float32)
    out["next_observations"] = np.zeros((n, 0), dtype=np.float32)
    out["metadata/name"] = name
    out["metadata/env_id"] = ""
    out["metadata/source_layout"] = layout
    return out


def read_vd4rl(path: str | os.PathLike, max_episodes: int | None = None) -> dict:
    """Read V-D4RL data: a folder of per-episode ``.npz`` files, or DrQ+BC ``.hdf5`` shard(s)."""
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise DatasetNotFoundError(f"V-D4RL data {source!r} does not exist")
    if path.is_file():
        return _read_vd4rl_shards([path], source, path.stem, max_episodes)
    npz = sorted(path.glob("*.npz"))
    shards = sorted(path.glob("*.hdf5"))
    if not npz and shards:
        return _read_vd4rl_shards(shards, source, path.name, max_episodes)
    if not npz:
        raise DatasetError(f"{source}: no .npz episode files (or .hdf5 shards) in this folder")
    rows = []
    for f in npz[: max_episodes or None]:
        try:
            with np.load(f, allow_pickle=False) as ep:
                ep = {k: ep[k] for k in ep.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
            raise DatasetError(f"cannot read episode file {str(f)!r}: truncated or corrupted ({exc})") from exc
        for key in ("image", "action", "reward"):
            if key not in ep:
                raise DatasetError(f"{str(f)!r}: missing key {key!r}; V-D4RL episodes have image, action, reward, "
                                   f"discount (found {sorted(ep)})")
        if "is_terminal" in ep:
            term = ep["is_terminal"]
        elif "discount" in ep:
            term = ep["discount"] == 0
        else:
            raise DatasetError(f"{str(f)!r}: missing key 'is_terminal' or 'discount'")
        rows.append(_episode_to_rows(_channels_last(ep["image"], "image", str(f)), ep["action"], ep["reward"], term,
                                     str(f)))
    return _finish_pixels(rows, source, path.name, "vd4rl-npz")


def _read_vd4rl_shards(files: list[Path], source: str, name: str, max_episodes: int | None) -> dict:
    import h5py

    rows = []
    for f in files:
        try:
            with h5py.File(f, "r") as h:
                missing = [k for k in ("observation", "action", "reward", "step_type") if k not in h]
                if missing:
                    raise DatasetError(f"{str(f)!r}: missing key(s) {missing} of the V-D4RL shard layout")
                data = {k: h[k][()] for k in h.keys()}
        except DatasetError:
            raise
        except (OSError, ValueError) as exc:
            raise DatasetError(f"cannot read V-D4RL shard {str(f)!r}: truncated or corrupted ({exc})") from exc
        images = _channels_last(data["observation"], "observation", str(f))
        step_type = np.asarray(data["step_type"]).reshape(-1)
        discount = np.asarray(data.get("discount", np.ones_like(step_type, dtype=np.float32))).reshape(-1)
        starts = list(np.flatnonzero(step_type == 0)) + [len(step_type)]
        if starts[0] != 0:
            raise DatasetError(f"{str(f)!r}: key 'step_type' does not start an episode at row 0 (found {step_type[0]})")
        for s, e in zip(starts[:-1], starts[1:]):
            term = (discount[s:e] == 0) & (step_type[s:e] == 2)
            rows.append(_episode_to_rows(images[s:e], data["action"][s:e], data["reward"][s:e], term, str(f)))
            if max_episodes and len(rows) >= max_episodes:
                return _finish_pixels(rows, source, name, "vd4rl-hdf5")
    return _finish_pixels(rows, source, name, "vd4rl-hdf5")


# --------------------------------------------------------------------------------------------
# Minari
# --------------------------------------------------------------------------------------------

def _flatten_obs(obs: Any, key: str, source: str) -> np.ndarray:
    if isinstance(obs, dict):
        return np.concatenate([_flatten_obs(obs[k], f"{key}/{k}", source) for k in sorted(obs)], axis=1)
    arr = np.asarray(obs)
    if arr.dtype.kind not in "fiub":
        raise DatasetError(f"{source}: observation {key!r} has dtype {arr.dtype}; only numeric observations are read")
    return arr.reshape(arr.shape[0], -1).astype(np.float32)


def read_minari(dataset_id: str, max_episodes: int | None = None) -> dict:
    """Read a Minari dataset that is present locally (``minari download <id>`` fetches one)."""
    minari = optional_import("minari", "minari", "Reading Minari datasets")
    local = minari.list_local_datasets()
    if dataset_id not in local:
        root = os.environ.get("MINARI_DATASETS_PATH", "~/.minari/datasets")
        raise DatasetNotFoundError(
            f"Minari dataset {dataset_id!r} is not on this machine (looked in {root}; local datasets: "
            f"{sorted(local) or 'none'}). Get it with `minari download {dataset_id}` on a machine with internet "
            f"access and copy it to {root}."
        )
    ds = minari.load_dataset(dataset_id)
    parts: dict[str, list] = {k: [] for k in ("observations", "next_observations", "actions", "rewards",
                                              "terminals", "timeouts")}
    for i, ep in enumerate(ds.iterate_episodes()):
        if max_episodes and i >= max_episodes:
            break
        obs = _flatten_obs(ep.observations, "observations", dataset_id)
        act = np.asarray(ep.actions)
        if act.ndim == 1:
            act = act[:, None]
        parts["observations"].append(obs[:-1])
        parts["next_observations"].append(obs[1:])
        parts["actions"].append(act.astype(np.float32))
        parts["rewards"].append(np.asarray(ep.rewards, dtype=np.float32))
        parts["terminals"].append(np.asarray(ep.terminations, dtype=bool))
        parts["timeouts"].append(np.asarray(ep.truncations, dtype=bool))
    if not parts["actions"]:
        raise DatasetError(f"Minari dataset {dataset_id!r} has no episodes (empty dataset)")
    out = {k: _concat(v, k, dataset_id) for k, v in parts.items()}
    env_id = ""
    try:
        spec = ds.spec.env_spec
        env_id = spec.id if spec is not None else ""
    except AttributeError:
        pass
    out["metadata/name"] = dataset_id
    out["metadata/env_id"] = env_id
    out["metadata/source_layout"] = "minari"
    return out
