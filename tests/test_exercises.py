"""Course exercises: references pass, blanks and typical mistakes fail with the right message, and
the grader grades a folder of mixed submissions correctly."""
import csv
import json

import nbformat
import numpy as np
import pytest
import torch

from vla_rl_lib import exercises
from vla_rl_lib.exercises import grading, offline, online, vla
from vla_rl_lib.exercises.core import check

ALL = [offline.EXPECTILE, offline.ADV_WEIGHTS, offline.CQL, offline.TD3BC, offline.RTG, online.GAE, online.SURROGATE,
       online.TEMPERATURE, online.GROUP, online.K3, vla.TOKENIZE, vla.DETOKENIZE]


@pytest.mark.parametrize("ex", ALL, ids=lambda e: e.name)
def test_reference_passes_and_blank_fails(ex):
    result = check(ex.reference, ex, verbose=False)
    assert result.passed and "all" in result.message
    result = check(lambda *a, **k: (_ for _ in ()).throw(NotImplementedError()), ex, verbose=False)
    assert not result.passed and "not implemented yet" in result.message


@pytest.mark.parametrize("ex,mistake", [(ex, m) for ex in ALL for m in ex.mistakes], ids=lambda x: getattr(x, "name", ""))
def test_each_known_mistake_is_diagnosed(ex, mistake):
    result = check(mistake.fn, ex, verbose=False)
    assert not result.passed
    assert result.mistake == mistake.name
    assert mistake.hint in result.message and "case '" in result.message and "expected" in result.message or "gradient" in result.message


def test_typical_wrong_answers_get_the_right_message():
    # sign error
    r = exercises.check_clipped_surrogate(lambda ratio, advantages, clip_range: torch.min(
        ratio * advantages, ratio.clamp(1 - clip_range, 1 + clip_range) * advantages).mean(), verbose=False)
    assert not r and "LOSS to minimise" in r.message

    # forgotten done mask
    def gae_no_mask(rewards, values, next_values, terminations, dones, gamma, gae_lambda):
        adv, last = torch.zeros_like(rewards), 0.0
        for t in reversed(range(len(rewards))):
            last = rewards[t] + gamma * next_values[t] * (1 - terminations[t]) - values[t] + gamma * gae_lambda * last
            adv[t] = last
        return adv
    r = exercises.check_compute_gae(gae_no_mask, verbose=False)
    assert not r and "(1 - done_t)" in r.message and "termination and truncation" in r.message

    # off-by-one in returns-to-go
    r = exercises.check_returns_to_go(lambda rewards: np.append(np.cumsum(rewards[::-1])[::-1][1:], 0.0), verbose=False)
    assert not r and "off by one" in r.message and "expected: [6. 5. 3.]" in r.message

    # wrong normalisation axis
    r = exercises.check_group_relative_advantages(
        lambda returns: (returns - returns.mean(0)) / (returns.std(0) + 1e-8), verbose=False)
    assert not r and "wrong normalisation axis" in r.message

    # an exception names the case and the line
    r = exercises.check_k3_kl(lambda log_probs, ref_log_probs: log_probs.view(3, -1) - ref_log_probs, verbose=False)
    assert not r and "raised RuntimeError" in r.message

    # an unknown wrong answer still says expected vs got
    r = exercises.check_expectile_loss(lambda diff, expectile: diff.mean() * 0 + 1.0, verbose=False)
    assert not r and "expected" in r.message and "got" in r.message and "Hint" not in r.message


def test_release_replaces_solutions_with_stubs(tmp_path):
    written = grading.release("notebooks/assignments", tmp_path)
    assert {p.stem for p in written} == {"offline_rl", "online_rl", "vla_actions"}
    for path in written:
        nb = nbformat.read(path, as_version=4)
        text = "\n".join(c.source for c in nb.cells)
        assert "BEGIN SOLUTION" not in text and "END SOLUTION" not in text
        assert text.count("raise NotImplementedError") == len(nb.metadata["vla_rl_assignment"]["exercises"])
        compile_all = [compile(c.source, path.name, "exec") for c in nb.cells if c.cell_type == "code"]
        assert compile_all


