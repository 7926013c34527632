"""Making D4RL-style datasets the way D4RL made its locomotion datasets.

Qualities (Fu et al., 2020, section 5):

* ``random``: episodes of uniformly random actions;
* ``expert``: episodes of a policy trained to the end with the kit's SAC;
* ``medium``: episodes of a policy from the same SAC run, stopped early at "about one third of the
  expert's performance": the first evaluated snapshot whose evaluation return reaches
  ``R_random + medium_fraction * (R_expert - R_random)`` (with ``medium_fraction = 1/3``; for tasks
  with positive returns this is about one third of the expert return, and it stays meaningful for
  tasks with negative returns such as Pendulum);
* ``medium-replay``: the SAC replay buffer up to the moment the medium snapshot was taken;
* ``medium-expert``: the medium and expert datasets concatenated (half of ``size`` each).

One SAC run gives all of them; it is cached (``cache_dir``) so that asking for another quality of
the same (env, seed, sac_steps) does not train again. Episodes are collected with the stochastic
SAC policy (as D4RL collected its medium/expert data), in a fresh environment seeded with ``seed``.

The driving simulator's datasets come from ``vla_rl_lib.envs.expert.collect_dataset`` (a scripted
expert with noise levels for the qualities) and carry uint8 images (gzip-compressed in the file)
and instructions (byte strings).

``python -m vla_rl_lib.data.generate --shipped`` regenerates the small datasets that ship in
``vla_rl_lib/datasets/`` and their manifest (checksums, commands, returns, reference scores).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from vla_rl_lib.errors import ConfigError, DatasetError, UnknownEnvironmentError
from vla_rl_lib.data.datasets import (DRIVING_ENV_ID, KIT_ENVS, MANIFEST, MAZE_QUALITIES, QUALITIES, SHIPPED_DIR,
                                      default_output_dir, env_key, kit_dataset_name, qualities_for)
from vla_rl_lib.data.hdf5 import validate_dataset, write_hdf5

#: SAC budget (environment steps) used for the expert when ``sac_steps`` is not given
DEFAULT_SAC_STEPS = {"pendulum": 15_000, "hopper": 150_000, "halfcheetah": 300_000, "walker2d": 300_000}
DEFAULT_MEDIUM_FRACTION = 1.0 / 3.0


def _kit_version() -> str:
    try:
        from vla_rl_lib import __version__

        return str(__version__)
    except ImportError:  # pragma: no cover
        return "unknown"


def resolve_env(env: str) -> str:
    """The env id for ``env``: a gymnasium id, a short family name (``hopper``) or ``driving``."""
    if not isinstance(env, str) or not env.strip():
        raise UnknownEnvironmentError(f"make_dataset needs an environment name, got {env!r}")
    from vla_rl_lib.envs import is_driving

    if is_driving(env):
        return DRIVING_ENV_ID
    if env.lower() in KIT_ENVS:
        return KIT_ENVS[env.lower()]
    import gymnasium as gym

    import vla_rl_lib.envs  # noqa: F401  (registers the kit's ids)

    if env not in gym.registry:
        from vla_rl_lib.envs import make_env

        make_env(env)  # raises UnknownEnvironmentError with close matches
    return env


# --------------------------------------------------------------------------------------------
# rollouts
# --------------------------------------------------------------------------------------------

def _is_mujoco(env) -> bool:
    data = getattr(env.unwrapped, "data", None)
    return data is not None and hasattr(data, "qpos") and hasattr(data, "qvel")


def collect_episodes(env, policy: Callable[[np.ndarray], np.ndarray], size: int, seed: int) -> dict:
    """Run ``policy`` in ``env`` for ``size`` steps and return D4RL rows.

    Episodes end on termination (``terminals``) or truncation by the time limit (``timeouts``); the
    last row of the dataset is marked as a timeout when its episode is cut off by ``size``. Every
    row has its ``next_observations``. MuJoCo tasks also get ``infos/qpos`` and ``infos/qvel`` of the
    state each observation was taken in.
    """
    size = int(size)
    obs, _ = env.reset(seed=int(seed))
    env.action_space.seed(int(seed))
    mujoco = _is_mujoco(env)
    obs_dim = int(np.prod(np.asarray(obs).shape))
    act_dim = int(np.prod(env.action_space.shape))
    out = {
        "observations": np.empty((size, obs_dim), np.float32),
        "next_observations": np.empty((size, obs_dim), np.float32),
        "actions": np.empty((size, act_dim), np.float32),
        "rewards": np.empty(size, np.float32),
        "terminals": np.zeros(size, bool),
        "timeouts": np.zeros(size, bool),
    }
    if mujoco:
        data = env.unwrapped.data
        out["infos/qpos"] = np.empty((size, data.qpos.shape[0]), np.float32)
        out["infos/qvel"] = np.empty((size, data.qvel.shape[0]), np.float32)
    low, high = env.action_space.low, env.action_space.high
    for t in range(size):
        action = np.clip(np.asarray(policy(obs), dtype=np.float32).reshape(env.action_space.shape), low, high)
        if mujoco:
            out["infos/qpos"][t] = env.unwrapped.data.qpos
            out["infos/qvel"][t] = env.unwrapped.data.qvel
        next_obs, reward, terminated, truncated, _ = env.step(action)
        out["observations"][t] = np.asarray(obs, np.float32).reshape(-1)
        out["next_observations"][t] = np.asarray(next_obs, np.float32).reshape(-1)
        out["actions"][t] = action.reshape(-1)
        out["rewards"][t] = reward
        out["terminals"][t] = terminated
        out["timeouts"][t] = truncated and not terminated
        if terminated or truncated:
            obs, _ = env.reset()
        else:
            obs = next_obs
    if not (out["terminals"][-1] or out["timeouts"][-1]):
        out["timeouts"][-1] = True  # the dataset ends mid-episode: close that episode
    return out


def episode_returns(data: dict) -> np.ndarray:
    """Undiscounted returns of the complete and incomplete episodes of a D4RL dict."""
    from vla_rl_lib.data.buffer import episode_bounds

    return np.array([data["rewards"][s:e].sum(dtype=np.float64)
                     for s, e in episode_bounds(data["terminals"], data["timeouts"])])


def _make_gym_env(env_id: str):
    from vla_rl_lib.envs import make_env

    return make_env(env_id)


def random_policy(env) -> Callable[[np.ndarray], np.ndarray]:
    """Uniformly random actions from the (seeded) action space, as D4RL's random datasets."""
    return lambda obs: env.action_space.sample()


