"""Dataset names, where their files live, ``load_dataset`` and D4RL-style normalised scores.

Names the kit understands:

* D4RL locomotion: ``{hopper,halfcheetah,walker2d}-{random,medium,expert,medium-replay,medium-expert}-v2``,
  read from ``$D4RL_DATASET_DIR`` or ``~/.d4rl/datasets`` under d4rl's own file names
  (``hopper_medium-v2.hdf5``, ``halfcheetah_medium_replay-v2.hdf5``, ...). They are evaluated on the
  gymnasium tasks ``Hopper-v5``, ``HalfCheetah-v5`` and ``Walker2d-v5``, which keep the observation
  layout of the ``-v2`` tasks D4RL recorded.
* The kit's own datasets, made by :func:`vla_rl_lib.data.generate.make_dataset` the way D4RL made its
  datasets: ``{pendulum,hopper,halfcheetah,walker2d}-{quality}-v0`` and ``driving-{quality}-v1``.
  They are read from ``$VLA_RL_DATASET_DIR`` or ``~/.vla_rl/datasets`` (``<name>.hdf5``, where
  ``make_dataset`` writes them), then from ``vla_rl_lib/datasets/``, where small ones ship with the package.
* Minari ids (``mujoco/hopper/medium-v0``), through the ``minari`` package, when the dataset is local.
* A path: an ``.hdf5``/``.h5`` file in D4RL layout (RoboMimic and V-D4RL shard files are recognised
  too) or a V-D4RL folder of per-episode ``.npz`` files.

A named dataset that is not on this machine raises :class:`DatasetNotFoundError` saying where it was
looked for, how to get it and the ``vla-rl make-dataset`` command for a local stand-in. Nothing is
ever substituted silently.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vla_rl_lib.errors import DatasetError, DatasetNotFoundError

QUALITIES = ("random", "medium", "expert", "medium-replay", "medium-expert")

#: D4RL locomotion task -> the gymnasium task it is evaluated on
D4RL_ENVS = {"hopper": "Hopper-v5", "halfcheetah": "HalfCheetah-v5", "walker2d": "Walker2d-v5"}

#: D4RL reference returns (random policy, expert policy) from d4rl/infos.py; scores are
#: 100 * (R - random) / (expert - random)
D4RL_REF_SCORES = {
    "hopper": (-20.272305, 3234.3),
    "halfcheetah": (-280.178953, 12135.0),
    "walker2d": (1.629008, 4592.3),
}

#: the kit's dataset families: short name -> gymnasium env id (or the kit's driving simulator)
DRIVING_ENV_ID = "driving"
KIT_ENVS = {
    "pendulum": "Pendulum-v1",
    "hopper": "Hopper-v5",
    "halfcheetah": "HalfCheetah-v5",
    "walker2d": "Walker2d-v5",
    "driving": DRIVING_ENV_ID,
    "maze": "vla_rl_lib/PointMaze-v0",
}
#: the point-mass maze's datasets (``vla_rl_lib.envs.maze``): quality -> the env they are evaluated on
MAZE_QUALITIES = {"stitch": "vla_rl_lib/PointMaze-v0", "stitch-dense": "vla_rl_lib/PointMazeDense-v0",
                  "mixed": "vla_rl_lib/PointMaze-v0"}
#: qualities a kit family accepts beyond D4RL's five (the maze has its own; driving adds ``mixed``:
#: expert, noisy and random episodes in thirds)
FAMILY_QUALITIES = {"maze": tuple(MAZE_QUALITIES), "driving": (*QUALITIES, "mixed")}


def qualities_for(family: str | None) -> tuple[str, ...]:
    """The dataset qualities the kit can make for a family key (``pendulum``, ``maze``, ``driving``, ...)."""
    return FAMILY_QUALITIES.get(family or "", QUALITIES)


KIT_VERSIONS = {"driving": "v1"}  # everything else is -v0

#: (observation size, action size) of the vector-observation tasks the kit's and D4RL's datasets come from
ENV_SIZES = {"Pendulum-v1": (3, 1), "Hopper-v5": (11, 3), "HalfCheetah-v5": (17, 6), "Walker2d-v5": (17, 6)}


def env_ids_with_sizes(obs_dim: int, action_dim: int) -> list[str]:
    """The known tasks whose observations and actions have these sizes (for a dataset that names no env)."""
    return [env_id for env_id, sizes in ENV_SIZES.items() if sizes == (int(obs_dim), int(action_dim))]

D4RL_URL = "http://rail.eecs.berkeley.edu/datasets/offline_rl/gym_mujoco_v2/{file}"

_QUAL = "|".join(re.escape(q) for q in sorted((*QUALITIES, *MAZE_QUALITIES), key=len, reverse=True))
_D4RL_RE = re.compile(rf"^(hopper|halfcheetah|walker2d)-({_QUAL})-v2$")
_KIT_RE = re.compile(rf"^({'|'.join(KIT_ENVS)})-({_QUAL})-(v\d+)$")

SHIPPED_DIR = Path(__file__).resolve().parent.parent / "datasets"
MANIFEST = SHIPPED_DIR / "manifest.json"


# --------------------------------------------------------------------------------------------
# names
# --------------------------------------------------------------------------------------------

@dataclass
class DatasetName:
    """What a dataset name means: its family, environment, quality and candidate files."""

    name: str
    kind: str  # "d4rl" | "kit" | "minari"
    env_key: str | None
    env_id: str | None
    quality: str | None
    file_name: str | None = None
    search_dirs: list[Path] = field(default_factory=list)


def d4rl_file_name(name: str) -> str:
    """d4rl's file name for a locomotion dataset: ``hopper-medium-replay-v2`` -> ``hopper_medium_replay-v2.hdf5``."""
    m = _D4RL_RE.match(name)
    if not m:
        raise DatasetError(f"{name!r} is not a D4RL locomotion dataset name")
    env, quality = m.groups()
    return f"{env}_{quality.replace('-', '_')}-v2.hdf5"


