"""Rollout videos: record an episode to mp4 (headless) and embed it in a notebook.

MuJoCo renders through EGL (``MUJOCO_GL=egl``, set by ``import vla_rl_lib`` on a Linux machine
without a display); classic-control tasks render through pygame's dummy video driver.
"""
from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Optional

import numpy as np

from vla_rl_lib.checkpoint import atomic_write


def _even(frame: np.ndarray, min_size: int = 256) -> np.ndarray:
    """Upscale small frames (nearest neighbour) and pad to even sizes, as H.264 needs."""
    frame = np.asarray(frame, dtype=np.uint8)
    h, w = frame.shape[:2]
    k = max(1, int(np.ceil(min_size / max(h, w))))
    if k > 1:
        frame = frame.repeat(k, axis=0).repeat(k, axis=1)
    h, w = frame.shape[:2]
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def write_video(frames, path: str | Path, fps: int = 30) -> Path:
    """Write RGB uint8 frames to an mp4 (H.264) file atomically."""
    import imageio.v2 as imageio

    frames = [_even(f) for f in frames]
    if not frames:
        raise ValueError("no frames to write")

    def write(tmp):
        # imageio's FFMPEG plugin refuses a file name that does not end in a video extension, so
        # write "<tmp>.mp4" and move it onto the temporary name that atomic_write renames into place.
        tmp_mp4 = f"{tmp}.mp4"
        try:
            with imageio.get_writer(tmp_mp4, format="FFMPEG", mode="I", fps=fps, codec="libx264",
                                    pixelformat="yuv420p", macro_block_size=1,
                                    output_params=["-loglevel", "error"]) as writer:
                for frame in frames:
                    writer.append_data(frame)
            os.replace(tmp_mp4, tmp)
        finally:
            if os.path.exists(tmp_mp4):
                os.unlink(tmp_mp4)

    return atomic_write(path, write)


def rollout_frames(agent, env_id, seed: int = 0, deterministic: bool = True, max_steps: int = 1000,
                   env_kwargs: Optional[dict] = None) -> tuple[list, dict]:
    """Run one episode with ``agent.predict`` (a trainer or a policy) and return (frames, trace).

    ``trace`` holds per-step ``actions``, ``rewards`` and, for language tasks, the ``instruction``:
    the rollout player widget shows them beside each frame.
    """
    from vla_rl_lib.envs import make_env

    env = make_env(env_id, render_mode="rgb_array", **(env_kwargs or {})) if isinstance(env_id, str) else env_id
    frames, actions, rewards = [], [], []
    obs, info = env.reset(seed=seed)
    if hasattr(agent, "reset_episode"):
        agent.reset_episode()
    instruction = obs.get("instruction") if isinstance(obs, dict) else None
    frames.append(env.render())
    for _ in range(max_steps):
        action = agent.predict(obs, deterministic=deterministic)
        obs, reward, terminated, truncated, info = env.step(action)
        if hasattr(agent, "observe_reward"):  # sequence models (Decision Transformer) track the return-to-go
            agent.observe_reward(float(reward))
        frames.append(env.render())
        actions.append(np.asarray(action).tolist())
        rewards.append(float(reward))
        if terminated or truncated:
            break
    if isinstance(env_id, str):
        env.close()
    return frames, {"actions": actions, "rewards": rewards, "instruction": instruction,
                    "return": float(sum(rewards)), "info": {k: v for k, v in info.items() if np.isscalar(v)}}


def record_video(agent, env_id, path: str | Path, seed: int = 0, deterministic: bool = True,
                 max_steps: int = 1000, fps: int = 30, env_kwargs: Optional[dict] = None) -> Path:
    """Record one episode of ``agent`` (a trainer or policy with ``predict``) on ``env_id`` to ``path``."""
    frames, _ = rollout_frames(agent, env_id, seed, deterministic, max_steps, env_kwargs)
    return write_video(frames, path, fps=fps)


def video_html(path: str | Path, width: int = 400) -> str:
    """An HTML5 ``<video>`` element with the mp4 embedded (survives papermill and nbconvert)."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (f'<video width="{width}" controls loop autoplay muted playsinline>'
            f'<source src="data:video/mp4;base64,{data}" type="video/mp4"></video>')
