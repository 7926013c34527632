"""The kit's small vision-language-action model and the VLA training pipeline.

* :class:`VLAModel` / :class:`VLAConfig` (``model.py``): CNN + instruction encoder + FiLM or
  cross-attention fusion + Gaussian or 256-bin token action head, ``save_pretrained`` /
  ``from_pretrained`` (config.json + model.safetensors);
* :class:`InstructionTokenizer` (``tokenizer.py``): word level, vocabulary built in;
* :class:`VLAPolicy` and :func:`load_policy` (``policy.py``): the model behind the kit's policy interface;
* :class:`BCTrainer` (``bc.py``): stage 2, behaviour cloning (``vla-rl train vla_bc``);
* ``pipeline.py``: stage 3 (IQL / PPO / GRPO from ``--model_path``, offline to online, curriculum,
  per-instruction success rates).

Names are imported lazily.
"""
from __future__ import annotations

from vla_rl_lib._lazy import lazy_exports


_EXPORTS = {
    "VLAModel": "vla_rl_lib.vla.model",
    "VLAConfig": "vla_rl_lib.vla.model",
    "InstructionTokenizer": "vla_rl_lib.vla.tokenizer",
    "VLAPolicy": "vla_rl_lib.vla.policy",
    "load_policy": "vla_rl_lib.vla.policy",
    "BCTrainer": "vla_rl_lib.vla.bc",
    "CurriculumCallback": "vla_rl_lib.vla.pipeline",
    "get_difficulty": "vla_rl_lib.vla.pipeline",
    "evaluate_success": "vla_rl_lib.vla.pipeline",
    "iql_from_model": "vla_rl_lib.vla.pipeline",
    "ppo_from_model": "vla_rl_lib.vla.pipeline",
    "grpo_from_model": "vla_rl_lib.vla.pipeline",
    "offline_to_online": "vla_rl_lib.vla.pipeline",
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, _EXPORTS)
