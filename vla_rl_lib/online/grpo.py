"""Group Relative Policy Optimization (Shao et al., 2024, DeepSeekMath) and its critic-free relatives,
for episodic environments.

GRPO needs no critic. Each iteration:

1. draw ``num_groups`` reset seeds; for each, run ``group_size`` rollouts of the current policy, all
   starting from the same initial state, to the end of their episodes. The rollouts run as the
   worlds of one vector environment stepped in lock-step (:mod:`vla_rl_lib.online.groups`; the
   batched driving simulator for driving, on the CPU or the GPU);
2. score each rollout: its return ``R_i`` (the sum of its rewards), or with ``grpo_reward="success"``
   its outcome ``R_i = 1[success]`` (:func:`rollout_scores`); give every step of rollout ``i`` the
   group-relative advantage :func:`group_relative_advantages`
   ``A_i = (R_i - mean_group R) / (std_group R + eps)``, or with ``grpo_advantage="rloo"`` the
   leave-one-out advantage :func:`leave_one_out_advantages` ``A_i = R_i - mean_{j != i} R_j``;
   with ``objective_weights`` the rewards are vectors (``info["reward_terms"]``), each objective gets
   its own advantage within the group and they are combined with the weights (:func:`combine_objectives`);
3. with ``dynamic_sampling``, drop the groups whose rollouts all scored the same (their advantages
   are all zero, :func:`informative_groups`) and sample more groups, up to ``dynamic_sampling_rounds``
   rounds, until ``num_groups`` informative groups are in hand;
4. for ``grpo_epochs`` epochs over minibatches of ``batch_size`` steps, maximise the clipped ratio
   objective (with a lower bound ``1 - clip_range`` and an upper bound ``1 + clip_range_high``,
   :func:`clipped_objective`) minus a KL penalty to the frozen reference policy (the policy at the start
   of training), :func:`grpo_loss`, with the unbiased ``k3`` estimator :func:`k3_kl`; ``kl_coef=0``
   switches the KL term (and the reference policy's forward pass) off. With ``token_level_ratios``
   the ratio, its clipping and the KL are per action token (per action dimension; the VLA's token head
   has one 256-bin token per dimension) and the loss is averaged over tokens.

Training stops after ``num_iterations`` iterations (or ``total_timesteps`` environment steps,
whichever comes first); ``global_step`` counts environment steps as for PPO and SAC (the steps of
groups dropped by dynamic sampling count too). The loss is averaged over all steps of the minibatch
(each step counts once, so long episodes weigh more than short ones, as in DAPO's token-level
averaging), or with ``grpo_loss_mean="rollout"`` each rollout counts once (:func:`step_weights`, the
original GRPO's per-sample mean). The group std is the sample standard deviation.

The environment must be reproducible from a seed: two worlds reset with the same seed must give the
same first observation; otherwise a group would not share its initial state and ``IncompatibleError``
is raised. Policies are handled as in PPO (see :mod:`vla_rl_lib.online.ppo`).

A resumed run is exact: every round resets its worlds with seeds from the saved seed generator, and
the checkpoint holds the environment's state where the kit can save it (the driving simulator:
e.g. a curriculum's current difficulty), so N iterations give bit-identical weights to N/2 + resume
+ N/2 on the CPU.
"""
from __future__ import annotations

from typing import Iterable, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn

from vla_rl_lib.config import RLConfig
from vla_rl_lib.envs.state import get_env_state, restore_env_state
from vla_rl_lib.errors import ConfigError, IncompatibleError
from vla_rl_lib.nets import without_distribution_checks
from vla_rl_lib.online.groups import (GroupRollouts, check_shared_reset, collect_groups, concat_rollouts,
                                      episode_limit, lockstep_envs)
from vla_rl_lib.online.rollout import check_policy, frozen_copy, index_obs, make_adam, resolve_policy
from vla_rl_lib.trainer import OnlineTrainer

__all__ = ["GRPOTrainer", "group_relative_advantages", "leave_one_out_advantages", "combine_objectives",
           "informative_groups", "rollout_scores", "k3_kl", "clipped_objective", "grpo_loss", "step_weights"]


