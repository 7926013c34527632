"""Groups of rollouts for critic-free policy optimisation (GRPO, RLOO): worlds stepped in lock-step.

A *group* is ``group_size`` rollouts of the current policy from one initial state. All ``G * K``
rollouts of a sampling round run as the worlds of one vector environment: world ``g * K + k`` is
reset with the group's seed ``s_g`` (``reset(seed=[s_0]*K + [s_1]*K + ...)``), so the members of a
group start from the same scenario, and every world is stepped at once until each has finished its
first episode. A world whose episode has ended is left out of the policy's forward pass and of the
rollout (its later steps, the vector env's autoreset and the next episode, are masked out).

:func:`lockstep_envs` chooses that vector environment:

* the driving simulator (``"driving"``, a ``DrivingEnv`` or a ``BatchedDrivingEnv``) runs as the
  kit's :class:`~vla_rl_lib.envs.batched.BatchedDrivingEnv`: numpy on the CPU; torch on a GPU with
  ``return_tensors="torch"``, in which case the whole rollout stays on the device (observations,
  rewards, flags and the bookkeeping below are tensors; nothing is copied to numpy);
* any other gymnasium environment runs as a ``SyncVectorEnv`` of copies (``reset(seed=list)`` seeds
  each copy).

:func:`collect_groups` returns a :class:`GroupRollouts`: the steps of all rollouts (time-major:
the first step of every rollout, then the second step of those still running, ...), each step's
rollout index, and per rollout its return, length, success and per-objective returns.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import gymnasium as gym
import numpy as np
import torch

from vla_rl_lib.errors import ConfigError, IncompatibleError
from vla_rl_lib.online.rollout import Obs, concat_obs, index_obs, obs_to_tensor

#: episodes of environments without a time limit are cut here (and counted as truncated)
DEFAULT_MAX_EPISODE_STEPS = 1000


@dataclass
class GroupRollouts:
    """The rollouts of one or more sampling rounds (``n`` rollouts, ``T`` steps over all of them)."""

    obs: Obs                      # T observations (tensors on the device, strings as a list)
    actions: torch.Tensor         # (T, ...) as the policy sampled them
    log_probs: torch.Tensor       # (T,) log pi_old(a_t|s_t)
    episode: torch.Tensor         # (T,) index of the rollout each step belongs to
    returns: torch.Tensor         # (n,) sum of rewards
    lengths: torch.Tensor         # (n,) steps
    success: Optional[torch.Tensor]       # (n,) 1.0 where info["success"] was true at the end
    term_returns: Optional[torch.Tensor]  # (n, M) sums of info["reward_terms"][name]

    @property
    def num_rollouts(self) -> int:
        return int(self.returns.shape[0])

    def select(self, keep: torch.Tensor) -> "GroupRollouts":
        """The rollouts where ``keep`` (a boolean ``(n,)`` tensor) is true, renumbered ``0..``."""
        new_index = torch.cumsum(keep.long(), 0) - 1
        steps = torch.nonzero(keep[self.episode]).squeeze(1)
        per_rollout = lambda x: None if x is None else x[keep]  # noqa: E731
        return GroupRollouts(index_obs(self.obs, steps), self.actions[steps], self.log_probs[steps],
                             new_index[self.episode[steps]], self.returns[keep], self.lengths[keep],
                             per_rollout(self.success), per_rollout(self.term_returns))


def concat_rollouts(parts: Sequence[GroupRollouts]) -> GroupRollouts:
    """The rollouts of several rounds as one (rollout indices continue from one part to the next)."""
    if len(parts) == 1:
        return parts[0]
    offsets = np.cumsum([0] + [p.num_rollouts for p in parts[:-1]]).tolist()
    cat = lambda xs: None if xs[0] is None else torch.cat(xs)  # noqa: E731
    return GroupRollouts(concat_obs([p.obs for p in parts]), torch.cat([p.actions for p in parts]),
                         torch.cat([p.log_probs for p in parts]),
                         torch.cat([p.episode + o for p, o in zip(parts, offsets)]),
                         torch.cat([p.returns for p in parts]), torch.cat([p.lengths for p in parts]),
                         cat([p.success for p in parts]), cat([p.term_returns for p in parts]))


# ------------------------------------------------------------------------------------------------
# the vector environment
# ------------------------------------------------------------------------------------------------
def lockstep_envs(env, env_id: Optional[str], make_env: Callable, num_worlds: int, device: torch.device):
    """A vector env of ``num_worlds`` worlds for group rollouts (see the module docstring)."""
    from vla_rl_lib.envs import is_driving
    from vla_rl_lib.envs.batched import BatchedDrivingEnv
    from vla_rl_lib.envs.driving import DrivingEnv

    on_gpu = torch.device(device).type != "cpu"
    if isinstance(env, BatchedDrivingEnv):
        if env.num_envs != num_worlds:
            raise ConfigError(f"the batched driving env has {env.num_envs} worlds but GRPO runs group_size x "
                              f"num_groups = {num_worlds} at once; build it with num_envs={num_worlds}")
        return env
    # a bare DrivingEnv (or the id) becomes the batched simulator; a wrapped one (e.g. StateObservation)
    # keeps its wrappers: it runs as copies in a SyncVectorEnv below
    single = env if isinstance(env, DrivingEnv) else None
    if single is not None or (not isinstance(env, gym.Env) and is_driving(env_id)):
        kw = {} if single is None else dict(
            difficulty=single.difficulty.name, instruction=single.instruction, image_size=single.image_size,
            num_lanes=single.num_lanes, max_episode_steps=single.max_episode_steps, reward_fn=single.reward_fn)
        if on_gpu:
            kw.update(device=str(device), backend="torch", return_tensors="torch")
        return BatchedDrivingEnv(num_envs=num_worlds, **kw)
    if isinstance(env, gym.Env):
        fns = [lambda: copy.deepcopy(env) for _ in range(num_worlds)]
    elif env_id is not None:
        fns = [lambda: make_env(env_id) for _ in range(num_worlds)]
    elif isinstance(env, gym.vector.SyncVectorEnv):
        fns = [lambda: copy.deepcopy(env.envs[0]) for _ in range(num_worlds)]
    else:
        raise IncompatibleError("group rollouts need an environment id, a gymnasium env instance or the batched "
                                "driving simulator (got a vector env without a spec id)")
    return gym.vector.SyncVectorEnv(fns)


def episode_limit(envs) -> int:
    """Steps after which every world has ended its episode (the time limit + 1, or 1000)."""
    limit = getattr(envs, "max_episode_steps", None)
    if limit is None and isinstance(envs, gym.vector.SyncVectorEnv):
        first = envs.envs[0]
        limit = getattr(getattr(first, "spec", None), "max_episode_steps", None) or \
            getattr(first.unwrapped, "max_episode_steps", None)
    return int(limit) + 1 if limit else DEFAULT_MAX_EPISODE_STEPS


def _row(obs: Obs, i: int) -> Obs:
    if isinstance(obs, dict):
        return {k: _row(v, i) for k, v in obs.items()}
    return obs[i]


def _equal(a, b) -> bool:
    if isinstance(a, dict):
        return all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, torch.Tensor):
        return bool(torch.equal(a, b))
    if isinstance(a, np.ndarray):
        return bool(np.array_equal(a, b))
    return a == b


def check_shared_reset(envs, name: str) -> Obs:
    """Two worlds reset with one seed must start alike (else a group would not share its initial
    state): raises ``IncompatibleError``; returns the first observation of world 0 (a batch of one)."""
    obs, _ = envs.reset(seed=[12345] * envs.num_envs)
    if not _equal(_row(obs, 0), _row(obs, 1)):
        raise IncompatibleError(
            f"GRPO needs an environment that reset(seed=s) reproduces, but two resets of {name} with the same seed "
            "gave different first observations; make reset() seed its random generator (super().reset(seed=seed) "
            "and use self.np_random)")
    return index_obs(obs, [0])


# ------------------------------------------------------------------------------------------------
# collecting
# ------------------------------------------------------------------------------------------------
def _as_tensor(x, device, dtype=None) -> torch.Tensor:
    """An env output as a tensor on ``device``: tensors are moved (never through numpy), arrays wrapped."""
    if isinstance(x, torch.Tensor):
        return x.to(device=device, dtype=dtype)
    return torch.as_tensor(np.asarray(x), device=device, dtype=dtype)


def _info_entry(info: dict, key: str, envs_name: str) -> object:
    if key not in info:
        raise IncompatibleError(f"the score needs info[{key!r}] from the environment ({envs_name}), which it does "
                                f"not report; use grpo_reward='return' or an env that reports {key!r}")
    return info[key]


@torch.no_grad()
def collect_groups(envs, act: Callable, seeds: Sequence[int], device: torch.device, max_steps: int,
                   to_env_actions: Callable, objective_names: Optional[list] = None,
                   want_success: bool = False) -> GroupRollouts:
    """Reset world ``i`` with ``seeds[i]`` and step all worlds in lock-step until every world has ended
    its first episode (or ``max_steps``). ``act(obs) -> (actions, log_probs)`` samples for the worlds
    still running; ``to_env_actions(actions of all worlds)`` gives what ``envs.step`` takes."""
    n = envs.num_envs
    if len(seeds) != n:
        raise ConfigError(f"{len(seeds)} seeds for {n} worlds")
    name = type(envs).__name__
    obs, _ = envs.reset(seed=[int(s) for s in seeds])
    alive = torch.ones(n, dtype=torch.bool, device=device)
    rows = torch.arange(n, device=device)
    returns = torch.zeros(n, dtype=torch.float64, device=device)
    lengths = torch.zeros(n, dtype=torch.long, device=device)
    success = torch.zeros(n, device=device) if want_success else None
    terms = torch.zeros(n, len(objective_names), dtype=torch.float64, device=device) if objective_names else None
    steps_obs, steps_actions, steps_log_probs, steps_episode = [], [], [], []
    full_actions = None
    for _ in range(max_steps):
        idx = rows[alive]
        if idx.numel() == 0:
            break
        obs_t = index_obs(obs_to_tensor(obs, device), idx)
        actions, log_probs = act(obs_t)
        steps_obs.append(obs_t)
        steps_actions.append(actions)
        steps_log_probs.append(log_probs.reshape(-1))
        steps_episode.append(idx)
        if full_actions is None:  # the finished worlds' actions are ignored (their steps are masked out)
            full_actions = torch.zeros((n, *actions.shape[1:]), dtype=actions.dtype, device=device)
        full_actions.zero_()
        full_actions[idx] = actions
        obs, reward, terminated, truncated, info = envs.step(to_env_actions(full_actions))
        returns += torch.where(alive, _as_tensor(reward, device, torch.float64), 0.0)
        lengths += alive.long()
        done = _as_tensor(terminated, device, torch.bool) | _as_tensor(truncated, device, torch.bool)
        ending = alive & done
        if success is not None:
            success = torch.where(ending, _as_tensor(_info_entry(info, "success", name), device, torch.float32),
                                  success)
        if terms is not None:
            reported = info.get("reward_terms")
            if not isinstance(reported, dict) or any(k not in reported for k in objective_names):
                raise IncompatibleError(
                    f"objective_weights names {objective_names}, but the environment's info['reward_terms'] is "
                    f"{reported!r}; the env must report each objective's reward in info['reward_terms'] (a dict)")
            step_terms = torch.stack([_as_tensor(reported[k], device, torch.float64) for k in objective_names], 1)
            terms += torch.where(alive[:, None], step_terms, 0.0)
        alive = alive & ~done
    return GroupRollouts(concat_obs(steps_obs), torch.cat(steps_actions), torch.cat(steps_log_probs),
                         torch.cat(steps_episode), returns, lengths, success, terms)


__all__ = ["GroupRollouts", "concat_rollouts", "lockstep_envs", "episode_limit", "check_shared_reset",
           "collect_groups"]