def d4rl_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("D4RL_DATASET_DIR"):
        dirs.append(Path(os.environ["D4RL_DATASET_DIR"]).expanduser())
    dirs.append(Path("~/.d4rl/datasets").expanduser())
    return dirs


def kit_dirs() -> list[Path]:
    """Where kit names are looked for: your dataset folders first (so a dataset you generated under
    a kit name, e.g. a full-size ``hopper-medium-v0``, is used), then the files shipped in the package."""
    dirs = []
    if os.environ.get("VLA_RL_DATASET_DIR"):
        dirs.append(Path(os.environ["VLA_RL_DATASET_DIR"]).expanduser())
    dirs.append(Path("~/.vla_rl/datasets").expanduser())
    dirs.append(SHIPPED_DIR)
    return dirs


def default_output_dir() -> Path:
    """Where ``make_dataset`` writes a dataset when no output path is given."""
    return Path(os.environ.get("VLA_RL_DATASET_DIR") or "~/.vla_rl/datasets").expanduser()


def kit_dataset_name(env: str, quality: str) -> str:
    """The kit's name for a generated dataset: (``Hopper-v5``, ``medium``) -> ``hopper-medium-v0``."""
    key = env_key(env)
    if key is None or key not in KIT_ENVS:
        key = re.sub(r"[^a-z0-9]+", "", env.split("/")[-1].split("-v")[0].lower()) or "dataset"
    return f"{key}-{quality}-{KIT_VERSIONS.get(key, 'v0')}"


def parse_name(name: str) -> DatasetName | None:
    """Parse a dataset name; ``None`` for something that is not a name the kit knows."""
    m = _D4RL_RE.match(name)
    if m:
        env, quality = m.groups()
        return DatasetName(name, "d4rl", env, D4RL_ENVS[env], quality, d4rl_file_name(name), d4rl_dirs())
    m = _KIT_RE.match(name)
    if m:
        env, quality, version = m.groups()
        if version == KIT_VERSIONS.get(env, "v0") and quality in qualities_for(env):
            env_id = MAZE_QUALITIES[quality] if env == "maze" else KIT_ENVS[env]
            return DatasetName(name, "kit", env, env_id, quality, f"{name}.hdf5", kit_dirs())
    if "/" in name and not name.endswith((".hdf5", ".h5")) and not Path(name).expanduser().exists():
        return DatasetName(name, "minari", None, None, None)
    return None


def env_key(name_or_env_id: str) -> str | None:
    """The family key (``hopper``, ``pendulum``, ``driving``, ...) of a dataset name or env id."""
    if not isinstance(name_or_env_id, str) or not name_or_env_id:
        return None
    parsed = _D4RL_RE.match(name_or_env_id) or _KIT_RE.match(name_or_env_id)
    if parsed:
        return parsed.group(1)
    base = name_or_env_id.split("/")[-1]
    base = re.sub(r"-v\d+$", "", base).lower().replace("_", "")
    if base.startswith("driving") or name_or_env_id == DRIVING_ENV_ID:
        return "driving"
    if base.startswith("pointmaze"):
        return "maze"
    return base if base in KIT_ENVS else None


