"""Offline methods side by side: train each on a dataset at the same budget and evaluate it.

``run_method("iql", "maze-stitch-v0", steps=3000, seed=0)`` trains one method and
returns its evaluation (mean return, and success rate where the environment reports one);
``compare_methods(methods, datasets, seeds, steps)`` does it over a grid and returns one row per run,
which :func:`summarize` turns into a table of means and standard deviations over seeds. The learning
tests (``tests/test_offline_separation.py``), ``benchmarks/offline_comparison.py`` and
``notebooks/12_offline_method_comparison.ipynb`` all call these, so a figure in one of them means the
same thing in the others.

Methods (``METHODS``): ``bc``, ``%bc`` (the best 10% of episodes), ``iql``, ``cql``, ``td3_bc``, ``dt``.
Every method gets the same gradient steps, batch size and hidden width; what differs per dataset
family is written in ``DATASET_HPARAMS`` with the reason (the maze's sparse reward takes the IQL
paper's antmaze settings).
"""
from __future__ import annotations

import math
import tempfile
import time
from typing import Iterable, Optional

import numpy as np

from vla_rl_lib.config import OfflineRLConfig
from vla_rl_lib.errors import ConfigError

#: method name -> (trainer name in ``trainer.ALGORITHMS``, hyperparameters)
METHODS = {
    "bc": ("bc", {}),
    "%bc": ("bc", {"top_fraction": 0.1}),
    "iql": ("iql", {}),
    "cql": ("cql", {}),
    "td3_bc": ("td3_bc", {}),
    "dt": ("dt", {}),
}

#: dataset family -> method -> hyperparameters that differ from the method's defaults, and why
DATASET_HPARAMS = {
    # sparse goal reward, as antmaze: the IQL paper's antmaze settings (expectile 0.9, beta 10)
    "maze": {"*": {"tau": 0.05},  # short horizon, little data: faster target networks propagate the goal's
             # value through the maze within a few thousand steps (tau = 0.005 had not reached the start
             # after 3000 steps: IQL's success rate 0 over 2 seeds; 0.05: 1.0)
             "iql": {"expectile": 0.9, "temperature": 10.0},
             # the maze's episodes are short hops: a context of 10 steps covers them
             "dt": {"context_length": 10, "max_ep_len": 128}},
    # Pendulum's episodes are 200 steps long; the DT's timestep table need not be 1000
    "pendulum": {"dt": {"max_ep_len": 256}},
}


#: the comparison's three kinds of data (the specification's decision tree names them) -> a shipped dataset
COMPARISON_DATASETS = {"expert": "pendulum-expert-v0", "mixed": "pendulum-medium-expert-v0",
                       "stitching": "maze-stitch-v0"}


def family(dataset: str) -> str:
    return str(dataset).split("-")[0].lower()


