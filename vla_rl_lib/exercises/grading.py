"""Release student versions of the assignment notebooks and grade a folder of submissions.

Instructor notebooks mark solutions in the nbgrader style::

    def expectile_loss(diff, expectile):
        ### BEGIN SOLUTION
        ...
        ### END SOLUTION

``release`` replaces each marked region with ``raise NotImplementedError(...)`` at the same
indentation and clears outputs. ``grade`` executes every ``SUBMISSIONS/<student>/<assignment>.ipynb``
with papermill in its own process under a time limit (each cell and the whole notebook), lets
execution continue past failing cells, and reads the checks each notebook recorded (one JSON line
per ``check_<name>`` call, see ``vla_rl_lib.exercises.core``). An exercise scores its points only
when its check ran and passed; a crash, a timeout or a deleted cell costs only the parts it touches.
"""
from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

from vla_rl_lib.errors import ConfigError, optional_import

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = 'raise NotImplementedError("Your code here: replace this line.")'
CHECK_CALL = re.compile(r"\bcheck_([a-z0-9_]+)\s*\(")


def strip_solutions(source: str) -> str:
    """Replace every ``### BEGIN SOLUTION`` ... ``### END SOLUTION`` region by a stub."""
    out, inside = [], False
    for line in source.splitlines():
        stripped = line.strip()
        if stripped.startswith(BEGIN):
            if inside:
                raise ConfigError(f"nested '{BEGIN}' in:\n{source[:200]}")
            inside = True
            out.append(line[: len(line) - len(line.lstrip())] + STUB)
        elif stripped.startswith(END):
            if not inside:
                raise ConfigError(f"'{END}' without '{BEGIN}' in:\n{source[:200]}")
            inside = False
        elif not inside:
            out.append(line)
    if inside:
        raise ConfigError(f"'{BEGIN}' without '{END}' in:\n{source[:200]}")
    return "\n".join(out)


def exercises_of(notebook) -> list[str]:
    """The exercises a notebook checks, in order (from its ``check_<name>(...)`` calls)."""
    names: list[str] = []
    for cell in notebook.cells:
        if cell.cell_type == "code":
            for name in CHECK_CALL.findall(cell.source):
                if name not in names:
                    names.append(name)
    return names


def _assignments(source: str | Path) -> list[Path]:
    source = Path(source)
    notebooks = sorted(p for p in source.glob("*.ipynb") if not p.name.startswith(("_", ".")))
    if not notebooks:
        raise ConfigError(f"no assignment notebooks (*.ipynb) in {source}")
    return notebooks


def release(source: str | Path, output: str | Path) -> list[Path]:
    """Write the student version of every assignment notebook in ``source`` to ``output``."""
    nbformat = optional_import("nbformat", "notebooks", "Releasing assignments")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for path in _assignments(source):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.source = strip_solutions(cell.source)
                cell.outputs, cell.execution_count = [], None
        nb.metadata["vla_rl_assignment"] = {"name": path.stem, "exercises": exercises_of(nb)}
        target = output / path.name
        nbformat.write(nb, target)
        written.append(target)
    return written


def execute_submission(notebook: str | Path, output: str | Path, results: str | Path, cell_timeout: int,
                       parameters: Optional[dict] = None) -> Optional[str]:
    """Run one notebook with papermill, continuing past errors; return the first error, if any."""
    papermill = optional_import("papermill", "notebooks", "Grading assignments")
    os.environ["VLA_RL_GRADING_RESULTS"] = str(results)
    try:
        papermill.execute_notebook(str(notebook), str(output), parameters=parameters or {}, kernel_name="python3",
                                   progress_bar=False, execution_timeout=cell_timeout, allow_errors=True,
                                   interrupt_on_timeout=True, cwd=str(Path(notebook).parent))
    except papermill.PapermillExecutionError as exc:
        return f"cell {exc.exec_count}: {exc.ename}: {exc.evalue}"[:300]
    return None


def grade(submissions: str | Path, output: str | Path = "grades.csv", timeout: int = 600,
          source: str | Path = "notebooks/assignments", parameters: Optional[dict] = None) -> Path:
    """Grade ``submissions/<student>/<assignment>.ipynb`` against the assignments in ``source``.

    Writes a CSV with one row per student and assignment: points per exercise, total, maximum and
    the first error (missing notebook, failing cell, timeout). Returns the CSV path.
    """
    nbformat = optional_import("nbformat", "notebooks", "Grading assignments")
    submissions = Path(submissions)
    if not submissions.is_dir():
        raise ConfigError(f"submissions folder {submissions} does not exist; expected <folder>/<student>/<assignment>.ipynb")
    assignments = {p.stem: exercises_of(nbformat.read(p, as_version=4)) for p in _assignments(source)}
    students = sorted(p for p in submissions.iterdir() if p.is_dir() and not p.name.startswith("."))
    params = {"smoke": True, **(parameters or {})}
    columns = [name for names in assignments.values() for name in names]
    rows = []
    work = Path(tempfile.mkdtemp(prefix="vla_rl_grading_"))
    for student in students:
        for assignment, exercises in assignments.items():
            row = {"student": student.name, "assignment": assignment, "max": len(exercises), "error": ""}
            notebook = student / f"{assignment}.ipynb"
            passed: dict[str, bool] = {}
            if not notebook.exists():
                row["error"] = f"missing {notebook.name}"
            else:
                results = work / f"{student.name}__{assignment}.jsonl"
                executed = work / f"{student.name}__{assignment}.ipynb"
                row["error"] = _run_isolated(notebook, executed, results, timeout, params)
                passed = _read_results(results)
            for name in exercises:
                row[name] = 1 if passed.get(name) else 0
            row["total"] = sum(row[name] for name in exercises)
            rows.append(row)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["student", "assignment", *columns, "total", "max", "error"], restval="")
        writer.writeheader()
        writer.writerows(rows)
    return output


def _run_isolated(notebook: Path, executed: Path, results: Path, timeout: int, params: dict) -> str:
    """Execute in a child process with a hard wall-clock limit, so nothing a submission does stops grading."""
    results.unlink(missing_ok=True)
    cell_timeout = max(10, timeout // 2)
    cmd = [sys.executable, "-m", "vla_rl_lib.exercises.grading", str(notebook), str(executed), str(results),
           str(cell_timeout), json.dumps(params)]
    # a new session, so that on timeout the kernel the child started is killed with it
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return f"timed out after {timeout} s"
    if proc.returncode != 0:
        tail = (stderr or stdout).strip().splitlines()
        return f"grader process failed: {tail[-1] if tail else proc.returncode}"[:300]
    return stdout.strip().splitlines()[-1] if stdout.strip() else ""


def _read_results(path: Path) -> dict[str, bool]:
    passed: dict[str, bool] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            passed[record["exercise"]] = bool(record.get("passed"))  # the last check of an exercise counts
    return passed


if __name__ == "__main__":  # the child process of _run_isolated
    nb, out, res, cell_timeout, params = sys.argv[1:6]
    error = execute_submission(nb, out, res, int(cell_timeout), json.loads(params))
    print(error or "")
