"""Release student versions of the assignment notebooks and grade a folder of submissions.

Instructor notebooks mark solutions in the nbgrader style::

    def expectile_loss(diff, expectile):
        ### BEGIN SOLUTION
        ...
        ### END SOLUTION

``release`` replaces each marked region with ``raise NotImplementedError(...)`` at the same
indentation and clears outputs.

``grade`` grades every ``SUBMISSIONS/<student>/<assignment>.ipynb`` without trusting it:

1. The grader draws the test inputs now, at random (a secret salt shifts every random case's
   seed), so no answer can be prepared in advance.
2. The submission's folder is copied to a fresh temporary folder, and the grading worker
   (:mod:`vla_rl_lib.exercises.worker`) runs there in a bubblewrap sandbox
   (:mod:`vla_rl_lib.exercises.sandbox`): no network, no view of other submissions, the solutions
   or the grades, CPU-time, memory and wall-clock limits. It executes the notebook's cells, then
   calls the student's functions (named by the assignment's ``check_<name>(fn)`` calls) on the
   inputs and writes back their raw outputs.
3. The sandbox and every process in it are killed; then the grader, in its own process, compares
   those outputs with the reference (:func:`vla_rl_lib.exercises.core.judge`). Nothing the
   submission prints, records or writes can raise its score: a forged answer is only a right
   answer if it is the right value on inputs drawn after the submission was made.
4. ``grades.csv`` is written atomically once every submission is graded.

An exercise scores its point when its function gives the reference's values (and gradients) on
every case; a crashing cell, a timeout or a deleted check cell costs only the parts it touches.
Where the sandbox cannot be set up, ``grade`` refuses unless ``trust_submissions=True`` (then the
submission runs with the grader's rights, only under limits, and only its process group is killed).
"""
from __future__ import annotations

import csv
import io
import json
import re
import secrets
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Optional

from vla_rl_lib.checkpoint import atomic_write, check_writable_dir
from vla_rl_lib.errors import ConfigError, optional_import
from vla_rl_lib.exercises import answers as wire
from vla_rl_lib.exercises import sandbox
from vla_rl_lib.exercises.core import EXERCISES, AnswerError, Case, CheckResult, drawn_with, judge

BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = 'raise NotImplementedError("Your code here: replace this line.")'
CHECK_CALL = re.compile(r"\bcheck_([a-z0-9_]+)\s*\(\s*([A-Za-z_][A-Za-z0-9_]*)?")


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
            for name, _ in CHECK_CALL.findall(cell.source):
                if name not in names:
                    names.append(name)
    return names


def functions_of(notebook) -> dict[str, str]:
    """Exercise name -> the function the notebook checks for it (``check_k3_kl(k3_kl)`` -> ``k3_kl``)."""
    found: dict[str, str] = {}
    for cell in notebook.cells:
        if cell.cell_type == "code":
            for name, fn in CHECK_CALL.findall(cell.source):
                found.setdefault(name, fn or name)
    return found


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


def grade(submissions: str | Path, output: str | Path = "grades.csv", timeout: int = 600,
          source: str | Path = "notebooks/assignments", parameters: Optional[dict] = None,
          trust_submissions: bool = False, cell_timeout: Optional[int] = None, memory_mb: int = 8192,
          disk_mb: int = 1024) -> Path:
    """Grade ``submissions/<student>/<assignment>.ipynb`` against the assignments in ``source``.

    Writes a CSV with one row per student and assignment: points per exercise, total, maximum, the
    first error (missing notebook, failing cell, timeout) and the feedback of each failed exercise.
    ``timeout`` is the wall-clock limit of one notebook (its CPU-time limit is twice that);
    ``cell_timeout`` limits one cell and one call of a student's function (default: a quarter of
    ``timeout``, at least 10 s); ``memory_mb`` its address space, ``disk_mb`` each of the sandbox's
    two writable in-memory folders. Returns the CSV path.
    """
    nbformat = optional_import("nbformat", "notebooks", "Grading assignments")
    submissions, output, source = Path(submissions), Path(output), Path(source)
    if not submissions.is_dir():
        raise ConfigError(f"submissions folder {submissions} does not exist; expected <folder>/<student>/<assignment>.ipynb")
    if output.is_dir():
        raise ConfigError(f"--output {output} is a folder; give the path of the CSV file to write")
    check_writable_dir(output.parent, "--output")
    assignments = {p.stem: functions_of(nbformat.read(p, as_version=4)) for p in _assignments(source)}
    for assignment, functions in assignments.items():
        unknown = [name for name in functions if name not in EXERCISES]
        if unknown:
            raise ConfigError(f"assignment {assignment!r} checks {', '.join(unknown)}, which the kit has no "
                              f"exercise for; known: {', '.join(sorted(EXERCISES))}")
    reason = sandbox.unavailable_reason((submissions, source, output.parent))
    if reason and not trust_submissions:
        raise ConfigError(f"cannot grade untrusted submissions: {reason}. Fix that, or pass --trust-submissions "
                          "to run them with your own rights (only if you trust every submission)")
    if reason:
        print(f"warning: grading WITHOUT a sandbox ({reason}); submissions run with your rights", file=sys.stderr)
    cell_timeout = cell_timeout or max(10, timeout // 4)
    limits = sandbox.Limits(wall_seconds=timeout, cpu_seconds=2 * timeout, memory_mb=memory_mb, disk_mb=disk_mb)
    params = {"smoke": True, **(parameters or {})}
    columns = [name for names in assignments.values() for name in names]
    students = sorted(p for p in submissions.iterdir() if p.is_dir() and not p.name.startswith("."))
    rows = []
    for student in students:
        for assignment, functions in assignments.items():
            row = {"student": student.name, "assignment": assignment, "max": len(functions), "error": ""}
            notebook = student / f"{assignment}.ipynb"
            if student.is_symlink():
                row["error"], results = "the student's folder is a symbolic link: not graded", {}
            elif not (notebook.is_file() and not notebook.is_symlink()):
                row["error"], results = f"missing {notebook.name}", {}
            else:
                row["error"], results = grade_one(student, notebook.name, functions, params, limits, cell_timeout,
                                                  sandboxed=reason is None)
            for name in functions:
                row[name] = 1 if name in results and results[name].passed else 0
            row["total"] = sum(row[name] for name in functions)
            row["feedback"] = " | ".join(r.message.replace("\n", " ") for r in results.values() if not r.passed)
            rows.append(row)
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["student", "assignment", *columns, "total", "max", "error", "feedback"],
                            restval="")
    writer.writeheader()
    writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
    return atomic_write(output, lambda tmp: Path(tmp).write_text(text.getvalue()))


