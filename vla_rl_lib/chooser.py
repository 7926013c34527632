"""Which method to use: the specification's decision tree and method comparison table as data.

The tree ("When to Use Each Method")::

    Do you have environment access?
      yes -> online RL:  simple?            -> PPO
                         sample efficient?  -> SAC
                         multi-objective?   -> GRPO
      no  -> offline RL: dataset quality?   expert  -> IQL (or CQL)
                                            mixed   -> TD3+BC
                                            diverse -> Decision Transformer

:func:`recommend_method` walks it and returns the command-line name of the method
(``iql``, ``cql``, ``td3_bc``, ``dt``, ``ppo``, ``sac``, ``grpo``); :func:`explain` returns the
same answer with the path taken, the reason, the alternatives and the notebook that teaches it.
The method chooser widget in ``widgets/`` is a front end to these functions; nothing here knows a
screen.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from vla_rl_lib.errors import ConfigError

__all__ = ["MethodInfo", "METHODS", "GOALS", "QUALITIES", "DATASET_QUALITY_TO_TREE", "Recommendation",
           "recommend_method", "explain", "tree_quality", "comparison_table", "measured_ranking", "measured_note"]


@dataclass(frozen=True)
class MethodInfo:
    """One row of the specification's method comparison table."""

    name: str
    kind: str  # "offline" or "online"
    sample_efficiency: str
    stability: str
    best_for: str
    notebook: str
    trainer: str


#: the specification's "Method Comparison" table, keyed by command-line name
METHODS: dict[str, MethodInfo] = {
    "iql": MethodInfo("IQL", "offline", "High", "Very High", "General offline RL", "02_iql.ipynb", "IQLTrainer"),
    "cql": MethodInfo("CQL", "offline", "High", "High", "Avoiding OOD actions", "03_cql.ipynb", "CQLTrainer"),
    "td3_bc": MethodInfo("TD3+BC", "offline", "High", "High", "Simple implementation", "04_td3_bc.ipynb",
                         "TD3BCTrainer"),
    "dt": MethodInfo("DT", "offline", "High", "High", "Sequence tasks", "05_decision_transformer.ipynb",
                     "DecisionTransformerTrainer"),
    "ppo": MethodInfo("PPO", "online", "Medium", "Very High", "General on-policy", "06_ppo.ipynb", "PPOTrainer"),
    "sac": MethodInfo("SAC", "online", "High", "High", "Continuous control", "07_sac.ipynb", "SACTrainer"),
    "grpo": MethodInfo("GRPO", "online", "Medium", "High", "Multi-objective", "08_grpo.ipynb", "GRPOTrainer"),
}

#: what matters most when you can interact with the environment -> the online method
GOALS = {"simple": "ppo", "sample_efficient": "sac", "multi_objective": "grpo"}
#: the quality of the offline dataset -> the offline method
QUALITIES = {"expert": "iql", "mixed": "td3_bc", "diverse": "dt"}

#: D4RL-style dataset quality labels -> the tree's three kinds of data. ``expert`` data is one good
#: policy; ``medium`` is one mediocre policy and ``medium-expert`` mixes two, both of which a BC-
#: regularised actor handles well ("mixed"); ``medium-replay`` and ``random`` cover many behaviours
#: ("diverse").
DATASET_QUALITY_TO_TREE = {"expert": "expert", "medium": "mixed", "medium-expert": "mixed",
                           "medium-replay": "diverse", "random": "diverse"}

_GOAL_TEXT = {
    "simple": "you want a simple, stable, general on-policy method",
    "sample_efficient": "environment steps are expensive and you want the most from each one",
    "multi_objective": "you trade off several objectives (safety, progress, comfort) and compare rollouts in groups",
}
_QUALITY_TEXT = {
    "expert": "the data comes from a good policy, so staying close to it with in-sample value learning works best",
    "mixed": "the data mixes good and poor behaviour; a TD3 actor regularised by behaviour cloning picks the good parts",
    "diverse": "the data is diverse; conditioning a sequence model on the return you ask for lets one model reproduce "
               "every level of behaviour it saw",
}
_ALTERNATIVES = {"iql": ["cql"], "cql": ["iql"], "td3_bc": ["iql"], "dt": ["iql"],
                 "ppo": ["grpo"], "sac": ["ppo"], "grpo": ["ppo"]}


@dataclass
class Recommendation:
    """The method the tree recommends, how it got there and where to learn it."""

    method: str
    path: list[str]
    reason: str
    alternatives: list[str] = field(default_factory=list)
    measured: Optional[str] = None  # the tree's answer beside the kit's measurement (offline only)

    @property
    def info(self) -> MethodInfo:
        return METHODS[self.method]

    @property
    def notebook(self) -> str:
        return self.info.notebook


def _norm(value: Optional[str]) -> Optional[str]:
    return None if value is None else str(value).strip().lower().replace("-", "_").replace(" ", "_")