# ------------------------------------------------------------------------------------------------
# the algorithm, as small pure functions
# ------------------------------------------------------------------------------------------------
def rollout_scores(returns: torch.Tensor, success: Optional[torch.Tensor], reward: str) -> torch.Tensor:
    """What a rollout is scored by: its return ``R_i = sum_t r_t`` (``reward="return"``) or its outcome
    ``R_i = 1[episode i succeeded]`` (``reward="success"``, SimpleVLA-RL's 0/1 reward)."""
    return success.to(returns) if reward == "success" else returns


def group_relative_advantages(returns: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Group-normalised returns, ``returns`` of shape ``(num_groups, group_size)``::

        A_{g,i} = (R_{g,i} - mean_j R_{g,j}) / (std_j R_{g,j} + eps)

    A group whose rollouts all score the same gets zero advantages (it teaches nothing).
    """
    mean = returns.mean(dim=-1, keepdim=True)
    std = returns.std(dim=-1, keepdim=True) if returns.shape[-1] > 1 else torch.zeros_like(mean)
    return (returns - mean) / (std + eps)


def leave_one_out_advantages(returns: torch.Tensor) -> torch.Tensor:
    """RLOO's advantages (Kool et al., 2019; Ahmadian et al., 2024), ``returns`` ``(num_groups, K)``::

        A_{g,i} = R_{g,i} - 1/(K-1) sum_{j != i} R_{g,j}  =  K/(K-1) (R_{g,i} - mean_j R_{g,j})

    Each rollout's baseline is the mean of the *other* rollouts of its group, so it does not depend on
    the rollout's own return and the estimate is unbiased; no division by the group std.
    """
    k = returns.shape[-1]
    others = (returns.sum(dim=-1, keepdim=True) - returns) / (k - 1)
    return returns - others


def combine_objectives(term_returns: torch.Tensor, weights: torch.Tensor, eps: float = 1e-8,
                       advantage: str = "group") -> torch.Tensor:
    """Multi-objective group advantages from per-objective returns ``(num_groups, group_size, M)``::

        A_{g,i} = sum_m w_m * (R^m_{g,i} - mean_j R^m_{g,j}) / (std_j R^m_{g,j} + eps)

    Each objective is normalised within its group first, so the weights ``w`` compare objectives on
    the same scale whatever their reward units. (``advantage="rloo"``: each objective's leave-one-out
    advantage instead, ``A_{g,i} = sum_m w_m (R^m_{g,i} - mean_{j != i} R^m_{g,j})``.)
    """
    per_objective = term_returns.movedim(-1, 0)  # (M, G, K)
    if advantage == "rloo":
        normalised = leave_one_out_advantages(per_objective)
    else:
        normalised = group_relative_advantages(per_objective, eps)
    return torch.einsum("m,mgk->gk", weights.to(normalised), normalised)


def informative_groups(scores: torch.Tensor) -> torch.Tensor:
    """DAPO's dynamic-sampling filter: which groups teach something. ``scores`` ``(G, K)`` (or
    ``(G, K, M)`` for vector rewards); a group is kept unless all its rollouts scored the same::

        keep_g = exists i, j:  R_{g,i} != R_{g,j}

    (a group of equal scores has all-zero advantages under both estimators).
    """
    same = scores == scores[:, :1]
    return ~same.reshape(scores.shape[0], -1).all(dim=1)


def k3_kl(log_probs: torch.Tensor, ref_log_probs: torch.Tensor) -> torch.Tensor:
    """Schulman's k3 estimator of ``KL(pi || pi_ref)`` from actions sampled from ``pi``::

        k3 = pi_ref(a|s)/pi(a|s) - log(pi_ref(a|s)/pi(a|s)) - 1  =  exp(d) - d - 1,   d = log pi_ref - log pi

    Every sample is >= 0 (``e^d >= 1 + d``) and its mean is unbiased: ``E_pi[e^d] = 1`` and
    ``E_pi[-d] = KL(pi || pi_ref)``.
    """
    d = ref_log_probs - log_probs
    return torch.exp(d) - d - 1.0


def clipped_objective(ratio: torch.Tensor, advantages: torch.Tensor, clip_low: float,
                      clip_high: Optional[float] = None) -> torch.Tensor:
    """The clipped surrogate per step (or per token), with DAPO's decoupled bounds ("clip-higher")::

        min( r_t A_t , clip(r_t, 1 - eps_low, 1 + eps_high) A_t ),     eps_high = eps_low unless given

    A larger ``eps_high`` lets the probability of a rewarded unlikely action grow further per update.
    """
    high = clip_low if clip_high is None else clip_high
    return torch.min(ratio * advantages, torch.clamp(ratio, 1.0 - clip_low, 1.0 + high) * advantages)


def grpo_loss(ratio: torch.Tensor, advantages: torch.Tensor, kl: Optional[torch.Tensor], clip_range: float,
              kl_coef: float, clip_range_high: Optional[float] = None,
              weights: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO's objective as a loss to minimise, averaged over steps (or tokens)::

        L = -mean_t w_t [ min( r_t A_t , clip(r_t, 1 - eps_low, 1 + eps_high) A_t ) - beta * k3_t ]

    ``w_t = 1`` unless ``weights`` are given (:func:`step_weights`). ``kl=None`` (or ``kl_coef=0``)
    leaves the KL term out. Returns ``(L, clipped-surrogate part)``.
    """
    def mean(x):
        return x.mean() if weights is None else (weights.reshape(-1, *[1] * (x.dim() - 1)) * x).mean()

    policy_loss = -mean(clipped_objective(ratio, advantages, clip_range, clip_range_high))
    if kl is None or kl_coef == 0:
        return policy_loss, policy_loss
    return policy_loss + kl_coef * mean(kl), policy_loss


