"""vla_rl_lib: offline and online reinforcement learning for vision-language-action policies.

The public names are imported lazily so that ``import vla_rl_lib`` stays fast and a missing
optional dependency only matters for the part that needs it.
"""
from __future__ import annotations

from vla_rl_lib._lazy import lazy_exports

import os
import sys

# MuJoCo and pygame need a headless backend on machines without a display. Users with a screen
# keep theirs: we only fill in what is unset.
if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

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

