"""Configuration dataclasses: ``OfflineRLConfig`` and ``RLConfig``.

Defaults are the specification's defaults. Every field carries its help text and its allowed
range in the dataclass metadata; from that one place come

* validation on construction (``ConfigError``, a ``ValueError``, naming field, value and range),
* YAML / JSON round trips (``to_yaml``, ``from_yaml``, ``to_json``, ``from_json``),
* the command-line flags of ``vla-rl train`` (``add_arguments`` / ``from_args``),
* the sliders of the hyperparameter panel in ``widgets/``.

Algorithm hyperparameters that the specification passes to a trainer's constructor
(``IQLTrainer(..., expectile=0.7)``) live in small ``Hyperparameters`` dataclasses next to each
algorithm, built with the same ``hp`` field helper, so they validate and become flags the same way.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from vla_rl_lib.errors import ConfigError

__all__ = ["hp", "ConfigBase", "OfflineRLConfig", "RLConfig", "resolve_device"]


def hp(default: Any, help: str, *, low: float | None = None, high: float | None = None,
       low_open: bool = False, high_open: bool = False, choices: tuple | None = None,
       nullable: bool = False, ui: tuple | None = None):
    """A dataclass field with its help text and allowed range.

    ``low``/``high`` bound numbers (inclusive unless ``*_open``), ``choices`` enumerates allowed
    values, ``nullable`` admits ``None``. ``ui`` optionally suggests a slider range
    ``(min, max, step[, "log"])`` for the hyperparameter panel.
    """
    meta = dict(help=help, low=low, high=high, low_open=low_open, high_open=high_open,
                choices=choices, nullable=nullable, ui=ui)
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def _range_text(meta: dict) -> str:
    if meta.get("choices"):
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    lo, hi = meta.get("low"), meta.get("high")
    parts = []
    if lo is not None:
        parts.append(f"{'>' if meta.get('low_open') else '>='} {lo:g}")
    if hi is not None:
        parts.append(f"{'<' if meta.get('high_open') else '<='} {hi:g}")
    return " and ".join(parts) if parts else "any value"


def check_field(owner: str, name: str, value: Any, meta: dict) -> None:
    """Raise ``ConfigError`` if ``value`` is outside the range described by ``meta``."""
    if value is None:
        if meta.get("nullable"):
            return
        raise ConfigError(f"{owner}.{name}=None is not allowed; it must be {_range_text(meta)}")
    choices = meta.get("choices")
    if choices:
        # numeric choices such as alpha="auto" or a float are handled by the caller's range
        if value in choices:
            return
        if not (isinstance(value, (int, float)) and not isinstance(value, bool)
                and (meta.get("low") is not None or meta.get("high") is not None)):
            numeric = {k: v for k, v in meta.items() if k != "choices"}
            also = f" or a number {_range_text(numeric)}" if numeric.get("low") is not None or numeric.get("high") is not None else ""
            raise ConfigError(f"{owner}.{name}={value!r} is not allowed; it must be {_range_text(meta)}{also}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{owner}.{name}={value!r} is not a finite number; it must be {_range_text(meta)}")
    lo, hi = meta.get("low"), meta.get("high")
    bad = (lo is not None and (value <= lo if meta.get("low_open") else value < lo)) or \
          (hi is not None and (value >= hi if meta.get("high_open") else value > hi))
    if bad:
        rng = _range_text({k: v for k, v in meta.items() if k != "choices"})
        extra = f" or one of {', '.join(map(repr, choices))}" if choices else ""
        raise ConfigError(f"{owner}.{name}={value!r} is out of range; it must be {rng}{extra}")


def _coerce(owner: str, name: str, value: Any, ftype: Any, default: Any) -> Any:
    """Convert strings from YAML/CLI into the field's type (int, float, bool, "auto"|float)."""
    if value is None or not isinstance(value, str):
        if isinstance(value, int) and not isinstance(value, bool) and isinstance(default, float):
            return float(value)
        return value
    text = value.strip()
    if text.lower() in ("none", "null"):
        return None
    tname = str(ftype)
    try:
        if "bool" in tname:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if "float" in tname and "str" in tname:  # e.g. alpha: "auto" or a number
            try:
                return float(text)
            except ValueError:
                return text
        if "int" in tname and "float" not in tname:
            as_float = float(text)
            if as_float != int(as_float):
                raise ValueError(text)
            return int(as_float)
        if "float" in tname:
            return float(text)
    except ValueError:
        raise ConfigError(f"{owner}.{name}={value!r} is not a valid {tname.replace('typing.', '')}") from None
    return text


