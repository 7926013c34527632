"""vla_rl_lib.notebook: papermill runs, failures that name the cell, sweeps that resume and keep going."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

pytest.importorskip("papermill")
import nbformat  # noqa: E402

from vla_rl_lib.errors import ConfigError, MissingDependencyError  # noqa: E402
from vla_rl_lib.notebook import (NotebookExecutionError, final_metrics, metric_health, parse_grid,  # noqa: E402
                                 parse_parameters, parse_value, run_notebook, sweep)

# A tiny notebook in the kit's shape: a parameters cell, work that depends on the parameters,
# metrics.json in output_dir, and a failure on demand (x == 2) for the error paths.
SOURCE = [
    ("code", "import json, pathlib", None),
    ("code", "x = 1\nseed = 0\nmode = 'fine'\noutput_dir = 'runs/tiny'", ["parameters"]),
    ("code", "if x == 2:\n    raise ValueError('x may not be 2')\nscore = x * 10 + seed", None),
    ("code", "out = pathlib.Path(output_dir); out.mkdir(parents=True, exist_ok=True)\n"
             "(out / 'metrics.json').write_text(json.dumps({'evaluation': {'mean_reward': score}, 'mode': mode}))",
     None),
]


@pytest.fixture
def tiny(tmp_path) -> Path:
    nb = nbformat.v4.new_notebook()
    for kind, src, tags in SOURCE:
        cell = nbformat.v4.new_code_cell(src)
        if tags:
            cell.metadata["tags"] = tags
        nb.cells.append(cell)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = tmp_path / "tiny.ipynb"
    nbformat.write(nb, path)
    return path


def test_parse_values_grid_and_parameters():
    assert parse_value("3") == 3 and isinstance(parse_value("3"), int)
    assert parse_value("0.7") == 0.7 and parse_value("1e-4") == 1e-4
    assert parse_value("true") is True and parse_value("False") is False and parse_value("none") is None
    assert parse_value("pendulum-medium-v0") == "pendulum-medium-v0"
    assert parse_grid(["expectile=0.5,0.7,0.9", "temperature=1,3"]) == {"expectile": [0.5, 0.7, 0.9],
                                                                         "temperature": [1, 3]}
    assert parse_parameters([["smoke", "true"], ["dataset", "hopper-medium-v0"], ["lr", "3e-4"]]) == \
        {"smoke": True, "dataset": "hopper-medium-v0", "lr": 3e-4}
    for bad in (["expectile"], ["=1,2"], ["a=1", "a=2"], ["x="]):
        with pytest.raises(ConfigError):
            parse_grid(bad)
    with pytest.raises(ConfigError):
        parse_parameters([["1bad", "2"]])


def test_metric_health_flags_values_outside_the_specification_ranges():
    rows = {r["metric"]: r for r in metric_health({"v_loss": 0.5, "q_loss": 3.0, "policy_loss": -2.0}, "offline")}
    assert rows["v_loss"]["healthy"] is True
    assert rows["q_loss"]["healthy"] is False  # spec: 0.01 - 1.0
    assert rows["policy_loss"]["healthy"] is True
    assert rows["mean_advantage"]["healthy"] is None and rows["mean_advantage"]["value"] is None
    online = {r["metric"]: r for r in metric_health({"policy_loss": 0.5, "value_loss": 0.2, "entropy": 0.6}, "online")}
    assert online["policy_loss"]["healthy"] is False  # spec: -0.1 - 0.1
    assert online["value_loss"]["healthy"] is True
    assert online["entropy"]["healthy"] is None  # task-dependent
    assert final_metrics([{"a": 1.0, "b": 2.0}, {"a": 3.0}]) == {"a": 3.0, "b": 2.0}
    with pytest.raises(ConfigError):
        metric_health({}, "sideways")


def test_run_notebook_injects_parameters_and_output_dir(tiny, tmp_path):
    out = tmp_path / "run"
    executed = run_notebook(tiny, {"x": 3, "mode": "custom"}, out)
    assert executed == (out / "tiny.ipynb").resolve()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == {"evaluation": {"mean_reward": 30}, "mode": "custom"}
    assert json.loads((out / "run.json").read_text())["status"] == "ok"
    nb = nbformat.read(executed, as_version=4)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert injected and "x = 3" in injected[0].source and str(out.resolve()) in injected[0].source


def test_run_notebook_failure_names_the_cell_and_keeps_the_notebook(tiny, tmp_path):
    out = tmp_path / "failed"
    with pytest.raises(NotebookExecutionError) as info:
        run_notebook(tiny, {"x": 2}, out)
    message = str(info.value)
    assert "code cell" in message and "if x == 2" in message and "ValueError: x may not be 2" in message
    assert info.value.output_notebook.is_file()
    assert json.loads((out / "run.json").read_text())["status"] == "failed"
    with pytest.raises(ConfigError, match="no parameter"):
        run_notebook(tiny, {"nope": 1}, tmp_path / "bad")
    with pytest.raises(ConfigError, match="does not exist"):
        run_notebook(tmp_path / "missing.ipynb", {}, tmp_path / "bad")


@pytest.mark.slow
def test_sweep_keeps_going_summarises_and_resumes(tiny, tmp_path):
    out = tmp_path / "sweep"
    summary = sweep(tiny, {"x": [1, 2, 3]}, seeds=[0, 1], workers=1, output_dir=out, parameters={"mode": "s"},
                    verbose=False)
    assert len(summary.rows) == 6 and len(summary.failed) == 2
    with open(summary.csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["status"] for r in rows] == ["ok", "ok", "failed", "failed", "ok", "ok"]
    by_run = {(r["x"], r["seed"]): r for r in rows}
    assert by_run[("3", "1")]["evaluation.mean_reward"] == "31"
    assert "x may not be 2" in by_run[("2", "0")]["error"]
    assert (out / "x=2_seed=0" / "tiny.ipynb").is_file()  # the failed run's partial notebook is kept
    assert summary.metric == "evaluation.mean_reward"
    assert summary.plot_path.is_file() and summary.plot_path.stat().st_size > 1000
    again = sweep(tiny, {"x": [1, 2, 3]}, seeds=[0, 1], workers=1, output_dir=out, parameters={"mode": "s"},
                  verbose=False)
    statuses = [r["status"] for r in again.rows]
    assert statuses == ["skipped", "skipped", "failed", "failed", "skipped", "skipped"]
    assert again.rows[5]["evaluation.mean_reward"] == 31  # skipped runs still report their metrics
    with pytest.raises(ConfigError, match="both a fixed parameter and a sweep axis"):
        sweep(tiny, {"x": [1]}, parameters={"x": 2}, output_dir=out, verbose=False)
    with pytest.raises(ConfigError, match="no parameter"):
        sweep(tiny, {"nope": [1]}, output_dir=out, verbose=False)


@pytest.mark.slow
def test_sweep_with_parallel_workers(tiny, tmp_path):
    summary = sweep(tiny, {"x": [1, 3]}, seeds=[0], workers=2, output_dir=tmp_path / "par", verbose=False)
    assert [r["status"] for r in summary.rows] == ["ok", "ok"]
    assert [r["evaluation.mean_reward"] for r in summary.rows] == [10, 30]


@pytest.mark.slow
def test_sweep_on_ray(tiny, tmp_path):
    try:
        import ray  # noqa: F401
    except ImportError:
        with pytest.raises(MissingDependencyError, match="ray"):
            sweep(tiny, {"x": [1]}, seeds=[0], backend="ray", output_dir=tmp_path / "ray", verbose=False)
        pytest.skip("ray is not installed: checked the MissingDependencyError only (pip install 'vla-rl-kit[ray]')")
    summary = sweep(tiny, {"x": [1, 2]}, seeds=[0], workers=2, backend="ray", output_dir=tmp_path / "ray",
                    verbose=False)
    assert [r["status"] for r in summary.rows] == ["ok", "failed"]
    assert summary.rows[0]["evaluation.mean_reward"] == 10
    assert "x may not be 2" in summary.rows[1]["error"]
