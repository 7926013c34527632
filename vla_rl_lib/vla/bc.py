"""Stage 2: behaviour cloning of the VLA's action head on demonstrations with images and instructions.

The VLA recipe trains a VLA in stages; stage 2 teaches the action head to imitate demonstrations
(here the scripted expert's ``driving-expert-v1``), and stage 3 improves it with reinforcement
learning (:mod:`vla_rl_lib.vla.pipeline`). Behaviour cloning is supervised learning on
``(image, instruction, state) -> action`` pairs:

* continuous head: the mean is fit by mean squared error, which is the Gaussian negative
  log-likelihood with a fixed ``σ`` (see :func:`bc_mse_loss`); ``log σ`` keeps its initial value so
  that RL fine-tuning starts with that much exploration noise;
* token head: cross-entropy on the 256-bin action tokens (:func:`bc_token_loss`), as OpenVLA.

Images are augmented with random shifts (pad by a few pixels and crop back, as DrQ), which
matters when the demonstration set is small.

``BCTrainer`` is an :class:`~vla_rl_lib.trainer.OfflineTrainer` (algorithm name ``"vla_bc"``, ``vla-rl train vla_bc``; ``"bc"`` is the low-dimensional
baseline :class:`vla_rl_lib.offline.bc.BCTrainer`), so it
logs, evaluates, checkpoints and resumes like the others. Each evaluation that beats the best so
far (success rate, then mean reward) writes the model with ``save_pretrained`` to
``output_dir/best``; the end of training writes ``output_dir/final`` (and ``best`` when there was
no evaluation). The default ``output_dir`` is ``./output/stage2_action_head``, so the best model
lands in ``./output/stage2_action_head/best`` where stage 3's ``--model_path`` expects it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import torch
import torch.nn.functional as F

from vla_rl_lib.callbacks import Callback
from vla_rl_lib.config import ConfigBase, OfflineRLConfig, hp
from vla_rl_lib.errors import ConfigError, DatasetError
from vla_rl_lib.trainer import OfflineTrainer
from vla_rl_lib.vla.model import VLAConfig, VLAModel
from vla_rl_lib.vla.policy import VLAPolicy, load_policy

DEFAULT_OUTPUT_DIR = "./output/stage2_action_head"


def bc_mse_loss(predicted: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """Behaviour cloning of a continuous head.

    ``L = E_(o,a)~D [ ||μ_θ(o) - a||² ]`` (summed over action dimensions, averaged over the batch),
    i.e. ``-log N(a; μ_θ(o), σ² I)`` up to a constant for a fixed ``σ``.
    """
    return (predicted - actions).pow(2).sum(-1).mean()


def bc_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Behaviour cloning of a token head (OpenVLA / RT-2).

    ``L = -E_(o,a)~D [ Σ_i log softmax(z_θ(o)_i)[tok(a_i)] ]``, one 256-way cross-entropy per action
    dimension ``i``; ``logits (B, action_dim, bins)``, ``tokens (B, action_dim)``.
    """
    return F.cross_entropy(logits.flatten(0, 1), tokens.flatten(), reduction="mean") * tokens.shape[-1]


def random_shift(images: torch.Tensor, pad: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """DrQ's augmentation: pad uint8 ``(B, H, W, 3)`` images by ``pad`` (edge pixels) and crop back at a
    random offset per image."""
    if pad <= 0:
        return images
    b, h, w, _ = images.shape
    padded = F.pad(images.permute(0, 3, 1, 2), (pad, pad, pad, pad), mode="replicate")
    offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator,
                            device=generator.device if generator is not None else "cpu").tolist()
    out = torch.stack([padded[i, :, dy:dy + h, dx:dx + w] for i, (dy, dx) in enumerate(offsets)])
    return out.permute(0, 2, 3, 1).contiguous()


@dataclass
class BCHyperparameters(ConfigBase):
    """Behaviour cloning settings (the model's own sizes are in :class:`VLAConfig`)."""

    fusion: str = hp("film", "fusion of a new model (ignored with model_path)", choices=("film", "cross_attention"))
    action_head: str = hp("continuous", "action head of a new model (ignored with model_path)",
                          choices=("continuous", "tokens"))
    image_size: Optional[int] = hp(None, "image side of a new model (None: the dataset's)", low=8, nullable=True)
    use_state: bool = hp(False, "a new model also reads the proprioceptive state (heading, speed)")
    augment_pad: int = hp(2, "random-shift augmentation: pixels of padding (0: none)", low=0)
    max_grad_norm: float = hp(1.0, "gradient-norm clip", low=0, low_open=True)


#: Entries of the driving simulator's state vector that ``use_state=True`` feeds the model:
#: heading and speed (proprioception), nothing about the task or the other cars.
PROPRIO_INDICES = [1, 2]


