"""A dataset at a glance: ``summarize_dataset`` for notebooks (the DatasetExplorer's numbers).

>>> s = summarize_dataset(load_dataset("pendulum-medium-v0"))
>>> s["n_episodes"], s["return_mean"], s["quality"]
>>> print(format_summary(s)); plot_summary(s)

Works on a d4rl-style dict or an :class:`OfflineReplayBuffer`.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from vla_rl_lib.data.buffer import OfflineReplayBuffer, episode_bounds
from vla_rl_lib.data.hdf5 import decode_strings, meta_value, validate_dataset


def _stats(prefix: str, values: np.ndarray) -> dict:
    values = np.asarray(values, dtype=np.float64)
    return {
        f"{prefix}_mean": float(values.mean()),
        f"{prefix}_std": float(values.std()),
        f"{prefix}_min": float(values.min()),
        f"{prefix}_max": float(values.max()),
    }


def summarize_dataset(dataset_or_buffer: Mapping[str, Any] | OfflineReplayBuffer) -> dict:
    """Counts, episode return/length statistics and action ranges of a dataset.

    Keys: ``name``, ``env_id``, ``quality`` (from metadata or the name), ``n_rows``,
    ``n_transitions`` (what the buffer samples from), ``n_episodes``, ``return_{mean,std,min,max}``,
    ``length_{mean,std,min,max}``, ``obs_dim``, ``action_dim``, ``action_min``/``action_max``
    (per dimension), ``terminal_fraction``, ``episode_returns`` and ``episode_lengths`` (arrays for
    histograms), ``normalized_return_mean`` (D4RL-style score, ``None`` without a reference),
    ``has_images``, ``image_shape``, ``instructions`` (distinct instructions and their counts).
    """
    from vla_rl_lib.data.datasets import QUALITIES, normalized_score

    if isinstance(dataset_or_buffer, OfflineReplayBuffer):
        buf = dataset_or_buffer
        buf._require_data()
        eps = buf.episodes()
        rewards_by_ep = [e["rewards"] for e in eps]
        actions = buf._actions.cpu().numpy()
        terminals = buf._terminals.cpu().numpy()
        name, env_id = buf.dataset_name, buf.env_id
        quality = buf.metadata.get("quality")
        n_rows, n_trans = buf._rows, len(buf)
        obs_dim = buf.obs_dim
        image_shape = tuple(buf._images.shape[1:]) if buf._images is not None else None
        instructions = buf._instructions
    else:
        data = validate_dataset(dataset_or_buffer, source=meta_value(dataset_or_buffer, "name"))
        bounds = episode_bounds(data["terminals"], data["timeouts"])
        rewards_by_ep = [data["rewards"][s:e] for s, e in bounds]
        actions = data["actions"]
        terminals = data["terminals"]
        name, env_id = meta_value(data, "name"), meta_value(data, "env_id") or None
        quality = meta_value(data, "quality")
        n_rows = actions.shape[0]
        n_trans = n_rows if "next_observations" in data else int((~data["timeouts"][:-1]).sum())
        obs_dim = data["observations"].shape[1]
        image_shape = tuple(data["images"].shape[1:]) if "images" in data else None
        instructions = decode_strings(data["instructions"]) if "instructions" in data else None
    if quality is None and name:
        quality = next((q for q in sorted(QUALITIES, key=len, reverse=True) if f"-{q}-" in f"-{name}-"), None)
    returns = np.array([r.sum(dtype=np.float64) for r in rewards_by_ep])
    lengths = np.array([len(r) for r in rewards_by_ep], dtype=np.int64)
    summary = {
        "name": name,
        "env_id": env_id,
        "quality": quality,
        "n_rows": int(n_rows),
        "n_transitions": int(n_trans),
        "n_episodes": int(len(returns)),
        **_stats("return", returns),
        **_stats("length", lengths),
        "obs_dim": int(obs_dim),
        "action_dim": int(actions.shape[1]),
        "action_min": actions.min(axis=0).astype(np.float64),
        "action_max": actions.max(axis=0).astype(np.float64),
        "terminal_fraction": float(np.mean(terminals)),
        "episode_returns": returns,
        "episode_lengths": lengths,
        "has_images": image_shape is not None,
        "image_shape": image_shape,
        "instructions": None,
    }
    ref_name = name if name else env_id
    score = normalized_score(ref_name, summary["return_mean"]) if ref_name else None
    if score is None and env_id:
        score = normalized_score(env_id, summary["return_mean"])
    summary["normalized_return_mean"] = score
    if instructions is not None:
        values, counts = np.unique(np.asarray(instructions, dtype=object).astype(str), return_counts=True)
        summary["instructions"] = {str(v): int(c) for v, c in zip(values, counts)}
    return summary


def format_summary(summary: Mapping[str, Any]) -> str:
    """A few readable lines of a :func:`summarize_dataset` result."""
    lines = [
        f"dataset      {summary.get('name')}  (env {summary.get('env_id')}, quality {summary.get('quality')})",
        f"size         {summary['n_transitions']} transitions in {summary['n_rows']} rows, "
        f"{summary['n_episodes']} episodes",
        f"return       mean {summary['return_mean']:.2f} +- {summary['return_std']:.2f} "
        f"[{summary['return_min']:.2f}, {summary['return_max']:.2f}]",
        f"length       mean {summary['length_mean']:.1f} [{summary['length_min']:.0f}, {summary['length_max']:.0f}]",
        f"actions      min {np.round(summary['action_min'], 3).tolist()} max {np.round(summary['action_max'], 3).tolist()}",
    ]
    if summary.get("normalized_return_mean") is not None:
        lines.append(f"normalised   {summary['normalized_return_mean']:.1f} (D4RL-style score of the mean return)")
    if summary.get("image_shape"):
        lines.append(f"images       {summary['image_shape']} uint8")
    if summary.get("instructions"):
        lines.append(f"instructions {summary['instructions']}")
    return "\n".join(lines)


def plot_summary(summary: Mapping[str, Any], axes=None):
    """Histograms of episode returns and lengths (matplotlib); returns the figure."""
    import matplotlib.pyplot as plt

    if axes is None:
        fig, axes = plt.subplots(1, 2, figsize=(9, 3))
    else:
        fig = axes[0].figure
    axes[0].hist(summary["episode_returns"], bins=30, color="tab:blue")
    axes[0].set_xlabel("episode return")
    axes[0].set_ylabel("episodes")
    axes[1].hist(summary["episode_lengths"], bins=30, color="tab:orange")
    axes[1].set_xlabel("episode length")
    fig.suptitle(f"{summary.get('name')} ({summary['n_episodes']} episodes)")
    fig.tight_layout()
    return fig