def test_strip_solutions_keeps_indentation_and_rejects_broken_markers():
    src = "def f(x):\n    ### BEGIN SOLUTION\n    return x\n    ### END SOLUTION\n"
    assert grading.strip_solutions(src) == 'def f(x):\n    raise NotImplementedError("Your code here: replace this line.")'
    with pytest.raises(ValueError, match="without"):
        grading.strip_solutions("### BEGIN SOLUTION\nx = 1\n")


# -- grading a folder of mixed submissions ---------------------------------------------------------

def _assignment(cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell("smoke = False"), *[nbformat.v4.new_code_cell(c) for c in cells]]
    nb.cells[0].metadata["tags"] = ["parameters"]
    return nb


K3_OK = "import torch\nfrom vla_rl_lib import exercises\ndef k3_kl(log_probs, ref_log_probs):\n    d = ref_log_probs - log_probs\n    return torch.exp(d) - d - 1"
K3_CHECK = "exercises.check_k3_kl(k3_kl)"
RTG_OK = "import numpy as np\ndef returns_to_go(rewards):\n    return np.cumsum(rewards[::-1])[::-1].copy()"
RTG_CHECK = "exercises.check_returns_to_go(returns_to_go)"
RTG_LOOPS = "def returns_to_go(rewards):\n    while True:\n        pass"


@pytest.mark.slow
def test_grader_grades_mixed_submissions(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    nbformat.write(_assignment([K3_OK, K3_CHECK, RTG_OK, RTG_CHECK]), source / "hw.ipynb")
    subs = tmp_path / "submissions"
    students = {
        "alice": [K3_OK, K3_CHECK, RTG_OK, RTG_CHECK],                                  # everything right
        "bob": [K3_OK.replace("- 1", ""), K3_CHECK, RTG_OK, RTG_CHECK],                 # k3 wrong
        "carol": ["raise RuntimeError('boom')", K3_OK, K3_CHECK, RTG_OK, RTG_CHECK],    # a crashing cell first
        "dave": [K3_OK, K3_CHECK, RTG_LOOPS, RTG_CHECK],                                # rtg loops forever
        "erin": [K3_OK, RTG_OK, RTG_CHECK],                                             # deleted the k3 check cell
    }
    for name, cells in students.items():
        (subs / name).mkdir(parents=True)
        nbformat.write(_assignment(cells), subs / name / "hw.ipynb")
    (subs / "frank").mkdir()                                                            # submitted nothing
    out = grading.grade(subs, tmp_path / "grades.csv", timeout=60, source=source)
    rows = {r["student"]: r for r in csv.DictReader(open(out))}
    got = {s: (int(r["k3_kl"]), int(r["returns_to_go"]), int(r["total"]), int(r["max"])) for s, r in rows.items()}
    assert got == {"alice": (1, 1, 2, 2), "bob": (0, 1, 1, 2), "carol": (1, 1, 2, 2), "dave": (1, 0, 1, 2),
                   "erin": (0, 1, 1, 2), "frank": (0, 0, 0, 2)}
    assert rows["alice"]["error"] == ""
    assert "RuntimeError" in rows["carol"]["error"]
    assert rows["dave"]["error"]          # the timed-out cell is reported; the other exercise still counts
    assert "missing" in rows["frank"]["error"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["offline_rl", "online_rl", "vla_actions"])
def test_instructor_notebooks_pass_every_check(name, tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill")
    results = tmp_path / "results.jsonl"
    monkeypatch.setenv("VLA_RL_GRADING_RESULTS", str(results))
    papermill.execute_notebook(f"notebooks/assignments/{name}.ipynb", str(tmp_path / "out.ipynb"),
                               parameters={"smoke": True}, kernel_name="python3", progress_bar=False,
                               cwd=str(tmp_path))
    records = [json.loads(l) for l in results.read_text().splitlines()]
    nb = nbformat.read(f"notebooks/assignments/{name}.ipynb", as_version=4)
    assert {r["exercise"] for r in records if r["passed"]} == set(grading.exercises_of(nb))


def test_assignment_notebooks_match_their_source():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "scripts/make_assignments.py", "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
