"""Rollout videos: record_video for classic control (pygame, headless) and MuJoCo (EGL), and the
trainer's periodic evaluation videos (config.save_video=True).

Each video is read back with imageio and its frame count checked against the episode length, so
an empty, truncated or unreadable file fails.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import vla_rl_lib  # noqa: F401  (sets MUJOCO_GL=egl / SDL_VIDEODRIVER=dummy before gymnasium renders)
from vla_rl_lib.config import RLConfig
from vla_rl_lib.nets import TanhGaussianPolicy
from vla_rl_lib.video import record_video, rollout_frames, video_html


def _frames_in(path) -> list:
    """Decode every frame of an mp4 with imageio's ffmpeg reader."""
    import imageio.v2 as imageio

    reader = imageio.get_reader(str(path), format="FFMPEG")
    try:
        return [frame for frame in reader]
    finally:
        reader.close()


def _policy_for(env_id: str) -> TanhGaussianPolicy:
    import gymnasium as gym

    env = gym.make(env_id)
    space = env.action_space
    torch.manual_seed(0)
    policy = TanhGaussianPolicy(env.observation_space.shape[0], space.shape[0], (32, 32),
                                action_low=space.low, action_high=space.high)
    env.close()
    return policy


def test_record_video_pendulum(tmp_path):
    policy = _policy_for("Pendulum-v1")
    path = record_video(policy, "Pendulum-v1", tmp_path / "pendulum.mp4", max_steps=60)
    assert path.exists() and path.stat().st_size > 1000
    frames = _frames_in(path)
    # the reset frame plus one frame per step
    assert len(frames) == 61
    assert frames[0].ndim == 3 and frames[0].shape[2] == 3
    assert frames[0].shape[0] % 2 == 0 and frames[0].shape[1] % 2 == 0
    # the pendulum moves: frames differ
    assert np.abs(frames[0].astype(int) - frames[-1].astype(int)).sum() > 0
    html = video_html(path)
    assert html.startswith("<video") and "base64," in html


def test_record_video_hopper_mujoco_egl(tmp_path):
    pytest.importorskip("mujoco")
    policy = _policy_for("Hopper-v5")
    small = {"width": 160, "height": 160}  # rendering is the slow part; keep frames small
    frames, trace = rollout_frames(policy, "Hopper-v5", seed=0, max_steps=25, env_kwargs=small)
    steps = len(trace["rewards"])
    assert 1 <= steps <= 25 and len(frames) == steps + 1
    assert frames[0].shape == (160, 160, 3)
    assert frames[0].mean() > 5 and frames[0].std() > 5  # EGL rendered a scene, not a blank frame
    path = record_video(policy, "Hopper-v5", tmp_path / "hopper.mp4", max_steps=25, env_kwargs=small)
    assert len(_frames_in(path)) == steps + 1


def test_record_video_with_a_trainer_and_periodic_evaluation_videos(tmp_path):
    from vla_rl_lib.online.sac import SACTrainer

    cfg = RLConfig(algorithm="sac", env="Pendulum-v1", total_timesteps=400, learning_starts=400,
                   eval_freq=200, eval_episodes=1, save_video=True, hidden_dim=32, batch_size=32,
                   output_dir=str(tmp_path / "run"), seed=0)
    trainer = SACTrainer(env="Pendulum-v1", config=cfg)
    trainer.train()
    videos = sorted((tmp_path / "run" / "videos").glob("*.mp4"))
    # evaluations at step 200 and at the end (400)
    assert [v.name for v in videos] == ["step_200.mp4", "step_400.mp4"]
    for v in videos:
        assert len(_frames_in(v)) == 201  # a full 200-step Pendulum episode plus the reset frame
    assert "video_error" not in trainer.last_evaluation
    # the trainer itself can be recorded (it has predict)
    path = record_video(trainer, "Pendulum-v1", tmp_path / "trainer.mp4", max_steps=10)
    assert len(_frames_in(path)) == 11