class ConfigBase:
    """Shared behaviour of every config and hyperparameter dataclass."""

    def __post_init__(self) -> None:
        self.validate()

    # -- validation -----------------------------------------------------------------------------
    def validate(self) -> None:
        owner = type(self).__name__
        for f in dataclasses.fields(self):
            value = _coerce(owner, f.name, getattr(self, f.name), f.type, f.default)
            if f.name == "device":
                value = normalize_device(owner, value)
            object.__setattr__(self, f.name, value)
            check_field(owner, f.name, value, dict(f.metadata))

    # -- conversion -----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None = None, **overrides):
        data = dict(data or {}, **overrides)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"{cls.__name__} has no field(s) {', '.join(unknown)}; "
                              f"known fields: {', '.join(sorted(names))}")
        return cls(**data)

    def replace(self, **changes):
        return type(self).from_dict(self.to_dict(), **changes)

    def to_yaml(self, path: str | Path | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_yaml(cls, path_or_text: str | Path):
        text = Path(path_or_text).read_text() if _is_file(path_or_text) else str(path_or_text)
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.__name__}: YAML must hold a mapping of field names, got {type(data).__name__}")
        return cls.from_dict(data)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_json(cls, path_or_text: str | Path):
        text = Path(path_or_text).read_text() if _is_file(path_or_text) else str(path_or_text)
        return cls.from_dict(json.loads(text))

    # -- command line ---------------------------------------------------------------------------
    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser, skip: tuple = (),
                      defaults: dict | None = None) -> None:
        """Add one ``--field`` flag (and its ``--field-with-dashes`` alias) per field."""
        defaults = defaults or {}
        group = parser.add_argument_group(cls.__name__)
        for f in dataclasses.fields(cls):
            if f.name in skip:
                continue
            default = defaults.get(f.name, f.default if f.default is not dataclasses.MISSING else None)
            flags = [f"--{f.name}"]
            if "_" in f.name:
                flags.append(f"--{f.name.replace('_', '-')}")
            meta = f.metadata
            help_text = f"{meta.get('help', '')} (default: {default!r}; {_range_text(meta)})"
            if "bool" in str(f.type) and "int" not in str(f.type):
                group.add_argument(*flags, dest=f.name, action=argparse.BooleanOptionalAction,
                                   default=argparse.SUPPRESS, help=help_text)
            else:
                group.add_argument(*flags, dest=f.name, default=argparse.SUPPRESS,
                                   metavar=f.name.upper(), help=help_text)

    @classmethod
    def from_args(cls, namespace: argparse.Namespace | dict, base: dict | None = None):
        values = vars(namespace) if isinstance(namespace, argparse.Namespace) else dict(namespace)
        names = {f.name for f in dataclasses.fields(cls)}
        data = dict(base or {})
        data.update({k: v for k, v in values.items() if k in names})
        return cls.from_dict(data)

    @classmethod
    def field_info(cls) -> list[dict]:
        """Name, default, type, help and range of every field (for widgets and docs)."""
        out = []
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            out.append(dict(name=f.name, default=default, type=str(f.type), **dict(f.metadata)))
        return out


def _is_file(value: str | Path) -> bool:
    if isinstance(value, Path):
        return True
    text = str(value)
    return "\n" not in text and len(text) < 4096 and Path(text).is_file()


