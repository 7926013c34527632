"""Reading, writing and checking datasets in the D4RL HDF5 layout.

A D4RL file is a flat HDF5 file whose top-level datasets are arrays with one row per environment
step, plus two groups of extras::

    observations       (N, obs_dim)  float32
    actions            (N, act_dim)  float32
    rewards            (N,)          float32
    terminals          (N,)          bool     the episode ended in a terminal state after this step
    timeouts           (N,)          bool     the episode was cut off (time limit) after this step
    next_observations  (N, obs_dim)  float32  optional; D4RL's own files leave it out
    infos/qpos, infos/qvel, ...      (N, ...)  optional per-step extras
    metadata/algorithm, metadata/policy/..., ...   scalars and arrays describing how it was made

``env.get_dataset()`` in d4rl returns exactly this as a dict whose keys are the HDF5 paths joined
with ``/``. :func:`read_hdf5` does the same without d4rl; :func:`write_hdf5` writes such a dict back.

The kit adds three optional per-step keys for image datasets (the driving simulator, RoboMimic and
V-D4RL): ``images`` (N, H, W, 3) uint8, ``next_images`` and ``instructions`` (N,) byte strings.

:func:`validate_dataset` checks a dict before anything uses it and raises one :class:`DatasetError`
that names the key, the shape or the file when something is wrong.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from vla_rl_lib.errors import DatasetError, DatasetNotFoundError

#: keys every D4RL-style dataset has
REQUIRED_KEYS = ("observations", "actions", "rewards", "terminals")
#: per-step keys whose first dimension must equal the number of rows
FLAG_KEYS = ("terminals", "timeouts")
FLOAT_KEYS = ("observations", "actions", "rewards", "next_observations")
IMAGE_KEYS = ("images", "next_images")
TEXT_KEYS = ("instructions",)


def _h5py():
    import h5py  # a core dependency; imported here so that importing vla_rl_lib.data stays light

    return h5py


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------

def read_hdf5(path: str | os.PathLike, keys: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Read a D4RL-layout HDF5 file into a dict of numpy arrays (d4rl's ``get_dataset()`` shape).

    Keys are the HDF5 paths (``"observations"``, ``"infos/qpos"``, ``"metadata/algorithm"``).
    Scalars come back as numpy scalars, strings as ``bytes`` as h5py returns them.
    ``keys`` restricts reading to those paths (and everything below a group path).

    Raises :class:`DatasetNotFoundError` for a missing file and :class:`DatasetError` naming the file
    (and the key, where known) for a file that is not HDF5, truncated or otherwise unreadable.
    """
    h5py = _h5py()
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetNotFoundError(f"dataset file {str(path)!r} does not exist")
    if path.is_dir():
        raise DatasetError(f"{str(path)!r} is a directory, not an HDF5 dataset file")
    try:
        handle = h5py.File(path, "r")
    except (OSError, ValueError) as exc:
        raise DatasetError(
            f"cannot open {str(path)!r} as HDF5: the file is truncated, corrupted or not an HDF5 file "
            f"({exc}). Re-download or regenerate it."
        ) from exc
    out: dict[str, Any] = {}
    current = "<file structure>"
    try:
        with handle:
            names: list[str] = []
            handle.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
            for name in names:
                if keys is not None and not any(name == k or name.startswith(k.rstrip("/") + "/") for k in keys):
                    continue
                current = name
                out[name] = handle[name][()]
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise DatasetError(
            f"cannot read key {current!r} from {str(path)!r}: the file is truncated or corrupted ({exc}). "
            f"Re-download or regenerate it."
        ) from exc
    if not out:
        raise DatasetError(f"{str(path)!r} is an HDF5 file with no datasets in it (expected the D4RL layout)")
    return out


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------

def _to_storable(key: str, value: Any) -> np.ndarray:
    if isinstance(value, (str, bytes)):
        return np.bytes_(value.encode() if isinstance(value, str) else value)
    if hasattr(value, "detach"):  # torch tensor
        value = value.detach().cpu().numpy()
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], (str, bytes)):
        return np.array([v.encode() if isinstance(v, str) else v for v in value], dtype=np.bytes_)
    arr = np.asarray(value)
    if arr.dtype.kind == "U":
        arr = np.char.encode(arr, "utf-8")
    if arr.dtype == object:
        raise DatasetError(f"key {key!r} holds Python objects (dtype=object), which HDF5 cannot store")
    return arr


