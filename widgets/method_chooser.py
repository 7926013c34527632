"""MethodChooser: the specification's "When to Use Each Method" tree as clickable questions.

The decision itself is :func:`vla_rl_lib.chooser.explain`; this widget only asks the questions,
shows the path taken and the comparison row, and shows the recommended notebook's parameters with
the commands that open or run it.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Optional

import ipywidgets as w

from vla_rl_lib.chooser import GOALS, METHODS, QUALITIES, comparison_table, explain

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"

_GOAL_LABELS = [("Simple and stable", "simple"), ("Sample efficient", "sample_efficient"),
                ("Multi-objective", "multi_objective")]
_QUALITY_LABELS = [("Expert", "expert"), ("Mixed", "mixed"), ("Diverse", "diverse")]
#: what the "Try it here" panel trains on: a shipped dataset offline, a quick task online
TRY_DATASET = "pendulum-medium-v0"
TRY_ENV = {"ppo": "CartPole-v1", "sac": "Pendulum-v1", "grpo": "CartPole-v1"}


class MethodChooser(w.VBox):
    """Answer the questions; ``recommendation`` holds the answer (:class:`vla_rl_lib.chooser.Recommendation`).

    ``notebook_dir`` is where the kit's notebooks are (to read the recommended notebook's parameters).
    """

    def __init__(self, notebook_dir: Optional[str | Path] = None):
        self.notebook_dir = Path(notebook_dir) if notebook_dir is not None else NOTEBOOK_DIR
        self.env_access = w.ToggleButtons(options=[("Yes: a simulator or the real system", True),
                                                   ("No: only a fixed dataset", False)],
                                          value=True, description="Environment access?",
                                          style={"description_width": "150px"})
        self.goal = w.ToggleButtons(options=_GOAL_LABELS, value="simple", description="What matters most?",
                                    style={"description_width": "150px"})
        self.quality = w.ToggleButtons(options=_QUALITY_LABELS, value="expert", description="Dataset quality?",
                                       style={"description_width": "150px"})
        self.discrete = w.Checkbox(value=False, description="discrete actions", indent=False)
        self.recommend_button = w.Button(description="Recommend", icon="compass", button_style="info")
        self.open_button = w.Button(description="Show notebook parameters", icon="book")
        self.try_button = w.Button(description="Try it here", icon="play",
                                   tooltip="a hyperparameter panel for the recommended method")
        self.panel_box = w.VBox()
        self.panel = None
        self.output = w.HTML()
        self.parameters = w.HTML()
        self.recommendation = None
        self.notebook_parameters: dict = {}
        for control in (self.env_access, self.goal, self.quality, self.discrete):
            control.observe(self._changed, names="value")
        self.recommend_button.on_click(lambda _b: self.recommend())
        self.open_button.on_click(lambda _b: self.show_parameters())
        self.try_button.on_click(lambda _b: self.try_it())
        self.online_box = w.VBox([self.goal, self.discrete])
        self.offline_box = w.VBox([self.quality])
        super().__init__(children=[self.env_access, self.online_box, self.offline_box,
                                   w.HBox([self.recommend_button, self.open_button, self.try_button]),
                                   self.output, self.parameters, self.panel_box])
        self.recommend()

    def _changed(self, _change) -> None:
        self.recommend()

    def recommend(self) -> str:
        """Walk the tree with the current answers; returns the method's command-line name."""
        online = bool(self.env_access.value)
        self.online_box.layout.display = None if online else "none"
        self.offline_box.layout.display = "none" if online else None
        rec = explain(online, goal=self.goal.value if online else None,
                      dataset_quality=None if online else self.quality.value,
                      discrete_actions=bool(self.discrete.value))
        self.recommendation = rec
        info = rec.info
        steps = " &rarr; ".join(html.escape(p) for p in rec.path)
        alts = ", ".join(METHODS[a].name for a in rec.alternatives)
        self.output.value = (
            f"<p>{steps}</p><h3>Recommended: {info.name}</h3><p>Why: {html.escape(rec.reason)}.</p>"
            f"<table><tr><th>Type</th><th>Sample efficiency</th><th>Stability</th><th>Best for</th></tr>"
            f"<tr><td>{info.kind.capitalize()}</td><td>{info.sample_efficiency}</td><td>{info.stability}</td>"
            f"<td>{info.best_for}</td></tr></table>"
            f"<p>Also consider: {alts}. Notebook: <a href='{info.notebook}' target='_blank'>{info.notebook}</a></p>"
            + (f"<p><b>Measured</b> (<code>benchmarks/offline_comparison.py</code>, "
               f"<code>12_offline_method_comparison.ipynb</code>): {html.escape(rec.measured)}</p>" if rec.measured else ""))
        self.parameters.value = ""
        return rec.method

    def show_parameters(self) -> dict:
        """Read the recommended notebook's ``parameters`` cell and show it with the commands to run it."""
        from vla_rl_lib.notebook import notebook_parameters

        rec = self.recommendation or explain(True)
        path = self.notebook_dir / rec.notebook
        if not path.is_file():
            self.notebook_parameters = {}
            self.parameters.value = f"<p>{html.escape(str(path))} is not in this checkout.</p>"
            return {}
        self.notebook_parameters = notebook_parameters(path)
        rows = "".join(f"<tr><td><code>{html.escape(k)}</code></td><td><code>{html.escape(str(v))}</code></td></tr>"
                       for k, v in self.notebook_parameters.items())
        self.parameters.value = (
            f"<p>Parameters of <a href='{rec.notebook}' target='_blank'>{rec.notebook}</a> (open it in JupyterLab, "
            f"or run it in batch):</p><pre>vla-rl run-notebook notebooks/{rec.notebook} -p smoke true --output runs/{rec.method}</pre>"
            f"<table><tr><th>parameter</th><th>default</th></tr>{rows}</table>")
        return self.notebook_parameters


    def try_it(self, **kwargs):
        """Open a :class:`~widgets.hyperparameter_panel.HyperparameterPanel` for the recommended method
        (offline methods on the shipped ``pendulum-medium-v0``, online ones on a quick gymnasium task)."""
        from widgets.hyperparameter_panel import HyperparameterPanel

        rec = self.recommendation or explain(True)
        if rec.info.kind == "offline":
            kwargs.setdefault("dataset", TRY_DATASET)
        else:
            kwargs.setdefault("env", TRY_ENV[rec.method])
        kwargs.setdefault("output_dir", f"runs/chooser_{rec.method}")
        self.panel = HyperparameterPanel(rec.method, **kwargs)
        self.panel_box.children = [self.panel]
        return self.panel


def comparison_html() -> str:
    """The specification's method comparison table as HTML."""
    rows = "".join(f"<tr><td><b>{r['method']}</b></td><td>{r['type']}</td><td>{r['sample_efficiency']}</td>"
                   f"<td>{r['stability']}</td><td>{r['best_for']}</td><td>{r['notebook']}</td></tr>"
                   for r in comparison_table())
    return ("<table><tr><th>Method</th><th>Type</th><th>Sample Efficiency</th><th>Stability</th>"
            f"<th>Best For</th><th>Notebook</th></tr>{rows}</table>")


__all__ = ["MethodChooser", "comparison_html", "GOALS", "QUALITIES"]
