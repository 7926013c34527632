"""vla_rl_lib: offline and online reinforcement learning for vision-language-action policies.

The public names are imported lazily so that ``import vla_rl_lib`` stays fast and a missing
optional dependency only matters for the part that needs it.
"""
from __future__ import annotations

from vla_rl_lib._lazy import lazy_exports

import os
import sys


def _headless_defaults(environ=os.environ, platform: str = sys.platform) -> None:
    """MuJoCo and pygame need a headless backend on a Linux machine without a display: there, and
    only for the variables the user left unset, render MuJoCo through EGL (``MUJOCO_GL=egl``, with
    PyOpenGL on the same platform) and pygame to a dummy video driver. A machine with a display
    (``DISPLAY`` or ``WAYLAND_DISPLAY``), or any other OS, is left untouched, so that
    ``render_mode="human"`` opens a window as usual."""
    if not platform.startswith("linux") or environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY"):
        return
    environ.setdefault("MUJOCO_GL", "egl")
    if environ["MUJOCO_GL"] in ("egl", "osmesa"):
        environ.setdefault("PYOPENGL_PLATFORM", environ["MUJOCO_GL"])
    environ.setdefault("SDL_VIDEODRIVER", "dummy")


_headless_defaults()

__version__ = "0.1.0"

_EXPORTS = {
    "OfflineRLConfig": "vla_rl_lib.config",
    "RLConfig": "vla_rl_lib.config",
    "OfflineReplayBuffer": "vla_rl_lib.data.buffer",
    "load_dataset": "vla_rl_lib.data.datasets",
    "normalized_score": "vla_rl_lib.data.datasets",
    "IQLTrainer": "vla_rl_lib.offline.iql",
    "BCTrainer": "vla_rl_lib.offline.bc",
    "CQLTrainer": "vla_rl_lib.offline.cql",
    "TD3BCTrainer": "vla_rl_lib.offline.td3_bc",
    "DecisionTransformerTrainer": "vla_rl_lib.offline.decision_transformer",
    "PPOTrainer": "vla_rl_lib.online.ppo",
    "SACTrainer": "vla_rl_lib.online.sac",
    "GRPOTrainer": "vla_rl_lib.online.grpo",
    "VLAModel": "vla_rl_lib.vla.model",
    "VLAPolicy": "vla_rl_lib.vla.policy",
    "make_env": "vla_rl_lib.envs",
    "record_video": "vla_rl_lib.video",
}

__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS, eager=("__version__",))

