"""``VLAPolicy``: a :class:`~vla_rl_lib.vla.model.VLAModel` behind the kit's policy interface.

The trainers (PPO, GRPO, IQL, the behaviour-cloning stage) speak the interface of
:mod:`vla_rl_lib.nets`: ``get_action``, ``log_prob``, ``entropy``, ``value``,
``evaluate_actions``, ``predict``. ``VLAPolicy`` translates: an observation is a dict of batched
arrays ``{"image": (B,H,W,3) uint8, "instruction": str or B strings, "state": (B, S)}`` (numpy or
torch, a single unbatched observation works in ``predict``), instructions are tokenised (and
cached per distinct text), and the model's outputs become a distribution over actions.

Actions are always the environment's continuous actions, whichever head the model has:

* continuous head: ``a ~ N(tanh μ(o), diag σ²)`` in the unit box, mapped to the action bounds;
  ``log π(a|o) = Σ_i log N(a_i; μ_i, σ_i²)``; samples are not clipped (the environment clips them,
  as Stable-Baselines3 does).
* token head: one categorical over ``bins`` tokens per action dimension (OpenVLA/RT-2);
  a sampled token becomes the centre of its bin; ``log π(a|o) = Σ_i log softmax(z_i)[tok(a_i)]``
  with ``tok`` = :func:`vla_rl_lib.envs.wrappers.tokenize_actions`. Because
  ``tok(centre(k)) = k``, the likelihood of an action the policy took is exactly that of its
  tokens. ``discrete`` stays False: trainers store and replay continuous actions.

Both heads have a value head on the shared features, so ``has_value`` is True.

Offline trainers sample dataset batches ``{"observations", "images", "instructions", ...}``:
:meth:`VLAPolicy.obs_from_batch` turns one into the observation dict above (``next=True`` for the
next observations). Critics keep reading the flat state vector ``batch["observations"]``
(normalised with ``policy.normalize``), the actor reads image and instruction.

:func:`load_policy` is the one place that turns ``--model_path`` into a policy.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch.distributions import Categorical, Normal

from vla_rl_lib.envs.text import IndexedText
from vla_rl_lib.errors import IncompatibleError
from vla_rl_lib.nets import Policy
from vla_rl_lib.vla.model import VLAModel

IMAGE_KEYS = ("image", "images", "pixel_values")
TEXT_KEYS = ("instruction", "instructions")
STATE_KEYS = ("state", "states", "observations")


def _first(obs: dict, keys: tuple):
    for k in keys:
        if k in obs:
            return obs[k]
    return None


class VLAPolicy(Policy):
    """Wrap a :class:`VLAModel` as a policy (see the module docstring).

    Args:
        model: the VLA model.
        obs_dim: size of the environment's flat state vector (default: the driving simulator's),
            used by ``normalize`` for critics that read the state.
        action_low, action_high: environment action bounds (default [-1, 1]).
    """

    has_value = True
    discrete = False

    def __init__(self, model: VLAModel, obs_dim: Optional[int] = None, action_low=None, action_high=None):
        if not isinstance(model, VLAModel):
            raise IncompatibleError(f"VLAPolicy wraps a VLAModel, got {type(model).__name__}")
        if obs_dim is None:
            from vla_rl_lib.envs.driving import STATE_DIM

            obs_dim = STATE_DIM
        super().__init__(obs_dim, model.config.action_dim, action_low, action_high)
        self.model = model
        self.tokens = model.config.action_head == "tokens"
        self._token_cache: dict[str, torch.Tensor] = {}
        self.to(model.device)

    def _unit_bounds(self) -> bool:
        # exact identity for [-1, 1] bounds, so bin centres stay bin centres (bounds may be set later).
        # Cached until the bounds change (their version counters move): no device sync per step.
        low, high = self.action_low, self.action_high
        key = (low.data_ptr(), low._version, high.data_ptr(), high._version)
        if getattr(self, "_unit_key", None) != key:
            self._unit_key, self._unit = key, bool((low == -1).all() and (high == 1).all())
        return self._unit

    def scale_action(self, unit_action: torch.Tensor) -> torch.Tensor:
        return unit_action if self._unit_bounds() else super().scale_action(unit_action)

    def unscale_action(self, action: torch.Tensor) -> torch.Tensor:
        return action if self._unit_bounds() else super().unscale_action(action)

    # -- observations -----------------------------------------------------------------------------
    def _instruction_ids(self, text, batch: int) -> torch.Tensor:
        if isinstance(text, torch.Tensor) and text.dtype in (torch.int64, torch.int32):
            return text  # already token ids
        if isinstance(text, IndexedText):  # indices into a few texts (the batched simulator): one gather
            if len(text) != batch:
                raise IncompatibleError(f"{batch} images but {len(text)} instructions; give one instruction per image")
            return self._vocabulary_ids(text.vocabulary)[text.ids.to(self.device)]
        if isinstance(text, (str, bytes)):
            texts = [text] * batch
        elif isinstance(text, np.ndarray):
            texts = list(text.reshape(-1))
        else:
            texts = list(text)
        if len(texts) == 1 and batch > 1:
            texts = texts * batch
        if len(texts) != batch:
            raise IncompatibleError(f"{batch} images but {len(texts)} instructions; give one instruction per image")
        rows = []
        for t in texts:
            t = t.decode("utf-8") if isinstance(t, bytes) else t
            ids = self._token_cache.get(t)
            if ids is None:
                ids = self.model.tokenizer(t)["input_ids"][0]
                if len(self._token_cache) < 10_000:
                    self._token_cache[t] = ids
            rows.append(ids)
        return torch.stack(rows).to(self.device)

    def _vocabulary_ids(self, vocabulary: tuple) -> torch.Tensor:
        """Token ids of each text of ``vocabulary``, one row per text, on the policy's device (cached)."""
        cache = self.__dict__.setdefault("_vocabulary_cache", {})
        key = (vocabulary, self.device)
        if key not in cache:
            cache[key] = self._instruction_ids(list(vocabulary), len(vocabulary))
        return cache[key]

    def model_inputs(self, obs: Any) -> tuple:
        """``(pixel_values, input_ids, state)`` for the model from an observation dict."""
        if not isinstance(obs, dict):
            raise IncompatibleError(
                f"VLAPolicy needs dict observations {{'image', 'instruction'[, 'state']}}, got {type(obs).__name__}; "
                "use it with the driving simulator (or an env with image + instruction observations)")
        image = _first(obs, IMAGE_KEYS)
        text = _first(obs, ("input_ids",) + TEXT_KEYS)
        if image is None or text is None:
            raise IncompatibleError(f"the observation needs an image and an instruction, got keys {sorted(obs)}")
        if isinstance(image, np.ndarray):
            image = torch.from_numpy(np.ascontiguousarray(image))
        batch = image.shape[0]
        ids = self._instruction_ids(text, batch)
        state = _first(obs, STATE_KEYS) if self.model.config.state_dim is not None else None
        return image, ids, state

    @staticmethod
    def obs_from_batch(batch: dict, next: bool = False) -> dict:
        """The observation dict of an offline batch (``images``, ``instructions``, ``observations``)."""
        if "images" not in batch or "instructions" not in batch:
            raise IncompatibleError("a VLA policy trains on datasets with images and instructions "
                                    f"(e.g. driving-expert-v1); this batch has keys {sorted(batch)}")
        pre = "next_" if next else ""
        return {"image": batch[pre + "images"], "instruction": batch["instructions"],
                "state": batch[pre + "observations"]}

    def forward(self, obs) -> dict:
        """The model's output dict for an observation dict."""
        return self.model(*self.model_inputs(obs))

    # -- distributions ------------------------------------------------------------------------------
    def _dist(self, out: dict):
        if self.tokens:
            return Categorical(logits=out["logits"], validate_args=False)  # (no argument checks: nets.py's docstring)
        return Normal(out["mean"], out["log_std"].exp(), validate_args=False)

    def distribution(self, obs):
        return self._dist(self(obs))

    def _sample(self, out: dict, deterministic: bool) -> torch.Tensor:
        """Unit-box action from the outputs."""
        if deterministic:
            return out["predicted_actions"]
        dist = self._dist(out)
        if self.tokens:
            from vla_rl_lib.envs.wrappers import detokenize_actions

            return detokenize_actions(dist.sample(), self.model.config.bins)
        return dist.sample()

    def _token_log_probs(self, out: dict, actions: torch.Tensor) -> torch.Tensor:
        """``log π(a_i|o)`` per action dimension ``(B, action_dim)``: per token for the token head."""
        unit = self.unscale_action(torch.as_tensor(actions, dtype=torch.float32, device=out["value"].device))
        unit = unit.reshape(-1, self.action_dim)
        if self.tokens:
            from vla_rl_lib.envs.wrappers import tokenize_actions

            tok = tokenize_actions(unit, self.model.config.bins)
            return out["log_probs"].gather(-1, tok.unsqueeze(-1)).squeeze(-1)
        return self._dist(out).log_prob(unit)

    def _log_prob(self, out: dict, actions: torch.Tensor) -> torch.Tensor:
        return self._token_log_probs(out, actions).sum(-1)

    def _entropy(self, out: dict) -> torch.Tensor:
        return self._dist(out).entropy().sum(-1)

    # -- the policy interface -----------------------------------------------------------------------
    def get_action(self, obs, deterministic: bool = False) -> torch.Tensor:
        return self.scale_action(self._sample(self(obs), deterministic))

    def log_prob(self, obs, actions) -> torch.Tensor:
        return self._log_prob(self(obs), actions)

    def entropy(self, obs) -> torch.Tensor:
        return self._entropy(self(obs))

    def value(self, obs) -> torch.Tensor:
        return self(obs)["value"]

    def token_log_probs(self, obs, actions) -> torch.Tensor:
        """``log π`` of each action token (each action dimension), ``(B, action_dim)``; they sum to ``log_prob``."""
        return self._token_log_probs(self(obs), actions)

    def evaluate_tokens(self, obs, actions):
        """``(log π per token (B, action_dim), H[π(·|o)])`` from one forward pass (token-level ratios)."""
        out = self(obs)
        return self._token_log_probs(out, actions), self._entropy(out)

    def evaluate_actions(self, obs, actions):
        """``(log π(a|o), H[π(·|o)], V(o))`` from one forward pass."""
        out = self(obs)
        return self._log_prob(out, actions), self._entropy(out), out["value"]

    def act(self, obs, deterministic: bool = False):
        """``(action, log π(action|o), V(o))`` from one forward pass (for rollouts)."""
        out = self(obs)
        unit = self._sample(out, deterministic)
        action = self.scale_action(unit)
        return action, self._log_prob(out, action), out["value"]

    @torch.no_grad()
    def predict(self, obs, deterministic: bool = True) -> np.ndarray:
        """One observation dict (or a batch of them) in, numpy environment action(s) out."""
        if not isinstance(obs, dict):
            raise IncompatibleError(f"VLAPolicy.predict needs an observation dict, got {type(obs).__name__}")
        image = _first(obs, IMAGE_KEYS)
        single = image is not None and np.ndim(image) == 3
        if single:
            obs = {k: (_unsqueeze(v) if not isinstance(v, (str, bytes)) else v) for k, v in obs.items()}
        action = self.get_action(obs, deterministic=deterministic).cpu().numpy()
        return action[0] if single else action


def _unsqueeze(value):
    if isinstance(value, torch.Tensor):
        return value.unsqueeze(0)
    return np.asarray(value)[None]


def load_policy(model_path: str | Path, device: str | torch.device = "cpu", action_space=None,
                obs_dim: Optional[int] = None) -> VLAPolicy:
    """``VLAPolicy(VLAModel.from_pretrained(model_path))``: what every trainer's ``--model_path`` does.

    ``action_space`` (a gymnasium Box) sets the action bounds; its size must match the model's.
    A bad folder raises :class:`~vla_rl_lib.errors.CheckpointError` naming the file.
    """
    model = VLAModel.from_pretrained(model_path, device=device)
    low = high = None
    if action_space is not None:
        shape = tuple(getattr(action_space, "shape", ()) or ())
        if shape != (model.config.action_dim,):
            raise IncompatibleError(f"the VLA model at {model_path} acts in {model.config.action_dim} dimensions but "
                                    f"the environment's action space is {action_space}")
        low, high = action_space.low, action_space.high
    return VLAPolicy(model, obs_dim=obs_dim, action_low=low, action_high=high)
