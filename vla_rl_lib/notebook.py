"""Notebooks as reproducible runs: papermill execution, sweeps, and the diagnostics notebooks show.

* :func:`run_notebook` executes one notebook with parameters into a run directory (papermill,
  kernel ``python3``). The executed notebook is kept there even when a cell fails; the failure is
  one :class:`NotebookExecutionError` naming the cell.
* :func:`sweep` runs a parameter grid times seeds, locally (``workers`` processes) or on Ray,
  keeps every executed notebook, writes ``summary.csv`` and ``comparison.png``, skips runs that
  are already complete and keeps going past a failed run.
* :func:`parse_grid` and :func:`parse_parameters` turn command-line text into values.
* :func:`write_run_metrics` leaves ``metrics.json`` in a notebook's run directory. The RL diagnostics
  the notebooks show (:func:`metric_health`, :func:`overestimation_diagnostic`, ...) live in
  :mod:`vla_rl_lib.diagnostics`; they are re-exported here for older imports.

Every kit notebook has one cell tagged ``parameters`` with at least ``smoke`` (shrink the run to
under a minute) and ``output_dir`` (where ``metrics.json``, the plot PNG and the mp4 go).
"""
from __future__ import annotations

import csv
import itertools
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np

from vla_rl_lib.diagnostics import METRIC_RANGES, final_metrics, metric_health, overestimation_diagnostic  # noqa: F401
from vla_rl_lib.errors import ConfigError, VLARLError, optional_import

__all__ = ["NotebookExecutionError", "run_notebook", "notebook_parameters", "sweep", "SweepSummary",
           "parse_value", "parse_grid", "parse_parameters", "METRIC_RANGES", "metric_health",
           "overestimation_diagnostic", "write_run_metrics", "smoke_default", "final_metrics", "describe_run"]

KERNEL = "python3"
RUN_RECORD = "run.json"


class NotebookExecutionError(VLARLError, RuntimeError):
    """A notebook cell raised; names the notebook, the cell and where the partial notebook is kept."""

    def __init__(self, message: str, output_notebook: Optional[Path] = None, cell_index: Optional[int] = None,
                 ename: str = "", evalue: str = ""):
        super().__init__(message)
        self.output_notebook = output_notebook
        self.cell_index = cell_index
        self.ename, self.evalue = ename, evalue


# ----------------------------------------------------------------------------------------------
# parsing command-line values
# ----------------------------------------------------------------------------------------------
def parse_value(text: Any) -> Any:
    """``"3"`` -> 3, ``"0.7"`` -> 0.7, ``"true"`` -> True, ``"none"`` -> None, anything else stays a string."""
    if not isinstance(text, str):
        return text
    t = text.strip()
    low = t.lower()
    if low in ("true", "yes", "on"):
        return True
    if low in ("false", "no", "off"):
        return False
    if low in ("none", "null"):
        return None
    if re.fullmatch(r"[+-]?\d+", t):
        return int(t)
    try:
        value = float(t)
    except ValueError:
        return t
    return value


def parse_parameters(pairs: Optional[Iterable[Sequence[str]]]) -> dict:
    """``[["expectile", "0.7"], ["smoke", "true"]]`` -> ``{"expectile": 0.7, "smoke": True}``."""
    out = {}
    for pair in pairs or []:
        if len(pair) != 2:
            raise ConfigError(f"a parameter is given as NAME VALUE (e.g. -p expectile 0.7), got {' '.join(pair)!r}")
        name, value = pair
        if not re.fullmatch(r"[A-Za-z_]\w*", name):
            raise ConfigError(f"parameter name {name!r} is not a Python identifier")
        out[name] = parse_value(value)
    return out


def parse_grid(specs: Optional[Iterable[str]]) -> dict[str, list]:
    """``["expectile=0.5,0.7,0.9", "temperature=1,3"]`` -> ``{"expectile": [0.5, 0.7, 0.9], "temperature": [1, 3]}``."""
    grid: dict[str, list] = {}
    for spec in specs or []:
        name, sep, values = str(spec).partition("=")
        name = name.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_]\w*", name) or not values.strip():
            raise ConfigError(f"a grid axis is given as NAME=V1,V2,... (e.g. --grid expectile=0.5,0.7,0.9), got {spec!r}")
        if name in grid:
            raise ConfigError(f"grid axis {name!r} is given twice")
        grid[name] = [parse_value(v) for v in values.split(",") if v.strip() != ""]
    return grid