def resolve_device(device: str) -> str:
    """``"auto"`` picks CUDA when present, then Apple MPS, else the CPU."""
    import torch

    if device != "auto":
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ConfigError(f"device={device!r} was asked for but CUDA is not available here; use device='cpu' or 'auto'")
        return device
    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


_DEVICES = ("auto", "cpu", "cuda", *(f"cuda:{i}" for i in range(8)), "mps")
_COMPILE_MODES = ("auto", "default", "reduce-overhead", "max-autotune-no-cudagraphs", "max-autotune")


def normalize_device(owner: str, value: Any) -> Any:
    """A device given as a ``torch.device`` as the string the config keeps (configs are saved as
    YAML): ``torch.device("cuda", 0)`` -> ``"cuda:0"``. The field's choices then check the name."""
    if type(value).__name__ == "device" and type(value).__module__ == "torch":
        return str(value)
    return value.strip().lower() if isinstance(value, str) else value


@dataclass
class OfflineRLConfig(ConfigBase):
    """Settings shared by the offline trainers (IQL, CQL, TD3+BC, Decision Transformer).

    An epoch is ``steps_per_epoch`` gradient steps (default 1000, so the specification's 100
    epochs are 100k gradient steps). ``save_freq`` and ``eval_freq`` count epochs; ``log_freq``
    counts gradient steps.
    """

    # Training
    num_epochs: int = hp(100, "number of epochs", low=1, ui=(1, 200, 1))
    batch_size: int = hp(256, "minibatch size of one gradient step", low=1, ui=(16, 1024, 16))
    learning_rate: float = hp(3e-4, "learning rate of every network", low=0, low_open=True, ui=(1e-5, 1e-2, 1e-5, "log"))
    weight_decay: float = hp(1e-6, "weight decay of the optimisers", low=0)
    steps_per_epoch: int = hp(1000, "gradient steps in one epoch", low=1, ui=(10, 5000, 10))
    # Networks
    hidden_dim: int = hp(256, "width of each hidden layer", low=1, ui=(16, 1024, 16))
    # RL parameters
    discount_gamma: float = hp(0.99, "discount factor gamma", low=0, high=1, ui=(0.8, 0.999, 0.001))
    tau: float = hp(0.005, "soft target update rate", low=0, high=1, low_open=True, ui=(0.001, 0.1, 0.001))
    # Logging
    save_freq: int = hp(10, "save a checkpoint every this many epochs (0: only at the end)", low=0)
    eval_freq: int = hp(10, "evaluate every this many epochs (0: only at the end)", low=0)
    eval_episodes: int = hp(10, "episodes per evaluation", low=0)
    log_freq: int = hp(100, "log metrics every this many gradient steps", low=1)
    # Data, environment and starting point
    dataset: Optional[str] = hp(None, "D4RL name, Minari id, file path or kit dataset name", nullable=True)
    env: Optional[str] = hp(None, "environment to evaluate on (default: the dataset's)", nullable=True)
    model_path: Optional[str] = hp(None, "start from a saved VLA (directory written by save_pretrained)", nullable=True)
    normalize_states: bool = hp(False, "normalise observations with the dataset's mean/std")
    save_video: bool = hp(False, "record an evaluation rollout video at each evaluation")
    # Reproducibility and hardware
    seed: int = hp(0, "random seed", low=0)
    device: str = hp("auto", "torch device ('auto' picks CUDA when present)", choices=_DEVICES)
    precision: str = hp("fp32", "matmul precision of the updates: 'fp32', or 'bf16' (bfloat16 autocast with "
                                "float32 weights and output layers; about 2x faster where the hardware has "
                                "native bf16: recent x86 CPUs with AVX512-BF16/AMX, Ampere+ GPUs)",
                        choices=("fp32", "bf16"))
    compile: bool = hp(False, "compile the whole update with torch.compile (vla_rl_lib/compile.py): slower "
                              "first steps, faster long runs, most on a GPU")
    compile_mode: str = hp("auto", "torch.compile mode of compile=True ('auto': CUDA graphs on CUDA)",
                           choices=_COMPILE_MODES)
    # Output
    output_dir: str = hp("./output/offline_rl", "run directory")


