"""Small display helpers the notebooks share: health tables, videos, the overestimation diagnostic.

They only format what :mod:`vla_rl_lib.diagnostics` and :mod:`vla_rl_lib.video` compute.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Optional

from vla_rl_lib.video import video_html


def health_html(rows: list[dict]) -> str:
    """The specification's metric table with the run's final values and a healthy/unhealthy flag."""
    def fmt(x):
        return "" if x is None else f"{x:.4g}"

    body = []
    for r in rows:
        if r["healthy"] is None:
            flag = "<span style='color:#777'>task-dependent</span>" if r["value"] is not None and r["low"] is None \
                else "<span style='color:#777'>not logged by this method</span>" if r["value"] is None \
                else "<span style='color:#777'>n/a</span>"
        elif r["healthy"]:
            flag = "<span style='color:#080'>&#10004; healthy</span>"
        else:
            flag = "<span style='color:#b00'>&#10008; outside the expected range</span>"
        expected = "task-dependent" if r["low"] is None else f"{fmt(r['low'])} to {fmt(r['high'])}"
        note = html.escape(r["note"])
        if r.get("judged_by"):  # a value loss judged relative to the scale of its targets
            expected = f"{html.escape(r['judged_by'])}: {fmt(r['measure'])}, expected {fmt(r['low'])} to {fmt(r['high'])}"
            note += " (relative to the scale of the returns)"
        body.append(f"<tr><td><code>{r['metric']}</code></td><td>{fmt(r['value'])}</td><td>{expected}</td>"
                    f"<td>{flag}</td><td>{note}</td></tr>")
    return ("<table><tr><th>metric</th><th>final value</th><th>expected range</th><th>status</th><th>notes</th></tr>"
            + "".join(body) + "</table>")


def verdict_html(verdict: dict) -> str:
    """A notebook's closing verdict (:func:`vla_rl_lib.diagnostics.lesson_verdict`) as a coloured box."""
    colour = {True: "#080", False: "#b00", None: "#777"}[verdict["shown"]]
    head = {True: "Lesson shown", False: "Lesson not shown", None: "Smoke run: not judged"}[verdict["shown"]]
    return (f"<div style='border-left:4px solid {colour};padding:4px 10px'><b style='color:{colour}'>{head}.</b> "
            f"<i>{html.escape(verdict['lesson'])}</i><br>{html.escape(verdict['message'])}</div>")


def show_verdict(verdict: dict) -> None:
    from IPython.display import HTML, display

    display(HTML(verdict_html(verdict)))


def show_health(rows: list[dict]) -> None:
    from IPython.display import HTML, display

    display(HTML(health_html(rows)))


def show_source(fn) -> None:
    """Show the source of a library function (the code that implements an equation)."""
    import inspect

    from IPython.display import Markdown, display

    display(Markdown(f"`{fn.__module__}.{fn.__qualname__}`\n```python\n{inspect.getsource(fn).rstrip()}\n```"))


def show_video(path: str | Path, width: int = 400, caption: Optional[str] = None) -> None:
    """Embed an mp4 as an HTML5 video (kept in executed notebooks)."""
    from IPython.display import HTML, display

    cap = f"<p>{html.escape(caption)}</p>" if caption else ""
    display(HTML(cap + video_html(path, width=width)))


def overestimation_html(diag: dict) -> str:
    verdict = ("<span style='color:#b00'>overestimation: the prediction is well above what the policy obtains "
               "(the specification's 'Offline RL: Overestimation' symptom)</span>" if diag["overestimates"]
               else "<span style='color:#080'>no sign of overestimation: the prediction is not far above the obtained "
                    "return</span>")
    rows = "".join(f"<tr><td>{i}</td><td>{e['predicted_q']:.2f}</td><td>{e['discounted_return']:.2f}</td>"
                   f"<td>{e['length']}</td></tr>" for i, e in enumerate(diag["per_episode"]))
    return (f"<p>Predicted value at the start states <b>{diag['predicted_q']:.2f}</b> vs discounted return actually "
            f"obtained <b>{diag['discounted_return']:.2f}</b> (gap {diag['gap']:+.2f}, gamma {diag['gamma']}): "
            f"{verdict}.</p><table><tr><th>episode</th><th>predicted</th><th>obtained</th><th>steps</th></tr>{rows}</table>")


def show_overestimation(diag: dict) -> None:
    from IPython.display import HTML, display

    display(HTML(overestimation_html(diag)))