def smoke_default() -> bool:
    """Whether ``VLA_RL_SMOKE`` asks for smoke-sized runs (how nbval and CI run the notebooks)."""
    return os.environ.get("VLA_RL_SMOKE", "0").strip().lower() in ("1", "true", "yes", "on")


# ----------------------------------------------------------------------------------------------
# one run
# ----------------------------------------------------------------------------------------------
def _papermill():
    return optional_import("papermill", "notebooks", "Running notebooks (vla-rl run-notebook / sweep)")


def notebook_parameters(notebook: str | Path) -> dict:
    """The parameters a notebook declares in its ``parameters`` cell: name -> default (as source text)."""
    pm = _papermill()
    path = _check_notebook(notebook)
    return {name: info["default"] for name, info in pm.inspect_notebook(str(path)).items()}


def _check_notebook(notebook: str | Path) -> Path:
    path = Path(notebook)
    if not path.is_file():
        here = Path(__file__).resolve().parents[1] / "notebooks" / path.name
        hint = f" (did you mean {here}?)" if here.is_file() else ""
        raise ConfigError(f"notebook {str(notebook)!r} does not exist{hint}")
    if path.suffix != ".ipynb":
        raise ConfigError(f"{path} is not a Jupyter notebook (.ipynb)")
    return path


def _default_output_dir(path: Path) -> Path:
    return Path("runs") / f"{path.stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def _failed_cell(nb_path: Path) -> tuple[Optional[int], str]:
    """Index (among code cells, 1-based) and first source line of the cell that raised."""
    try:
        import nbformat

        nb = nbformat.read(str(nb_path), as_version=4)
    except Exception:  # noqa: BLE001 - the error message is still useful without this
        return None, ""
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    for i, cell in enumerate(code_cells, 1):
        if any(o.get("output_type") == "error" for o in cell.get("outputs", [])):
            first = next((line for line in cell.source.splitlines() if line.strip()), "")
            return i, first[:80]
    return None, ""


def run_notebook(notebook: str | Path, parameters: Optional[dict] = None, output_dir: Optional[str | Path] = None,
                 kernel_name: str = KERNEL, timeout: Optional[int] = None, log_output: bool = False,
                 progress_bar: bool = False) -> Path:
    """Execute ``notebook`` with ``parameters`` into ``output_dir`` and return the executed notebook's path.

    ``output_dir`` (default ``runs/<notebook>-<time>``) is passed to the notebook as its
    ``output_dir`` parameter (as an absolute path) when the notebook declares one, so the run's
    ``metrics.json``, plot and video land beside the executed notebook. The kernel runs in the
    notebook's own folder, as in JupyterLab. A failing cell raises :class:`NotebookExecutionError`
    naming the cell; the partially executed notebook is kept.
    """
    pm = _papermill()
    path = _check_notebook(notebook).resolve()
    out_dir = Path(output_dir) if output_dir is not None else _default_output_dir(path)
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    params = dict(parameters or {})
    declared = pm.inspect_notebook(str(path))
    unknown = sorted(set(params) - set(declared))
    if unknown:
        raise ConfigError(f"{path.name} has no parameter(s) {', '.join(unknown)}; "
                          f"its parameters are: {', '.join(declared) or '(none)'}")
    if "output_dir" in declared and "output_dir" not in params:
        params["output_dir"] = str(out_dir)
    elif "output_dir" in params:
        params["output_dir"] = str(Path(params["output_dir"]).resolve())
    out_nb = out_dir / path.name
    record = {"notebook": str(path), "parameters": params, "started": time.time(), "status": "running"}
    _write_json(out_dir / RUN_RECORD, record)
    try:
        pm.execute_notebook(str(path), str(out_nb), parameters=params, kernel_name=kernel_name,
                            cwd=str(path.parent), progress_bar=progress_bar, log_output=log_output,
                            execution_timeout=timeout)
    except pm.PapermillExecutionError as exc:
        cell, first = _failed_cell(out_nb)
        where = f"code cell {cell}" + (f" (`{first}`)" if first else "") if cell else f"cell {exc.cell_index}"
        message = (f"{path.name} failed in {where}: {exc.ename}: {str(exc.evalue).splitlines()[0] if exc.evalue else ''}. "
                   f"The partially executed notebook is kept at {out_nb}")
        _write_json(out_dir / RUN_RECORD, dict(record, status="failed", error=message, finished=time.time()))
        raise NotebookExecutionError(message, out_nb, cell, exc.ename, exc.evalue) from None
    except Exception as exc:  # the kernel died, a timeout, ...: keep what we have and say so
        message = (f"{path.name} did not finish: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}. "
                   f"Whatever ran is kept at {out_nb}")
        _write_json(out_dir / RUN_RECORD, dict(record, status="failed", error=message, finished=time.time()))
        raise NotebookExecutionError(message, out_nb) from exc
    _write_json(out_dir / RUN_RECORD, dict(record, status="ok", finished=time.time()))
    return out_nb


