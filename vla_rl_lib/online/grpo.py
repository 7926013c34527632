"""Group Relative Policy Optimization (Shao et al., 2024, DeepSeekMath), for episodic environments.

GRPO needs no critic. Each iteration:

1. draw ``num_groups`` reset seeds; for each, run ``group_size`` rollouts of the current policy, all
   starting from the same initial state (the environment is reset with the same seed), to the end
   of their episodes;
2. score each rollout by its return ``R_i`` (the sum of its rewards) and give every step of rollout
   ``i`` the group-relative advantage :func:`group_relative_advantages`
   ``A_i = (R_i - mean_group R) / (std_group R + eps)``; with ``objective_weights`` the rewards are
   vectors (``info["reward_terms"]``), each objective is normalised within the group and the
   normalised objectives are combined with the weights (:func:`combine_objectives`);
3. for ``grpo_epochs`` epochs over minibatches of ``batch_size`` steps, maximise the clipped ratio
   objective minus a KL penalty to the frozen reference policy (the policy at the start of
   training), :func:`grpo_loss`, with the unbiased ``k3`` estimator :func:`k3_kl`.

Training stops after ``num_iterations`` iterations (or ``total_timesteps`` environment steps,
whichever comes first); ``global_step`` counts environment steps as for PPO and SAC. The loss is
averaged over all steps of the minibatch (each step counts once, so long episodes weigh more than
short ones, as in DAPO's token-level averaging). The group std is the sample standard deviation.

The environment must be reproducible from a seed: ``reset(seed=s)`` twice must give the same
first observation; otherwise a group would not share its initial state and ``IncompatibleError``
is raised. Policies are handled as in PPO (see :mod:`vla_rl_lib.online.ppo`).
"""
from __future__ import annotations

import copy
from typing import Iterable, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn

from vla_rl_lib.config import RLConfig
from vla_rl_lib.errors import ConfigError, IncompatibleError
from vla_rl_lib.nets import without_distribution_checks
from vla_rl_lib.online.rollout import (check_policy, concat_obs, frozen_copy, index_obs, make_adam, obs_to_tensor,
                                       resolve_policy, same_obs, stack_obs)
from vla_rl_lib.trainer import OnlineTrainer

__all__ = ["GRPOTrainer", "group_relative_advantages", "combine_objectives", "k3_kl", "grpo_loss"]

#: episodes of environments without a time limit are cut here (and counted as truncated)
DEFAULT_MAX_EPISODE_STEPS = 1000


