"""Health that tells the truth (issue 18): value losses are judged relative to the scale of the returns.

The healthy records are the final metrics of real runs of this kit (measured on 2026-12-04):
* PPO, the quickstart's CartPole settings (40k steps, 4 envs x 128, seed 0): evaluation 500/500
  (solved), value_loss 71.8 with explained_variance 0.40. The specification's absolute range
  (0.01-1.0) called that red.
* IQL on pendulum-medium-v0 (3 x 1000 steps, seed 0): q_loss 1.06 with Q around -45.
The diverging records are what a critic that has lost its targets logs.
"""
import math

import pytest

from vla_rl_lib.diagnostics import DIVERGED_VALUE, metric_health

SOLVED_CARTPOLE = {"policy_loss": -0.00124, "value_loss": 71.81, "explained_variance": 0.401, "entropy": 0.571,
                   "mean_reward": 219.5}
HEALTHY_IQL = {"v_loss": 0.131, "q_loss": 1.063, "policy_loss": 1.2, "mean_advantage": -0.4, "q_mean": -45.05,
               "v_mean": -41.98}


def health(metrics, kind):
    return {r["metric"]: r for r in metric_health(metrics, kind)}


def test_a_solved_cartpole_shows_green():
    rows = health(SOLVED_CARTPOLE, "online")
    assert rows["value_loss"]["healthy"] is True
    assert rows["value_loss"]["measure"] == pytest.approx(1 - 0.401)
    assert rows["policy_loss"]["healthy"] is True


def test_a_critic_worse_than_a_constant_shows_red():
    diverging = dict(SOLVED_CARTPOLE, value_loss=5e4, explained_variance=-3.0)
    assert health(diverging, "online")["value_loss"]["healthy"] is False
    assert health(dict(SOLVED_CARTPOLE, value_loss=math.nan), "online")["value_loss"]["healthy"] is False


def test_a_healthy_iql_run_shows_green():
    rows = health(HEALTHY_IQL, "offline")
    assert rows["q_loss"]["healthy"] is True and rows["v_loss"]["healthy"] is True
    assert rows["q_loss"]["measure"] == pytest.approx(math.sqrt(1.063) / 45.05)


@pytest.mark.parametrize("change", [
    {"q_loss": 1e4},                                   # TD error of 100 on values of 45
    {"q_loss": 1e10, "q_mean": -10 * DIVERGED_VALUE},  # values exploded: red whatever the ratio
    {"q_loss": math.inf},
])
def test_a_diverging_critic_shows_red(change):
    assert health(dict(HEALTHY_IQL, **change), "offline")["q_loss"]["healthy"] is False


def test_without_the_scale_the_specification_range_is_used():
    rows = health({"q_loss": 3.0}, "offline")
    assert rows["q_loss"]["healthy"] is False and "judged_by" not in rows["q_loss"]
    assert health({"value_loss": 0.2}, "online")["value_loss"]["healthy"] is True


# ---- the notebooks' closing verdict (issue 19) ---------------------------------------------------
from vla_rl_lib.diagnostics import lesson_verdict  # noqa: E402

LESSON = "IQL improves on a mixed dataset where behaviour cloning cannot."


def test_verdict_on_a_passing_run():
    v = lesson_verdict(LESSON, ("IQL", -310.0), ("BC", -702.5), margin=100)
    assert v["shown"] is True and v["difference"] == pytest.approx(392.5)
    assert v["message"].startswith("Lesson shown") and "-310.0" in v["message"] and "-702.5" in v["message"]
    assert v["advice"] == ""


def test_verdict_on_a_failing_run_says_so_and_what_to_try():
    v = lesson_verdict(LESSON, ("IQL", -650.0), ("BC", -702.5), margin=100, advice="more gradient steps")
    assert v["shown"] is False
    assert "NOT shown" in v["message"] and "more than 100" in v["message"] and "more gradient steps" in v["message"]
    worse = lesson_verdict(LESSON, ("IQL", -800.0), ("BC", -702.5))
    assert worse["shown"] is False and "worse" in worse["message"]


def test_verdict_lower_is_better_and_diverged_and_smoke():
    v = lesson_verdict("fewer collisions", ("GRPO", 0.05), ("BC", 0.40), margin=0.1, higher_is_better=False)
    assert v["shown"] is True
    assert lesson_verdict(LESSON, ("IQL", math.nan), ("BC", -700.0))["shown"] is False
    smoke = lesson_verdict(LESSON, ("IQL", -650.0), ("BC", -702.5), smoke=True)
    assert smoke["shown"] is None and smoke["message"].startswith("Smoke run: not judged")


def test_verdict_is_recorded_in_metrics_json(tmp_path):
    import json

    from vla_rl_lib.notebook import write_run_metrics
    from widgets.report import verdict_html

    v = lesson_verdict(LESSON, ("IQL", -310.0), ("BC", -702.5), margin=100)
    path = write_run_metrics(tmp_path, verdict=v)
    assert json.loads(path.read_text())["verdict"]["shown"] is True
    assert "Lesson shown" in verdict_html(v)
