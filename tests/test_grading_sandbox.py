"""The grader under attack: hostile sample submissions, graded in one sandboxed run.

Each student below tries one attack from issue 17 (or one case the old grader already survived).
Where an attack would raise the score if it worked, the submission is written so that it *does*
earn the point when the attack succeeds (reading another student's notebook, reaching the
network, ...): a zero then proves the attack failed. Attacks on the grader's files are checked on
the host after grading.
"""
import csv
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import nbformat
import pytest

from vla_rl_lib.errors import ConfigError
from vla_rl_lib.exercises import grading, sandbox

K3_OK = ("import torch\nfrom vla_rl_lib import exercises\ndef k3_kl(log_probs, ref_log_probs):\n"
         "    d = ref_log_probs - log_probs\n    return torch.exp(d) - d - 1")
K3_WRONG = K3_OK.replace("- 1", "")
RTG_OK = "import numpy as np\ndef returns_to_go(rewards):\n    return np.cumsum(rewards[::-1])[::-1].copy()"
CHECKS = ["exercises.check_k3_kl(k3_kl)", "exercises.check_returns_to_go(returns_to_go)"]
PREPARED = """import json, os, sys
from vla_rl_lib.exercises import answers as wire, online
from vla_rl_lib.exercises.core import _as_tuple, _call, _to_numpy
sent = []
for case in online.K3.cases():
    out, grads = _call(online.K3.reference, case, online.K3.grad_inputs)
    sent.append({"out": wire.pack([_to_numpy(v) for v in _as_tuple(out)]),
                 "grads": wire.pack({k: _to_numpy(g) for k, g in grads.items()})})
os.write(int(sys.argv[-1]), json.dumps({"error": "", "exercises": {"k3_kl": {"answers": sent}}}).encode())
os._exit(0)"""
MARKER = f"vla_rl_detached_{os.getpid()}"


def notebook(cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("smoke = False"), *[nbformat.v4.new_code_cell(c) for c in cells]]
    nb.cells[0].metadata["tags"] = ["parameters"]
    return nb


def if_succeeds(attack: str) -> str:
    """Cells that define the right k3_kl only if ``attack`` (a statement) runs without error."""
    return (f"try:\n    {attack}\n    ATTACK_WORKED = True\nexcept Exception:\n    ATTACK_WORKED = False\n"
            + K3_OK.replace("    return", "    assert ATTACK_WORKED\n    return"))