def method_hparams(method: str, dataset: str, **overrides) -> dict:
    """The hyperparameters ``method`` uses on ``dataset`` (defaults, dataset family's, overrides)."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    _, base = METHODS[method]
    per_family = DATASET_HPARAMS.get(family(dataset), {})
    return {**base, **per_family.get("*", {}), **per_family.get(method, {}), **overrides}


def make_trainer(method: str, dataset: str, steps: int, seed: int = 0, hidden_dim: int = 256,
                 batch_size: int = 256, output_dir: Optional[str] = None, device: str = "cpu", **overrides):
    """The trainer of ``method`` for ``dataset`` with ``steps`` gradient steps (not trained yet) and its buffer."""
    from vla_rl_lib.data.datasets import load_dataset
    from vla_rl_lib.data.buffer import OfflineReplayBuffer
    from vla_rl_lib.trainer import get_trainer_class

    data = load_dataset(dataset)
    obs_dim, action_dim = data["observations"].shape[1], data["actions"].shape[1]
    buffer = OfflineReplayBuffer(obs_dim, action_dim).load_dataset(data)
    hparams = method_hparams(method, dataset, **overrides)  # (rejects an unknown method)
    name = METHODS[method][0]
    fields = {f["name"] for f in OfflineRLConfig.field_info()}
    config = OfflineRLConfig(**{
        "num_epochs": 1, "steps_per_epoch": int(steps), "batch_size": batch_size, "hidden_dim": hidden_dim,
        "eval_episodes": 0, "save_freq": 0, "log_freq": max(int(steps) // 4, 1), "device": device,
        "normalize_states": True, "seed": int(seed), "dataset": dataset,
        "output_dir": output_dir or tempfile.mkdtemp(prefix=f"{method.strip('%')}-"),
        **{k: v for k, v in hparams.items() if k in fields}})
    hparams = {k: v for k, v in hparams.items() if k not in fields}
    trainer = get_trainer_class(name)(obs_dim, action_dim, config=config, **hparams)
    return trainer, buffer


def run_method(method: str, dataset: str, steps: int, seed: int = 0, eval_episodes: int = 10,
               hidden_dim: int = 256, batch_size: int = 256, **overrides) -> dict:
    """Train ``method`` on ``dataset`` for ``steps`` gradient steps and evaluate it (``eval_episodes``
    episodes from the evaluation seed ``10000 + seed``). Returns a row: method, dataset, seed, steps,
    mean_reward, std_reward, success_rate (or NaN), normalized_score (or NaN), seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        trainer, buffer = make_trainer(method, dataset, steps, seed, hidden_dim, batch_size, output_dir=tmp, **overrides)
        start = time.perf_counter()
        trainer.train(buffer)
        seconds = time.perf_counter() - start
        result = trainer.evaluate(num_episodes=eval_episodes)
    return {"method": method, "dataset": dataset, "seed": int(seed), "steps": int(steps),
            "mean_reward": result["mean_reward"], "std_reward": result["std_reward"],
            "success_rate": result.get("success_rate", math.nan),
            "normalized_score": result.get("normalized_score", math.nan), "seconds": seconds}


#: the Decision Transformer's own settings in the comparison: a small model and batch (the
#: tests' ``SMALL``), 64 sequences of 10 steps a batch, fewer steps (a transformer step costs
#: about ten MLP steps on a CPU)
DT_SMALL = dict(embed_dim=32, n_layer=1, n_head=2, context_length=10, warmup_steps=100, learning_rate=1e-3,
                batch_size=64)


def compare_methods(methods: Iterable[str], datasets: Iterable[str], seeds: Iterable[int], steps,
                    eval_episodes: int = 10, hidden_dim: int = 256, batch_size: int = 256,
                    progress: bool = False, small_dt: bool = True) -> list[dict]:
    """:func:`run_method` for every (dataset, method, seed); one row each.

    ``steps`` is one budget for every method, or a dict ``{method: steps}`` (``"*"`` for the rest);
    ``small_dt`` trains the Decision Transformer with ``DT_SMALL``.
    """
    budget = steps if isinstance(steps, dict) else {"*": int(steps)}
    rows = []
    for dataset in datasets:
        for method in methods:
            for seed in seeds:
                extra = dict(DT_SMALL) if (method == "dt" and small_dt) else {}
                bs = extra.pop("batch_size", batch_size)
                row = run_method(method, dataset, int(budget.get(method, budget.get("*"))), seed, eval_episodes,
                                 hidden_dim, bs, **extra)
                rows.append(row)
                if progress:
                    shown = "" if math.isnan(row["success_rate"]) else f", success {row['success_rate']:.2f}"
                    print(f"{dataset:28s} {method:7s} seed {seed}: return {row['mean_reward']:8.1f}{shown} "
                          f"({row['seconds']:.0f} s)", flush=True)
    return rows


def summarize(rows: list[dict], key: str = "mean_reward") -> dict:
    """``{dataset: {method: (mean, std, n)}}`` of ``key`` over seeds."""
    out: dict = {}
    for row in rows:
        out.setdefault(row["dataset"], {}).setdefault(row["method"], []).append(row[key])
    return {d: {m: (float(np.mean(v)), float(np.std(v)), len(v)) for m, v in ms.items()} for d, ms in out.items()}


def best_method(summary: dict, dataset: str, higher_is_better: bool = True) -> str:
    """The method with the best mean on ``dataset`` in a :func:`summarize` table."""
    scores = {m: s[0] for m, s in summary[dataset].items()}
    return (max if higher_is_better else min)(scores, key=scores.get)
