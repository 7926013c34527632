"""Stage 3 of the VLA recipe: improve the stage-2 (behaviour-cloned) model with reinforcement learning.

Each entry point starts from a folder written by ``VLAModel.save_pretrained`` (by default
``./output/stage2_action_head/best``, where :class:`~vla_rl_lib.vla.bc.BCTrainer` saves):

* :func:`iql_from_model`   option A, offline RL: IQL on the driving dataset, actor = the VLA;
* :func:`ppo_from_model`   option B, online RL: PPO on the driving simulator;
* :func:`grpo_from_model`  GRPO on the driving simulator (groups share a reset seed);
* :func:`offline_to_online`: IQL first, then PPO starting from ``iql_trainer.policy`` at a lower
  learning rate (the specification's "combining offline and online RL");
* :data:`CRITIC_FREE_RECIPES`: the GRPO and RLOO settings measured on the driving task;
  :class:`SuccessCurve` scores a policy at step budgets during training;
* :class:`CurriculumCallback`: moves the simulator's difficulty easy -> medium -> hard by step count
  (:func:`get_difficulty`, the specification's schedule), on every environment of a trainer.

:func:`evaluate_success` measures success rates per instruction on held-out seeds with many
simulators stepped in lock-step and one batched forward pass per step.

Each function is a thin, readable composition of the kit's trainers; the command line does the same
with ``vla-rl train iql|ppo|grpo --model_path DIR``. The trainers never load a model themselves:
:func:`policy_for_config` turns ``config.model_path`` into a ``VLAPolicy`` here, at the top, and
hands it in as ``policy=``; :func:`from_checkpoint` does the same to reopen such a run
(docs/architecture.md).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import torch

from vla_rl_lib.callbacks import Callback
from vla_rl_lib.config import OfflineRLConfig, RLConfig
from vla_rl_lib.errors import ConfigError

DEFAULT_MODEL_PATH = "./output/stage2_action_head/best"

#: The specification's curriculum: (first step, difficulty).
DEFAULT_SCHEDULE = ((0, "easy"), (10_000, "medium"), (50_000, "hard"))


# ------------------------------------------------------------------------------------------------
# curriculum
# ------------------------------------------------------------------------------------------------
def get_difficulty(training_step: int, schedule: Sequence[tuple] = DEFAULT_SCHEDULE) -> str:
    """The difficulty for ``training_step``: with the default schedule ``"easy"`` below 10,000 steps,
    ``"medium"`` below 50,000, then ``"hard"``."""
    current = schedule[0][1]
    for start, name in schedule:
        if training_step >= start:
            current = name
    return current


def set_env_difficulty(env, difficulty: str) -> int:
    """Call ``set_difficulty`` on ``env``: a single env (wrapped or not), the batched simulator, or every
    sub-env of a gymnasium vector env. Returns how many simulators were changed."""
    if hasattr(env, "set_difficulty"):  # DrivingEnv or BatchedDrivingEnv
        env.set_difficulty(difficulty)
        return getattr(env, "num_envs", 1)
    sub = getattr(env, "envs", None)
    if sub is not None:  # SyncVectorEnv
        return sum(set_env_difficulty(e, difficulty) for e in sub)
    unwrapped = getattr(env, "unwrapped", None)
    if unwrapped is not None and unwrapped is not env and hasattr(unwrapped, "set_difficulty"):
        unwrapped.set_difficulty(difficulty)
        return 1
    if hasattr(env, "call"):  # AsyncVectorEnv
        env.call("set_difficulty", difficulty)
        return env.num_envs
    raise ConfigError(f"{type(env).__name__} has no set_difficulty(); the curriculum needs the driving simulator")


class CurriculumCallback(Callback):
    """Curriculum learning: set the difficulty of a trainer's environments by ``global_step``.

    ``schedule`` is a sequence of ``(first_step, difficulty)`` (default: the specification's
    easy < 10k <= medium < 50k <= hard). The training envs (``trainer.envs``) and, when it is an
    env instance, the evaluation env follow it; ``history`` records ``(step, difficulty)`` changes.
    A new difficulty applies from each simulator's next episode on.
    """

    def __init__(self, schedule: Sequence[tuple] = DEFAULT_SCHEDULE):
        schedule = sorted((int(s), str(d)) for s, d in schedule)
        if not schedule:
            raise ConfigError("the curriculum schedule is empty; give (step, difficulty) pairs")
        from vla_rl_lib.envs.driving import get_difficulty as _check

        for _, name in schedule:
            _check(name)
        self.schedule = tuple(schedule)
        self.current: Optional[str] = None
        self.history: list[tuple[int, str]] = []

    def _apply(self, trainer) -> None:
        wanted = get_difficulty(trainer.global_step, self.schedule)
        if wanted == self.current:
            return
        envs = getattr(trainer, "envs", None)
        if envs is None:
            raise ConfigError("CurriculumCallback needs an online trainer (PPO, GRPO, SAC) with driving envs")
        set_env_difficulty(envs, wanted)
        target = getattr(trainer, "_eval_target", None)
        if target is not None and not isinstance(target, str) and hasattr(target, "set_difficulty"):
            target.set_difficulty(wanted)
        self.current = wanted
        self.history.append((int(trainer.global_step), wanted))

    def on_train_start(self, trainer):
        self._apply(trainer)

    def on_step(self, trainer):
        self._apply(trainer)


# ------------------------------------------------------------------------------------------------
# evaluation: success rate per instruction on held-out seeds
# ------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate_success(policy, episodes_per_instruction: int = 20, seed: int = 100_000,
                     instructions: Optional[Sequence[str]] = None, difficulty: str = "easy",
                     image_size: Optional[int] = None, max_episode_steps: int = 200, num_envs: int = 50,
                     deterministic: bool = True) -> dict:
    """Success rate of ``policy`` per instruction, each on the same held-out seeds.

    Episode ``k`` of every instruction is reset with seed ``seed + k`` (so all instructions and all
    policies see the same traffic). ``num_envs`` simulators run in lock-step and the policy acts on
    all of them in one batched call. Returns ``{"success_rate": overall, "per_instruction": {text: rate},
    "collision_rate", "mean_reward", "episodes"}``.
    """
    from vla_rl_lib.envs.driving import INSTRUCTIONS, DrivingEnv

    instructions = list(INSTRUCTIONS if instructions is None else instructions)
    if image_size is None:
        image_size = int(getattr(getattr(policy, "model", None), "config", None).image_size)
    jobs = [(text, seed + k) for text in instructions for k in range(int(episodes_per_instruction))]
    envs = [DrivingEnv(difficulty=difficulty, image_size=image_size, max_episode_steps=max_episode_steps)
            for _ in range(min(int(num_envs), len(jobs)))]
    results = {text: [] for text in instructions}
    collisions, returns, progress = [], [], []
    was_training = policy.training
    policy.eval()
    slots: list[Optional[dict]] = [None] * len(envs)
    next_job = 0

    def start(i):
        nonlocal next_job
        if next_job >= len(jobs):
            slots[i] = None
            return
        text, s = jobs[next_job]
        next_job += 1
        obs, _ = envs[i].reset(seed=s, options={"instruction": text})
        slots[i] = {"text": text, "obs": obs, "ret": 0.0}

    try:
        for i in range(len(envs)):
            start(i)
        while any(s is not None for s in slots):
            active = [i for i, s in enumerate(slots) if s is not None]
            batch = {
                "image": np.stack([slots[i]["obs"]["image"] for i in active]),
                "instruction": [slots[i]["obs"]["instruction"] for i in active],
                "state": np.stack([slots[i]["obs"]["state"] for i in active]),
            }
            actions = policy.predict(batch, deterministic=deterministic)
            for j, i in enumerate(active):
                obs, reward, terminated, truncated, info = envs[i].step(np.clip(actions[j], -1.0, 1.0))
                slots[i]["ret"] += float(reward)
                slots[i]["obs"] = obs
                if terminated or truncated:
                    results[slots[i]["text"]].append(float(info["success"]))
                    collisions.append(float(info["collision"]))
                    progress.append(float(info["progress"]))
                    returns.append(slots[i]["ret"])
                    start(i)
    finally:
        policy.train(was_training)
    per = {text: float(np.mean(v)) for text, v in results.items()}
    return {"success_rate": float(np.mean([x for v in results.values() for x in v])), "per_instruction": per,
            "collision_rate": float(np.mean(collisions)), "mean_reward": float(np.mean(returns)),
            "mean_progress": float(np.mean(progress)), "episodes": len(returns)}


# ------------------------------------------------------------------------------------------------
# --model_path: the policy is built here and handed to the trainers
# ------------------------------------------------------------------------------------------------
def _spaces(env):
    """(observation space, action space) of one env: an instance, a vector env or a name."""
    import gymnasium as gym

    from vla_rl_lib.envs import make_env

    if isinstance(env, gym.vector.VectorEnv):
        return env.single_observation_space, env.single_action_space
    if isinstance(env, gym.Env):
        return env.observation_space, env.action_space
    made = make_env(env)
    try:
        return made.observation_space, made.action_space
    finally:
        made.close()


def takes_model_policy(trainer_cls) -> bool:
    """Whether ``--model_path`` reaches ``trainer_cls`` as a ``policy=`` built here (IQL, PPO, GRPO,
    SAC); the stage-2 trainers of :mod:`vla_rl_lib.vla` read ``config.model_path`` themselves."""
    import inspect

    return (not trainer_cls.__module__.startswith("vla_rl_lib.vla.")
            and "policy" in inspect.signature(trainer_cls.__init__).parameters)


def policy_for_config(config, obs_dim: Optional[int] = None, env=None):
    """The ``VLAPolicy`` that ``config.model_path`` names (None without one), for the trainer about to
    be built with ``config`` (loaded on the CPU; the trainer moves it to its device): for an offline
    config with the dataset's state size ``obs_dim``; for an online one with the action bounds and
    state size of ``env`` (default ``config.env``: an instance, a vector env or a name)."""
    import gymnasium as gym

    from vla_rl_lib.vla.policy import load_policy

    if not getattr(config, "model_path", None):
        return None
    device = "cpu"
    if isinstance(config, OfflineRLConfig):
        return load_policy(config.model_path, device=device, obs_dim=obs_dim)
    observation_space, action_space = _spaces(config.env if env is None else env)
    if isinstance(observation_space, gym.spaces.Dict) and "state" in observation_space.spaces:
        obs_dim = int(np.prod(observation_space["state"].shape))
    box = action_space if isinstance(action_space, gym.spaces.Box) else None
    return load_policy(config.model_path, device=device, action_space=box, obs_dim=obs_dim)


def from_checkpoint(path, **overrides):
    """``Trainer.from_checkpoint(path)`` for any run, those started from ``--model_path`` included
    (their policy is rebuilt from the model folder here, then the checkpoint's weights are loaded)."""
    from vla_rl_lib.checkpoint import load_checkpoint, trainer_meta
    from vla_rl_lib.trainer import Trainer, get_trainer_class

    meta = trainer_meta(load_checkpoint(path), path)
    cls = get_trainer_class(meta["algorithm"])
    policy = None
    if meta["config"].get("model_path") and takes_model_policy(cls):
        config = cls.config_class.from_dict(meta["config"], **overrides)
        init = meta.get("init") or {}
        policy = policy_for_config(config, obs_dim=init.get("obs_dim"), env=init.get("env"))
    return Trainer.from_checkpoint(path, policy=policy, **overrides)


# ------------------------------------------------------------------------------------------------
# stage 3 entry points
# ------------------------------------------------------------------------------------------------
def _model_image_size(model_path) -> int:
    from vla_rl_lib.vla.model import VLAModel

    return VLAModel.from_pretrained(model_path).config.image_size


def driving_envs(num_envs: int, image_size: int, difficulty: str = "easy", seed: Optional[int] = None, **kwargs):
    """The batched driving simulator as a gymnasium vector env (what PPO trains on)."""
    from vla_rl_lib.envs.batched import BatchedDrivingEnv

    envs = BatchedDrivingEnv(num_envs=int(num_envs), image_size=int(image_size), difficulty=difficulty, **kwargs)
    if seed is not None:
        envs.reset(seed=int(seed))
    return envs


def _driving_eval_env(trainer, image_size: int) -> None:
    """Evaluate on a single driving simulator with the model's image size (not the default 64 pixels)."""
    from vla_rl_lib.envs.driving import DrivingEnv

    trainer._eval_target = DrivingEnv(image_size=image_size, render_mode="rgb_array")  # (videos need frames)


def ppo_from_model(model_path: str | Path = DEFAULT_MODEL_PATH, env=None, config: Optional[RLConfig] = None,
                   callbacks: Optional[Iterable[Callback]] = None, policy=None):
    """Option B: a :class:`~vla_rl_lib.online.ppo.PPOTrainer` on the driving simulator whose policy is the saved
    VLA (``config.model_path``); ``env`` defaults to the batched simulator at the model's image size.
    ``policy=`` (e.g. ``iql_trainer.policy``) starts from that policy instead of the folder."""
    from vla_rl_lib.online.ppo import PPOTrainer

    config = config or RLConfig(env="driving", num_envs=16, rollout_steps=128, batch_size=256,
                                output_dir="./output/stage3c_ppo")
    config = config.replace(algorithm="ppo", env="driving",
                            model_path=None if policy is not None else str(model_path))
    size = policy.model.config.image_size if policy is not None else _model_image_size(model_path)
    if env is None:
        env = driving_envs(config.num_envs, size)
    if policy is None:
        policy = policy_for_config(config, env=env)
    trainer = PPOTrainer(env, config=config, policy=policy, callbacks=callbacks)
    _driving_eval_env(trainer, size)
    return trainer


def grpo_from_model(model_path: str | Path = DEFAULT_MODEL_PATH, env=None, config: Optional[RLConfig] = None,
                    callbacks: Optional[Iterable[Callback]] = None):
    """GRPO on the driving simulator from the saved VLA: groups of rollouts from one reset seed."""
    from vla_rl_lib.envs.driving import DrivingEnv
    from vla_rl_lib.online.grpo import GRPOTrainer

    config = config or RLConfig(env="driving", output_dir="./output/stage3_grpo")
    config = config.replace(algorithm="grpo", env="driving", model_path=str(model_path))
    size = _model_image_size(model_path)
    env = env if env is not None else DrivingEnv(image_size=size)
    trainer = GRPOTrainer(env, config=config, policy=policy_for_config(config, env=env), callbacks=callbacks)
    _driving_eval_env(trainer, size)
    return trainer


#: GRPO settings of the critic-free driving recipes (8 groups of 8 rollouts per iteration)
_CRITIC_FREE = dict(group_size=8, num_groups=8, batch_size=256, grpo_epochs=4, learning_rate=1e-3, kl_coef=0.0,
                    grpo_reward="success", dynamic_sampling=True)
#: The critic-free recipes measured on the driving task (docs/benchmarks.md, section VLA): GRPO with
#: SimpleVLA-RL's options (0/1 success reward, dynamic sampling, clip-higher, no KL) and RLOO (the same
#: with leave-one-out baselines). ``RLConfig(**CRITIC_FREE_RECIPES["grpo"], ...)``.
CRITIC_FREE_RECIPES = {
    "grpo": dict(_CRITIC_FREE, clip_range_high=0.28),
    "rloo": dict(_CRITIC_FREE, grpo_advantage="rloo"),
}
#: the exploration log std the critic-free recipes start from (sigma = 0.22 of the half action range)
CRITIC_FREE_LOG_STD = -1.5


def set_exploration(trainer, log_std: float) -> None:
    """Set the exploration noise ``log sigma`` of a trainer's VLA policy (and of GRPO's reference copy)."""
    for policy in (trainer.policy, getattr(trainer, "ref_policy", None)):
        if policy is not None and hasattr(getattr(policy, "model", None), "log_std"):
            policy.model.log_std.data.fill_(float(log_std))


class SuccessCurve(Callback):
    """Score the policy with :func:`evaluate_success` when training passes each of ``budgets``
    environment steps; ``scores`` holds ``(budget, global_step, result)``."""

    def __init__(self, budgets: Sequence[int], episodes_per_instruction: int = 40, seed: int = 1_000_000,
                 image_size: Optional[int] = None):
        self.budgets = sorted(int(b) for b in budgets)
        self.episodes, self.seed, self.image_size = int(episodes_per_instruction), int(seed), image_size
        self.scores: list[tuple[int, int, dict]] = []

    def on_step(self, trainer):
        while self.budgets and trainer.global_step >= self.budgets[0]:
            res = evaluate_success(trainer.policy, self.episodes, seed=self.seed, image_size=self.image_size)
            self.scores.append((self.budgets.pop(0), int(trainer.global_step), res))


def iql_from_model(model_path: str | Path = DEFAULT_MODEL_PATH, config: Optional[OfflineRLConfig] = None,
                   callbacks: Optional[Iterable[Callback]] = None, **hparams):
    """Option A: an :class:`~vla_rl_lib.offline.iql.IQLTrainer` whose actor is the saved VLA (it reads images
    and instructions); its critics read the dataset's state vectors. Train it with ``trainer.train(buffer)``
    or on ``config.dataset`` (default ``driving-mixed-v1``: expert, noisy and random episodes, so that
    the advantage weights have something to choose between; on expert-only data IQL is BC)."""
    from vla_rl_lib.envs.driving import STATE_DIM
    from vla_rl_lib.offline.iql import IQLTrainer

    config = config or OfflineRLConfig(dataset="driving-mixed-v1", output_dir="./output/stage3b_iql")
    config = config.replace(model_path=str(model_path))
    return IQLTrainer(STATE_DIM, 2, config=config, callbacks=callbacks,
                      policy=policy_for_config(config, obs_dim=STATE_DIM), **hparams)


def offline_to_online(iql_trainer, env=None, config: Optional[RLConfig] = None, learning_rate: float = 1e-5,
                      callbacks: Optional[Iterable[Callback]] = None):
    """IQL first, then PPO from ``iql_trainer.policy`` at a lower learning rate (default 1e-5, as the
    specification); the IQL actor (a ``VLAPolicy``) brings its value head along."""
    config = config or RLConfig(env="driving", num_envs=16, rollout_steps=128, batch_size=256,
                                output_dir="./output/stage3d_offline_to_online")
    return ppo_from_model(env=env, config=config.replace(learning_rate=float(learning_rate)),
                          callbacks=callbacks, policy=iql_trainer.policy)