def describe_run(executed_notebook: str | Path) -> str:
    """Where a run's files are and how to open them (what ``vla-rl run-notebook`` prints)."""
    nb = Path(executed_notebook)
    out = nb.parent
    lines = [f"executed notebook: {nb}"]
    for pattern, what in (("*.png", "plot"), ("*.mp4", "video"), ("metrics.json", "metrics")):
        for f in sorted(out.glob(pattern)):
            lines.append(f"{what + ':':18} {f}")
    lines.append(f"open it in JupyterLab: jupyter lab {nb}")
    return "\n".join(lines)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=2))
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return _jsonable(value.item())
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    return str(value)


# ----------------------------------------------------------------------------------------------
# sweeps
# ----------------------------------------------------------------------------------------------
@dataclass
class SweepSummary:
    """What :func:`sweep` did: one row per (grid point, seed), and where the summary files are."""

    rows: list[dict]
    output_dir: Path
    csv_path: Path
    plot_path: Optional[Path]
    metric: Optional[str] = None
    columns: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.rows if r["status"] == "failed"]

    @property
    def ok(self) -> list[dict]:
        return [r for r in self.rows if r["status"] in ("ok", "skipped")]

    def __repr__(self) -> str:
        failed = f" ({', '.join(r['run'] for r in self.failed)})" if self.failed else ""
        return (f"SweepSummary({len(self.rows)} runs: {len(self.ok)} complete, {len(self.failed)} failed{failed}; "
                f"summary {self.csv_path}, plot {self.plot_path})")


def _run_name(point: dict, seed: int) -> str:
    def fmt(v):
        return re.sub(r"[^A-Za-z0-9.+-]", "_", str(v))

    parts = [f"{k}={fmt(v)}" for k, v in point.items()] + [f"seed={seed}"]
    return "_".join(parts)


def flatten_metrics(data: dict, prefix: str = "") -> dict:
    """Numeric leaves of a nested dict as ``{"evaluation.mean_reward": ...}``."""
    out = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten_metrics(value, name + "."))
        elif isinstance(value, bool):
            out[name] = int(value)
        elif isinstance(value, (int, float)) and value is not None:
            out[name] = value
    return out


def _previous_run(run_dir: Path, notebook_name: str, params: dict) -> str:
    """``complete`` (ok, with these parameters), ``changed`` (ok, with other parameters) or ``todo``."""
    record = run_dir / RUN_RECORD
    if not record.is_file() or not (run_dir / notebook_name).is_file():
        return "todo"
    try:
        done = json.loads(record.read_text())
    except (OSError, json.JSONDecodeError):
        return "todo"
    if not isinstance(done, dict) or done.get("status") != "ok":
        return "todo"
    before = {k: v for k, v in (done.get("parameters") or {}).items() if k != "output_dir"}
    now = {k: v for k, v in _jsonable(params).items() if k != "output_dir"}
    return "complete" if before == now else "changed"


def _execute_one(notebook: str, params: dict, run_dir: str, timeout: Optional[int]) -> dict:
    """Run one sweep point; never raises (the error goes into the row). Top-level for processes and Ray."""
    t0 = time.time()
    try:
        run_notebook(notebook, params, run_dir, timeout=timeout)
        status, error = "ok", ""
    except NotebookExecutionError as exc:
        status, error = "failed", str(exc)
    except Exception as exc:  # noqa: BLE001 - a sweep keeps going past any one run
        status, error = "failed", f"{type(exc).__name__}: {exc}"
    return {"status": status, "error": error, "duration_s": round(time.time() - t0, 2)}


def _read_metrics(run_dir: Path) -> dict:
    path = run_dir / "metrics.json"
    if not path.is_file():
        return {}
    try:
        return flatten_metrics(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError):
        return {}


