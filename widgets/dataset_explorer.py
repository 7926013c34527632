"""DatasetExplorer: look at an offline dataset before training on it.

Return and length histograms, per-dimension action ranges, the quality label, and what the
specification's decision tree recommends for data of that quality. The numbers come from
:func:`vla_rl_lib.data.summarize_dataset`; the recommendation from :mod:`vla_rl_lib.chooser`.
"""
from __future__ import annotations

import html
import io
from typing import Optional

import ipywidgets as w
import numpy as np

from vla_rl_lib.chooser import METHODS, explain, tree_quality
from vla_rl_lib.errors import VLARLError


def summary_figure(summary: dict):
    """Histograms of episode returns and lengths and a bar chart of action ranges."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3))
    ax1, ax2, ax3 = (fig.add_subplot(1, 3, i) for i in (1, 2, 3))
    ax1.hist(summary["episode_returns"], bins=30, color="tab:blue")
    ax1.set_xlabel("episode return")
    ax1.set_ylabel("episodes")
    ax2.hist(summary["episode_lengths"], bins=30, color="tab:orange")
    ax2.set_xlabel("episode length")
    lo, hi = np.asarray(summary["action_min"]), np.asarray(summary["action_max"])
    dims = np.arange(len(lo))
    ax3.bar(dims, hi - lo, bottom=lo, color="tab:green", alpha=0.7)
    ax3.set_xticks(dims)
    ax3.set_xlabel("action dimension")
    ax3.set_ylabel("range in data")
    fig.suptitle(f"{summary.get('name')} ({summary['n_episodes']} episodes, quality {summary.get('quality')})",
                 fontsize=10)
    fig.tight_layout()
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


class DatasetExplorer(w.VBox):
    """Pick a dataset (a name on this machine, or a path) and press Load.

    After loading: ``summary`` (the :func:`summarize_dataset` dict), ``quality`` (its label),
    ``recommended`` (the method the decision tree suggests for that quality, or None),
    ``image`` (histograms and action ranges) and ``text`` (the numbers).
    """

    def __init__(self, dataset: Optional[str] = None, load: bool = True):
        from vla_rl_lib.data import available_datasets

        names = sorted(available_datasets())
        if dataset is not None and dataset not in names:
            names.append(dataset)
        self.dropdown = w.Combobox(options=names, value=dataset or (names[0] if names else ""),
                                   placeholder="dataset name or path to .hdf5", description="dataset",
                                   ensure_option=False, layout=w.Layout(width="460px"))
        self.load_button = w.Button(description="Load", icon="folder-open", button_style="primary")
        self.load_button.on_click(lambda _b: self.load())
        self.label = w.HTML()
        self.text = w.HTML()
        self.image = w.Image(format="png")
        self.summary: Optional[dict] = None
        self.quality: Optional[str] = None
        self.recommended: Optional[str] = None
        self.error: Optional[str] = None
        super().__init__(children=[w.HBox([self.dropdown, self.load_button]), self.label, self.image, self.text])
        if load and self.dropdown.value:
            self.load()

    def load(self, name: Optional[str] = None) -> Optional[dict]:
        from vla_rl_lib.data import format_summary, load_dataset, summarize_dataset

        if name is not None:
            self.dropdown.value = name
        name = self.dropdown.value.strip()
        self.error = None
        try:
            self.summary = summarize_dataset(load_dataset(name))
        except (VLARLError, OSError, ValueError) as exc:
            self.summary, self.quality, self.recommended = None, None, None
            self.error = f"{type(exc).__name__}: {exc}"
            self.label.value = f"<span style='color:#b00'>{html.escape(self.error)}</span>"
            self.text.value, self.image.value = "", b""
            return None
        s = self.summary
        self.quality = s.get("quality")
        tq = tree_quality(self.quality)
        self.recommended = explain(False, dataset_quality=tq).method if tq else None
        rec = (f" &rarr; the decision tree reads this as <b>{tq}</b> data and suggests "
               f"<b>{METHODS[self.recommended].name}</b> ({METHODS[self.recommended].notebook})") if tq else ""
        self.label.value = (f"<b>{html.escape(str(s.get('name')))}</b> on {html.escape(str(s.get('env_id')))}: "
                            f"quality <b>{html.escape(str(self.quality))}</b>{rec}")
        self.image.value = _png(summary_figure(s))
        self.text.value = f"<pre>{html.escape(format_summary(s))}</pre>"
        return s
