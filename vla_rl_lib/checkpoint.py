"""Atomic, safe checkpoint files.

A checkpoint is a dict of tensors and plain Python values (numbers, strings, lists, dicts) saved
with ``torch.save`` and read back with ``torch.load(weights_only=True)``: loading never runs code
from the file. Writes go to a temporary file in the same folder, are flushed to disk and then
renamed over the target, so a run killed while saving leaves the previous checkpoint intact; the
temporary file such a kill leaves behind (``.checkpoint.pt.<pid>.<random>.tmp``) is removed by the
next save into that folder, or when a run starts there.

The run-directory helpers below keep a run from being overwritten by accident: the command line
checks ``--output_dir`` is a writable folder before loading any data, and refuses one that holds
another run unless told ``--overwrite``.
"""
from __future__ import annotations

import os
import pickle
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from vla_rl_lib.errors import CheckpointError, ConfigError

FORMAT = "vla-rl-kit-checkpoint"
FORMAT_VERSION = 1


def atomic_write(path: str | Path, write_fn) -> Path:
    """Call ``write_fn(tmp_path)`` then atomically rename the temporary file onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def remove_stale_temporaries(folder: str | Path, name: str = "checkpoint.pt") -> list[Path]:
    """Delete the temporary files that killed :func:`atomic_write` calls left for ``folder/name``.

    A temporary file is named ``.<name>.<pid>.<random>.tmp``; one whose writer is still running
    (another process saving right now) is left alone.
    """
    removed = []
    for tmp in Path(folder).glob(f".{glob_escape(name)}.*.tmp"):
        parts = tmp.name[len(name) + 2:].split(".")
        writer = parts[0] if len(parts) == 3 else ""
        if writer.isdigit() and _alive(int(writer)) and int(writer) != os.getpid():
            continue  # another process is writing it right now
        try:
            tmp.unlink()
            removed.append(tmp)
        except OSError:
            pass
    return removed


def glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def save_checkpoint(path: str | Path, state: dict) -> Path:
    """Write ``state`` (tagged with the kit's format marker) atomically to ``path``."""
    state = dict(state, format=FORMAT, format_version=FORMAT_VERSION)
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` without unpickling any code."""
    path = Path(path)
    if path.is_dir():
        candidate = path / "checkpoint.pt"
        if not candidate.exists():
            candidate = path / "checkpoints" / "last.pt"
        path = candidate
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a .pt file written by trainer.save() or a run directory")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path} is not a checkpoint of this kit: it holds Python objects that would run code "
            f"when loaded, and the kit only loads plain tensors ({str(exc).splitlines()[0][:160]})") from None
    except Exception as exc:  # truncated, corrupted, or another format entirely
        raise CheckpointError(f"{path} could not be read as a checkpoint of this kit ({type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:160] if str(exc) else 'no detail'}); "
                              "it may be truncated or not a checkpoint") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this kit (no '{FORMAT}' marker); "
                              "pass a file written by trainer.save()")
    return state


def trainer_meta(state: dict, path: str | Path) -> dict:
    """The ``meta`` of a trainer's checkpoint (algorithm, config, ...), or one clear error."""
    meta = state.get("meta")
    if not isinstance(meta, dict) or not isinstance(meta.get("algorithm"), str) or not isinstance(meta.get("config"), dict):
        raise CheckpointError(f"{path} has the kit's marker but no valid 'meta' (algorithm, config): it was not "
                              "written by trainer.save() or was altered; use a checkpoint a trainer wrote")
    return meta


# -- run directories ----------------------------------------------------------------------------------

#: what a training run writes into its directory (``--overwrite`` removes exactly these)
RUN_FILES = ("checkpoint.pt", "config.yaml", "metrics.csv", "tb", "checkpoints")


def check_writable_dir(path: str | Path, flag: str = "--output_dir") -> Path:
    """Check ``path`` is, or can be made, a folder this process can write into (without creating it)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{flag} {path} is a file, not a folder; choose a folder (it is created if missing)")
    existing = path.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{flag} {path} cannot be created: {existing} is a file")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise ConfigError(f"{flag} {path} is not writable ({exc.strerror or type(exc).__name__} in {existing}); "
                          "choose a folder you can write to") from None
    return path


def existing_run(path: str | Path) -> Optional[str]:
    """A short description of the training run in ``path`` (``'iql run'``), or None when it holds none."""
    path = Path(path)
    if not path.is_dir() or not any((path / name).exists() for name in RUN_FILES):
        return None
    algorithm = None
    try:
        import yaml

        algorithm = (yaml.safe_load((path / "config.yaml").read_text()) or {}).get("algorithm")
    except Exception:  # noqa: BLE001 - an unreadable config still marks a run
        pass
    return f"{algorithm} run" if isinstance(algorithm, str) else "training run"


def with_article(text: str) -> str:
    """``'iql run'`` -> ``'an iql run'``."""
    return f"{'an' if text[:1].lower() in 'aeiou' else 'a'} {text}"


def clear_run(path: str | Path) -> None:
    """Remove the files a training run wrote into ``path`` (and nothing else)."""
    for name in RUN_FILES:
        target = Path(path) / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        elif target.exists() or target.is_symlink():
            target.unlink()
    remove_stale_temporaries(path)


# -- random number generator states -----------------------------------------------------------------

def rng_state() -> dict:
    """The global RNG states of torch, numpy and Python ``random`` as plain values."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), int(np_state[2]),
                  int(np_state[3]), float(np_state[4])],
        "python": [list(random.getstate()[1]), random.getstate()[0], random.getstate()[2]],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n[0], n[1].cpu().numpy().astype(np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[1], tuple(p[0]), p[2]))
    if "cuda" in state and torch.cuda.is_available():  # (absent when a CPU machine wrote it)
        saved = [s.cpu() for s in state["cuda"]][:torch.cuda.device_count()]
        for i, s in enumerate(saved):
            torch.cuda.set_rng_state(s, i)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