class BCTrainer(OfflineTrainer):
    """Stage-2 behaviour cloning of a :class:`VLAModel` (CLI name ``bc``).

    Args:
        obs_dim, action_dim: sizes of the dataset's state vectors and actions (18 and 2 for driving).
        config: :class:`OfflineRLConfig`; ``model_path`` starts from a saved model, ``dataset`` names
            the demonstrations (default ``driving-expert-v1`` when neither a buffer nor a dataset is given).
        model: a :class:`VLAModel`, a :class:`VLAConfig` or a dict of its fields (a new model); default:
            built from the hyperparameters and the dataset's image size when training starts.
    """

    algorithm = "vla_bc"
    Hyperparameters = BCHyperparameters

    def __init__(self, obs_dim: int = 18, action_dim: int = 2, config: Optional[OfflineRLConfig] = None,
                 model=None, callbacks: Optional[Iterable[Callback]] = None, use_wandb: bool = False,
                 progress_bar: bool = False, **hparams):
        if config is None:
            config = OfflineRLConfig(output_dir=DEFAULT_OUTPUT_DIR, dataset="driving-expert-v1")
        super().__init__(obs_dim, action_dim, config, callbacks, use_wandb, progress_bar, **hparams)
        self.best_score: Optional[tuple] = None
        if self.config.model_path:
            self._set_model(load_policy(self.config.model_path, device=self.device, obs_dim=self.obs_dim).model)
        elif isinstance(model, VLAModel):
            self._set_model(model.to(self.device))
        elif isinstance(model, (VLAConfig, dict)):
            self._set_model(VLAModel(model).to(self.device))
        elif model is not None:
            raise ConfigError(f"model must be a VLAModel, a VLAConfig or a dict, got {type(model).__name__}")
        elif self.hparams.image_size is not None:
            self._set_model(self._new_model(self.hparams.image_size))
        else:
            self.model = None  # built from the dataset's image size in attach_buffer

    def _new_model(self, image_size: int) -> VLAModel:
        h = self.hparams
        cfg = VLAConfig(image_size=image_size, fusion=h.fusion, action_head=h.action_head, action_dim=self.action_dim,
                        state_indices=list(PROPRIO_INDICES) if h.use_state else None)
        return VLAModel(cfg).to(self.device)

    def _set_model(self, model: VLAModel) -> None:
        if model.config.action_dim != self.action_dim:
            raise ConfigError(f"the model acts in {model.config.action_dim} dimensions but the trainer was built for "
                              f"action_dim={self.action_dim}")
        self.model = model
        self.policy = VLAPolicy(model, obs_dim=self.obs_dim)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=self.config.learning_rate,
                                           weight_decay=self.config.weight_decay)
        self._init_args["model"] = model.config.to_dict()
        self._checkpoint_exclude = tuple(self._checkpoint_exclude) + ("model",)  # saved once, inside policy

    def load_buffer(self):
        if not self.config.dataset:
            self.config = self.config.replace(dataset="driving-expert-v1")
        return super().load_buffer()

    def attach_buffer(self, buffer) -> None:
        super().attach_buffer(buffer)
        if not (getattr(buffer, "has_images", False) and getattr(buffer, "has_instructions", False)):
            raise DatasetError("behaviour cloning of a VLA needs a dataset with 'images' and 'instructions' "
                               "(e.g. driving-expert-v1 or vla_rl_lib.envs.collect_dataset(...))")
        size = int(buffer.get(torch.zeros(1, dtype=torch.long))["images"].shape[1])
        if self.model is None:
            self._set_model(self._new_model(size))
        elif size != self.model.config.image_size:
            raise DatasetError(f"the dataset's images are {size}x{size} but the model reads "
                               f"{self.model.config.image_size}x{self.model.config.image_size}; collect the dataset with "
                               f"image_size={self.model.config.image_size} or build the model for {size}")

    def update(self, batch: dict) -> dict:
        model = self.model
        images = random_shift(batch["images"], self.hparams.augment_pad, self.sample_generator)
        obs = {"image": images, "instruction": batch["instructions"], "state": batch["observations"]}
        out = self.policy(obs)
        actions = self.policy.unscale_action(batch["actions"]).clamp(-1.0, 1.0)
        if model.config.action_head == "tokens":
            from vla_rl_lib.envs.wrappers import tokenize_actions

            loss = bc_token_loss(out["logits"], tokenize_actions(actions, model.config.bins))
        else:
            loss = bc_mse_loss(out["mean"], actions)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), self.hparams.max_grad_norm)
        self.optimizer.step()
        with torch.no_grad():
            action_error = (out["predicted_actions"] - actions).abs().mean()
        return {"policy_loss": loss.detach(), "bc_loss": loss.detach(), "action_error": action_error}

    # -- the best model -----------------------------------------------------------------------------
    def _run_evaluation(self) -> None:
        super()._run_evaluation()
        res = self.last_evaluation or {}
        score = (res.get("success_rate", 0.0), res.get("mean_reward", float("-inf")))
        if self.best_score is None or score > self.best_score:
            self.best_score = score
            self.model.save_pretrained(self.run_dir / "best")

    def _end(self) -> None:
        if self.model is not None and self.global_step > 0 and not self.interrupted:
            self.model.save_pretrained(self.run_dir / "final")
            if not (self.run_dir / "best").exists():
                self.model.save_pretrained(self.run_dir / "best")
        super()._end()

    def extra_state(self) -> dict:
        return {"best_score": list(self.best_score) if self.best_score is not None else None}

    def load_extra_state(self, state: dict) -> None:
        best = state.get("best_score")
        self.best_score = tuple(best) if best is not None else None

    @property
    def best_model_path(self) -> Path:
        return self.run_dir / "best"
