"""Course exercises: references pass, blanks and typical mistakes fail with the right message, and
the grader grades a folder of mixed submissions correctly."""
import csv

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


# -- grading (the hostile submissions are in test_grading_sandbox.py) --------------------------------

@pytest.mark.slow
def test_instructor_notebooks_score_full_marks(tmp_path):
    """The solutions, graded as a submission by the real grader, pass every exercise."""
    import shutil

    from vla_rl_lib.exercises import sandbox

    (tmp_path / "subs").mkdir()
    shutil.copytree("notebooks/assignments", tmp_path / "subs" / "instructor")
    out = grading.grade(tmp_path / "subs", tmp_path / "grades.csv", timeout=300,
                        trust_submissions=sandbox.unavailable_reason() is not None)
    rows = list(csv.DictReader(open(out)))
    assert {r["assignment"] for r in rows} == {"offline_rl", "online_rl", "vla_actions"}
    for row in rows:
        assert row["total"] == row["max"] != "0", row


def test_assignment_notebooks_match_their_source():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "scripts/make_assignments.py", "--check"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
