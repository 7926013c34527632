"""RolloutPlayer: a recorded episode as an HTML5 video plus a step slider.

The slider shows, for each step, the frame, the instruction (language tasks) and the action taken
with its reward. Frames and the trace come from :func:`vla_rl_lib.video.rollout_frames`; the mp4
from :func:`vla_rl_lib.video.write_video`.
"""
from __future__ import annotations

import html
import io
from pathlib import Path
from typing import Optional

import ipywidgets as w
import numpy as np

from vla_rl_lib.video import rollout_frames, video_html, write_video


def _png(frame: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(frame, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _fmt_action(action) -> str:
    a = np.asarray(action)
    if a.ndim == 0:
        return str(a.item())
    return "[" + ", ".join(f"{x:+.3f}" if isinstance(x, float) else str(x) for x in a.tolist()) + "]"


class RolloutPlayer(w.VBox):
    """Play one episode of ``agent`` (a trainer or a policy with ``predict``) on ``env``.

    Build it from an agent (``RolloutPlayer(agent, "Pendulum-v1")``) or from frames and a trace
    you already have (``RolloutPlayer.from_frames(frames, trace)``). ``video_path`` writes the mp4
    there (otherwise no file is written and only the slider is shown, unless ``show_video``).
    """

    def __init__(self, agent=None, env=None, seed: int = 0, deterministic: bool = True, max_steps: int = 1000,
                 video_path: Optional[str | Path] = None, frames: Optional[list] = None,
                 trace: Optional[dict] = None, fps: int = 30, width: int = 400, show_video: bool = True):
        if frames is None:
            if agent is None or env is None:
                raise ValueError("RolloutPlayer needs an agent and an env, or frames and a trace")
            frames, trace = rollout_frames(agent, env, seed=seed, deterministic=deterministic, max_steps=max_steps)
        self.frames = list(frames)
        self.trace = dict(trace or {})
        self.actions = list(self.trace.get("actions", []))
        self.rewards = list(self.trace.get("rewards", []))
        self.instruction = self.trace.get("instruction")
        self.video_path: Optional[Path] = None
        children = []
        if show_video and self.frames:
            path = Path(video_path) if video_path is not None else None
            if path is None:
                import tempfile

                path = Path(tempfile.mkdtemp(prefix="rollout_")) / "rollout.mp4"
            self.video_path = write_video(self.frames, path, fps=fps)
            self.video = w.HTML(video_html(self.video_path, width=width))
            children.append(self.video)
        self.slider = w.IntSlider(value=0, min=0, max=max(len(self.frames) - 1, 0), step=1, description="step",
                                  continuous_update=True, layout=w.Layout(width=f"{max(width, 300)}px"))
        self.play = w.Play(value=0, min=0, max=self.slider.max, interval=max(1, int(1000 / fps)), description="play")
        w.jslink((self.play, "value"), (self.slider, "value"))
        self.image = w.Image(format="png", layout=w.Layout(width=f"{width}px"))
        self.info = w.HTML()
        self.slider.observe(self._on_step, names="value")
        children += [w.HBox([self.play, self.slider]), self.image, self.info]
        super().__init__(children=children)
        self.show_step(0)

    @classmethod
    def from_frames(cls, frames: list, trace: dict, **kw) -> "RolloutPlayer":
        return cls(frames=frames, trace=trace, **kw)

    def _on_step(self, change) -> None:
        self.show_step(int(change["new"]))

    def step_text(self, step: int) -> str:
        """What the info line says at ``step``: instruction, action taken from that frame, reward, return so far."""
        parts = [f"<b>step {step}</b> / {len(self.frames) - 1}"]
        if self.instruction:
            parts.append(f"instruction: <i>{html.escape(str(self.instruction))}</i>")
        if step < len(self.actions):
            parts.append(f"action: <code>{_fmt_action(self.actions[step])}</code>")
            parts.append(f"reward: {self.rewards[step]:+.3f}")
            parts.append(f"return so far: {sum(self.rewards[: step + 1]):+.2f}")
        else:
            parts.append(f"episode over: return {sum(self.rewards):+.2f}")
        return " &nbsp;|&nbsp; ".join(parts)

    def show_step(self, step: int) -> None:
        if not self.frames:
            self.info.value = "no frames"
            return
        step = max(0, min(int(step), len(self.frames) - 1))
        self.image.value = _png(self.frames[step])
        self.info.value = self.step_text(step)
        if self.slider.value != step:
            self.slider.value = step