def students(tmp: Path, port: int) -> dict:
    subs, source, grades = tmp / "submissions", tmp / "source", tmp / "grades.csv"
    rewrite = f"import time; time.sleep(4); open({str(grades)!r}, 'w').write('saboteur,full marks')"
    forged = ('{"error": "", "exercises": {"k3_kl": {"answers": "passed"}, "returns_to_go": {"passed": true}}}')
    return {
        # forged results: old-style records, forged "answers" down the answers pipe, printed "results", os._exit
        "forger": [K3_WRONG, "import json, os, sys\n"
                   "for path in (os.environ.get('VLA_RL_GRADING_RESULTS') or 'results.jsonl', '/grading/answers.json'):\n"
                   "    try:\n        open(path, 'a').write(json.dumps({'exercise': 'k3_kl', 'passed': True}) + '\\n')\n"
                   "    except OSError:\n        pass\n"
                   f"os.write(int(sys.argv[-1]), {forged!r}.encode())\n"
                   "print('k3_kl passed\\nreturns_to_go passed')\nos._exit(0)"],
        # well-formed answers prepared in advance: the reference's outputs on the notebook's own cases
        "preparer": [K3_WRONG, PREPARED],
        # invalid JSON down the answers pipe, then the process ends itself
        "garbler": [K3_OK, RTG_OK, "import os, sys\nos.write(int(sys.argv[-1]), b'{not json')\nos._exit(0)"],
        # fills its folder and /tmp (in-memory and size-limited: nothing reaches the grader's disk)
        "filler": ["import os\nblock = b'0' * 2**20\nwith open('big', 'wb') as fh:\n    for _ in range(4096):\n"
                   "        fh.write(block)", K3_OK, RTG_OK, *CHECKS],
        # answers of every wrong shape: strings, nested lists, a list where a mapping belongs
        "weirdo": [K3_OK, RTG_OK, "import json, os\nnested = {'t': 'py', 'v': 1}\nfor _ in range(200):\n"
                   "    nested = {'t': 'list', 'items': [nested]}\n"
                   "bad = {'out': {'t': 'list', 'items': [{'t': 'py', 'v': 'abc'}]}, 'grads': {'t': 'dict', 'items': {}}}\n"
                   "deep = {'out': nested, 'grads': {'t': 'dict', 'items': {}}}\n"
                   "import sys\nos.write(int(sys.argv[-1]), json.dumps({'error': ['x'], 'exercises': {"
                   "'k3_kl': {'answers': [bad] * 2}, 'returns_to_go': {'answers': [deep] * 4}}}).encode())\nos._exit(0)"],
        # writes outside its folder: next to the grades, into another submission, into its own original folder
        "escaper": [f"for p in [{str(tmp / 'outside.txt')!r}, {str(subs / 'alice' / 'hw.ipynb')!r}, "
                    f"{str(subs / 'escaper' / 'pwned.txt')!r}]:\n    try:\n        open(p, 'w').write('pwned')\n"
                    "    except OSError:\n        pass", K3_OK, RTG_OK, *CHECKS],
        # reads another student's notebook (k3 right only if it could) and the solutions (rtg likewise)
        "reader": [if_succeeds(f"open({str(subs / 'alice' / 'hw.ipynb')!r}).read()"),
                   RTG_OK.replace("    return", f"    open({str(source / 'hw.ipynb')!r}).read()\n    return"), *CHECKS],
        # reaches the network (a server the test runs on the host's loopback)
        "caller": [if_succeeds(f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=2).close()"),
                   RTG_OK, *CHECKS],
        # deletes grades.csv, then leaves a detached process that rewrites it after the grader is done
        "saboteur": [f"import os\ntry:\n    os.remove({str(grades)!r})\nexcept OSError:\n    pass",
                     f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', {rewrite!r}, {MARKER!r}], "
                     "start_new_session=True)", K3_WRONG, RTG_OK, *CHECKS],
        # kills every process it can see (the grader must not be one of them)
        "killer": [K3_OK, RTG_OK, "import os, signal\nfor pid in os.listdir('/proc'):\n    if pid.isdigit() and int(pid) != os.getpid():\n"
                   "        try:\n            os.kill(int(pid), signal.SIGKILL)\n        except OSError:\n            pass"],
        # a memory hog (the limit stops it, the rest of the notebook still counts), an infinite loop in a function
        "hog": ["x = bytearray(64 * 2**30)", K3_OK, "def returns_to_go(rewards):\n    while True:\n        pass", *CHECKS],
        # the cases the old grader survived: a crashing cell, a deleted check cell, a blank answer
        "crasher": ["raise RuntimeError('boom')", K3_OK, "def returns_to_go(rewards):\n    raise NotImplementedError"],
        "honest": [K3_OK, RTG_OK, *CHECKS],
    }


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    if sandbox.unavailable_reason() is not None:
        pytest.skip(f"no sandbox here: {sandbox.unavailable_reason()}")
    tmp = tmp_path_factory.mktemp("grading")
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(0.2)
    connections, done = [], threading.Event()

    def serve():
        while not done.is_set():
            try:
                connections.append(server.accept()[0])
            except OSError:
                pass
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    (tmp / "source").mkdir()
    nbformat.write(notebook([K3_OK, RTG_OK, *CHECKS]), tmp / "source" / "hw.ipynb")
    for name, cells in students(tmp, server.getsockname()[1]).items():
        (tmp / "submissions" / name).mkdir(parents=True)
        nbformat.write(notebook(cells), tmp / "submissions" / name / "hw.ipynb")
    (tmp / "submissions" / "alice").mkdir()
    nbformat.write(notebook([K3_OK, RTG_OK]), tmp / "submissions" / "alice" / "hw.ipynb")
    (tmp / "submissions" / "linker").mkdir()                     # a notebook that is a link to another's
    (tmp / "submissions" / "linker" / "hw.ipynb").symlink_to(tmp / "submissions" / "alice" / "hw.ipynb")
    (tmp / "submissions" / "absent").mkdir()
    (tmp / "submissions" / "mallory").symlink_to(tmp / "submissions" / "alice")  # a folder that is a link
    os.mkfifo(tmp / "submissions" / "honest" / "pipe")                         # a pipe the copy must skip
    alice_before = (tmp / "submissions" / "alice" / "hw.ipynb").read_bytes()
    (tmp / "grades.csv").write_text("old grades\n")
    grading.grade(tmp / "submissions", tmp / "grades.csv", timeout=40, cell_timeout=4, memory_mb=4096, disk_mb=64,
                  source=tmp / "source")
    done.set()
    grades_after = (tmp / "grades.csv").read_text()
    alive = [p for p in Path("/proc").iterdir() if p.name.isdigit() and MARKER in _cmdline(p)]
    time.sleep(5)  # the detached process would have rewritten the grades by now
    rows = {r["student"]: r for r in csv.DictReader(open(tmp / "grades.csv"))}
    return dict(tmp=tmp, rows=rows, grades_after=grades_after, alive=alive, connections=connections,
                alice_before=alice_before)