def env_id_for(name: str) -> str | None:
    """The gymnasium env id a dataset name is evaluated on (``hopper-medium-v2`` -> ``Hopper-v5``)."""
    parsed = parse_name(name) if isinstance(name, str) else None
    if parsed is not None and parsed.env_id:
        return parsed.env_id
    key = env_key(name) if isinstance(name, str) else None
    if key is not None and name.lower().startswith(key):  # d4rl-looking file stems
        return KIT_ENVS.get(key)
    return None


def available_datasets() -> dict[str, Path]:
    """Datasets with a name that are on this machine now: name -> file."""
    found: dict[str, Path] = {}
    for d in kit_dirs():
        for f in sorted(d.glob("*.hdf5")) if d.is_dir() else []:
            if parse_name(f.stem) is not None:
                found.setdefault(f.stem, f)
    for d in d4rl_dirs():
        for f in sorted(d.glob("*-v2.hdf5")) if d.is_dir() else []:
            stem = f.name[: -len("-v2.hdf5")]
            env, _, quality = stem.partition("_")
            name = f"{env}-{quality.replace('_', '-')}-v2"
            if _D4RL_RE.match(name):
                found.setdefault(name, f)
    return found


# --------------------------------------------------------------------------------------------
# reference scores
# --------------------------------------------------------------------------------------------

def _kit_reference_scores() -> dict[str, tuple[float, float]]:
    try:
        manifest = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return {}
    refs = {}
    for key, entry in manifest.get("reference_scores", {}).items():
        try:
            refs[key] = (float(entry["random"]), float(entry["expert"]))
        except (KeyError, TypeError, ValueError):
            continue
    return refs


def reference_scores(name_or_env_id: str) -> tuple[float, float] | None:
    """(random, expert) reference returns for a dataset name or env id, or ``None`` when unknown.

    D4RL's locomotion references apply to the D4RL names, to the kit's datasets of the same tasks
    and to the gymnasium ids (``Hopper-v5`` and earlier versions). The kit's own tasks (Pendulum,
    driving) use references measured from the random and expert policies that generate their
    datasets, recorded in ``vla_rl_lib/datasets/manifest.json``.
    """
    key = env_key(name_or_env_id)
    if key is None:
        return None
    if key in D4RL_REF_SCORES:
        return D4RL_REF_SCORES[key]
    return _kit_reference_scores().get(key)


def has_reference(name_or_env_id: str) -> bool:
    """Whether :func:`normalized_score` knows reference returns for this name or env id."""
    return reference_scores(name_or_env_id) is not None


def normalized_score(name_or_env_id: str, returns: float | Sequence[float] | np.ndarray):
    """D4RL's normalised score ``100 * (R - R_random) / (R_expert - R_random)``.

    ``returns`` is one undiscounted episode return or several (then an array of scores comes back).
    Returns ``None`` when no reference is known for the name (see :func:`has_reference`).
    """
    refs = reference_scores(name_or_env_id)
    if refs is None:
        return None
    low, high = refs
    arr = np.asarray(returns, dtype=np.float64)
    score = 100.0 * (arr - low) / (high - low)
    return float(score) if arr.ndim == 0 else score


# --------------------------------------------------------------------------------------------
# load_dataset
# --------------------------------------------------------------------------------------------

def _make_command(env_id: str, quality: str, name: str, size: int) -> str:
    out = default_output_dir() / f"{name}.hdf5"
    return f"vla-rl make-dataset --env {env_id} --quality {quality} --size {size} --output {out}"


def _not_found(parsed: DatasetName) -> DatasetNotFoundError:
    looked = ", ".join(str(d / parsed.file_name) for d in parsed.search_dirs)
    if parsed.kind == "d4rl":
        stand_in = kit_dataset_name(parsed.env_id, parsed.quality)
        url = D4RL_URL.format(file=parsed.file_name)
        return DatasetNotFoundError(
            f"D4RL dataset {parsed.name!r} is not on this machine: looked for {looked} "
            f"($D4RL_DATASET_DIR={os.environ.get('D4RL_DATASET_DIR', '<unset>')}). To use the real data, "
            f"download {url} into $D4RL_DATASET_DIR or ~/.d4rl/datasets (what d4rl's get_dataset() does "
            f"on a machine with internet access). For a local stand-in generated by the kit (NOT the D4RL "
            f"data; its scores are not comparable with published D4RL numbers): "
            f"{_make_command(parsed.env_id, parsed.quality, stand_in, 1_000_000)} and then load {stand_in!r}."
        )
    size = 20_000 if parsed.env_key == "driving" else 100_000
    return DatasetNotFoundError(
        f"kit dataset {parsed.name!r} is not on this machine: looked for {looked}. Generate it with: "
        f"{_make_command(parsed.env_id, parsed.quality, parsed.name, size)}"
    )