# --------------------------------------------------------------------------------------------
# SAC run: expert, medium snapshot, replay buffer
# --------------------------------------------------------------------------------------------

@dataclass
class SACRun:
    """What one SAC training run leaves behind for dataset generation."""

    env_id: str
    seed: int
    sac_steps: int
    evaluations: list = field(default_factory=list)  # [(step, mean_return)]
    snapshots: dict = field(default_factory=dict)  # step -> actor state dict (numpy arrays)
    replay: dict = field(default_factory=dict)  # numpy arrays of the whole run, in collection order
    random_return: float = float("nan")
    expert_return: float = float("nan")
    train_seconds: float = 0.0
    config: dict = field(default_factory=dict)

    def medium_step(self, fraction: float) -> tuple[int, float, float]:
        """(step, eval return, target) of the first snapshot reaching the medium target."""
        target = self.random_return + fraction * (self.expert_return - self.random_return)
        for step, ret in self.evaluations:
            if ret >= target and step in self.snapshots:
                return step, ret, target
        raise DatasetError(
            f"SAC on {self.env_id} never reached the medium target {target:.1f} in {self.sac_steps} steps "
            f"(evaluations: {self.evaluations}); raise sac_steps"
        )


def _policy_module(trainer):
    for name in ("policy", "actor"):
        module = getattr(trainer, name, None)
        if module is not None and hasattr(module, "state_dict"):
            return module
    raise DatasetError("the SAC trainer exposes no policy/actor module to snapshot")


