"""ipywidgets front ends of the kit. They call :mod:`vla_rl_lib`; the library never imports them.

* :class:`LivePlot`: a trainer callback drawing reward and metrics live (static PNG when headless).
* :class:`RolloutPlayer`: a rollout video with a step slider showing frame, instruction and action.
* :class:`HyperparameterPanel`: controls generated from the config dataclasses and a Run button.
* :class:`MethodChooser`: the specification's decision tree, recommending a method and its notebook.
* :class:`DatasetExplorer`: return/length histograms, action ranges and quality of a dataset.
"""
from __future__ import annotations

from vla_rl_lib._lazy import lazy_exports


_EXPORTS = {
    "LivePlot": "widgets.live_plot",
    "RolloutPlayer": "widgets.rollout_player",
    "HyperparameterPanel": "widgets.hyperparameter_panel",
    "MethodChooser": "widgets.method_chooser",
    "DatasetExplorer": "widgets.dataset_explorer",
    "comparison_html": "widgets.method_chooser",
    "show_health": "widgets.report",
    "show_video": "widgets.report",
    "show_source": "widgets.report",
    "show_overestimation": "widgets.report",
    "health_html": "widgets.report",
    "show_verdict": "widgets.report",
    "verdict_html": "widgets.report",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)