def _with_names(data: dict, name: str, env_id: str | None) -> dict:
    """Make sure ``metadata/name`` and ``metadata/env_id`` are there, as ``str``."""
    from vla_rl_lib.data.hdf5 import meta_value

    data["metadata/name"] = meta_value(data, "name") or name
    data["metadata/env_id"] = meta_value(data, "env_id") or env_id or ""
    return data


def _read_path(path: Path, **kw) -> dict:
    from vla_rl_lib.data import readers
    from vla_rl_lib.data.hdf5 import read_hdf5

    if path.is_dir():
        return readers.read_vd4rl(path, **kw)
    if not path.exists():
        raise DatasetNotFoundError(f"dataset file {str(path)!r} does not exist")
    layout = readers.detect_layout(path)
    if layout == "robomimic":
        return readers.read_robomimic(path, **kw)
    if layout == "vd4rl":
        return readers.read_vd4rl(path, **kw)
    if kw:
        raise DatasetError(f"options {sorted(kw)} are not understood for the D4RL file {str(path)!r}")
    return read_hdf5(path)


def load_dataset(name_or_path: str | os.PathLike, data_dir: str | os.PathLike | None = None, **kw) -> dict:
    """Load a dataset by name or path as a d4rl-style dict (what ``env.get_dataset()`` returns).

    The dict always carries ``metadata/name`` and ``metadata/env_id`` (the gymnasium env to evaluate
    on; ``""`` when unknown). ``data_dir`` is searched first for named datasets. Other keyword
    arguments go to the RoboMimic / V-D4RL / Minari readers (``obs_keys``, ``image_key``, ...).

    Raises :class:`DatasetNotFoundError` for a named dataset that is not on this machine and
    :class:`DatasetError` for a file that cannot be used.
    """
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    parsed = parse_name(text) if not path.exists() else None
    if parsed is None:
        if not path.exists() and not text.endswith((".hdf5", ".h5", ".npz")) and os.sep not in text:
            raise DatasetNotFoundError(
                f"unknown dataset {text!r}: not a file and not a known name. Known names: D4RL "
                f"'{{hopper,halfcheetah,walker2d}}-{{{','.join(QUALITIES)}}}-v2', the kit's "
                f"'{{{','.join(k for k in KIT_ENVS if k != 'driving')}}}-<quality>-v0' and "
                f"'driving-<quality>-v1', Minari ids 'namespace/name-vN', or a path to an .hdf5 file. "
                f"On this machine now: {sorted(available_datasets()) or 'none'}"
            )
        data = _read_path(path, **kw)
        stem = path.stem if path.is_file() else path.name
        d4rl_like = re.match(r"^(hopper|halfcheetah|walker2d)_(.+)-v2$", stem)
        if d4rl_like:  # a D4RL file under its own file name
            stem = f"{d4rl_like.group(1)}-{d4rl_like.group(2).replace('_', '-')}-v2"
        return _with_names(data, stem, env_id_for(stem))
    if parsed.kind == "minari":
        from vla_rl_lib.data.readers import read_minari

        try:
            return _with_names(read_minari(text, **kw), text, None)
        except DatasetNotFoundError as exc:
            raise DatasetNotFoundError(f"{exc} (If {text!r} was meant as a file or folder: there is no such path.)") \
                from exc
    dirs = ([Path(data_dir).expanduser()] if data_dir else []) + parsed.search_dirs
    parsed.search_dirs = dirs
    for d in dirs:
        f = d / parsed.file_name
        if f.is_file():
            from vla_rl_lib.data.hdf5 import read_hdf5

            data = read_hdf5(f)
            data = _with_names(data, parsed.name, parsed.env_id)
            if parsed.kind == "d4rl":  # the file's own env id is a -v2 (mujoco-py) id: evaluate on v5
                data["metadata/env_id"] = parsed.env_id
            return data
    raise _not_found(parsed)
