"""The shared training loop: stepping, evaluation, logging, checkpoints, callbacks, resume.

One loop serves every algorithm. An algorithm file only says what is particular to it:

* offline (``OfflineTrainer``): ``update(batch) -> dict of metrics`` for one gradient step;
* online (``OnlineTrainer``): ``collect() -> int`` (environment steps taken) and
  ``learn() -> dict of metrics``; GRPO counts iterations instead of steps.

The trainer does the rest: seeding, the run directory (``config.yaml``, ``metrics.csv``,
TensorBoard events, ``checkpoint.pt``, videos), evaluation every ``eval_freq``, logging every
``log_freq``, checkpoints every ``save_freq``, callbacks (which can stop training), the progress
bar, stopping with ``TrainingDivergedError`` on a non-finite loss (keeping the last good
checkpoint), and a checkpoint on Ctrl-C.

Checkpoints hold every ``nn.Module``, optimiser, LR scheduler and random generator found on the
trainer, the global RNG states, ``global_step`` and whatever ``extra_state()`` adds, so a resumed
run continues the same run.
"""
from __future__ import annotations

import contextlib
import copy
import importlib
import math
import time
import warnings
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch
import torch.nn as nn

from vla_rl_lib import __version__, compat
from vla_rl_lib.callbacks import Callback, CallbackList, ProgressBar
from vla_rl_lib.checkpoint import (check_writable_dir, clear_run, existing_run, load_checkpoint,
                                   remove_stale_temporaries, rng_state, save_checkpoint, seed_everything, set_rng_state,
                                   trainer_meta, with_article)
from vla_rl_lib.config import ConfigBase, OfflineRLConfig, RLConfig, resolve_device
from vla_rl_lib.errors import CheckpointError, ConfigError, DatasetError, IncompatibleError, TrainingDivergedError
from vla_rl_lib.logging import RunLogger

# name on the command line -> "module:Class"
ALGORITHMS = {
    "iql": "vla_rl_lib.offline.iql:IQLTrainer",
    "cql": "vla_rl_lib.offline.cql:CQLTrainer",
    "td3_bc": "vla_rl_lib.offline.td3_bc:TD3BCTrainer",
    "dt": "vla_rl_lib.offline.decision_transformer:DecisionTransformerTrainer",
    "ppo": "vla_rl_lib.online.ppo:PPOTrainer",
    "sac": "vla_rl_lib.online.sac:SACTrainer",
    "grpo": "vla_rl_lib.online.grpo:GRPOTrainer",
    "bc": "vla_rl_lib.offline.bc:BCTrainer",
    "vla_bc": "vla_rl_lib.vla.bc:BCTrainer",
}
ALIASES = {"%bc": "bc", "filtered_bc": "bc", "td3bc": "td3_bc", "td3+bc": "td3_bc", "decision_transformer": "dt", "decision-transformer": "dt"}


def get_trainer_class(name: str) -> type["Trainer"]:
    key = ALIASES.get(name.lower().replace("-", "_"), name.lower().replace("-", "_"))
    if key not in ALGORITHMS:
        raise ConfigError(f"unknown algorithm {name!r}; choose one of {', '.join(ALGORITHMS)}")
    module, cls = ALGORITHMS[key].split(":")
    return getattr(importlib.import_module(module), cls)


