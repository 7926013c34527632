"""Atomic, safe checkpoint files.

A checkpoint is a dict of tensors and plain Python values (numbers, strings, lists, dicts) saved
with ``torch.save`` and read back with ``torch.load(weights_only=True)``: loading never runs code
from the file. Writes go to a temporary file in the same folder, are flushed to disk and then
renamed over the target, so a run killed while saving leaves the previous checkpoint intact.
"""
from __future__ import annotations

import os
import pickle
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vla_rl_lib.errors import CheckpointError

FORMAT = "vla-rl-kit-checkpoint"
FORMAT_VERSION = 1


def atomic_write(path: str | Path, write_fn) -> Path:
    """Call ``write_fn(tmp_path)`` then atomically rename the temporary file onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