def step_weights(lengths: torch.Tensor, episode: torch.Tensor) -> torch.Tensor:
    """Per-step weights that make every rollout count once, whatever its length (the sample-level
    mean of DeepSeekMath's GRPO, ``1/G sum_i 1/|o_i| sum_t``), for steps ``t`` of rollouts ``episode[t]``::

        w_t = T / (n * |o_{i(t)}|),     T = sum_i |o_i| steps of n rollouts   (so mean_t w_t = 1)

    Without them (``mean_t``, DAPO's token-level mean) a rollout weighs by its length.
    """
    return (episode.numel() / (lengths.numel() * lengths.to(torch.float32)))[episode]


# ------------------------------------------------------------------------------------------------
# the trainer
# ------------------------------------------------------------------------------------------------
class GRPOTrainer(OnlineTrainer):
    """GRPO (see the module docstring). ``GRPOTrainer(env, config=RLConfig(group_size=4, ...))``;
    ``grpo_advantage="rloo"`` makes it RLOO/LOOP (leave-one-out baselines with PPO clipping)."""

    algorithm = "grpo"
    Hyperparameters = None

    def __init__(self, env=None, config: Optional[RLConfig] = None, policy: Optional[nn.Module] = None,
                 callbacks: Optional[Iterable] = None, use_wandb: bool = False, progress_bar: bool = False):
        super().__init__(env, config, policy, callbacks, use_wandb, progress_bar)
        cfg = self.config
        policy = resolve_policy(policy, cfg, self.device, self.observation_space, self.action_space)
        # all rollouts of a sampling round are the worlds of one vector env, stepped in lock-step
        if env is None or isinstance(env, str):  # the one-env vector env the base trainer built from the id
            self.envs.close()
        self.envs = lockstep_envs(env, self.env_id, self._make_env, cfg.group_size * cfg.num_groups, self.device)
        self.num_envs = self.envs.num_envs
        self._max_steps = episode_limit(self.envs)
        first = check_shared_reset(self.envs, self.env_id or type(env).__name__)
        check_policy(policy, self.observation_space, self.action_space, self.device, example_obs=first)
        self.policy = policy
        self.discrete = isinstance(self.action_space, gym.spaces.Discrete)
        if cfg.token_level_ratios and not callable(getattr(policy, "evaluate_tokens", None)):
            raise IncompatibleError(f"token_level_ratios needs a policy that gives each action token's log-likelihood "
                                    f"(evaluate_tokens, e.g. VLAPolicy); {type(policy).__name__} has none")
        self.ref_policy = frozen_copy(policy)  # the KL anchor: the policy before training
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
            if cfg.grpo_reward == "success":
                raise ConfigError("objective_weights score rollouts by their reward terms; grpo_reward='success' "
                                  "scores them by success alone: use one or the other")

        self._tensor_actions = getattr(self.envs, "return_tensors", "numpy") == "torch"
        if isinstance(self.action_space, gym.spaces.Box):
            self._low, self._high = self.action_space.low, self.action_space.high
            self._low_t = torch.as_tensor(self._low, dtype=torch.float32, device=self.device)
            self._high_t = torch.as_tensor(self._high, dtype=torch.float32, device=self.device)

    # ------------------------------------------------------------------------------------------
    # acting
    # ------------------------------------------------------------------------------------------
    def _act(self, obs):
        actions, log_probs, _ = self.policy.act(obs)
        return actions, log_probs.reshape(-1)

    def _env_actions(self, actions: torch.Tensor):
        """What the vector env's ``step`` takes: tensors for a torch env (no copy to the host), else numpy."""
        if self.discrete:
            actions = actions.reshape(-1).long()
        else:
            actions = torch.clamp(actions, self._low_t, self._high_t)
        return actions if self._tensor_actions else actions.cpu().numpy()

    @without_distribution_checks
    def predict(self, obs, deterministic: bool = True):
        action = self.policy.predict(obs, deterministic=deterministic)
        if not self.discrete and isinstance(self.action_space, gym.spaces.Box):
            action = np.clip(action, self._low, self._high)
        return action

    # ------------------------------------------------------------------------------------------
    # collecting groups of rollouts
    # ------------------------------------------------------------------------------------------
    def _round(self) -> GroupRollouts:
        """One sampling round: ``num_groups`` new seeds, ``group_size`` worlds each."""
        cfg = self.config
        seeds = np.repeat(self.seed_generator.integers(0, 2**31 - 1, size=cfg.num_groups), cfg.group_size)
        rollouts = collect_groups(self.envs, self._act, seeds.tolist(), self.device, self._max_steps,
                                  self._env_actions, objective_names=self.objective_names,
                                  want_success=cfg.grpo_reward == "success")
        for ret, length in zip(rollouts.returns.tolist(), rollouts.lengths.tolist()):
            self.record_episode(float(ret), int(length))
        return rollouts

    def _scores(self, rollouts: GroupRollouts) -> torch.Tensor:
        """``(G, K)`` scores (``(G, K, M)`` with objective weights)."""
        K = self.config.group_size
        if self.objective_names:
            return rollouts.term_returns.float().reshape(-1, K, len(self.objective_names))
        return rollout_scores(rollouts.returns, rollouts.success, self.config.grpo_reward).float().reshape(-1, K)

    @without_distribution_checks
    @torch.no_grad()
    def collect(self) -> int:
        cfg = self.config
        kept, steps, rounds, seen = [], 0, 0, 0
        while True:
            rollouts = self._round()
            rounds += 1
            steps += int(rollouts.lengths.sum())
            groups = rollouts.num_rollouts // cfg.group_size
            seen += groups
            if not cfg.dynamic_sampling:
                kept.append(rollouts)
                break
            keep = informative_groups(self._scores(rollouts))
            have = sum(p.num_rollouts for p in kept) // cfg.group_size
            keep &= torch.cumsum(keep.long(), 0) <= cfg.num_groups - have  # no more than needed
            if bool(keep.any()):
                kept.append(rollouts.select(keep.repeat_interleave(cfg.group_size)))
            have = sum(p.num_rollouts for p in kept) // cfg.group_size
            if have >= cfg.num_groups or rounds >= cfg.dynamic_sampling_rounds:
                break
        self._rollouts = concat_rollouts(kept) if kept else None
        self._sampling = {"sampling_rounds": float(rounds),
                          "kept_groups": float(sum(p.num_rollouts for p in kept) // cfg.group_size),
                          "sampled_groups": float(seen)}
        return steps

    # ------------------------------------------------------------------------------------------
    # learning
    # ------------------------------------------------------------------------------------------
    def advantages(self, rollouts: GroupRollouts) -> torch.Tensor:
        """One advantage per rollout, ``(n,)`` (step 2 of the module docstring)."""
        cfg, scores = self.config, self._scores(rollouts)
        if self.objective_names:
            return combine_objectives(scores, self._weights, advantage=cfg.grpo_advantage).reshape(-1)
        if cfg.grpo_advantage == "rloo":
            return leave_one_out_advantages(scores).reshape(-1)
        return group_relative_advantages(scores).reshape(-1)

    def _log_probs(self, policy, obs, actions, with_entropy: bool):
        """``log pi`` per step ``(B,)`` or per token ``(B, D)`` (``token_level_ratios``), and the entropy."""
        if self.config.token_level_ratios:
            log_probs, entropy = policy.evaluate_tokens(obs, actions)
            return log_probs, entropy.reshape(-1)
        if not with_entropy:
            return policy.log_prob(obs, actions).reshape(-1), None
        log_probs, entropy, _ = policy.evaluate_actions(obs, actions)
        return log_probs.reshape(-1), entropy.reshape(-1)

    @torch.no_grad()
    def _all_log_probs(self, policy, obs, actions) -> torch.Tensor:
        size = actions.shape[0]
        return torch.cat([self._log_probs(policy, index_obs(obs, idx), actions[idx], False)[0]
                          for idx in torch.arange(size, device=self.device).split(4096)])

    @without_distribution_checks
    def learn(self) -> dict:
        cfg, data = self.config, self._rollouts
        self._rollouts = None
        self.iteration += 1
        metrics = {"iteration": float(self.iteration), **self._sampling}
        if data is None:  # dynamic sampling found no informative group: nothing to learn from
            return metrics
        returns = data.returns.float()
        metrics["mean_reward"] = float(returns.mean())
        metrics["group_reward_std"] = float(returns.reshape(-1, cfg.group_size).std(dim=1).mean())
        if data.success is not None:
            metrics["success_rate"] = float(data.success.mean())
        obs, actions = data.obs, data.actions
        advantages = self.advantages(data).to(self.device)[data.episode]
        # the rollout's log pi_old per step; per token it is recomputed (same policy, no update yet)
        old_log_probs = self._all_log_probs(self.policy, obs, actions) if cfg.token_level_ratios else data.log_probs
        use_kl = cfg.kl_coef > 0
        ref_log_probs = self._all_log_probs(self.ref_policy, obs, actions) if use_kl else None
        if cfg.token_level_ratios:
            advantages = advantages[:, None]  # every token of a step shares the step's advantage
        weights = step_weights(data.lengths, data.episode) if cfg.grpo_loss_mean == "rollout" else None
        size = actions.shape[0]
        batch = min(cfg.batch_size, size)
        high = cfg.clip_range if cfg.clip_range_high is None else cfg.clip_range_high
        sums = {k: torch.zeros(()) for k in ("policy_loss", "kl", "entropy", "clip_fraction")}
        updates = 0
        for _ in range(cfg.grpo_epochs):
            order = torch.randperm(size, generator=self.minibatch_generator).to(self.device)
            for start in range(0, size, batch):
                mb = order[start:start + batch]
                log_probs, entropy = self._log_probs(self.policy, index_obs(obs, mb), actions[mb], True)
                ratio = (log_probs - old_log_probs[mb]).exp()
                kl = k3_kl(log_probs, ref_log_probs[mb]) if use_kl else None
                loss, policy_loss = grpo_loss(ratio, advantages[mb], kl, cfg.clip_range, cfg.kl_coef, high,
                                              None if weights is None else weights[mb])
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(self._params, cfg.ppo_max_grad_norm)
                self.optimizer.step()
                with torch.no_grad():
                    sums["policy_loss"] += policy_loss.detach().cpu()
                    if kl is not None:
                        sums["kl"] += kl.mean().detach().cpu()
                    sums["entropy"] += entropy.mean().detach().cpu()
                    sums["clip_fraction"] += ((ratio < 1 - cfg.clip_range) | (ratio > 1 + high)).float().mean().cpu()
                updates += 1
        metrics.update({k: float(v) / max(updates, 1) for k, v in sums.items()})
        return metrics

    # ------------------------------------------------------------------------------------------
    # stopping and checkpoints
    # ------------------------------------------------------------------------------------------
    def _is_done(self) -> bool:
        return self.iteration >= self.config.num_iterations or self.global_step >= self.config.total_timesteps

    def extra_state(self) -> dict:
        env = get_env_state(self.envs)  # (every round resets its worlds; this keeps e.g. a curriculum's difficulty)
        return {**super().extra_state(), "iteration": self.iteration, **({} if env is None else {"env": env})}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        self.iteration = int(state.get("iteration", 0))
        restore_env_state(self.envs, state.get("env"), self.algorithm)
