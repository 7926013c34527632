"""The grading worker: runs one submission's notebook inside the sandbox, then calls its functions.

    python -m vla_rl_lib.exercises.worker JOB.json ANSWERS_FD

``JOB.json`` (written by the grader) names the notebook, the parameters to inject, the time limits
and, per exercise, the student's function name and the test inputs the grader drew. The worker
copies the submission's folder into its working folder (in the sandbox: read-only ``/original`` to
the in-memory ``/submission``), executes the notebook's code cells in order (IPython, so magics
work; an error or a timeout in one cell does not stop the next), then calls each function on each
input and writes the raw outputs and gradients, as JSON, to the file descriptor ``ANSWERS_FD``. It
judges nothing: the grader compares the answers with the reference in its own process, so whatever
this process (and the student code in it) sends can at most be a wrong answer.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys
from pathlib import Path


class CellTimeout(BaseException):
    """A cell or a function call ran past its time limit."""


def _alarm(seconds: float) -> None:
    signal.setitimer(signal.ITIMER_REAL, max(0.0, float(seconds)))


def _on_alarm(signum, frame):
    raise CellTimeout("ran past its time limit")


def _code_cells(notebook: dict, parameters: dict) -> list[tuple[str, str]]:
    """(label, source) of the notebook's code cells (``code cell N``, counted as JupyterLab shows them),
    with the grader's parameters injected after the ``parameters`` cell."""
    cells, injected = [], False
    inject = ("the grader's parameters", "\n".join(f"{k} = {v!r}" for k, v in parameters.items()))
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        cells.append((f"code cell {len(cells) + 1 - injected}", "".join(source) if isinstance(source, list) else str(source)))
        if not injected and "parameters" in (cell.get("metadata", {}).get("tags") or []):
            cells.append(inject)
            injected = True
    return cells if injected or not parameters else [inject, *cells]


def _shell():
    try:
        from IPython.core.interactiveshell import InteractiveShell
        from traitlets.config import Config
    except ImportError:  # plain exec when IPython is missing: magics then fail in their own cell
        return None
    config = Config()
    config.HistoryManager.enabled = False
    return InteractiveShell.instance(config=config)


def run_cells(cells: list[tuple[str, str]], cell_timeout: float) -> tuple[dict, str]:
    """Execute the cells in one namespace; return it and the first error (``code cell N: Type: message``)."""
    shell = _shell()
    namespace: dict = shell.user_ns if shell is not None else {"__name__": "__main__"}
    first_error = ""
    for label, source in cells:
        error = None
        _alarm(cell_timeout)
        try:
            if shell is not None:
                result = shell.run_cell(source, store_history=False)
                error = result.error_before_exec or result.error_in_exec
            else:
                exec(compile(source, f"<{label}>", "exec"), namespace)  # noqa: S102 - inside the sandbox
        except BaseException as exc:  # noqa: BLE001 - a student's cell may raise anything, SystemExit included
            error = exc
        finally:
            _alarm(0)
        if error is not None and not first_error:
            kind = "timed out" if isinstance(error, CellTimeout) else f"{type(error).__name__}: {error}"
            first_error = f"{label}: {kind}"[:300]
    return namespace, first_error


def answer(fn, cases: list[dict], grad_inputs: tuple, call_timeout: float) -> list[dict]:
    """Call ``fn`` on every case; each answer is packed outputs and gradients, or the failure."""
    from vla_rl_lib.exercises.answers import pack, unpack
    from vla_rl_lib.exercises.core import Case, _as_tuple, _call, _to_numpy, describe_exception

    answers = []
    for spec in cases:
        case = Case(spec["name"], unpack(spec["inputs"]))
        _alarm(call_timeout)
        try:
            out, grads = _call(fn, case, grad_inputs)
            items = [None if v is None else _numeric(v, _to_numpy) for v in _as_tuple(out)]
            answers.append({"out": pack(items), "grads": pack({k: _numeric(g, _to_numpy) for k, g in grads.items()})})
        except NotImplementedError:
            answers.append({"blank": True})
        except CellTimeout:
            answers.append({"error": f"ran past the {call_timeout:g} s limit for one call"})
        except BaseException as exc:  # noqa: BLE001
            answers.append({"error": describe_exception(exc)[:400]})
        finally:
            _alarm(0)
    return answers


def _numeric(value, to_numpy):
    try:
        return to_numpy(value)
    except Exception:  # noqa: BLE001 - an answer that is no array is reported by its type
        return value


def main(job_path: str, answers_fd: int) -> None:
    signal.signal(signal.SIGALRM, _on_alarm)
    job = json.loads(Path(job_path).read_text())
    answers_out = os.fdopen(answers_fd, "wb")
    report: dict = {"error": "", "exercises": {}}
    if job.get("copy_from"):
        shutil.copytree(job["copy_from"], ".", symlinks=True, dirs_exist_ok=True)
    try:
        notebook = json.loads(Path(job["notebook"]).read_text())
        cells = _code_cells(notebook, job.get("parameters", {}))
    except (OSError, ValueError) as exc:
        report["error"] = f"could not read the notebook: {type(exc).__name__}"
        cells = []
    namespace, cell_error = run_cells(cells, job["cell_timeout"])
    report["error"] = report["error"] or cell_error
    for name, spec in job["exercises"].items():
        fn = namespace.get(spec["function"])
        if not callable(fn):
            report["exercises"][name] = {"missing": f"no function `{spec['function']}` is defined"}
        else:
            report["exercises"][name] = {"answers": answer(fn, spec["cases"], tuple(spec["grad_inputs"]),
                                                           job["call_timeout"])}
    answers_out.write(json.dumps(report).encode())
    answers_out.close()
    sys.stdout.flush()
    os._exit(0)  # no atexit hooks or lingering threads of the student's code


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