def write_hdf5(path: str | os.PathLike, dataset: Mapping[str, Any], compression: str | None = "gzip",
               compression_opts: int = 4, image_compression_opts: int = 9) -> Path:
    """Write a d4rl-style dict to ``path`` in the D4RL layout and return the path.

    Keys with ``/`` become groups (``infos/qpos``, ``metadata/policy/fc0/weight``). Arrays of two or
    more rows are compressed with ``compression`` (gzip with the shuffle filter by default: the float
    columns compress much better that way; uint8 image arrays get the stronger
    ``image_compression_opts``, which halves rendered images); scalars and strings are stored as they are. The file is
    written to a temporary name and renamed, so a crash never leaves a half-written dataset behind.
    """
    h5py = _h5py()
    path = Path(path).expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with h5py.File(tmp, "w") as f:
            for key in sorted(dataset):
                arr = _to_storable(key, dataset[key])
                if arr.ndim == 0 or arr.size < 2 or compression is None:
                    f.create_dataset(key, data=arr)
                    continue
                chunks = None
                if arr.ndim >= 1:
                    # about 1 MB per chunk, whole rows
                    row_bytes = max(1, arr.itemsize * int(np.prod(arr.shape[1:], dtype=np.int64)))
                    rows = int(max(1, min(arr.shape[0], (1 << 20) // row_bytes)))
                    chunks = (rows,) + tuple(arr.shape[1:])
                level = image_compression_opts if (arr.dtype == np.uint8 and arr.ndim == 4) else compression_opts
                if compression != "gzip":
                    level = None
                f.create_dataset(key, data=arr, compression=compression, compression_opts=level,
                                 shuffle=arr.dtype.kind in "fiu" and arr.itemsize > 1, chunks=chunks)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# --------------------------------------------------------------------------------------------
# metadata helpers
# --------------------------------------------------------------------------------------------

def meta_value(dataset: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """``dataset["metadata/<key>"]`` as a plain Python value (bytes decoded), or ``default``."""
    full = key if key.startswith("metadata/") else f"metadata/{key}"
    if full not in dataset:
        return default
    value = dataset[full]
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, (bytes, np.bytes_)):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.generic):
        return value.item()
    return value


def decode_strings(values: Any) -> list[str]:
    """A (N,) array of bytes / str (or a list of them) as a list of Python strings."""
    out = []
    for v in (values.tolist() if isinstance(values, np.ndarray) else values):
        out.append(v.decode("utf-8", errors="replace") if isinstance(v, (bytes, np.bytes_)) else str(v))
    return out


# --------------------------------------------------------------------------------------------
# validation
# --------------------------------------------------------------------------------------------

def _as_array(key: str, value: Any, where: str) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise DatasetError(f"{where}key {key!r} cannot be read as an array ({exc})") from exc
    return arr


def _check_finite(key: str, arr: np.ndarray, where: str) -> None:
    if arr.dtype.kind != "f":
        return
    finite = np.isfinite(arr)
    if not finite.all():
        bad = ~finite
        n_bad = int(bad.sum())
        first = int(np.argwhere(bad)[0][0])
        kind = "NaN" if np.isnan(arr).any() else "inf"
        raise DatasetError(
            f"{where}key {key!r} (shape {arr.shape}) holds {n_bad} non-finite value(s) ({kind}), first at "
            f"row {first}. Clean the data (drop or fix those rows) before loading it."
        )


def validate_dataset(dataset: Mapping[str, Any], source: str | None = None) -> dict[str, np.ndarray]:
    """Check a d4rl-style dict and return it with its per-step arrays in canonical form.

    Canonical form: ``observations``/``next_observations`` (N, obs_dim) and ``actions`` (N, act_dim)
    float32, ``rewards`` (N,) float32, ``terminals``/``timeouts`` (N,) bool, images (N, H, W, 3) uint8.
    Other keys (``infos/*``, ``metadata/*``) are passed through unchanged.

    Raises one :class:`DatasetError` naming the key and shape (and ``source``) for: a missing key,
    a dict that is empty or has zero rows, arrays of different lengths, non-numeric dtypes, flags that
    are not 0/1, NaN or inf values, images that are not uint8 (N, H, W, 3).
    """
    where = f"{source}: " if source else ""
    if not isinstance(dataset, Mapping):
        raise DatasetError(f"{where}a dataset must be a dict of arrays (d4rl's env.get_dataset()), "
                           f"got {type(dataset).__name__}")
    if len(dataset) == 0:
        raise DatasetError(f"{where}the dataset is empty (no keys at all)")
    missing = [k for k in REQUIRED_KEYS if k not in dataset]
    if missing:
        raise DatasetError(
            f"{where}missing required key(s) {missing}; a D4RL-style dataset needs {list(REQUIRED_KEYS)} "
            f"plus 'timeouts' (or 'next_observations'); it has {sorted(k for k in dataset if '/' not in k)}"
        )
    if "timeouts" not in dataset and "next_observations" not in dataset:
        raise DatasetError(
            f"{where}missing key 'timeouts': without it (and without 'next_observations') episodes cut off "
            f"by a time limit cannot be told from continuing ones. Add a (N,) bool 'timeouts' array."
        )
    out: dict[str, Any] = dict(dataset)
    obs = _as_array("observations", dataset["observations"], where)
    if obs.ndim == 1:
        raise DatasetError(f"{where}key 'observations' has shape {obs.shape}; expected (N, obs_dim)")
    if obs.ndim != 2:
        raise DatasetError(f"{where}key 'observations' has shape {obs.shape}; expected a 2-D array (N, obs_dim). "
                           f"Put image observations under 'images' (N, H, W, 3) uint8.")
    n = obs.shape[0]
    if n == 0:
        raise DatasetError(f"{where}the dataset is empty: 'observations' has shape {obs.shape} (0 rows)")

    per_step = [k for k in dataset if not k.startswith("metadata/")]
    for key in per_step:
        arr = _as_array(key, dataset[key], where)
        if arr.ndim == 0:
            raise DatasetError(f"{where}key {key!r} is a scalar; per-step keys need one row per step ({n} rows)")
        if arr.shape[0] != n:
            raise DatasetError(
                f"{where}length mismatch: key {key!r} has {arr.shape[0]} rows (shape {arr.shape}) but "
                f"'observations' has {n} rows (shape {obs.shape}); every per-step array needs {n} rows"
            )
        if key in FLOAT_KEYS:
            if arr.dtype.kind not in "fiub":
                raise DatasetError(f"{where}key {key!r} has dtype {arr.dtype} (shape {arr.shape}); expected a "
                                   f"numeric (float) array")
            if key == "rewards":
                if arr.ndim == 2 and arr.shape[1] == 1:
                    arr = arr[:, 0]
                if arr.ndim != 1:
                    raise DatasetError(f"{where}key 'rewards' has shape {arr.shape}; expected (N,) = ({n},)")
            elif key == "actions":
                if arr.ndim != 2:
                    raise DatasetError(f"{where}key 'actions' has shape {arr.shape}; expected (N, act_dim) "
                                       f"(continuous actions; reshape a 1-D array with actions[:, None])")
            elif arr.shape != obs.shape:
                raise DatasetError(f"{where}key {key!r} has shape {arr.shape}; expected the shape of "
                                   f"'observations' {obs.shape}")
            arr = np.asarray(arr, dtype=np.float32)
            _check_finite(key, arr, where)
        elif key in FLAG_KEYS:
            if arr.ndim == 2 and arr.shape[1] == 1:
                arr = arr[:, 0]
            if arr.ndim != 1:
                raise DatasetError(f"{where}key {key!r} has shape {arr.shape}; expected (N,) = ({n},)")
            if arr.dtype.kind not in "fiub":
                raise DatasetError(f"{where}key {key!r} has dtype {arr.dtype}; expected bool (or 0/1 numbers)")
            if arr.dtype.kind != "b":
                if arr.dtype.kind == "f":
                    _check_finite(key, arr, where)
                if not np.isin(arr, (0, 1)).all():
                    bad = np.unique(arr[~np.isin(arr, (0, 1))])[:5]
                    raise DatasetError(f"{where}key {key!r} must hold only 0/1 (True/False), found {bad.tolist()}")
                arr = arr.astype(bool)
        elif key in IMAGE_KEYS:
            if arr.dtype != np.uint8:
                raise DatasetError(f"{where}key {key!r} has dtype {arr.dtype} (shape {arr.shape}); images must be "
                                   f"uint8 (N, H, W, 3) in 0..255")
            if arr.ndim != 4 or arr.shape[-1] != 3:
                raise DatasetError(f"{where}key {key!r} has shape {arr.shape}; images must be (N, H, W, 3) "
                                   f"(channels last; transpose (N, 3, H, W) with images.transpose(0, 2, 3, 1))")
        elif key in TEXT_KEYS:
            if arr.dtype.kind not in "SUO":
                raise DatasetError(f"{where}key {key!r} has dtype {arr.dtype}; instructions must be strings")
        out[key] = arr  # infos/* and other extras pass through as they are
    if "images" in out and "next_images" in out and out["images"].shape != out["next_images"].shape:
        raise DatasetError(f"{where}key 'next_images' has shape {out['next_images'].shape}; expected the shape "
                           f"of 'images' {out['images'].shape}")
    if "timeouts" not in out:
        out["timeouts"] = np.zeros(n, dtype=bool)
    return out
