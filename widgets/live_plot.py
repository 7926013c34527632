"""LivePlot: a trainer callback that draws reward and loss curves while training runs.

It keeps every logged metrics dict and evaluation, and redraws at most every ``min_interval``
seconds (drawing is slow next to a gradient step). The figure is shown through an IPython display
handle that is updated in place: in JupyterLab the plot moves as training goes; executed headless
(papermill, nbclient, nbval) the final update leaves a static PNG in the cell output, so the
saved notebook keeps the final plot. ``widget`` is an ``ipywidgets.Image`` carrying the same
picture, for panels that embed the plot; ``save(path)`` writes the PNG.

The shaded bands are the specification's expected ranges ("Monitoring and Debugging"). A value loss
whose scale the run logs is judged relative to it (:mod:`vla_rl_lib.diagnostics`): no band, and its
panel turns red only when :func:`~vla_rl_lib.diagnostics.metric_health` says so.
"""
from __future__ import annotations

import io
import math
import time
from pathlib import Path
from typing import Optional, Sequence

from vla_rl_lib.callbacks import Callback
from vla_rl_lib.diagnostics import METRIC_RANGES, RELATIVE_HEALTH, metric_health

# logged values that are bookkeeping, not curves worth a panel
_SKIP = {"step", "time", "epoch", "steps_per_second", "episodes", "mean_length", "learning_rate"}
_REWARD_KEYS = ("mean_reward",)


def _in_ipython_kernel() -> bool:
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        return False
    return shell is not None and getattr(shell, "kernel", None) is not None