def sweep(notebook: str | Path, grid: dict[str, list], seeds: Sequence[int] = (0,), workers: int = 1,
          output_dir: str | Path = "runs/sweep", parameters: Optional[dict] = None, backend: str = "local",
          address: Optional[str] = None, metric: Optional[str] = None, timeout: Optional[int] = None,
          verbose: bool = True) -> SweepSummary:
    """Run ``notebook`` for every point of ``grid`` and every seed; summarise in ``summary.csv`` and a plot.

    Each run goes to ``output_dir/<k=v_..._seed=S>/`` with its executed notebook, ``run.json``
    and whatever the notebook writes (``metrics.json``, plot, video). ``parameters`` are fixed for
    every run; the notebook's ``seed`` parameter takes each of ``seeds``. Each run's ``run.json``
    and its ``summary.csv`` row record its full parameters. Runs already complete with the same
    parameters (``run.json`` says ok) are skipped, so rerunning an interrupted sweep finishes it; a
    run whose parameters changed (``-p smoke false``) is rerun, and the sweep says so. A failing
    run does not stop the sweep: its partial notebook is kept and its error goes into the summary.
    ``backend="ray"`` sends the runs to Ray (``address`` of a cluster, or a local Ray when None);
    every node must see ``output_dir`` and the notebook at the same paths.
    """
    path = _check_notebook(notebook).resolve()
    if not isinstance(grid, dict):
        raise ConfigError("grid must map parameter names to lists of values, e.g. {'expectile': [0.5, 0.7]}")
    grid = {k: list(v) if isinstance(v, (list, tuple)) else [v] for k, v in grid.items()}
    empty = [k for k, v in grid.items() if not v]
    if empty:
        raise ConfigError(f"grid axis {empty[0]!r} has no values")
    seeds = [int(s) for s in seeds] or [0]
    if int(workers) < 1:
        raise ConfigError(f"workers={workers} must be >= 1")
    if backend not in ("local", "ray"):
        raise ConfigError(f"backend={backend!r} is not one of 'local', 'ray'")
    fixed = dict(parameters or {})
    clash = sorted(set(fixed) & (set(grid) | {"seed"}))
    if clash:
        raise ConfigError(f"{', '.join(clash)} is both a fixed parameter and a sweep axis; give it once")
    declared = set(_papermill().inspect_notebook(str(path)))
    unknown = sorted((set(grid) | set(fixed) | {"seed"}) - declared)
    if unknown:
        raise ConfigError(f"{path.name} has no parameter(s) {', '.join(unknown)}; its parameters are: "
                          f"{', '.join(sorted(declared))}")
    out = Path(output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)

    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())] or [{}]
    jobs = []
    for point in points:
        for seed in seeds:
            run_dir = out / _run_name(point, seed)
            params = dict(fixed, **point, seed=seed)
            jobs.append(dict(point=point, seed=seed, run_dir=run_dir, params=params))

    results: dict[int, dict] = {}
    todo, changed = [], []
    for i, job in enumerate(jobs):
        previous = _previous_run(job["run_dir"], path.name, job["params"])
        if previous == "complete":
            results[i] = {"status": "skipped", "error": "", "duration_s": 0.0}
        else:
            todo.append(i)
            if previous == "changed":
                changed.append(job["run_dir"].name)
    if verbose:
        print(f"sweep: {len(jobs)} runs ({len(jobs) - len(todo)} already complete with the same parameters) of "
              f"{path.name} into {out} on {backend} with {workers} worker(s)", flush=True)
        if changed:
            print(f"sweep: rerunning {len(changed)} run(s) whose parameters changed since they ran: "
                  f"{', '.join(changed)}", flush=True)

    def report(i, res):
        results[i] = res
        if verbose:
            job = jobs[i]
            print(f"  [{len(results)}/{len(jobs)}] {job['run_dir'].name}: {res['status']}"
                  + (f" ({res['error'][:160]})" if res["error"] else f" in {res['duration_s']:.0f}s"), flush=True)

    args = [(str(path), jobs[i]["params"], str(jobs[i]["run_dir"]), timeout) for i in todo]
    if backend == "ray":
        _run_ray(todo, args, workers, address, report)
    elif workers == 1 or len(todo) <= 1:
        for i, a in zip(todo, args):
            report(i, _execute_one(*a))
    else:
        import concurrent.futures as cf
        import multiprocessing as mp

        with cf.ProcessPoolExecutor(max_workers=int(workers), mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(_execute_one, *a): i for i, a in zip(todo, args)}
            for fut in cf.as_completed(futures):
                report(futures[fut], fut.result())

    rows = []
    for i, job in enumerate(jobs):
        res = results[i]
        row = {"run": job["run_dir"].name, **job["point"], "seed": job["seed"], "status": res["status"],
               "error": res["error"], "duration_s": res["duration_s"],
               "rerun": "parameters changed" if job["run_dir"].name in changed else "",
               "parameters": json.dumps(_jsonable(job["params"]), sort_keys=True)}
        row.update(_read_metrics(job["run_dir"]))
        rows.append(row)
    columns = _columns(rows, list(grid))
    csv_path = out / "summary.csv"
    tmp = csv_path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, csv_path)
    metric = metric or _default_metric(rows)
    plot_path = _comparison_plot(rows, list(grid), metric, out / "comparison.png", path.stem) if metric else None
    summary = SweepSummary(rows, out, csv_path, plot_path, metric, columns)
    if verbose:
        print(f"sweep: {summary!r}", flush=True)
    return summary