def _cmdline(p: Path) -> str:
    try:
        return (p / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def score(graded, student):
    row = graded["rows"][student]
    return int(row["k3_kl"]), int(row["returns_to_go"])


pytestmark = pytest.mark.slow


def test_forged_results_and_os_exit_score_nothing(graded):
    assert score(graded, "forger") == (0, 0)


def test_answers_prepared_in_advance_score_nothing(graded):
    """Right for the notebook's own cases, wrong for the cases drawn at grading time."""
    assert score(graded, "preparer") == (0, 0)
    assert "case 'random'" in graded["rows"]["preparer"]["feedback"]


def test_invalid_answers_score_nothing_and_are_reported(graded):
    assert score(graded, "garbler") == (0, 0)
    assert "not valid JSON" in graded["rows"]["garbler"]["error"]


def test_disk_is_limited(graded):
    assert score(graded, "filler") == (1, 1)
    assert "No space left on device" in graded["rows"]["filler"]["error"]


def test_malformed_answers_score_nothing(graded):
    assert score(graded, "weirdo") == (0, 0)


def test_linked_folders_and_pipes(graded):
    assert score(graded, "mallory") == (0, 0) and "symbolic link" in graded["rows"]["mallory"]["error"]
    assert score(graded, "honest") == (1, 1)


def test_writing_outside_the_folder_changes_nothing(graded):
    tmp = graded["tmp"]
    assert not (tmp / "outside.txt").exists()
    assert not (tmp / "submissions" / "escaper" / "pwned.txt").exists()
    assert (tmp / "submissions" / "alice" / "hw.ipynb").read_bytes() == graded["alice_before"]
    assert score(graded, "escaper") == (1, 1)  # it ran, and was graded on its own merits


def test_other_submissions_and_solutions_cannot_be_read(graded):
    assert score(graded, "reader") == (0, 0)
    assert score(graded, "linker") == (0, 0) and "missing" in graded["rows"]["linker"]["error"]


def test_no_network(graded):
    assert score(graded, "caller") == (0, 1) and not graded["connections"]


def test_grades_cannot_be_deleted_or_rewritten_later(graded):
    assert not graded["alive"], "a process the submission started outlived its grading"
    assert (graded["tmp"] / "grades.csv").read_text() == graded["grades_after"]
    assert score(graded, "saboteur") == (0, 1) and set(graded["rows"]) >= {"saboteur", "honest", "alice"}


def test_killing_every_visible_process_does_not_stop_grading(graded):
    assert "honest" in graded["rows"] and graded["rows"]["killer"]["total"] == "2"


def test_memory_limit_and_endless_function(graded):
    assert score(graded, "hog") == (1, 0)
    assert "MemoryError" in graded["rows"]["hog"]["error"]
    assert "limit" in graded["rows"]["hog"]["feedback"]


def test_crash_deleted_check_blank_and_missing(graded):
    assert score(graded, "crasher") == (1, 0)
    assert "RuntimeError: boom" in graded["rows"]["crasher"]["error"]
    assert "not implemented" in graded["rows"]["crasher"]["feedback"]
    assert score(graded, "absent") == (0, 0) and "missing hw.ipynb" in graded["rows"]["absent"]["error"]
    assert score(graded, "honest") == (1, 1) and graded["rows"]["honest"]["error"] == ""


def test_cpu_time_limit_ends_a_busy_process(tmp_path):
    start = time.monotonic()
    problem = sandbox.run([sys.executable, "-c", "while True: pass"], tmp_path, tmp_path, {},
                          sandbox.Limits(wall_seconds=60, cpu_seconds=1), sandboxed=False).problem
    assert "SIGXCPU" in problem or "SIGKILL" in problem
    assert time.monotonic() - start < 20


def test_wall_clock_limit_kills_the_process_group(tmp_path):
    problem = sandbox.run([sys.executable, "-c", f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
                           f"'import time; time.sleep(60)', '{MARKER}_pg']); time.sleep(60)"], tmp_path, tmp_path, {},
                          sandbox.Limits(wall_seconds=2), sandboxed=False).problem
    assert problem == "timed out after 2 s"
    time.sleep(0.2)
    assert not [p for p in Path("/proc").iterdir() if p.name.isdigit() and f"{MARKER}_pg" in _cmdline(p)]


def test_refuses_without_a_sandbox_unless_trusted(tmp_path, monkeypatch):
    (tmp_path / "subs" / "bob").mkdir(parents=True)
    (tmp_path / "source").mkdir()
    nbformat.write(notebook([K3_OK, RTG_OK, *CHECKS]), tmp_path / "source" / "hw.ipynb")
    nbformat.write(notebook([K3_OK, RTG_OK]), tmp_path / "subs" / "bob" / "hw.ipynb")
    monkeypatch.setattr(sandbox.shutil, "which", lambda name: None)
    with pytest.raises(ConfigError, match="bubblewrap .* not installed.*--trust-submissions"):
        grading.grade(tmp_path / "subs", tmp_path / "g.csv", source=tmp_path / "source")
    assert not (tmp_path / "g.csv").exists()
    out = grading.grade(tmp_path / "subs", tmp_path / "g.csv", source=tmp_path / "source", trust_submissions=True,
                        timeout=60)
    assert [(r["student"], r["total"]) for r in csv.DictReader(open(out))] == [("bob", "2")]


def test_cli_refusal_is_one_line(tmp_path):
    (tmp_path / "subs").mkdir()
    env = {**os.environ, "PATH": "/nonexistent"}
    result = subprocess.run([sys.executable, "-m", "vla_rl_lib", "assignments", "grade", str(tmp_path / "subs"),
                             "--output", str(tmp_path / "g.csv")], capture_output=True, text=True, env=env)
    assert result.returncode == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "--trust-submissions" in result.stderr