class LivePlot(Callback):
    """Live reward/metrics plot for any trainer (pass it in ``callbacks=[...]``).

    ``keys``: training metrics to draw besides the reward (default: the specification's metrics the
    algorithm logs, then any others, up to ``max_panels``). Redraws come at most every
    ``min_interval`` seconds, and further apart when drawing would otherwise take more than
    ``max_overhead`` of the time (``None``: no such limit). ``display``: ``"auto"`` (show in a
    notebook, nothing in a script), ``True`` or ``False``. ``kind``: ``"offline"``/``"online"``
    for the expected-range bands (default: from the trainer).
    """

    def __init__(self, keys: Optional[Sequence[str]] = None, min_interval: float = 2.0, title: Optional[str] = None,
                 display="auto", max_panels: int = 4, figsize: Optional[tuple] = None, kind: Optional[str] = None,
                 save_path: Optional[str | Path] = None, max_overhead: Optional[float] = 0.1):
        self.keys = list(keys) if keys is not None else None
        self.min_interval = float(min_interval)
        # drawing may take at most this fraction of the wall time: on a slow or busy machine, where
        # one redraw takes a second, the plot waits longer than min_interval between redraws
        self.max_overhead = max_overhead
        self.title = title
        self.display = _in_ipython_kernel() if display == "auto" else bool(display)
        self.max_panels = int(max_panels)
        self.figsize = figsize
        self.kind = kind
        self.save_path = Path(save_path) if save_path is not None else None
        self.logs: list[dict] = []
        self.evaluations: list[dict] = []
        self.redraws = 0
        self.png: Optional[bytes] = None
        self._next_draw = -math.inf
        self._handle = None
        self._widget = None
        self._algorithm = ""

    # -- callback hooks --------------------------------------------------------------------------
    def on_train_start(self, trainer):
        self._algorithm = getattr(trainer, "algorithm", "")
        if self.kind is None:
            from vla_rl_lib.trainer import OfflineTrainer

            self.kind = "offline" if isinstance(trainer, OfflineTrainer) else "online"
        if self.title is None:
            name = getattr(trainer, "dataset_name", None) or getattr(trainer, "env_id", None) or ""
            self.title = f"{self._algorithm.upper()} {name}".strip()
        self.refresh(force=True)

    def on_log(self, trainer, metrics):
        self.logs.append(dict(metrics))
        self.refresh()

    def on_evaluation(self, trainer, results):
        self.evaluations.append({k: v for k, v in results.items() if isinstance(v, (int, float))}
                                | {"step": trainer.global_step})
        self.refresh()

    def on_train_end(self, trainer):
        self.refresh(force=True)
        if self.save_path is not None:
            self.save(self.save_path)

    # -- data ------------------------------------------------------------------------------------
    def series(self, key: str) -> tuple[list, list]:
        """(steps, values) of a logged metric, or of ``eval/<key>`` from the evaluations."""
        if key.startswith("eval/"):
            k = key[5:]
            pts = [(e["step"], e[k]) for e in self.evaluations if k in e]
        else:
            pts = [(m["step"], m[key]) for m in self.logs if key in m and m[key] is not None]
        return [p[0] for p in pts], [float(p[1]) for p in pts]

    def metric_keys(self) -> list[str]:
        """The training metrics that get a panel (besides the reward panel)."""
        if self.keys is not None:
            return self.keys[: self.max_panels]
        seen: list[str] = []
        for m in self.logs:
            for k, v in m.items():
                if k not in seen and k not in _SKIP and k not in _REWARD_KEYS and not k.startswith("eval/") \
                        and isinstance(v, (int, float)):
                    seen.append(k)
        spec = [k for k in METRIC_RANGES.get(self.kind or "online", {}) if k in seen]
        return (spec + [k for k in seen if k not in spec])[: self.max_panels]

    # -- drawing ---------------------------------------------------------------------------------
    def figure(self):
        """A matplotlib figure of the reward (training and evaluation) and the metric panels."""
        from matplotlib.figure import Figure

        keys = self.metric_keys()
        n = 1 + len(keys)
        fig = Figure(figsize=self.figsize or (min(3.4 * n, 16), 3.0))
        axes = [fig.add_subplot(1, n, i + 1) for i in range(n)]
        ax = axes[0]
        drew = False
        for key, label, style in (("mean_reward", "training episodes", "-"), ("eval/mean_reward", "evaluation", "o-")):
            xs, ys = self.series(key)
            if xs:
                ax.plot(xs, ys, style if len(xs) > 1 else "o", label=label, markersize=4)  # one point: a dot
                drew = True
        if drew:
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "waiting for the first\nepisode / evaluation", ha="center", va="center",
                    transform=ax.transAxes, color="gray")
        ax.set_title("reward", fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        kind = self.kind or "online"
        ranges = METRIC_RANGES.get(kind, {})
        last = {k: v for m in self.logs for k, v in m.items() if isinstance(v, (int, float))}
        health = {r["metric"]: r for r in metric_health(last, kind)} if kind in METRIC_RANGES else {}
        for ax, key in zip(axes[1:], keys):
            xs, ys = self.series(key)
            row = health.get(key, {})
            relative = bool(row.get("judged_by")) or ((kind, key) in RELATIVE_HEALTH and row.get("value") is None)
            low, high, _ = (None, None, "") if relative else ranges.get(key, (None, None, ""))
            outside = bool(ys) and row.get("healthy") is False
            ax.plot(xs, ys, "-" if len(xs) > 1 else "o", color="C3" if outside else "C1", markersize=4)
            title = key
            if low is not None and high is not None:
                title = f"{key} (expected {low:g} to {high:g})"
                ax.axhspan(low, high, color="green", alpha=0.08, label="expected range")
                if ys:  # keep the curve readable: show the band only where it meets the data
                    lo, hi = min(ys), max(ys)
                    pad = 0.1 * (hi - lo or abs(hi) or 1.0)
                    ax.set_ylim(min(lo, max(low, lo - pad)) - pad, max(hi, min(high, hi + pad)) + pad)
            ax.set_title(title, fontsize=9, color="C3" if outside else "black")
            ax.set_xlabel("step", fontsize=8)
        for a in axes:
            a.tick_params(labelsize=7)
        if self.title:
            fig.suptitle(self.title, fontsize=10)
        # fixed margins: tight_layout costs as much again as drawing on a busy CPU
        fig.subplots_adjust(left=0.06 if n > 2 else 0.12, right=0.98, bottom=0.17, top=0.8, wspace=0.35)
        return fig

    def render_png(self) -> bytes:
        fig = self.figure()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=90)
        return buf.getvalue()

    @property
    def widget(self):
        """An ``ipywidgets.Image`` showing the latest plot (for embedding in other widgets)."""
        if self._widget is None:
            import ipywidgets as w

            self._widget = w.Image(format="png", value=self.png or b"")
        return self._widget

    def refresh(self, force: bool = False) -> bool:
        """Redraw if ``min_interval`` seconds have passed (or ``force``); returns whether it drew."""
        start = time.monotonic()
        if not force and start < self._next_draw:
            return False
        if not self.display and self._widget is None and not force:
            return False
        self.png = self.render_png()
        self.redraws += 1
        end = time.monotonic()
        wait = self.min_interval
        if self.max_overhead:
            wait = max(wait, (end - start) * (1.0 / self.max_overhead - 1.0))
        self._next_draw = start + wait
        if self._widget is not None:
            self._widget.value = self.png
        if self.display:
            from IPython.display import Image, display

            image = Image(data=self.png, format="png")
            if self._handle is None:
                self._handle = display(image, display_id=True)
            else:
                self._handle.update(image)
        return True

    def save(self, path: str | Path) -> Path:
        """Write the current plot as a PNG (the final plot after training)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.png = self.render_png()
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(self.png)
        tmp.replace(path)
        return path
