"""Datasets: D4RL-layout HDF5 files, dataset names and scores, the offline buffer, generation, readers.

* :class:`OfflineReplayBuffer` (``buffer.py``): a d4rl-style dict as tensors, with
  ``d4rl.qlearning_dataset`` semantics, normalisation, episodes for sequence models.
* :func:`load_dataset`, :func:`normalized_score`, :func:`has_reference` (``datasets.py``): D4RL
  names, the kit's names, Minari ids and paths; D4RL reference scores.
* :func:`read_hdf5`, :func:`write_hdf5`, :func:`validate_dataset` (``hdf5.py``).
* :func:`make_dataset` (``generate.py``): random / medium / expert / medium-replay / medium-expert.
* :func:`read_robomimic`, :func:`read_vd4rl`, :func:`read_minari` (``readers.py``).
* :func:`summarize_dataset` (``summary.py``): the numbers a notebook shows about a dataset.

Names are imported lazily so ``import vla_rl_lib.data`` does not pull in torch or h5py.
"""
from __future__ import annotations

from vla_rl_lib._lazy import lazy_exports


_EXPORTS = {
    "OfflineReplayBuffer": "vla_rl_lib.data.buffer",
    "episode_bounds": "vla_rl_lib.data.buffer",
    "returns_to_go": "vla_rl_lib.data.buffer",
    "load_dataset": "vla_rl_lib.data.datasets",
    "normalized_score": "vla_rl_lib.data.datasets",
    "has_reference": "vla_rl_lib.data.datasets",
    "reference_scores": "vla_rl_lib.data.datasets",
    "available_datasets": "vla_rl_lib.data.datasets",
    "env_id_for": "vla_rl_lib.data.datasets",
    "read_hdf5": "vla_rl_lib.data.hdf5",
    "write_hdf5": "vla_rl_lib.data.hdf5",
    "validate_dataset": "vla_rl_lib.data.hdf5",
    "make_dataset": "vla_rl_lib.data.generate",
    "read_robomimic": "vla_rl_lib.data.readers",
    "read_vd4rl": "vla_rl_lib.data.readers",
    "read_minari": "vla_rl_lib.data.readers",
    "summarize_dataset": "vla_rl_lib.data.summary",
    "format_summary": "vla_rl_lib.data.summary",
    "plot_summary": "vla_rl_lib.data.summary",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)