def group_relative_advantages(returns: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Group-normalised returns, ``returns`` of shape ``(num_groups, group_size)``::

        A_{g,i} = (R_{g,i} - mean_j R_{g,j}) / (std_j R_{g,j} + eps)

    A group whose rollouts all score the same gets zero advantages (it teaches nothing).
    """
    mean = returns.mean(dim=-1, keepdim=True)
    std = returns.std(dim=-1, keepdim=True) if returns.shape[-1] > 1 else torch.zeros_like(mean)
    return (returns - mean) / (std + eps)


def combine_objectives(term_returns: torch.Tensor, weights: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Multi-objective group advantages from per-objective returns ``(num_groups, group_size, M)``::

        A_{g,i} = sum_m w_m * (R^m_{g,i} - mean_j R^m_{g,j}) / (std_j R^m_{g,j} + eps)

    Each objective is normalised within its group first, so the weights ``w`` compare objectives on
    the same scale whatever their reward units.
    """
    normalised = group_relative_advantages(term_returns.movedim(-1, 0), eps)  # (M, G, K)
    return torch.einsum("m,mgk->gk", weights.to(normalised), normalised)


def k3_kl(log_probs: torch.Tensor, ref_log_probs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of ``KL(pi || pi_ref)`` from actions sampled from ``pi``::

        k3 = pi_ref(a|s)/pi(a|s) - log(pi_ref(a|s)/pi(a|s)) - 1  =  exp(d) - d - 1,   d = log pi_ref - log pi

    Every sample is >= 0 (``e^d >= 1 + d``) and its mean is unbiased: ``E_pi[e^d] = 1`` and
    ``E_pi[-d] = KL(pi || pi_ref)``.
    """
    d = ref_log_probs - log_probs
    return torch.exp(d) - d - 1.0


def grpo_loss(ratio: torch.Tensor, advantages: torch.Tensor, kl: torch.Tensor, clip_range: float,
              kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO's objective as a loss to minimise, averaged over steps::

        L = -mean_t [ min( r_t A_t , clip(r_t, 1 - eps, 1 + eps) A_t ) - beta * k3_t ]

    Returns ``(L, clipped-surrogate part)``.
    """
    surrogate = torch.min(ratio * advantages, torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range) * advantages)
    policy_loss = -surrogate.mean()
    return policy_loss + kl_coef * kl.mean(), policy_loss


class GRPOTrainer(OnlineTrainer):
    """GRPO (see the module docstring). ``GRPOTrainer(env, config=RLConfig(group_size=4, ...))``."""

    algorithm = "grpo"
    Hyperparameters = None

    def __init__(self, env=None, config: Optional[RLConfig] = None, policy: Optional[nn.Module] = None,
                 callbacks: Optional[Iterable] = None, use_wandb: bool = False, progress_bar: bool = False):
        super().__init__(env, config, policy, callbacks, use_wandb, progress_bar)
        cfg = self.config
        policy = resolve_policy(policy, cfg, self.device, self.observation_space, self.action_space)
        # one plain env per rollout of an iteration: only unfinished episodes are stepped
        self.rollout_envs = self._make_rollout_envs(env)
        self._max_steps = self._episode_limit(self.rollout_envs[0])
        first = self._check_seeded_reset(self.rollout_envs[0])
        check_policy(policy, self.observation_space, self.action_space, self.device, example_obs=stack_obs([first]))
        self.policy = policy
        self.ref_policy = frozen_copy(policy)  # the KL anchor: the policy before training
        self.discrete = isinstance(self.action_space, gym.spaces.Discrete)
        self._params = [p for p in policy.parameters() if p.requires_grad]
        self.optimizer = make_adam(self._params, cfg.learning_rate)
        self.seed_generator = np.random.default_rng(cfg.seed)
        self.minibatch_generator = torch.Generator().manual_seed(cfg.seed)
        self.iteration = 0

        self.objective_names: Optional[list[str]] = None
        if cfg.objective_weights:
            self.objective_names = list(cfg.objective_weights)
            bad = [k for k, w in cfg.objective_weights.items() if not isinstance(w, (int, float)) or not np.isfinite(w)]
            if bad:
                raise ConfigError(f"RLConfig.objective_weights[{bad[0]!r}] must be a finite number")
            self._weights = torch.tensor([float(cfg.objective_weights[k]) for k in self.objective_names])

        if isinstance(self.action_space, gym.spaces.Box):
            self._low, self._high = self.action_space.low, self.action_space.high

    # ------------------------------------------------------------------------------------------
    # environments
    # ------------------------------------------------------------------------------------------
    def _make_rollout_envs(self, env) -> list:
        n = self.config.group_size * self.config.num_groups
        if isinstance(env, gym.Env):
            return [copy.deepcopy(env) for _ in range(n)]
        if self.env_id is not None:
            return [self._make_env(self.env_id) for _ in range(n)]
        if isinstance(self.envs, gym.vector.SyncVectorEnv):
            return [copy.deepcopy(self.envs.envs[0]) for _ in range(n)]
        raise IncompatibleError("GRPO needs an environment id or a gymnasium env instance to make group rollouts "
                                "from (got a vector env without a spec id)")

    @staticmethod
    def _episode_limit(env) -> int:
        spec = getattr(env, "spec", None)
        limit = getattr(spec, "max_episode_steps", None) or getattr(env.unwrapped, "max_episode_steps", None)
        return int(limit) + 1 if limit else DEFAULT_MAX_EPISODE_STEPS

    def _check_seeded_reset(self, env):
        """Two resets with one seed must give the same first observation (returned)."""
        first, _ = env.reset(seed=12345)
        again, _ = env.reset(seed=12345)
        if not same_obs(first, again):
            raise IncompatibleError(
                f"GRPO needs an environment that reset(seed=s) reproduces, but two resets of "
                f"{self.env_id or type(env).__name__} with the same seed gave different first observations; "
                "make reset() seed its random generator (super().reset(seed=seed) and use self.np_random)")
        return first

    # ------------------------------------------------------------------------------------------
    # acting
    # ------------------------------------------------------------------------------------------
    def _act(self, obs):
        actions, log_probs, _ = self.policy.act(obs)
        return actions, log_probs.reshape(-1)

    def _env_action(self, action: np.ndarray):
        if self.discrete:
            return int(np.asarray(action).reshape(()))
        return np.clip(action, self._low, self._high)

    @without_distribution_checks
    def predict(self, obs, deterministic: bool = True):
        action = self.policy.predict(obs, deterministic=deterministic)
        if not self.discrete and isinstance(self.action_space, gym.spaces.Box):
            action = np.clip(action, self._low, self._high)
        return action

    def _reward_terms(self, info: dict) -> np.ndarray:
        terms = info.get("reward_terms")
        if not isinstance(terms, dict) or any(k not in terms for k in self.objective_names):
            raise IncompatibleError(
                f"objective_weights names {self.objective_names}, but the environment's info['reward_terms'] is "
                f"{terms!r}; the env must report each objective's reward in info['reward_terms'] (a dict)")
        return np.array([float(terms[k]) for k in self.objective_names])

    # ------------------------------------------------------------------------------------------
    # collecting groups of rollouts
    # ------------------------------------------------------------------------------------------
    @without_distribution_checks
    @torch.no_grad()
    def collect(self) -> int:
        cfg = self.config
        G, K = cfg.num_groups, cfg.group_size
        n = G * K
        seeds = np.repeat(self.seed_generator.integers(0, 2**31 - 1, size=G), K)
        obs = [env.reset(seed=int(s))[0] for env, s in zip(self.rollout_envs, seeds)]
        returns = np.zeros(n)
        lengths = np.zeros(n, dtype=np.int64)
        term_returns = np.zeros((n, len(self.objective_names))) if self.objective_names else None
        alive = list(range(n))
        steps_obs, steps_actions, steps_log_probs, steps_episode = [], [], [], []
        t = 0
        while alive and t < self._max_steps:
            obs_t = obs_to_tensor(stack_obs([obs[i] for i in alive]), self.device)
            actions, log_probs = self._act(obs_t)
            steps_obs.append(obs_t)
            steps_actions.append(actions)
            steps_log_probs.append(log_probs.reshape(-1))
            steps_episode.append(torch.as_tensor(alive))
            actions_np = actions.cpu().numpy()
            still = []
            for j, i in enumerate(alive):
                obs[i], reward, terminated, truncated, info = self.rollout_envs[i].step(self._env_action(actions_np[j]))
                returns[i] += float(reward)
                lengths[i] += 1
                if term_returns is not None:
                    term_returns[i] += self._reward_terms(info)
                if not (terminated or truncated):
                    still.append(i)
            alive = still
            t += 1
        for i in range(n):
            self.record_episode(float(returns[i]), int(lengths[i]))
        self._rollouts = {
            "obs": concat_obs(steps_obs), "actions": torch.cat(steps_actions), "log_probs": torch.cat(steps_log_probs),
            "episode": torch.cat(steps_episode).to(self.device), "returns": returns, "term_returns": term_returns,
        }
        return int(lengths.sum())

    # ------------------------------------------------------------------------------------------
    # learning
    # ------------------------------------------------------------------------------------------
    def _log_probs_entropy(self, obs, actions):
        log_probs, entropy, _ = self.policy.evaluate_actions(obs, actions)
        return log_probs.reshape(-1), entropy.reshape(-1)

    @without_distribution_checks
    def learn(self) -> dict:
        cfg, data = self.config, self._rollouts
        G, K = cfg.num_groups, cfg.group_size
        returns = torch.as_tensor(data["returns"], dtype=torch.float32).reshape(G, K)
        if self.objective_names:
            terms = torch.as_tensor(data["term_returns"], dtype=torch.float32).reshape(G, K, -1)
            episode_adv = combine_objectives(terms, self._weights)
        else:
            episode_adv = group_relative_advantages(returns)
        episode_adv = episode_adv.reshape(-1).to(self.device)
        obs, actions, old_log_probs = data["obs"], data["actions"], data["log_probs"]
        advantages = episode_adv[data["episode"]]
        size = advantages.numel()
        with torch.no_grad():
            ref_log_probs = torch.cat([self._ref_log_probs(index_obs(obs, idx), actions[idx])
                                       for idx in torch.arange(size, device=self.device).split(4096)])
        batch = min(cfg.batch_size, size)
        sums = {k: torch.zeros(()) for k in ("policy_loss", "kl", "entropy", "clip_fraction")}
        updates = 0
        for _ in range(cfg.grpo_epochs):
            order = torch.randperm(size, generator=self.minibatch_generator).to(self.device)
            for start in range(0, size, batch):
                mb = order[start:start + batch]
                log_probs, entropy = self._log_probs_entropy(index_obs(obs, mb), actions[mb])
                ratio = (log_probs - old_log_probs[mb]).exp()
                kl = k3_kl(log_probs, ref_log_probs[mb])
                loss, policy_loss = grpo_loss(ratio, advantages[mb], kl, cfg.clip_range, cfg.kl_coef)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(self._params, cfg.ppo_max_grad_norm)
                self.optimizer.step()
                with torch.no_grad():
                    sums["policy_loss"] += policy_loss.detach().cpu()
                    sums["kl"] += kl.mean().detach().cpu()
                    sums["entropy"] += entropy.mean().detach().cpu()
                    sums["clip_fraction"] += ((ratio - 1).abs() > cfg.clip_range).float().mean().cpu()
                updates += 1
        self.iteration += 1
        self._rollouts = None
        metrics = {k: float(v) / max(updates, 1) for k, v in sums.items()}
        metrics["mean_reward"] = float(returns.mean())
        metrics["group_reward_std"] = float(returns.std(dim=1).mean()) if K > 1 else 0.0
        metrics["iteration"] = float(self.iteration)
        return metrics

    def _ref_log_probs(self, obs, actions):
        return self.ref_policy.log_prob(obs, actions).reshape(-1)

    # ------------------------------------------------------------------------------------------
    # stopping and checkpoints
    # ------------------------------------------------------------------------------------------
    def _is_done(self) -> bool:
        return self.iteration >= self.config.num_iterations or self.global_step >= self.config.total_timesteps

    def extra_state(self) -> dict:
        return {"iteration": self.iteration}

    def load_extra_state(self, state: dict) -> None:
        self.iteration = int(state.get("iteration", 0))