class Trainer:
    """Base class of every trainer (see the module docstring)."""

    algorithm = "base"
    config_class: type[ConfigBase] = OfflineRLConfig
    Hyperparameters: Optional[type[ConfigBase]] = None  # the algorithm's own constructor kwargs
    _checkpoint_exclude: tuple[str, ...] = ("_given_policy",)

    def __init__(self, config: Optional[ConfigBase] = None, callbacks: Optional[Iterable[Callback]] = None,
                 use_wandb: bool = False, progress_bar: bool = False, **hparams):
        if config is None:
            config = self.config_class()
        if isinstance(config, dict):
            config = self.config_class.from_dict(config)
        if not isinstance(config, self.config_class):
            raise ConfigError(f"{type(self).__name__} takes a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config
        if self.Hyperparameters is not None:
            self.hparams = self.Hyperparameters.from_dict(hparams)
        elif hparams:
            raise ConfigError(f"{type(self).__name__} got unexpected arguments: {', '.join(sorted(hparams))}")
        else:
            self.hparams = None
        self.device = torch.device(resolve_device(config.device))
        seed_everything(config.seed)
        self.global_step = 0
        self.stop_training = False
        self.interrupted = False
        self.callbacks = list(callbacks or [])
        self.progress_bar = progress_bar
        self.use_wandb = use_wandb
        self.run_dir = Path(config.output_dir)
        self.logger: Optional[RunLogger] = None
        self.last_evaluation: Optional[dict] = None
        self._sums: dict[str, Any] = {}
        self._counts: dict[str, int] = {}
        self._count = 0
        self._init_args: dict = {}
        self._callbacks = CallbackList()

    # ------------------------------------------------------------------------------------------
    # things an algorithm provides
    # ------------------------------------------------------------------------------------------
    @property
    def policy(self) -> nn.Module:
        return self._policy

    @policy.setter
    def policy(self, value: nn.Module) -> None:
        self._policy = value

    @property
    def total_steps(self) -> int:
        raise NotImplementedError

    def extra_state(self) -> dict:
        """Anything else a checkpoint must hold (plain values and tensors only)."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def reset_episode(self) -> None:
        """Called before each evaluation episode (sequence models clear their context here)."""

    def predict(self, obs, deterministic: bool = True):
        """Action for a numpy observation (or batch), in the environment's action space."""
        return self.policy.predict(obs, deterministic=deterministic)

    def observe_reward(self, reward: float) -> None:
        """Called after each evaluation step with the reward the last ``predict`` action earned
        (sequence models such as the Decision Transformer decrement their return-to-go here)."""

    def update_function(self):
        """``self.update``, compiled once per trainer when ``config.compile`` is set (see vla_rl_lib/compile.py)."""
        if getattr(self, "_update_fn", None) is None:
            from vla_rl_lib.compile import compile_trainer_update

            self._update_fn = compile_trainer_update(self)
        return self._update_fn

    # ------------------------------------------------------------------------------------------
    # metrics, logging, evaluation
    # ------------------------------------------------------------------------------------------
    def _accumulate(self, metrics: dict) -> None:
        """Sum each metric over the steps that report it (a delayed actor loss is averaged over its
        own updates, not diluted by the steps without one)."""
        for key, value in metrics.items():
            if value is None:
                continue
            if isinstance(value, torch.Tensor):
                value = value.detach().float().mean()
            self._sums[key] = self._sums.get(key, 0.0) + value
            self._counts[key] = self._counts.get(key, 0) + 1
        self._count += 1

    def _flush_metrics(self) -> dict:
        """Average accumulated metrics; raise ``TrainingDivergedError`` if any is not finite."""
        if not self._count:
            return {}
        keys = list(self._sums)
        values = [v.item() if isinstance(v, torch.Tensor) else float(v) for v in self._sums.values()]
        avg = {k: v / self._counts[k] for k, v in zip(keys, values)}
        self._sums, self._counts, self._count = {}, {}, 0
        bad = [k for k, v in avg.items() if not math.isfinite(v)]
        if bad:
            raise TrainingDivergedError(
                f"{bad[0]} became {avg[bad[0]]} by step {self.global_step} ({self.algorithm}); training stopped. "
                f"{self._last_checkpoint_note()} "
                "Try a lower learning_rate, gradient clipping or reward normalisation.")
        return avg

    def _last_checkpoint_note(self) -> str:
        path = self.run_dir / "checkpoint.pt"
        if path.is_file():
            return f"The last good checkpoint is kept in {path}."
        return f"No checkpoint was written before it (save_freq={self.config.save_freq}), so none is kept."

    def log(self, extra: Optional[dict] = None) -> dict:
        metrics = self._flush_metrics()
        metrics.update(extra or {})
        if self.logger is not None and metrics:
            self.logger.log(metrics, self.global_step)
        if metrics and self._callbacks.on_log(self, dict(metrics, step=self.global_step)) is False:
            self.stop_training = True
        return metrics

    def _eval_env_spec(self):
        """The environment evaluation uses by default (an id or an env instance)."""
        raise NotImplementedError

    def _score_name(self) -> Optional[str]:
        """Dataset or environment name whose reference scores normalise returns."""
        return None

    def evaluate(self, num_episodes: Optional[int] = None, env=None, deterministic: bool = True,
                 seed: Optional[int] = None, video_path: Optional[str | Path] = None) -> dict:
        """Run ``num_episodes`` episodes and return mean/std reward, mean length, normalised score."""
        from vla_rl_lib.envs import make_env

        n = self.config.eval_episodes if num_episodes is None else int(num_episodes)
        if n < 1:
            hint = "" if num_episodes is not None else " (config.eval_episodes is 0: pass evaluate(num_episodes=N))"
            raise ConfigError(f"num_episodes={n} must be >= 1{hint}")
        target = self._eval_env_spec() if env is None else env
        own_env = isinstance(target, str)
        eval_env = make_env(target) if own_env else target
        self._check_eval_env(eval_env, target, own_env)
        seed = (self.config.seed + 10_000) if seed is None else seed
        returns, lengths, successes = [], [], []
        was_training = self.policy.training
        self.policy.eval()
        try:
            for episode in range(n):
                obs, info = eval_env.reset(seed=seed + episode)
                self.reset_episode()
                done, total, length = False, 0.0, 0
                while not done:
                    action = self.predict(obs, deterministic=deterministic)
                    obs, reward, terminated, truncated, info = eval_env.step(action)
                    self.observe_reward(float(reward))
                    total += float(reward)
                    length += 1
                    done = terminated or truncated
                returns.append(total)
                lengths.append(length)
                if "success" in info:
                    successes.append(float(info["success"]))
        finally:
            self.policy.train(was_training)
            if own_env:
                eval_env.close()
        results = {
            "mean_reward": float(np.mean(returns)) if returns else float("nan"),
            "std_reward": float(np.std(returns)) if returns else float("nan"),
            "mean_length": float(np.mean(lengths)) if lengths else float("nan"),
            "episodes": n,
        }
        if successes:
            results["success_rate"] = float(np.mean(successes))
        score = self._normalized_score(results["mean_reward"], env)
        if score is not None:
            results["normalized_score"] = score
        if video_path is not None:
            from vla_rl_lib.video import record_video

            results["video"] = str(record_video(self, target if isinstance(target, str) else self._eval_env_spec(),
                                                video_path, seed=seed, deterministic=deterministic))
        return results

    def _check_eval_env(self, eval_env, target, own_env: bool) -> None:
        """The evaluation env's observations must have the size the policy was trained on."""
        space = getattr(self, "observation_space", None)
        expected = getattr(space, "shape", None) if space is not None else (
            (self.obs_dim,) if isinstance(getattr(self, "obs_dim", None), int) else None)
        got = getattr(getattr(eval_env, "observation_space", None), "shape", None)
        if expected and got and tuple(got) != tuple(expected):
            if own_env:
                eval_env.close()
            name = target if isinstance(target, str) else type(target).__name__
            raise IncompatibleError(f"the environment {name!r} has observations of shape {tuple(got)}, but this "
                                    f"{self.algorithm} policy was trained on shape {tuple(expected)}; evaluate on the "
                                    "environment it was trained on (or one with the same observation size)")

    def _normalized_score(self, mean_reward: float, env) -> Optional[float]:
        """D4RL-style normalised score: of the dataset/task when evaluating on the default
        environment, of the given environment otherwise; None where no reference is known."""
        if env is None:
            name = self._score_name()
        else:
            name = env if isinstance(env, str) else getattr(getattr(env, "spec", None), "id", None)
        if name is None or not math.isfinite(mean_reward):
            return None
        try:
            from vla_rl_lib.data.datasets import normalized_score
        except ImportError:
            return None
        try:
            return normalized_score(name, mean_reward)
        except (KeyError, ValueError):
            return None

    def _run_evaluation(self) -> None:
        if self.config.eval_episodes <= 0:
            return
        video = None
        if self.config.save_video:
            video = self.run_dir / "videos" / f"step_{self.global_step}.mp4"
        try:
            results = self.evaluate(video_path=video)
        except Exception as exc:  # a broken renderer must not lose the run; say so in the log
            if video is None:
                raise
            results = self.evaluate()
            results["video_error"] = f"{type(exc).__name__}: {exc}"
        self.last_evaluation = dict(results, step=self.global_step)
        logged = {f"eval/{k}": v for k, v in results.items() if isinstance(v, (int, float)) and k != "episodes"}
        if self.logger is not None:
            self.logger.log(logged, self.global_step)
        if self._callbacks.on_evaluation(self, results) is False:
            self.stop_training = True

    # ------------------------------------------------------------------------------------------
    # checkpoints
    # ------------------------------------------------------------------------------------------
    def _stateful(self) -> dict[str, Any]:
        """Every module, optimiser, scheduler and generator on the trainer, by attribute name."""
        found = {}
        for name, value in sorted(vars(self).items()):
            if name in self._checkpoint_exclude or name.startswith("_callbacks"):
                continue
            if isinstance(value, (nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler,
                                  torch.Generator, np.random.Generator)):
                found[name] = value
        return found

    def meta(self) -> dict:
        return {
            "algorithm": self.algorithm,
            "trainer": f"{type(self).__module__}:{type(self).__name__}",
            "config": self.config.to_dict(),
            "hparams": self.hparams.to_dict() if self.hparams is not None else {},
            "init": dict(self._init_args),
            "env_id": getattr(self, "env_id", None),
            "dataset_name": getattr(self, "dataset_name", None),
            "kit_version": __version__,
        }

    def state_dict(self) -> dict:
        objects = {}
        for name, obj in self._stateful().items():
            if isinstance(obj, torch.Generator):
                objects[name] = obj.get_state()
            elif isinstance(obj, np.random.Generator):
                objects[name] = obj.bit_generator.state
            elif isinstance(obj, torch.optim.Optimizer):  # (the compiled path holds learning rates as tensors)
                objects[name] = obj.state_dict()
                for group in objects[name]["param_groups"]:
                    group["lr"] = float(group["lr"])
            else:
                objects[name] = obj.state_dict()
        return {"meta": self.meta(), "objects": objects, "rng": rng_state(),
                "global_step": self.global_step, "extra": self.extra_state()}

    def save(self, path: Optional[str | Path] = None) -> Path:
        """Write a checkpoint atomically (default ``run_dir/checkpoint.pt``) and return its path."""
        path = Path(path) if path is not None else self.run_dir / "checkpoint.pt"
        return save_checkpoint(path, self.state_dict())

    def load(self, path: str | Path) -> "Trainer":
        """Restore everything :meth:`save` wrote; ``global_step`` continues from the checkpoint."""
        # read onto the CPU whatever device wrote it: load_state_dict copies onto this trainer's device
        # (a checkpoint from a GPU loads on a CPU-only machine and the other way round)
        state = load_checkpoint(path, map_location="cpu")
        meta = trainer_meta(state, path)
        if meta.get("algorithm") != self.algorithm:
            raise CheckpointError(f"{path} holds a {meta.get('algorithm')!r} checkpoint, not {self.algorithm!r}; "
                                  f"load it with the matching trainer or `vla-rl evaluate {path}`")
        stateful = self._stateful()
        missing = sorted(set(stateful) - set(state["objects"]))
        if missing:
            raise CheckpointError(f"{path} lacks {', '.join(missing)} that this {type(self).__name__} has; "
                                  "was it written by a different version or configuration?")
        for name, obj in stateful.items():
            saved = state["objects"][name]
            try:
                if isinstance(obj, torch.Generator):
                    load_generator_state(obj, saved, self.config.seed + self.global_step)
                elif isinstance(obj, np.random.Generator):
                    obj.bit_generator.state = saved
                else:
                    obj.load_state_dict(saved)
            except (RuntimeError, ValueError, KeyError) as exc:
                raise CheckpointError(f"{path}: '{name}' does not match this trainer "
                                      f"({str(exc).splitlines()[0][:200]}); check obs/action sizes and network sizes") from None
        set_rng_state(state["rng"])
        self._update_fn = None  # (the optimisers' learning rates are floats again: prepare them anew)
        self.global_step = int(state["global_step"])
        if isinstance(self, OfflineTrainer):  # where to evaluate and whose reference scores apply
            self.env_id = self.env_id or meta.get("env_id")
            self.dataset_name = self.dataset_name or meta.get("dataset_name")
        self.load_extra_state(state.get("extra", {}))
        return self

    @classmethod
    def from_checkpoint(cls, path: str | Path, policy: Optional[nn.Module] = None, **overrides) -> "Trainer":
        """Rebuild the trainer a checkpoint was written by, and load it (``config`` fields may be overridden).

        ``policy=`` hands in a policy of the checkpoint's architecture (its weights are loaded): a run
        started from ``--model_path`` needs it (:func:`vla_rl_lib.vla.pipeline.from_checkpoint` builds it)."""
        state = load_checkpoint(path)
        meta = trainer_meta(state, path)
        trainer_cls = get_trainer_class(meta["algorithm"]) if cls in (Trainer, OfflineTrainer, OnlineTrainer) else cls
        saved_device = str(meta["config"].get("device", "auto"))
        if "device" not in overrides and saved_device.startswith("cuda") and not torch.cuda.is_available():
            # the run's device describes the machine that trained it: a GPU run opens on a CPU-only machine
            warnings.warn(f"{path} was trained with device={saved_device!r}; this machine has no CUDA device, so it "
                          "is loaded with device='cpu' (pass device=... to choose)", stacklevel=2)
            overrides["device"] = "cpu"
        config = trainer_cls.config_class.from_dict(meta["config"], **overrides)
        given = {} if policy is None else {"policy": policy}
        trainer = trainer_cls(config=config, **(meta.get("init") or {}), **given, **(meta.get("hparams") or {}))
        return trainer.load(path)

    # ------------------------------------------------------------------------------------------
    # the loop
    # ------------------------------------------------------------------------------------------
    def _begin(self, callbacks: Optional[Iterable[Callback]]) -> None:
        cbs = list(self.callbacks) + list(callbacks or [])
        if self.progress_bar:
            cbs.append(ProgressBar())
        self._callbacks = CallbackList(cbs)
        self.stop_training = False
        self.interrupted = False
        resuming = self.global_step > 0
        check_writable_dir(self.run_dir, "output_dir")
        if not resuming:
            self._claim_run_dir()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(self.run_dir)
        import yaml

        (self.run_dir / "config.yaml").write_text(yaml.safe_dump(
            {"algorithm": self.algorithm, "config": self.config.to_dict(),
             "hparams": self.hparams.to_dict() if self.hparams is not None else {},
             "init": self._init_args}, sort_keys=False))
        self.logger = RunLogger(self.run_dir, use_wandb=self.use_wandb, config=self.meta(),
                                run_name=f"{self.algorithm}-{self.run_dir.name}")
        self._sums, self._counts, self._count = {}, {}, 0
        self._t0, self._step0 = time.time(), self.global_step
        if self._callbacks.on_train_start(self) is False:
            self.stop_training = True

    def _claim_run_dir(self) -> None:
        """A fresh run replaces an earlier run of the same algorithm in its folder (re-running a notebook),
        and refuses to mix with another algorithm's run (the command line refuses any run, see ``--overwrite``)."""
        other = existing_run(self.run_dir)
        if other is not None and other not in (f"{self.algorithm} run", "training run"):
            raise ConfigError(f"output_dir {self.run_dir} holds {with_article(other)}; train {self.algorithm} into another "
                              "output_dir, or delete that folder first")
        if other is not None:
            clear_run(self.run_dir)

    def _end(self) -> None:
        self._callbacks.on_train_end(self)
        if self.logger is not None:
            self.logger.close()
            self.logger = None

    def _is_done(self) -> bool:
        return self.global_step >= self.total_steps

    def _run(self, step_fn, boundaries) -> "Trainer":
        """Call ``step_fn`` until done; ``boundaries(prev_step)`` does the periodic work."""
        try:
            while not self.stop_training and not self._is_done():
                prev = self.global_step
                step_fn()
                if self._callbacks.on_step(self) is False:
                    self.stop_training = True
                boundaries(prev)
            final = self.log(self._speed())
            if self.config.eval_episodes > 0 and (self.last_evaluation is None
                                                  or self.last_evaluation["step"] != self.global_step):
                self._run_evaluation()
            self.save()
            del final
        except KeyboardInterrupt:
            self.interrupted = True
            self._sums, self._counts, self._count = {}, {}, 0
            path = self.save()
            print(f"\nInterrupted at step {self.global_step}; checkpoint saved to {path}. "
                  f"Continue with: vla-rl resume {self.run_dir}")
        finally:
            self._end()
        return self

    def _speed(self) -> dict:
        elapsed = max(time.time() - self._t0, 1e-9)
        return {"steps_per_second": (self.global_step - self._step0) / elapsed}

    @staticmethod
    def _crossed(prev: int, now: int, freq: int) -> bool:
        return freq > 0 and now // freq > prev // freq


def load_generator_state(generator: torch.Generator, saved: torch.Tensor, fallback_seed: int) -> None:
    """Restore a generator's state. A state written by a generator of another device type (a
    checkpoint from a GPU read on a CPU machine, or the other way round) cannot be carried over:
    the generator is then seeded with ``fallback_seed`` instead, so the resumed run stays deterministic."""
    saved = saved.cpu()
    try:
        generator.set_state(saved)
    except (RuntimeError, ValueError):
        generator.manual_seed(int(fallback_seed))


def native_bf16(device_type: str) -> bool:
    """Whether ``device_type`` computes bfloat16 matmuls natively (and so faster than float32)."""
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device_type == "cpu" and compat.mkldnn_bf16_supported()


class OfflineTrainer(Trainer):
    """Base of IQL, CQL, TD3+BC and the Decision Transformer.

    Subclasses build their networks in ``__init__`` (after calling ``super().__init__``), set
    ``self.policy``, and implement ``update(batch) -> dict``. ``attach_buffer(buffer)`` may be
    overridden to read dataset statistics (call ``super().attach_buffer``).
    """

    config_class = OfflineRLConfig

    def __init__(self, obs_dim: int, action_dim: int, config: Optional[OfflineRLConfig] = None,
                 callbacks: Optional[Iterable[Callback]] = None, use_wandb: bool = False,
                 progress_bar: bool = False, **hparams):
        super().__init__(config, callbacks, use_wandb, progress_bar, **hparams)
        if int(obs_dim) < 1 or int(action_dim) < 1:
            raise ConfigError(f"obs_dim={obs_dim} and action_dim={action_dim} must both be >= 1")
        self.obs_dim, self.action_dim = int(obs_dim), int(action_dim)
        self._init_args = {"obs_dim": self.obs_dim, "action_dim": self.action_dim}
        self.buffer = None
        self.env_id: Optional[str] = config.env if config is not None else None
        self.dataset_name: Optional[str] = config.dataset if config is not None else None
        self.sample_generator = torch.Generator().manual_seed(self.config.seed)
        self._batches_normalised = False

    @property
    def total_steps(self) -> int:
        return self.config.num_epochs * self.config.steps_per_epoch

    @property
    def epoch(self) -> int:
        return self.global_step // self.config.steps_per_epoch

    def update(self, batch: dict) -> dict:
        raise NotImplementedError

    def attach_buffer(self, buffer) -> None:
        """Check the buffer fits this trainer and remember the dataset's environment."""
        got_obs, got_act = getattr(buffer, "obs_dim", None), getattr(buffer, "action_dim", None)
        if got_obs != self.obs_dim or got_act != self.action_dim:
            raise DatasetError(f"the dataset has observations of size {got_obs} and actions of size {got_act}, "
                               f"but this {type(self).__name__} was built for obs_dim={self.obs_dim}, "
                               f"action_dim={self.action_dim}; build the trainer with the dataset's sizes")
        if len(buffer) == 0:
            raise DatasetError("the dataset is empty: the buffer holds no transitions")
        self.buffer = buffer
        self.env_id = self.config.env or getattr(buffer, "env_id", None) or self.env_id
        self.dataset_name = getattr(buffer, "dataset_name", None) or self.dataset_name
        if buffer.device.type != self.sample_generator.device.type:
            state = self.sample_generator.get_state()
            self.sample_generator = torch.Generator(device=buffer.device)
            self.sample_generator.manual_seed(self.config.seed)
            if buffer.device.type == "cpu":
                self.sample_generator.set_state(state)

    # -- dataset statistics shared by the offline algorithms ------------------------------------
    def observation_statistics(self, buffer, eps: float = 1e-3, chunk: int = 65_536):
        """Mean and ``std + eps`` (as CORL) of the raw observations of the buffer's transitions
        (float32 tensors on the buffer's device: no host copy)."""
        if getattr(buffer, "normalize_states", False):  # it normalised them with these statistics
            return np.asarray(buffer.obs_mean, np.float32), np.asarray(buffer.obs_std, np.float32)
        n = len(buffer)
        total = total_sq = None
        for start in range(0, n, chunk):
            obs = buffer.get(torch.arange(start, min(n, start + chunk), device=buffer.device))["observations"].double()
            s, sq = obs.sum(0), (obs * obs).sum(0)
            total = s if total is None else total + s
            total_sq = sq if total_sq is None else total_sq + sq
        mean = total / n
        std = (total_sq / n - mean * mean).clamp_min(0.0).sqrt() + eps
        return mean.float(), std.float()

    def action_bounds(self, buffer):
        """The evaluation environment's action bounds when it is known, else the dataset's
        symmetric range ``max |a|`` per dimension (1 when all actions lie in [-1, 1], D4RL's convention)."""
        if self.env_id is not None:
            from vla_rl_lib.envs import make_env

            env = make_env(self.env_id)
            try:
                low = np.asarray(env.action_space.low, np.float32)
                high = np.asarray(env.action_space.high, np.float32)
            finally:
                env.close()
            if low.shape != (self.action_dim,):
                raise DatasetError(f"the environment {self.env_id!r} has actions of shape {low.shape}, but the "
                                   f"dataset's actions have size {self.action_dim}; evaluate on the dataset's environment")
            return low, high
        n, amax = len(buffer), torch.zeros(self.action_dim, device=buffer.device)
        for start in range(0, n, 65_536):
            idx = torch.arange(start, min(n, start + 65_536), device=buffer.device)
            amax = torch.maximum(amax, buffer.get(idx)["actions"].abs().amax(0))
        bound = amax.clamp_min(1.0).float()
        return -bound, bound

    def fit_policy_to_dataset(self, policy, buffer, normalize: bool) -> bool:
        """Give ``policy`` the dataset's observation normaliser (when ``normalize``, or when the
        buffer hands out normalised observations) and the action bounds. Returns whether the
        buffer's batches are normalised (policies normalise internally, so trainers undo it)."""
        prenormalised = bool(getattr(buffer, "normalize_states", False))
        if normalize or prenormalised:
            policy.set_obs_normalization(*self.observation_statistics(buffer))
        policy.set_action_bounds(*self.action_bounds(buffer))
        self._batches_normalised = prenormalised
        return prenormalised

    def raw_observations(self, obs: torch.Tensor) -> torch.Tensor:
        """Batch observations as the environment gives them (undoing the buffer's normalisation, if it did one)."""
        if self._batches_normalised:
            return obs * self.policy.obs_std + self.policy.obs_mean
        return obs

    def load_buffer(self):
        """Build the buffer from ``config.dataset`` (used by the command line and ``train()``)."""
        from vla_rl_lib.data.buffer import OfflineReplayBuffer
        from vla_rl_lib.data.datasets import load_dataset

        if not self.config.dataset:
            raise ConfigError("no dataset: pass a buffer to train(buffer) or set OfflineRLConfig.dataset "
                              "(a D4RL name, Minari id, .hdf5 path or kit dataset name)")
        data = load_dataset(self.config.dataset)
        buffer = OfflineReplayBuffer(self.obs_dim, self.action_dim, device=str(self.device))
        return buffer.load_dataset(data)

    def _eval_env_spec(self):
        if self.env_id is None:
            raise ConfigError("no environment to evaluate on: the dataset names none; pass evaluate(env=...) "
                              "or set OfflineRLConfig.env")
        return self.env_id

    def _score_name(self):
        return self.dataset_name or self.env_id

    def _infer_env(self) -> None:
        """Before the first gradient step: find the environment evaluation will need, or fail now."""
        from vla_rl_lib.data.datasets import env_ids_with_sizes

        candidates = env_ids_with_sizes(self.obs_dim, self.action_dim)
        if len(candidates) == 1:
            self.env_id = candidates[0]
            print(f"{self.algorithm}: the dataset names no environment; evaluating on {self.env_id}, the only "
                  f"known task with observations of size {self.obs_dim} and actions of size {self.action_dim} "
                  "(set OfflineRLConfig.env / --env to choose another)")
            return
        which = f" (it could be any of {', '.join(candidates)})" if candidates else ""
        raise ConfigError(f"no environment to evaluate on: the dataset names none{which}; set OfflineRLConfig.env "
                          "(--env), e.g. env='Hopper-v5', or eval_episodes=0 to train without evaluating")

    def train(self, buffer=None, callbacks: Optional[Iterable[Callback]] = None) -> "OfflineTrainer":
        """Train for ``num_epochs * steps_per_epoch`` gradient steps (continuing from ``global_step``)."""
        buffer = buffer if buffer is not None else (self.buffer if self.buffer is not None else self.load_buffer())
        self.attach_buffer(buffer)
        if self.config.eval_episodes > 0 and self.env_id is None:
            self._infer_env()
        self._begin(callbacks)
        cfg = self.config
        device = self.device
        precision = self.autocast()
        update = self.update_function()

        def step():
            batch = self.buffer.sample(cfg.batch_size, generator=self.sample_generator)
            if self.buffer.device != device:  # (a buffer on the CPU feeds a trainer on the GPU)
                batch = {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            with precision:
                metrics = update(batch)
            self._accumulate(metrics)
            self.global_step += 1

        spe = cfg.steps_per_epoch

        def boundaries(prev):
            now = self.global_step
            if self._crossed(prev, now, cfg.log_freq):
                self.log({"epoch": now / spe, **self._speed()})
            if self._crossed(prev, now, spe * cfg.eval_freq) and now < self.total_steps:
                self._run_evaluation()
            if self._crossed(prev, now, spe * cfg.save_freq) and now < self.total_steps:
                self._flush_check()
                self.save()

        return self._run(step, boundaries)

    def autocast(self):
        """The context ``update`` runs in: bfloat16 autocast for ``config.precision="bf16"``, else nothing.

        Weights, optimiser state and the networks' output layers stay float32 (``nets.OutputLinear``);
        evaluation and ``predict`` always run in float32. Autocast's weight cache is off: an update
        steps several optimisers in one region (TD3+BC's actor loss reads the critic it has just
        stepped), and the cache would hand out bf16 copies of the weights from before the step."""
        if self.config.precision != "bf16":
            return contextlib.nullcontext()
        kind = self.device.type
        if not native_bf16(kind):
            raise ConfigError(f"precision='bf16' needs native bfloat16 on the {kind} device (a CPU with "
                              "AVX512-BF16 or AMX, or an Ampere or newer GPU); without it bf16 is slower than "
                              "float32. Use precision='fp32'.")
        return torch.autocast(kind, dtype=torch.bfloat16, cache_enabled=False)

    def _flush_check(self) -> None:
        """Check pending metrics before a checkpoint so a diverged network is never saved."""
        if self._count:
            self.log()


class ActorCriticOfflineTrainer(OfflineTrainer):
    """Base of the offline actor-critics whose policy network is ``self.actor`` (IQL, CQL): attaching a
    buffer gives the actor the dataset's state normaliser (with ``config.normalize_states``) and action bounds."""

    @property
    def policy(self) -> nn.Module:
        return self.actor

    def attach_buffer(self, buffer) -> None:
        super().attach_buffer(buffer)
        self.fit_policy_to_dataset(self.actor, buffer, self.config.normalize_states)


class OnlineTrainer(Trainer):
    """Base of PPO, SAC and GRPO: environments, episode statistics and the collect/learn loop.

    ``env`` is a gymnasium env, a gymnasium vector env, an id string, or None (``config.env``).
    Subclasses implement ``collect() -> int`` (environment steps taken over all envs) and
    ``learn() -> dict``; they report finished training episodes with ``record_episode``.
    """

    config_class = RLConfig

    def __init__(self, env=None, config: Optional[RLConfig] = None, policy: Optional[nn.Module] = None,
                 callbacks: Optional[Iterable[Callback]] = None, use_wandb: bool = False,
                 progress_bar: bool = False, **hparams):
        super().__init__(config, callbacks, use_wandb, progress_bar, **hparams)
        from vla_rl_lib.envs import make_env, make_vector_env
        from vla_rl_lib.envs.checks import require_seeded_reset

        cfg = self.config
        if cfg.algorithm != self.algorithm and self.algorithm in ("ppo", "sac", "grpo"):
            self.config = cfg = cfg.replace(algorithm=self.algorithm)
        import gymnasium as gym

        if env is None:
            env = cfg.env
        if isinstance(env, str):
            self.env_id = env
            self.envs = make_vector_env(env, cfg.num_envs, seed=cfg.seed)
            self._eval_target = env
        elif isinstance(env, gym.vector.VectorEnv):
            self.env_id = getattr(getattr(env, "spec", None), "id", None) or cfg.env
            self.envs = env
            self._eval_target = self.env_id
        elif isinstance(env, gym.Env):
            require_seeded_reset(env)
            self.env_id = getattr(getattr(env, "spec", None), "id", None)
            if cfg.num_envs == 1:
                self.envs = gym.vector.SyncVectorEnv([lambda: env], autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP)
            elif self.env_id is not None:
                self.envs = make_vector_env(self.env_id, cfg.num_envs, seed=cfg.seed)
            else:
                raise IncompatibleError("num_envs > 1 needs an environment id (or a vector env), not an env "
                                        "instance without a spec")
            self._eval_target = self.env_id if self.env_id is not None else copy.deepcopy(env)
        else:
            raise IncompatibleError(f"env must be a gymnasium env, vector env or id string, got {type(env).__name__}")
        self.num_envs = self.envs.num_envs
        self.observation_space = self.envs.single_observation_space
        self.action_space = self.envs.single_action_space
        self._init_args = {"env": self.env_id} if self.env_id is not None else {}
        self._given_policy = policy
        self._episode_returns = np.zeros(self.num_envs)
        self._episode_lengths = np.zeros(self.num_envs, dtype=np.int64)
        self.recent_returns: list[float] = []
        self.recent_lengths: list[int] = []
        self.episodes_done = 0
        self._make_env = make_env
        self._mid_rollout = False

    @property
    def total_steps(self) -> int:
        return self.config.total_timesteps

    def collect(self) -> int:
        raise NotImplementedError

    def learn(self) -> dict:
        raise NotImplementedError

    def record_step(self, rewards, dones) -> None:
        """Accumulate per-env returns; finished episodes go into ``recent_returns`` (last 100)."""
        self._episode_returns += np.asarray(rewards, dtype=np.float64)
        self._episode_lengths += 1
        for i in np.flatnonzero(np.asarray(dones)):
            self.record_episode(float(self._episode_returns[i]), int(self._episode_lengths[i]))
            self._episode_returns[i] = 0.0
            self._episode_lengths[i] = 0

    def record_episode(self, episode_return: float, length: int) -> None:
        self.recent_returns = (self.recent_returns + [episode_return])[-100:]
        self.recent_lengths = (self.recent_lengths + [length])[-100:]
        self.episodes_done += 1

    def extra_state(self) -> dict:
        """The finished episodes behind the logged ``mean_reward`` and ``episodes`` (subclasses add theirs)."""
        return {"episodes": {"returns": list(self.recent_returns), "lengths": list(self.recent_lengths),
                             "done": self.episodes_done}}

    def load_extra_state(self, state: dict) -> None:
        saved = state.get("episodes")
        if saved:
            self.recent_returns = [float(r) for r in saved["returns"]]
            self.recent_lengths = [int(n) for n in saved["lengths"]]
            self.episodes_done = int(saved["done"])

    def episode_metrics(self) -> dict:
        if not self.recent_returns:
            return {}
        return {"mean_reward": float(np.mean(self.recent_returns)),
                "mean_length": float(np.mean(self.recent_lengths)), "episodes": self.episodes_done}

    def _eval_env_spec(self):
        return self._eval_target

    def _score_name(self):
        return self.env_id

    def train(self, total_timesteps: Optional[int] = None,
              callbacks: Optional[Iterable[Callback]] = None) -> "OnlineTrainer":
        """Collect and learn until ``total_timesteps`` environment steps (continuing from ``global_step``)."""
        if total_timesteps is not None:
            self.config = self.config.replace(total_timesteps=int(total_timesteps))
        self._begin(callbacks)
        cfg = self.config

        def step():
            self._mid_rollout = True  # (a checkpoint written now, on Ctrl-C, finds the envs part-way through a rollout)
            taken = int(self.collect())
            self._mid_rollout = False
            self.global_step += taken
            self._accumulate(self.learn())

        def boundaries(prev):
            now = self.global_step
            if self._crossed(prev, now, cfg.log_freq):
                self.log({**self.episode_metrics(), **self._speed()})
            if self._crossed(prev, now, cfg.eval_freq) and not self._is_done():
                self._run_evaluation()
            if self._crossed(prev, now, cfg.save_freq) and not self._is_done():
                if self._count:
                    self.log(self.episode_metrics())
                self.save()

        return self._run(step, boundaries)