def explain(env_access: bool, goal: Optional[str] = None, dataset_quality: Optional[str] = None,
            discrete_actions: bool = False) -> Recommendation:
    """Walk the specification's decision tree.

    ``env_access``: can the method interact with a simulator or the real system?
    ``goal`` (online only): ``"simple"``, ``"sample_efficient"`` or ``"multi_objective"``.
    ``dataset_quality`` (offline only): ``"expert"``, ``"mixed"`` or ``"diverse"``.
    ``discrete_actions``: SAC in this kit is for continuous actions, so a sample-efficient request with
    discrete actions is answered with PPO and says why.
    """
    if not isinstance(env_access, bool):
        raise ConfigError(f"env_access must be True or False, got {env_access!r}")
    path = ["Do you have environment access? " + ("Yes -> online RL" if env_access else "No -> offline RL")]
    if env_access:
        g = _norm(goal) or "simple"
        if g not in GOALS:
            raise ConfigError(f"goal={goal!r} is not one of {', '.join(GOALS)}")
        method = GOALS[g]
        path.append({"simple": "Simple? -> PPO", "sample_efficient": "Sample efficient? -> SAC",
                     "multi_objective": "Multi-objective? -> GRPO"}[g])
        reason = _GOAL_TEXT[g]
        if method == "sac" and discrete_actions:
            method = "ppo"
            path.append("Discrete actions: SAC here needs continuous actions -> PPO")
            reason += "; SAC in this kit needs continuous actions, so PPO is the method for a discrete action space"
    else:
        q = _norm(dataset_quality)
        if q not in QUALITIES:
            raise ConfigError(f"dataset_quality={dataset_quality!r} is not one of {', '.join(QUALITIES)} "
                              "(offline RL needs to know the dataset quality; the dataset explorer shows it)")
        method = QUALITIES[q]
        path.append({"expert": "Dataset quality: expert -> IQL/CQL", "mixed": "Dataset quality: mixed -> TD3+BC",
                     "diverse": "Dataset quality: diverse -> DT"}[q])
        reason = _QUALITY_TEXT[q]
        return Recommendation(method=method, path=path, reason=reason, alternatives=list(_ALTERNATIVES[method]),
                              measured=measured_note(q))
    return Recommendation(method=method, path=path, reason=reason, alternatives=list(_ALTERNATIVES[method]))


def recommend_method(env_access: bool, goal: Optional[str] = None, dataset_quality: Optional[str] = None,
                     discrete_actions: bool = False) -> str:
    """The command-line name of the method the specification's decision tree recommends (see :func:`explain`)."""
    return explain(env_access, goal, dataset_quality, discrete_actions).method


def tree_quality(dataset_quality: Optional[str]) -> Optional[str]:
    """The tree's ``expert``/``mixed``/``diverse`` for a dataset's quality label (None when unknown)."""
    if dataset_quality is None:
        return None
    q = str(dataset_quality).strip().lower().replace("_", "-")
    if q in QUALITIES:
        return q
    return DATASET_QUALITY_TO_TREE.get(q)


#: what ``benchmarks/offline_comparison.py`` measured (BC, %BC, IQL, CQL, TD3+BC, DT over seeds on an
#: expert, a mixed and a stitching dataset), shipped with the kit
MEASURED_FILE = Path(__file__).resolve().parent / "measured_comparison.json"
#: the tree's kinds of data -> the kind of shipped dataset measured for it (stitching data is diverse)
MEASURED_KIND = {"expert": "expert", "mixed": "mixed", "diverse": "stitching"}


def measured_ranking(kind: str, path: Optional[Path] = None) -> list[tuple[str, float, float]]:
    """``[(method, mean, std), ...]`` best first, for the tree's ``expert``/``mixed``/``diverse`` data,
    from the shipped measurement (success rate where the task has one, else mean return); ``[]``
    when nothing was measured for that kind."""
    import json
    import math

    from vla_rl_lib.comparison import COMPARISON_DATASETS

    path = Path(path) if path is not None else MEASURED_FILE
    if not path.is_file():
        return []
    rows = json.loads(path.read_text()).get("rows", [])
    dataset = COMPARISON_DATASETS.get(MEASURED_KIND.get(_norm(kind) or "", ""), None)
    rows = [r for r in rows if r["dataset"] == dataset]
    if not rows:
        return []
    key = "success_rate" if all(not math.isnan(float(r["success_rate"])) for r in rows) else "mean_reward"
    by_method: dict[str, list[float]] = {}
    for r in rows:
        by_method.setdefault(r["method"], []).append(float(r[key]))
    stats = [(m, sum(v) / len(v), (sum((x - sum(v) / len(v)) ** 2 for x in v) / len(v)) ** 0.5)
             for m, v in by_method.items()]
    return sorted(stats, key=lambda t: -t[1])


def measured_note(kind: str, path: Optional[Path] = None) -> Optional[str]:
    """One sentence setting the tree's answer for ``kind`` beside what was measured (None if nothing was)."""
    from vla_rl_lib.comparison import COMPARISON_DATASETS

    ranking = measured_ranking(kind, path)
    if not ranking:
        return None
    tree = QUALITIES[_norm(kind)]
    dataset = COMPARISON_DATASETS[MEASURED_KIND[_norm(kind)]]
    best, mean, spread = ranking[0]
    tree_mean, tree_spread = next(((m, sd) for n, m, sd in ranking if n == tree), (None, None))
    shown = ", ".join(f"{n} {m:.2f}" if abs(m) <= 1 else f"{n} {m:.0f}" for n, m, _ in ranking)
    if best == tree:
        verdict = f"The tree's {tree} agrees with the measurement (best)."
    elif tree_mean is not None and mean - tree_mean <= max(spread, tree_spread):
        verdict = f"The tree's {tree} agrees within the spread over seeds (best: {best})."
    else:
        verdict = f"The tree's {tree} disagrees with the measurement (best: {best})."
    return f"Measured on {dataset} (mean over seeds): {shown}. {verdict}"


def comparison_table() -> list[dict]:
    """The specification's method comparison table as rows of plain dicts."""
    return [dict(method=m.name, key=key, type=m.kind.capitalize(), sample_efficiency=m.sample_efficiency,
                 stability=m.stability, best_for=m.best_for, notebook=m.notebook) for key, m in METHODS.items()]