def grade_one(folder: Path, notebook: str, functions: dict[str, str], params: dict, limits: "sandbox.Limits",
              cell_timeout: int, sandboxed: bool) -> tuple[str, dict[str, CheckResult]]:
    """Run one notebook in a fresh copy of its folder and judge its functions; (first error, results)."""
    with drawn_with(secrets.randbelow(2**31)):
        cases = {name: EXERCISES[name].cases() for name in functions}
    scratch = Path(tempfile.mkdtemp(prefix="vla_rl_grading_"))
    try:
        work, job_path = scratch / "submission", scratch / "job.json"
        try:  # links are copied as links (they lead nowhere inside); pipes and devices are not copied
            shutil.copytree(folder, work, symlinks=True, ignore=_special_files)
        except (shutil.Error, OSError):
            pass  # whatever could be copied is graded; the notebook itself is a plain file
        work.mkdir(exist_ok=True)
        inside = Path("/submission") if sandboxed else work
        job = {"notebook": str(inside / notebook), "copy_from": "/original" if sandboxed else None,
               "parameters": params, "cell_timeout": cell_timeout, "call_timeout": cell_timeout,
               "exercises": {name: {"function": fn, "grad_inputs": list(EXERCISES[name].grad_inputs),
                                    "cases": [{"name": c.name, "inputs": wire.pack(c.inputs)} for c in cases[name]]}
                             for name, fn in functions.items()}}
        job_path.write_text(json.dumps(job))
        env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg", "PYTHONDONTWRITEBYTECODE": "1",
               "LANG": "C.UTF-8", "VLA_RL_SMOKE": "1" if params.get("smoke") else "0"}
        job_arg = "/grading/job.json" if sandboxed else str(job_path)
        outcome = sandbox.run([sys.executable, "-m", "vla_rl_lib.exercises.worker", job_arg], work, job_path, env,
                              limits, sandboxed, answers_cap=wire.MAX_BYTES)
        # every process of the submission is gone now; only then is what it sent read
        try:
            report = wire.parse(outcome.answers, outcome.overflow)
            error = str(report.get("error", ""))[:300] if isinstance(report, dict) else ""
            exercises = report.get("exercises") if isinstance(report, dict) else None
        except ValueError as exc:
            last = outcome.log_tail.strip().splitlines()[-1:] if outcome.problem else []
            error = f"{outcome.problem or exc}" + (f" (last output: {last[0][:160]})" if last else "")
            exercises = None
        exercises = exercises if isinstance(exercises, dict) else {}
        results = {name: _judge(name, cases[name], exercises.get(name)) for name in functions}
        return (error if exercises == {} and error else outcome.problem or error or ""), results
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _special_files(folder: str, names: list[str]) -> list[str]:
    """What ``copytree`` must skip: pipes, sockets and devices (reading a pipe would block the grader)."""
    import stat

    skip = []
    for name in names:
        try:
            mode = Path(folder, name).lstat().st_mode
        except OSError:
            skip.append(name)
            continue
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
            skip.append(name)
    return skip


def _judge(name: str, cases: list[Case], reported) -> CheckResult:
    """Judge what the worker reported; whatever it holds, the grader itself never fails on it."""
    try:
        return _judge_answers(name, cases, reported)
    except Exception as exc:  # noqa: BLE001 - a malformed report is a wrong answer, not a crash
        return CheckResult(name, False, f"✗ {name}: unreadable answer ({type(exc).__name__})", 0, len(cases),
                           "missing")


def _judge_answers(name: str, cases: list[Case], reported) -> CheckResult:
    exercise = EXERCISES[name]
    if not isinstance(reported, dict):
        return CheckResult(name, False, f"✗ {name}: no answer (the notebook did not finish)", 0, len(cases), "missing")
    if "missing" in reported or not isinstance(reported.get("answers"), list) or len(reported["answers"]) != len(cases):
        why = str(reported.get("missing", "no answers"))[:200]
        return CheckResult(name, False, f"✗ {name}: {why}", 0, len(cases), "missing")

    def answer(i: int, case: Case):
        got = reported["answers"][i]
        if not isinstance(got, dict):
            raise AnswerError("gave no answer")
        if got.get("blank"):
            raise NotImplementedError
        if "error" in got:
            raise AnswerError(str(got["error"])[:400])
        try:
            out, grads = wire.unpack(got.get("out")), wire.unpack(got.get("grads"))
        except ValueError as exc:
            raise AnswerError(f"gave an unreadable answer ({exc})") from None
        if not isinstance(out, list) or not isinstance(grads, dict):
            raise AnswerError("gave an unreadable answer")
        return tuple(out), grads

    return judge(exercise, cases, answer)


def _cell(value):
    """A CSV cell that a spreadsheet will not run as a formula."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value
    return value