def _run_ray(todo, args, workers, address, report) -> None:
    ray = optional_import("ray", "ray", "Sweeps on Ray (--backend ray)")
    started = False
    if not ray.is_initialized():
        for attempt in range(3):  # a local raylet gets 30 s to start; a busy machine can need more
            try:
                if address:
                    ray.init(address=address, log_to_driver=False)
                else:
                    ray.init(num_cpus=int(workers), include_dashboard=False, log_to_driver=False)
                break
            except Exception as exc:  # noqa: BLE001 - ray raises a bare Exception on a slow start
                ray.shutdown()
                if "timed out during startup" not in str(exc) or attempt == 2:
                    raise
        started = True
    try:
        remote = ray.remote(num_cpus=1)(_execute_one)
        pending = {}
        queue = list(zip(todo, args))
        while queue or pending:
            while queue and len(pending) < int(workers):
                i, a = queue.pop(0)
                pending[remote.remote(*a)] = i
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                try:
                    res = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - a lost worker is one failed run
                    res = {"status": "failed", "error": f"ray: {type(exc).__name__}: {exc}", "duration_s": 0.0}
                report(i, res)
    finally:
        if started:
            ray.shutdown()


def _columns(rows: list[dict], axes: list[str]) -> list[str]:
    head = ["run", *axes, "seed", "status", "error", "duration_s", "rerun", "parameters"]
    rest = sorted({k for r in rows for k in r} - set(head))
    return head + rest


_PREFERRED = ("evaluation.normalized_score", "evaluation.mean_reward", "mean_reward", "eval/mean_reward")


def _default_metric(rows: list[dict]) -> Optional[str]:
    keys = {k for r in rows for k in r}
    for name in _PREFERRED:
        if name in keys:
            return name
    return None


def _comparison_plot(rows, axes, metric, path: Path, title: str) -> Optional[Path]:
    """Mean and seeds of ``metric`` for every grid point, one bar each."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    groups: dict[str, list] = {}
    for r in rows:
        label = ", ".join(f"{a}={r[a]}" for a in axes) or "default"
        groups.setdefault(label, [])
        value = r.get(metric)
        if isinstance(value, (int, float)) and math.isfinite(value):
            groups[label].append(value)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(groups) + 2), 3.6))
    labels = list(groups)
    for x, label in enumerate(labels):
        vals = groups[label]
        if vals:
            ax.bar(x, np.mean(vals), yerr=np.std(vals) if len(vals) > 1 else None, color="#4c72b0", alpha=0.6, capsize=4)
            ax.scatter([x] * len(vals), vals, color="black", s=12, zorder=3)
        else:
            ax.text(x, 0, "failed", ha="center", va="bottom", color="red")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30 if len(labels) > 3 else 0, ha="right" if len(labels) > 3 else "center")
    ax.set_ylabel(metric)
    ax.set_title(f"{title}: {metric} (bars: mean over seeds, dots: seeds)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_run_metrics(output_dir: str | Path, trainer=None, evaluation: Optional[dict] = None,
                      final_metrics: Optional[dict] = None, health: Optional[list] = None, **extra) -> Path:
    """Write ``output_dir/metrics.json``: what a notebook run produced, in the shape sweeps read.

    Keys: ``algorithm``, ``env``, ``dataset``, ``global_step``, ``evaluation`` (``evaluate()``'s
    numbers), ``final_metrics`` (the last logged training metrics), ``health`` (from
    :func:`metric_health`, as ``{metric: {value, low, high, healthy}}``) and anything in ``extra``.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {}
    if trainer is not None:
        data.update(algorithm=getattr(trainer, "algorithm", None), env=getattr(trainer, "env_id", None),
                    dataset=getattr(trainer, "dataset_name", None), global_step=getattr(trainer, "global_step", None))
    if evaluation is not None:
        data["evaluation"] = {k: v for k, v in evaluation.items() if k != "video"}
    if final_metrics is not None:
        data["final_metrics"] = dict(final_metrics)
    if health is not None:
        data["health"] = {r["metric"]: {k: r[k] for k in ("value", "low", "high", "healthy")} for r in health}
    data.update(extra)
    path = out / "metrics.json"
    _write_json(path, data)
    return path