@dataclass
class RLConfig(ConfigBase):
    """Settings of the online trainers (PPO, SAC, GRPO).

    Units as Stable-Baselines3 users expect: ``rollout_steps`` counts steps per environment (a PPO
    rollout holds ``rollout_steps * num_envs`` transitions); ``batch_size`` is the minibatch of one
    gradient step; ``total_timesteps``, ``log_freq``, ``eval_freq`` and ``save_freq`` count
    environment steps over all vector environments.

    ``batch_size`` and ``hidden_dim`` default to ``None``, meaning the algorithm's usual value
    (PPO/GRPO 64, SAC 256), filled in on construction.
    """

    # Algorithm
    algorithm: str = hp("ppo", "online algorithm", choices=("ppo", "sac", "grpo"))
    env: str = hp("CartPole-v1", "gymnasium id, 'driving', or any registered id")
    num_envs: int = hp(1, "number of vector environments", low=1, ui=(1, 64, 1))
    # Training
    total_timesteps: int = hp(1_000_000, "environment steps over all envs", low=1)
    rollout_steps: int = hp(2048, "PPO: steps per environment in one rollout", low=1, ui=(8, 4096, 8))
    batch_size: Optional[int] = hp(None, "minibatch size of one gradient step (None: 64 for PPO/GRPO, 256 for SAC)", low=1, nullable=True)
    learning_rate: float = hp(3e-4, "learning rate", low=0, low_open=True, ui=(1e-5, 1e-2, 1e-5, "log"))
    discount_gamma: float = hp(0.99, "discount factor gamma", low=0, high=1, ui=(0.8, 0.999, 0.001))
    hidden_dim: Optional[int] = hp(None, "width of hidden layers (None: 64 for PPO/GRPO, 256 for SAC)", low=1, nullable=True)
    # PPO specific
    ppo_epochs: int = hp(4, "PPO: epochs per policy update", low=1, ui=(1, 30, 1))
    ppo_clip_range: float = hp(0.2, "PPO: clipping range of the policy ratio", low=0, low_open=True, high=1, ui=(0.05, 0.5, 0.01))
    ppo_gae_lambda: float = hp(0.95, "PPO: GAE lambda", low=0, high=1, ui=(0.8, 1.0, 0.01))
    ppo_value_coef: float = hp(0.5, "PPO: value loss coefficient", low=0)
    ppo_entropy_coef: float = hp(0.01, "PPO: entropy bonus coefficient", low=0, ui=(0.0, 0.1, 0.001))
    ppo_clip_range_vf: Optional[float] = hp(None, "PPO: value clipping range (None: no clipping)", low=0, low_open=True, nullable=True)
    ppo_max_grad_norm: float = hp(0.5, "PPO/GRPO: global gradient-norm clip", low=0, low_open=True)
    ppo_anneal_lr: bool = hp(False, "PPO: anneal the learning rate linearly to 0")
    ppo_normalize_obs: bool = hp(False, "PPO: running observation normalisation")
    ppo_normalize_reward: bool = hp(False, "PPO: running return-based reward scaling")
    # SAC specific
    buffer_size: int = hp(1_000_000, "SAC: replay buffer size", low=1)
    learning_starts: int = hp(10_000, "SAC: environment steps before learning begins", low=0)
    tau: float = hp(0.005, "SAC: target network update rate", low=0, high=1, low_open=True)
    alpha: Union[float, str] = hp("auto", "SAC: entropy temperature, or 'auto' for automatic tuning", choices=("auto",), low=0)
    gradient_steps: int = hp(1, "SAC: gradient steps per environment step (per vector step)", low=1)
    save_replay_buffer: bool = hp(False, "SAC: save the replay buffer with checkpoints")
    # GRPO specific
    group_size: int = hp(4, "GRPO: rollouts per comparison group (same reset seed)", low=2, ui=(2, 32, 1))
    num_groups: int = hp(8, "GRPO: groups per iteration", low=1)
    num_iterations: int = hp(100, "GRPO: iterations", low=1)
    kl_coef: float = hp(0.1, "GRPO: KL penalty coefficient", low=0, ui=(0.0, 1.0, 0.01))
    clip_range: float = hp(0.2, "GRPO: clipping range", low=0, low_open=True, high=1)
    grpo_epochs: int = hp(4, "GRPO: epochs per iteration", low=1)
    objective_weights: Optional[dict] = hp(None, "GRPO: weights of vector-reward objectives from info['reward_terms']", nullable=True)
    grpo_reward: str = hp("return", "GRPO: a rollout's score: 'return' (sum of rewards) or 'success' (info['success'] at its end, 0/1)", choices=("return", "success"))
    grpo_advantage: str = hp("group", "GRPO: 'group' (group-normalised scores) or 'rloo' (leave-one-out baseline)", choices=("group", "rloo"))
    dynamic_sampling: bool = hp(False, "GRPO: drop groups whose rollouts all score the same and sample more groups")
    dynamic_sampling_rounds: int = hp(4, "GRPO: most sampling rounds of num_groups groups per iteration with dynamic_sampling", low=1)
    clip_range_high: Optional[float] = hp(None, "GRPO: upper clipping range of the ratio (None: clip_range; 'clip-higher' e.g. 0.28)", low=0, low_open=True, nullable=True)
    token_level_ratios: bool = hp(False, "GRPO: one ratio per action token (per action dimension) instead of one per action")
    grpo_loss_mean: str = hp("step", "GRPO: average the loss over steps ('step': long rollouts weigh more) or over rollouts ('rollout')", choices=("step", "rollout"))
    # Logging
    log_freq: int = hp(1000, "log every this many environment steps", low=1)
    eval_freq: int = hp(5000, "evaluate every this many environment steps (0: only at the end)", low=0)
    eval_episodes: int = hp(10, "episodes per evaluation", low=0)
    save_freq: int = hp(10000, "checkpoint every this many environment steps (0: only at the end)", low=0)
    save_video: bool = hp(False, "record an evaluation rollout video at each evaluation")
    # Starting point, reproducibility, hardware
    model_path: Optional[str] = hp(None, "start from a saved VLA (directory written by save_pretrained)", nullable=True)
    seed: int = hp(0, "random seed", low=0)
    device: str = hp("auto", "torch device ('auto' picks CUDA when present)", choices=_DEVICES)
    compile: bool = hp(False, "SAC: compile the whole update with torch.compile (vla_rl_lib/compile.py)")
    compile_mode: str = hp("auto", "torch.compile mode of compile=True ('auto': CUDA graphs on CUDA)",
                           choices=_COMPILE_MODES)
    # Output
    output_dir: str = hp("./output/online_rl", "run directory")

    _ALGO_DEFAULTS = {"ppo": dict(batch_size=64, hidden_dim=64),
                      "sac": dict(batch_size=256, hidden_dim=256),
                      "grpo": dict(batch_size=64, hidden_dim=64)}

    def validate(self) -> None:
        super().validate()
        for name, value in self._ALGO_DEFAULTS[self.algorithm].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if isinstance(self.alpha, str) and self.alpha != "auto":
            raise ConfigError(f"RLConfig.alpha={self.alpha!r} is not allowed; it must be 'auto' or a number >= 0")
        if self.objective_weights is not None and not isinstance(self.objective_weights, dict):
            raise ConfigError("RLConfig.objective_weights must be a mapping like {'safety': 1.0, 'progress': 0.5}")