def _run_key(env_id: str, seed: int, sac_steps: int, cfg: dict) -> str:
    text = json.dumps({"env": env_id, "seed": seed, "steps": sac_steps, "cfg": cfg, "v": 1}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _save_run(run: SACRun, path: Path) -> None:
    arrays = {f"replay/{k}": v for k, v in run.replay.items()}
    for step, sd in run.snapshots.items():
        for k, v in sd.items():
            arrays[f"snapshot/{step}/{k}"] = v
    meta = {"env_id": run.env_id, "seed": run.seed, "sac_steps": run.sac_steps, "evaluations": run.evaluations,
            "random_return": run.random_return, "expert_return": run.expert_return,
            "train_seconds": run.train_seconds, "config": run.config}
    arrays["meta_json"] = np.bytes_(json.dumps(meta).encode())
    write_hdf5(path, arrays, compression="gzip", compression_opts=1)


def _load_run(path: Path) -> SACRun:
    from vla_rl_lib.data.hdf5 import read_hdf5

    raw = read_hdf5(path)
    meta = json.loads(bytes(raw.pop("meta_json")).decode())
    run = SACRun(meta["env_id"], meta["seed"], meta["sac_steps"], [tuple(e) for e in meta["evaluations"]],
                 random_return=meta["random_return"], expert_return=meta["expert_return"],
                 train_seconds=meta["train_seconds"], config=meta["config"])
    for k, v in raw.items():
        if k.startswith("replay/"):
            run.replay[k[len("replay/"):]] = v
        elif k.startswith("snapshot/"):
            _, step, name = k.split("/", 2)
            run.snapshots.setdefault(int(step), {})[name] = v
    return run


def train_sac_run(env_id: str, seed: int = 0, sac_steps: int | None = None, eval_freq: int | None = None,
                  eval_episodes: int = 5, learning_starts: int | None = None, cache_dir: str | os.PathLike | None = None,
                  verbose: bool = True, **sac_kwargs) -> SACRun:
    """Train the kit's SAC on ``env_id``, keeping a policy snapshot and evaluation at every ``eval_freq``.

    The random-policy reference return is measured on the same env (``eval_episodes`` episodes).
    With ``cache_dir`` the run is saved there and reused by later calls with the same arguments.
    """
    key = env_key(env_id) or env_id
    sac_steps = int(sac_steps or DEFAULT_SAC_STEPS.get(key, 200_000))
    eval_freq = int(eval_freq or max(1000, sac_steps // 30))
    learning_starts = int(learning_starts if learning_starts is not None else min(10_000, max(1000, sac_steps // 15)))
    cfg = {"eval_freq": eval_freq, "eval_episodes": eval_episodes, "learning_starts": learning_starts, **sac_kwargs}
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir).expanduser() / f"sac-{key}-seed{seed}-{sac_steps}-{_run_key(env_id, seed, sac_steps, cfg)}.h5"
        if cache_file.is_file():
            if verbose:
                print(f"[make_dataset] reusing the SAC run in {cache_file}", file=sys.stderr)
            return _load_run(cache_file)

    import tempfile

    import torch

    from vla_rl_lib.callbacks import Callback
    from vla_rl_lib.config import RLConfig
    from vla_rl_lib.online.sac import SACTrainer

    run = SACRun(env_id, int(seed), sac_steps, config=cfg)
    # random reference on a separate env
    renv = _make_gym_env(env_id)
    rnd = collect_episodes(renv, random_policy(renv), size=_episode_budget(renv, eval_episodes), seed=seed + 10_000)
    run.random_return = float(np.mean(episode_returns(rnd)[: max(1, eval_episodes)]))
    renv.close()

    class _Snapshot(Callback):
        def on_evaluation(self, trainer, results):
            step = int(trainer.global_step)
            run.evaluations.append((step, float(results["mean_reward"])))
            run.snapshots[step] = {k: v.detach().cpu().numpy().copy()
                                   for k, v in _policy_module(trainer).state_dict().items()}
            if verbose:
                print(f"[make_dataset] SAC {env_id} step {step}: eval return {results['mean_reward']:.1f}",
                      file=sys.stderr)
            return None

    torch.manual_seed(seed)
    env = _make_gym_env(env_id)
    with tempfile.TemporaryDirectory() as tmp:
        config = RLConfig(algorithm="sac", env=env_id, total_timesteps=sac_steps, learning_starts=learning_starts,
                          eval_freq=eval_freq, eval_episodes=eval_episodes, seed=int(seed), output_dir=tmp,
                          buffer_size=max(sac_steps, 1), save_freq=0, **sac_kwargs)
        trainer = SACTrainer(env=env, config=config)
        run.config["hidden_dim"] = int(trainer.config.hidden_dim)
        start = time.perf_counter()
        trainer.train(callbacks=[_Snapshot()])
        run.train_seconds = time.perf_counter() - start
        if not run.evaluations or run.evaluations[-1][0] != int(trainer.global_step):
            results = trainer.evaluate(num_episodes=eval_episodes)
            _Snapshot().on_evaluation(trainer, results)
        rb = trainer.replay_buffer
        n = int(rb.size)
        run.replay = {k: np.asarray(getattr(rb, k))[:n].copy()
                      for k in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")}
    env.close()
    # the expert: the best of the last evaluations (SAC's final snapshot can be a dip)
    last = run.evaluations[-max(1, len(run.evaluations) // 5):]
    best_step, best_ret = max(last, key=lambda e: e[1])
    run.expert_return = float(best_ret)
    run.config["expert_step"] = int(best_step)
    if cache_file is not None:
        _save_run(run, cache_file)
    return run


def _episode_budget(env, episodes: int) -> int:
    limit = getattr(getattr(env, "spec", None), "max_episode_steps", None) or 1000
    return int(limit) * max(1, int(episodes))


def _snapshot_policy(env_id: str, state_dict: dict, seed: int, deterministic: bool = False,
                     hidden_dim: int = 256):
    """A callable obs -> action from a snapshot of SAC's tanh-Gaussian policy.

    Stochastic actions draw from torch's global generator, seeded here with ``seed``.
    """
    import torch

    from vla_rl_lib.nets import TanhGaussianPolicy

    env = _make_gym_env(env_id)
    obs_dim = int(np.prod(env.observation_space.shape))
    act_dim = int(np.prod(env.action_space.shape))
    low, high = env.action_space.low.astype(np.float32), env.action_space.high.astype(np.float32)
    env.close()
    policy = TanhGaussianPolicy(obs_dim, act_dim, (hidden_dim, hidden_dim), action_low=low, action_high=high)
    policy.load_state_dict({k: torch.as_tensor(v) for k, v in state_dict.items()})
    policy.eval()
    torch.manual_seed(seed)
    return lambda obs: policy.predict(np.asarray(obs, np.float32), deterministic=deterministic)


def _policy_rows(run: SACRun, step: int, size: int, seed: int, deterministic: bool) -> dict:
    env = _make_gym_env(run.env_id)
    policy = _snapshot_policy(run.env_id, run.snapshots[step], seed, deterministic,
                              hidden_dim=int(run.config.get("hidden_dim", 256)))
    data = collect_episodes(env, policy, size, seed)
    env.close()
    return data


def _policy_metadata(state_dict: dict) -> dict:
    return {f"metadata/policy/{k.replace('.', '/')}": np.asarray(v) for k, v in state_dict.items()}


# --------------------------------------------------------------------------------------------
# make_dataset
# --------------------------------------------------------------------------------------------

def _command(env: str, quality: str, size: int, output: Path, seed: int, kw: dict) -> str:
    extra = "".join(f" {k}={v!r}" for k, v in sorted(kw.items()))
    cmd = f"vla-rl make-dataset --env {env} --quality {quality} --size {size} --seed {seed} --output {output}"
    return cmd + (f"  # python kwargs:{extra}" if extra else "")


def make_dataset(env: str, quality: str, size: int, output: str | os.PathLike | None = None, seed: int = 0,
                 **kw) -> Path:
    """Generate a D4RL-layout HDF5 dataset and return its path.

    Args:
        env: a gymnasium id (``Hopper-v5``, ``Pendulum-v1``, ...), a family name (``hopper``) or
            ``"driving"`` for the kit's simulator.
        quality: ``random``, ``medium``, ``expert``, ``medium-replay`` or ``medium-expert``.
        size: number of rows (steps). ``medium-replay`` holds the replay buffer up to the medium
            point, capped at ``size`` (the most recent rows are kept).
        output: file to write; default ``$VLA_RL_DATASET_DIR`` or ``~/.vla_rl/datasets`` /
            ``<kit name>.hdf5``, where ``load_dataset("<kit name>")`` finds it.
        seed: seeds SAC training, the environments and the action sampling; same seed, same file.

    Keyword arguments (all optional):
        sac_steps: SAC budget in environment steps for the expert (default per task:
            ``DEFAULT_SAC_STEPS``); eval_freq, eval_episodes, learning_starts: of that run;
        medium_fraction: where "medium" is, as a fraction of the way from random to expert (1/3);
        deterministic: collect with the policy mean instead of sampling (default False);
        cache_dir: keep/reuse the SAC run (default ``~/.cache/vla_rl/sac``; ``None`` disables);
        difficulty, image_size: for the driving simulator (``"easy"``, 64);
        compression: HDF5 compression (``"gzip"``); verbose: progress on stderr;
        next_observations=False / infos=False: leave ``next_observations`` / ``infos/*`` out of the
        file (D4RL's own v2 files have no ``next_observations``; the buffer then takes the next
        observation from the following row and drops the rows that end on a timeout). Smaller files.

    The file holds observations, actions, rewards, terminals, timeouts, next_observations,
    ``infos/qpos``/``infos/qvel`` for MuJoCo tasks (policy rollouts), and metadata: algorithm,
    policy parameters (``metadata/policy/...``), env id, quality, seed, size, kit version, the
    evaluation returns and the generating command.
    """
    env_id = resolve_env(env)
    maze = env_key(env_id) == "maze"
    allowed = list(qualities_for(env_key(env_id)))
    if quality not in allowed:
        raise ConfigError(f"quality={quality!r} is not one of {allowed} (for {env_id})")
    if int(size) < 2:
        raise ConfigError(f"size={size!r} must be at least 2 rows")
    size, seed = int(size), int(seed)
    if maze:
        env_id = MAZE_QUALITIES[quality]
    name = kit_dataset_name(env_id, quality)
    output = Path(output).expanduser() if output is not None else default_output_dir() / f"{name}.hdf5"
    compression = kw.pop("compression", "gzip")
    verbose = bool(kw.pop("verbose", True))
    keep_next = bool(kw.pop("next_observations", True))
    keep_infos = bool(kw.pop("infos", True))
    user_kw = dict(kw, **({} if keep_next else {"next_observations": False}), **({} if keep_infos else {"infos": False}))

    if env_id == DRIVING_ENV_ID:
        data, meta = _driving_rows(quality, size, seed, kw)
    elif maze:
        from vla_rl_lib.envs.maze import collect_mixed_dataset, collect_stitching_dataset

        collect = collect_mixed_dataset if quality == "mixed" else collect_stitching_dataset
        raw = collect(size, seed, reward_type="dense" if quality.endswith("dense") else "sparse", **kw)
        data = {k: v for k, v in raw.items() if not k.startswith("metadata/")}
        meta = {k: v for k, v in raw.items() if k.startswith("metadata/")}
    elif quality == "random":
        if kw:
            raise ConfigError(f"options {sorted(kw)} are not used for random datasets")
        e = _make_gym_env(env_id)
        data = collect_episodes(e, random_policy(e), size, seed)
        e.close()
        meta = {"algorithm": "random", "policy": "uniform random actions from the action space"}
    else:
        data, meta = _sac_rows(env_id, quality, size, seed, kw, verbose)

    if not keep_next:  # D4RL's own v2 layout: the next observation is the following row
        data.pop("next_observations", None)
        data.pop("next_images", None)
    if not keep_infos:
        for k in [k for k in data if k.startswith("infos/")]:
            del data[k]
    rets = episode_returns(data)
    metadata = {
        "metadata/name": name,
        "metadata/env_id": env_id,
        "metadata/quality": quality,
        "metadata/seed": seed,
        "metadata/size": int(data["actions"].shape[0]),
        "metadata/kit_version": _kit_version(),
        # the file name only, so the same data written elsewhere is the same bytes
        "metadata/generation_command": _command(env, quality, size, Path(output.name), seed, user_kw),
        "metadata/return_mean": float(rets.mean()),
        "metadata/episodes": int(len(rets)),
    }
    for k, v in meta.items():
        metadata[k if k.startswith("metadata/") else f"metadata/{k}"] = v
    data.update(metadata)
    validate_dataset(data, source=name)
    path = write_hdf5(output, data, compression=compression)
    if verbose:
        print(f"[make_dataset] wrote {path}: {data['actions'].shape[0]} rows, {len(rets)} episodes, "
              f"mean episode return {rets.mean():.1f}", file=sys.stderr)
    return path


def _sac_rows(env_id: str, quality: str, size: int, seed: int, kw: dict, verbose: bool) -> tuple[dict, dict]:
    fraction = float(kw.pop("medium_fraction", DEFAULT_MEDIUM_FRACTION))
    deterministic = bool(kw.pop("deterministic", False))
    cache_dir = kw.pop("cache_dir", "~/.cache/vla_rl/sac")
    run = train_sac_run(env_id, seed=seed, cache_dir=cache_dir, verbose=verbose, **kw)
    medium_step, medium_ret, target = run.medium_step(fraction)
    expert_step = int(run.config.get("expert_step", max(run.snapshots)))
    common = {
        "algorithm": "SAC (vla_rl_lib.online.sac)",
        "sac_steps": run.sac_steps,
        "sac_train_seconds": run.train_seconds,
        "random_return": run.random_return,
        "expert_eval_return": run.expert_return,
        "expert_step": expert_step,
        "medium_eval_return": medium_ret,
        "medium_step": medium_step,
        "medium_target_return": target,
        "medium_fraction": fraction,
        "collection": "deterministic policy mean" if deterministic else "stochastic policy samples",
        "evaluations": json.dumps(run.evaluations),
    }
    if quality == "expert":
        data = _policy_rows(run, expert_step, size, seed, deterministic)
        meta = {**common, **_policy_metadata(run.snapshots[expert_step]), "policy_step": expert_step}
    elif quality == "medium":
        data = _policy_rows(run, medium_step, size, seed, deterministic)
        meta = {**common, **_policy_metadata(run.snapshots[medium_step]), "policy_step": medium_step}
    elif quality == "medium-replay":
        n = min(medium_step, run.replay["actions"].shape[0])
        lo = max(0, n - size)
        data = {k: np.asarray(v[lo:n]) for k, v in run.replay.items()}
        data["terminals"] = data["terminals"].astype(bool)
        data["timeouts"] = data["timeouts"].astype(bool) & ~data["terminals"]
        if not (data["terminals"][-1] or data["timeouts"][-1]):
            data["timeouts"][-1] = True
        meta = {**common, **_policy_metadata(run.snapshots[medium_step]), "policy_step": medium_step,
                "replay_rows": f"{lo}:{n} of the SAC replay buffer"}
    else:  # medium-expert
        half = size // 2
        med = _policy_rows(run, medium_step, half, seed, deterministic)
        exp = _policy_rows(run, expert_step, size - half, seed + 1, deterministic)
        data = {k: np.concatenate([med[k], exp[k]]) for k in med}
        meta = {**common, **_policy_metadata(run.snapshots[expert_step]), "policy_step": expert_step,
                "medium_rows": half}
    return data, meta


def _driving_rows(quality: str, size: int, seed: int, kw: dict) -> tuple[dict, dict]:
    from vla_rl_lib.envs.expert import collect_dataset

    difficulty = kw.pop("difficulty", "easy")
    image_size = int(kw.pop("image_size", 64))
    if kw:
        raise ConfigError(f"options {sorted(kw)} are not used for driving datasets (use difficulty, image_size)")
    if quality == "mixed":  # expert, noisy expert ("medium") and random episodes, a third of the rows each
        sizes = [size // 3, size // 3, size - 2 * (size // 3)]
        parts = [collect_dataset(n, seed=seed + i, quality=q, difficulty=difficulty, image_size=image_size)
                 for i, (n, q) in enumerate(zip(sizes, ("expert", "medium", "random")))]
        raw = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if not k.startswith("metadata/")}
        raw.update({k: v for k, v in parts[0].items() if k.startswith("metadata/")})
        raw["metadata/quality"] = "mixed"
        raw["metadata/mixture"] = f"rows 0:{sizes[0]} expert, then {sizes[1]} medium (noisy expert), then {sizes[2]} random"
    else:
        raw = collect_dataset(size, seed=seed, quality=quality, difficulty=difficulty, image_size=image_size)
    data = {k: v for k, v in raw.items() if not k.startswith("metadata/")}
    meta = {k: v for k, v in raw.items() if k.startswith("metadata/")}
    if "instructions" in data:
        data["instructions"] = np.array([s.encode() if isinstance(s, str) else bytes(s)
                                         for s in data["instructions"]], dtype=np.bytes_)
    meta.setdefault("metadata/algorithm", "scripted driving expert (vla_rl_lib.envs.expert)")
    meta["metadata/difficulty"] = difficulty
    meta["metadata/image_size"] = image_size
    return data, meta


# --------------------------------------------------------------------------------------------
# the shipped datasets
# --------------------------------------------------------------------------------------------

#: name -> make_dataset arguments of the datasets that ship in vla_rl_lib/datasets/
SHIPPED = {
    "pendulum-medium-v0": dict(env="Pendulum-v1", quality="medium", size=50_000, seed=0,
                               kw=dict(sac_steps=6_000, eval_freq=250, eval_episodes=3, learning_starts=1_000)),
    "pendulum-medium-replay-v0": dict(env="Pendulum-v1", quality="medium-replay", size=3_500, seed=0,
                                      kw=dict(sac_steps=6_000, eval_freq=250, eval_episodes=3, learning_starts=1_000)),
    "pendulum-expert-v0": dict(env="Pendulum-v1", quality="expert", size=20_000, seed=0,
                               kw=dict(sac_steps=6_000, eval_freq=250, eval_episodes=3, learning_starts=1_000)),
    "pendulum-medium-expert-v0": dict(env="Pendulum-v1", quality="medium-expert", size=50_000, seed=0,
                                      kw=dict(sac_steps=6_000, eval_freq=250, eval_episodes=3, learning_starts=1_000)),
    "driving-mixed-v1": dict(env="driving", quality="mixed", size=18_000, seed=0,
                             kw=dict(difficulty="easy", image_size=64)),
    "maze-stitch-v0": dict(env="maze", quality="stitch", size=30_000, seed=0, kw=dict(max_hop=3)),
    "maze-mixed-v0": dict(env="maze", quality="mixed", size=30_000, seed=0, kw=dict()),
    "maze-stitch-dense-v0": dict(env="maze", quality="stitch-dense", size=30_000, seed=0, kw=dict(max_hop=3)),
    "hopper-medium-v0": dict(env="Hopper-v5", quality="medium", size=100_000, seed=0,
                             kw=dict(sac_steps=30_000, eval_freq=2_000, eval_episodes=3, learning_starts=5_000,
                                     hidden_dim=128, next_observations=False, infos=False)),
    "hopper-medium-replay-v0": dict(env="Hopper-v5", quality="medium-replay", size=10_000, seed=0,
                                    kw=dict(sac_steps=30_000, eval_freq=2_000, eval_episodes=3, learning_starts=5_000,
                                            hidden_dim=128, next_observations=False, infos=False)),
    "hopper-medium-expert-v0": dict(env="Hopper-v5", quality="medium-expert", size=50_000, seed=0,
                                    kw=dict(sac_steps=30_000, eval_freq=2_000, eval_episodes=3, learning_starts=5_000,
                                            hidden_dim=128, next_observations=False, infos=False)),
    "driving-expert-v1": dict(env="driving", quality="expert", size=20_000, seed=0,
                              kw=dict(difficulty="easy", image_size=64)),
}


def sha256_of(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read_manifest() -> dict:
    try:
        return json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return {"datasets": {}, "reference_scores": {}}


def _write_manifest(manifest: dict) -> None:
    MANIFEST.parent.mkdir(parents=True, exist_ok=True)
    tmp = MANIFEST.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, MANIFEST)


def build_shipped(names: list[str] | None = None, out_dir: str | os.PathLike | None = None) -> dict:
    """(Re)generate shipped datasets and update ``manifest.json`` (sha256, bytes, command, returns)."""
    from vla_rl_lib.data.hdf5 import meta_value, read_hdf5
    from vla_rl_lib.data.summary import summarize_dataset

    out_dir = Path(out_dir) if out_dir else SHIPPED_DIR
    manifest = _read_manifest()
    for name in names or list(SHIPPED):
        spec = SHIPPED[name]
        path = out_dir / f"{name}.hdf5"
        start = time.perf_counter()
        make_dataset(spec["env"], spec["quality"], spec["size"], output=path, seed=spec["seed"], **spec["kw"])
        seconds = time.perf_counter() - start
        data = read_hdf5(path)
        summary = summarize_dataset(data)
        entry = {
            "file": path.name,
            "sha256": sha256_of(path),
            "bytes": path.stat().st_size,
            "command": (f"python -m vla_rl_lib.data.generate --shipped {name}  # = make_dataset(env={spec['env']!r}, "
                        f"quality={spec['quality']!r}, size={spec['size']}, seed={spec['seed']}, "
                        + ", ".join(f"{k}={v!r}" for k, v in spec["kw"].items()) + ")"),
            "python": (f"make_dataset({spec['env']!r}, {spec['quality']!r}, {spec['size']}, "
                       f"output='vla_rl_lib/datasets/{name}.hdf5', seed={spec['seed']}"
                       + "".join(f", {k}={v!r}" for k, v in spec["kw"].items()) + ")"),
            "env_id": meta_value(data, "env_id"),
            "quality": spec["quality"],
            "transitions": summary["n_transitions"],
            "episodes": summary["n_episodes"],
            "return_mean": summary["return_mean"],
            "return_std": summary["return_std"],
            "return_min": summary["return_min"],
            "return_max": summary["return_max"],
            "generation_seconds": round(seconds, 1),
        }
        for key in ("sac_steps", "sac_train_seconds", "random_return", "expert_eval_return", "medium_eval_return",
                    "medium_target_return", "policy_step"):
            v = meta_value(data, key)
            if v is not None:
                entry[key] = v
        manifest = _read_manifest()  # re-read: another build may have written meanwhile
        manifest.setdefault("datasets", {})[name] = entry
        _write_manifest(manifest)
        print(json.dumps({name: entry}, indent=2))
    return manifest


def measure_reference(env: str, episodes: int = 20, seed: int = 0, **kw) -> dict:
    """Random and expert reference returns for a kit task (recorded in the manifest).

    Pendulum: the mean return of uniform random actions and of the expert snapshot of the cached
    SAC run (the one the shipped dataset came from). Driving: ``collect_dataset`` with quality
    ``random`` and ``expert``.
    """
    env_id = resolve_env(env)
    if env_id == DRIVING_ENV_ID:
        from vla_rl_lib.envs.expert import collect_dataset

        out = {}
        for q in ("random", "expert"):
            d = collect_dataset(episodes * 200, seed=seed + 1000, quality=q, difficulty=kw.get("difficulty", "easy"),
                                image_size=kw.get("image_size", 64))
            out[q] = float(np.mean(episode_returns(d)))
        how = (f"mean episode return of collect_dataset(quality='random'/'expert', difficulty='easy') over "
               f"{episodes * 200} steps, seed {seed + 1000}")
        return {"env_id": env_id, "random": out["random"], "expert": out["expert"], "how": how}
    e = _make_gym_env(env_id)
    rnd = collect_episodes(e, random_policy(e), _episode_budget(e, episodes), seed + 1000)
    random_ret = float(np.mean(episode_returns(rnd)))
    run = train_sac_run(env_id, seed=seed, cache_dir=kw.pop("cache_dir", "~/.cache/vla_rl/sac"), **kw)
    step = int(run.config.get("expert_step", max(run.snapshots)))
    pol = _snapshot_policy(env_id, run.snapshots[step], seed + 1000, deterministic=True,
                           hidden_dim=int(run.config.get("hidden_dim", 256)))
    exp = collect_episodes(e, pol, _episode_budget(e, episodes), seed + 1000)
    expert_ret = float(np.mean(episode_returns(exp)))
    how = (f"random: uniform actions, {episodes} episodes; expert: the kit's SAC ({run.sac_steps} steps, seed {seed}) "
           f"snapshot at step {step}, deterministic, {episodes} episodes; seed {seed + 1000}")
    return {"env_id": env_id, "random": random_ret, "expert": expert_ret, "how": how}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vla_rl_lib.data.generate",
                                     description="Generate D4RL-style datasets (make_dataset).")
    parser.add_argument("--shipped", nargs="*", default=None, metavar="NAME",
                        help=f"regenerate shipped datasets (all, or the NAMEs among {list(SHIPPED)})")
    parser.add_argument("--reference", nargs="*", default=None, metavar="ENV",
                        help="measure and record reference scores (pendulum, driving)")
    parser.add_argument("--env")
    parser.add_argument("--quality", choices=QUALITIES)
    parser.add_argument("--size", type=int)
    parser.add_argument("--output")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sac_steps", "--sac-steps", type=int, default=None)
    args = parser.parse_args(argv)
    if args.shipped is not None:
        build_shipped(args.shipped or None)
        return 0
    if args.reference is not None:
        manifest = _read_manifest()
        for key in args.reference or ["pendulum", "driving"]:
            spec = next((s for s in SHIPPED.values() if env_key(s["env"]) == key), None)
            kw = dict(spec["kw"]) if spec and key != "driving" else {}
            ref = measure_reference(key, **kw)
            manifest.setdefault("reference_scores", {})[key] = ref
            _write_manifest(manifest)
            print(json.dumps({key: ref}, indent=2))
        return 0
    if not (args.env and args.quality and args.size):
        parser.error("--env, --quality and --size are required (or --shipped / --reference)")
    kw = {"sac_steps": args.sac_steps} if args.sac_steps else {}
    print(make_dataset(args.env, args.quality, args.size, args.output, args.seed, **kw))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
