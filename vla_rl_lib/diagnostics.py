"""RL diagnostics the notebooks and widgets show: is this run healthy, does its critic overestimate.

* :data:`METRIC_RANGES`: the specification's "Key Metrics" tables (expected ranges of the losses).
* :func:`metric_health`: one row per metric of that table, judged ``healthy`` or not. The
  specification's ranges for value losses assume rewards of order one; a run whose returns are in the
  hundreds has value losses in the hundreds when its critic is fine. So value losses are judged
  relative to the scale of what they predict, whenever the run logged that scale
  (:data:`RELATIVE_HEALTH`):

  - online ``value_loss``: by the fraction of the returns' variance the critic leaves unexplained,
    ``1 - explained_variance`` (= ``E[(V - R)^2] / Var[R]`` up to the mean error), healthy up to 1
    (above 1 the critic predicts worse than a constant);
  - offline ``q_loss`` / ``v_loss``: by the TD error relative to the size of the values,
    ``sqrt(loss) / max(|Q|, 1)`` with ``Q`` the mean predicted value, healthy up to 0.25, and only
    while the values themselves stay below :data:`DIVERGED_VALUE` in size.

  Without the scale metric the specification's absolute range is used.
* :func:`final_metrics`: the last logged value of every metric.
* :func:`overestimation_diagnostic`: predicted value at the start states against the return obtained.
* :func:`lesson_verdict`: whether a notebook's run showed its lesson (the method against its
  baseline, with the numbers), recorded in ``metrics.json``.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import numpy as np

from vla_rl_lib.errors import ConfigError

__all__ = ["METRIC_RANGES", "RELATIVE_HEALTH", "DIVERGED_VALUE", "final_metrics", "metric_health",
           "overestimation_diagnostic", "lesson_verdict"]

#: the specification's "Key Metrics" tables: metric -> (low, high, note); None = task-dependent
METRIC_RANGES: dict[str, dict[str, tuple[Optional[float], Optional[float], str]]] = {
    "offline": {
        "v_loss": (0.01, 1.0, "Value function loss"),
        "q_loss": (0.01, 1.0, "Q-function loss"),
        "policy_loss": (-10.0, 10.0, "Negative is better"),
        "mean_advantage": (-5.0, 5.0, "Should center around 0"),
    },
    "online": {
        "policy_loss": (-0.1, 0.1, "Clipped surrogate objective"),
        "value_loss": (0.01, 1.0, "Value prediction error"),
        "entropy": (None, None, "Task-dependent; higher = more exploration"),
        "mean_reward": (None, None, "Task-dependent; the main metric"),
    },
}

#: predicted values larger than this in size mean the critic has diverged, whatever its TD error
DIVERGED_VALUE = 1e6


def _unexplained_variance(loss: float, metrics: dict) -> Optional[float]:
    ev = metrics.get("explained_variance")
    return None if ev is None else 1.0 - float(ev)


def _relative_td_error(loss: float, metrics: dict) -> Optional[float]:
    for key in ("q_mean", "q_data", "v_mean"):  # IQL / TD3+BC log q_mean, CQL q_data
        if metrics.get(key) is not None:
            q = abs(float(metrics[key]))
            if not math.isfinite(q) or q > DIVERGED_VALUE:
                return math.inf
            return math.sqrt(max(loss, 0.0)) / max(q, 1.0)
    return None


#: value losses judged relative to the scale of their targets:
#: (kind, metric) -> (measure(loss, metrics) or None when the scale was not logged, high, what it is)
RELATIVE_HEALTH: dict[tuple[str, str], tuple[Callable[[float, dict], Optional[float]], float, str]] = {
    ("online", "value_loss"): (_unexplained_variance, 1.0,
                               "1 - explained variance: the share of the returns' variance the critic misses"),
    ("offline", "q_loss"): (_relative_td_error, 0.25, "TD error relative to the size of Q: sqrt(q_loss) / |Q|"),
    ("offline", "v_loss"): (_relative_td_error, 0.25, "error relative to the size of the values: sqrt(v_loss) / |Q|"),
}


def final_metrics(logs: Sequence[dict]) -> dict:
    """The last logged value of every metric in a list of logged dicts (``LivePlot.logs``,
    ``MetricsHistory.logs``): what the run ended with, each metric averaged over its last ``log_freq``."""
    final: dict = {}
    for record in logs:
        for key, value in record.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                final[key] = float(value)
    return final


def metric_health(metrics: dict, kind: str) -> list[dict]:
    """Judge final training metrics against the specification's expected ranges.

    ``kind`` is ``"offline"`` or ``"online"``. Returns one row per metric of the specification's
    table: ``metric``, ``value`` (None when the method does not log it), ``low``, ``high``,
    ``note`` and ``healthy`` (True/False inside/outside the range, None when not applicable:
    a task-dependent metric or one the method does not have). A value loss whose scale the run
    logged is judged relative to it (see the module docstring): then ``judged_by`` names the
    measure, ``measure`` holds its value and ``low``/``high`` are its range.
    """
    if kind not in METRIC_RANGES:
        raise ConfigError(f"kind={kind!r} is not one of {', '.join(METRIC_RANGES)}")
    rows = []
    for name, (low, high, note) in METRIC_RANGES[kind].items():
        value = metrics.get(name)
        if value is not None:
            value = float(value)
        row = dict(metric=name, value=value, low=low, high=high, note=note, healthy=None)
        relative = RELATIVE_HEALTH.get((kind, name))
        measure = relative[0](value, metrics) if relative and value is not None and math.isfinite(value) else None
        if measure is not None:
            row.update(low=0.0, high=relative[1], judged_by=relative[2], measure=measure,
                       healthy=math.isfinite(measure) and measure <= relative[1])
        elif value is not None and (low is not None or high is not None):
            row["healthy"] = math.isfinite(value) and (low is None or value >= low) and (high is None or value <= high)
        rows.append(row)
    return rows


def overestimation_diagnostic(agent, q_fn: Callable, env, num_episodes: int = 5, gamma: float = 0.99,
                              seed: int = 0, max_steps: int = 10_000) -> dict:
    """Predicted value at the start states against the discounted return the agent actually obtains.

    The specification's "Offline RL: Overestimation" symptom is high Q-values but poor evaluation
    performance. For each of ``num_episodes`` evaluation episodes on ``env`` (an id or an env),
    ``q_fn(obs, action)`` gives the learned value of the first state and the agent's first action
    (numpy in, float out); the agent (anything with ``predict``) then plays the episode and we sum
    ``gamma**t * r_t``. ``gap = predicted - obtained``; a large positive gap is overestimation.
    Episodes cut by a time limit make the obtained return slightly low (the tail beyond the limit
    is missing), by at most ``gamma**T`` of the value.
    """
    from vla_rl_lib.envs import make_env

    own = isinstance(env, str)
    e = make_env(env) if own else env
    predicted, obtained, lengths = [], [], []
    policy = getattr(agent, "policy", None)
    was_training = getattr(policy, "training", False)
    if policy is not None:
        policy.eval()
    try:
        for ep in range(int(num_episodes)):
            obs, _ = e.reset(seed=seed + ep)
            if hasattr(agent, "reset_episode"):
                agent.reset_episode()
            action = agent.predict(obs, deterministic=True)
            predicted.append(float(q_fn(obs, action)))
            ret, discount, t, done = 0.0, 1.0, 0, False
            while not done and t < max_steps:
                if t > 0:
                    action = agent.predict(obs, deterministic=True)
                obs, reward, terminated, truncated, _ = e.step(action)
                if hasattr(agent, "observe_reward"):
                    agent.observe_reward(float(reward))
                ret += discount * float(reward)
                discount *= gamma
                t += 1
                done = terminated or truncated
            obtained.append(ret)
            lengths.append(t)
    finally:
        if policy is not None:
            policy.train(was_training)
        if own:
            e.close()
    pred, got = float(np.mean(predicted)), float(np.mean(obtained))
    scale = max(abs(got), 1e-8)
    return {"predicted_q": pred, "discounted_return": got, "gap": pred - got, "relative_gap": (pred - got) / scale,
            "per_episode": [dict(predicted_q=p, discounted_return=o, length=n)
                            for p, o, n in zip(predicted, obtained, lengths)],
            "gamma": gamma, "overestimates": bool(pred - got > 0.25 * scale)}




def lesson_verdict(lesson: str, method: tuple[str, float], baseline: tuple[str, float], margin: float = 0.0,
                   higher_is_better: bool = True, smoke: bool = False, unit: str = "",
                   advice: str = "") -> dict:
    """Whether this run showed a notebook's lesson: ``method`` against ``baseline`` by ``margin``.

    ``method`` and ``baseline`` are ``(name, value)`` pairs measured in this run (e.g. ``("IQL",
    -310.2)`` and ``("behaviour cloning", -702.5)``). The lesson is shown when the method beats the
    baseline by more than ``margin`` (``method - baseline > margin``, or ``baseline - method > margin``
    when lower is better). A smoke run is never judged. Returns a JSON-ready dict with ``lesson``,
    ``shown`` (True / False / None for a smoke run), the two values, ``margin``, ``difference`` and a
    one-paragraph ``message`` that says plainly what was and was not shown, and ``advice`` (what to
    try) when it was not. Notebooks print it last and record it in ``metrics.json`` (``verdict``),
    so a sweep's summary shows it per run.
    """
    (m_name, m_value), (b_name, b_value) = method, baseline
    m_value, b_value = float(m_value), float(b_value)
    diff = (m_value - b_value) if higher_is_better else (b_value - m_value)
    fmt = (lambda x: f"{x:.3g}{unit}") if abs(m_value) < 10 and abs(b_value) < 10 else (lambda x: f"{x:.1f}{unit}")
    numbers = f"{m_name} {fmt(m_value)} against {b_name} {fmt(b_value)}"
    if smoke:
        shown, message = None, f"Smoke run: not judged ({numbers}; the smoke budget is too small to show the lesson)."
    elif not (math.isfinite(m_value) and math.isfinite(b_value)):
        shown, message = False, f"Lesson not shown: {numbers} (a value is not finite: the run diverged)."
    else:
        shown = diff > margin
        better = "better" if diff >= 0 else "worse"
        need = f" (needed: more than {margin:g}{unit} better)" if margin else ""
        message = (f"Lesson shown: {numbers}, {fmt(abs(diff))} {better}." if shown else
                   f"Lesson NOT shown in this run: {numbers}, {fmt(abs(diff))} {better}{need}.")
        if not shown and advice:
            message += f" Try: {advice}"
    return {"lesson": lesson, "shown": shown, "method": {"name": m_name, "value": m_value},
            "baseline": {"name": b_name, "value": b_value}, "margin": float(margin),
            "higher_is_better": bool(higher_is_better), "difference": diff, "message": message,
            "advice": advice if shown is False else ""}
