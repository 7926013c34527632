"""Proximal Policy Optimization (Schulman et al., 2017), discrete and continuous actions.

Each iteration:

1. collect a rollout of ``rollout_steps`` steps in each of ``num_envs`` vector environments with the
   current policy (storing actions, log-probabilities and values);
2. compute advantages with GAE (:func:`~vla_rl_lib.online.rollout.compute_gae`), bootstrapping
   episodes cut by a time limit from their true final observation and never bootstrapping terminal
   states;
3. for ``ppo_epochs`` epochs over shuffled minibatches of ``batch_size`` transitions, minimise::

       L = L_clip + c_v * L_V - c_e * H[pi]

   with the clipped surrogate :func:`clipped_surrogate` on minibatch-normalised advantages, the
   (optionally clipped) value loss :func:`value_loss` and an entropy bonus, clipping the global
   gradient norm to ``ppo_max_grad_norm``.

The "implementation details" (Huang et al., "The 37 implementation details of PPO"; CleanRL) are
named where they happen: orthogonal initialisation (in ``nets``), Adam with ``eps=1e-5``, optional
linear learning-rate annealing (``ppo_anneal_lr``), per-minibatch advantage normalisation, value
clipping (``ppo_clip_range_vf``), global gradient clipping, optional running observation
normalisation (``ppo_normalize_obs``) and return-based reward scaling (``ppo_normalize_reward``).
The running statistics live in ``nn.Module`` buffers (and the observation statistics are copied
into the policy's own normaliser), so checkpoints and a policy handed to another trainer carry them.

Policies
--------
Without ``policy=``, PPO builds a ``CategoricalPolicy`` (Discrete actions) or a ``GaussianPolicy``
(Box actions) of two ``hidden_dim`` tanh layers and a separate ``ValueNetwork`` critic.
``policy=`` takes any object with the policy interface of :mod:`vla_rl_lib.nets`:

* IQL's ``GaussianPolicy`` and CQL's ``TanhGaussianPolicy`` are used as they are;
* a deterministic actor (TD3+BC's ``DeterministicPolicy``) is wrapped in
  :class:`~vla_rl_lib.online.rollout.GaussianExploration`: a Gaussian around its action with a
  learnable log std starting at -1 (sigma ~ 0.37 of the half action range);
* a policy with ``has_value=True`` (``VLAPolicy``: a value head on shared features) supplies the
  critic; otherwise a separate ``ValueNetwork`` is trained on ``policy.normalize(obs)``.

A policy whose actions do not fit the action space raises ``IncompatibleError``.

Checkpoints and resume
----------------------
A checkpoint also holds the environment's state (:mod:`vla_rl_lib.envs.state`: the worlds, their
step counters and pending autoresets, their random generators) with the current observation, the
running episodes' returns and lengths and the reward scaler's returns, for the kit's own
environments: the driving simulator (``DrivingEnv`` in a vector env, ``BatchedDrivingEnv`` on
either backend) and gymnasium's numpy-batched ``CartPoleVectorEnv``. A resumed run then continues
their episodes, and N steps give bit-identical weights to N/2 steps + resume + N/2 steps on the
CPU. Any other environment cannot be saved: a resumed run starts fresh episodes (reset with
``seed + global_step``), a valid continuation but not a bit-identical one.
"""
from __future__ import annotations

from typing import Iterable, Optional

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from vla_rl_lib.config import RLConfig
from vla_rl_lib.errors import IncompatibleError
from vla_rl_lib.losses import clip_grad_norm
from vla_rl_lib.nets import ValueNetwork
from vla_rl_lib.online.rollout import (check_policy, compute_gae, explained_variance, index_obs, make_adam,
                                       minibatches, resolve_policy, RewardScaler, RolloutBuffer, rollout_envs,
                                       RunningMeanStd, VectorRollout)
from vla_rl_lib.trainer import OnlineTrainer

__all__ = ["PPOTrainer", "clipped_surrogate", "value_loss"]


def clipped_surrogate(ratio: torch.Tensor, advantages: torch.Tensor, clip_range: float) -> torch.Tensor:
    """PPO's clipped surrogate, as a loss to minimise::

        L_clip = -mean_t min( r_t A_t , clip(r_t, 1 - eps, 1 + eps) A_t ),   r_t = pi(a_t|s_t) / pi_old(a_t|s_t)
    """
    unclipped = ratio * advantages
    clipped = torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range) * advantages
    return -torch.min(unclipped, clipped).mean()


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               clip_range_vf: Optional[float] = None) -> torch.Tensor:
    """Value regression to the GAE returns ``R_t``::

        L_V = mean_t (V(s_t) - R_t)^2
        clipped (``clip_range_vf = c``):  mean_t max( (V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2 )
    """
    if clip_range_vf is None:
        return F.mse_loss(values, returns)  # mean_t (V(s_t) - R_t)^2 in one op
    loss = (values - returns).pow(2)
    clipped = old_values + torch.clamp(values - old_values, -clip_range_vf, clip_range_vf)
    return torch.max(loss, (clipped - returns).pow(2)).mean()


def normalize_advantages(advantages: torch.Tensor) -> torch.Tensor:
    """Per-minibatch advantage normalisation ``(A - mean A) / (std A + 1e-8)``."""
    std, mean = torch.std_mean(advantages)
    return (advantages - mean) / (std + 1e-8)


@torch.no_grad()
def kl_and_clip_fraction(log_ratios: list, clip_range: float) -> dict:
    """Diagnostics averaged over the updates of one ``learn``, from each update's ``log r_t``:
    ``approx_kl = mean_t[(r_t - 1) - log r_t]`` (Schulman's k3 estimate of KL[pi_old || pi]) and
    the fraction of ``|r_t - 1| > clip_range``."""
    kl, clipped = [], []
    for size in sorted({x.numel() for x in log_ratios}):  # minibatches of one size stack into a matrix
        log_ratio = torch.stack([x for x in log_ratios if x.numel() == size])
        ratio = log_ratio.exp()
        kl.append(((ratio - 1) - log_ratio).mean(1))
        clipped.append(((ratio - 1).abs() > clip_range).float().mean(1))
    return {"approx_kl": torch.cat(kl).mean().item(), "clip_fraction": torch.cat(clipped).mean().item()}


class PPOTrainer(OnlineTrainer):
    """PPO (see the module docstring). ``PPOTrainer(env, config=RLConfig(...), policy=None)``.

    The hyperparameters are the ``ppo_*`` fields of :class:`~vla_rl_lib.config.RLConfig`
    (``ppo_clip_range``, ``ppo_epochs``, ``ppo_gae_lambda``, ``ppo_value_coef``, ``ppo_entropy_coef``,
    ``ppo_max_grad_norm``, ...) with ``rollout_steps``, ``num_envs``, ``batch_size``,
    ``learning_rate`` and ``discount_gamma``. Stepping the envs (both gymnasium autoreset modes,
    host/device copies) is :class:`~vla_rl_lib.online.rollout.VectorRollout`'s job.
    """

    algorithm = "ppo"
    Hyperparameters = None

    def __init__(self, env=None, config: Optional[RLConfig] = None, policy: Optional[nn.Module] = None,
                 callbacks: Optional[Iterable] = None, use_wandb: bool = False, progress_bar: bool = False):
        super().__init__(env, config, policy, callbacks, use_wandb, progress_bar)
        cfg = self.config
        self.envs = rollout_envs(self.envs, env, self.env_id, self._make_env)
        self.discrete = isinstance(self.action_space, gym.spaces.Discrete)
        policy = resolve_policy(policy, cfg, self.device, self.observation_space, self.action_space)

        # running normalisers (nn.Module buffers: saved in checkpoints)
        self.obs_rms = None
        if cfg.ppo_normalize_obs:
            if not isinstance(self.observation_space, gym.spaces.Box) or not hasattr(policy, "set_obs_normalization"):
                raise IncompatibleError("ppo_normalize_obs needs Box observations and a policy with "
                                        "set_obs_normalization (the kit's MLP policies)")
            self.obs_rms = RunningMeanStd(self.observation_space.shape).to(self.device)
        self.reward_scaler = None
        if cfg.ppo_normalize_reward:
            self.reward_scaler = RewardScaler(self.num_envs, cfg.discount_gamma).to(self.device)

        # the rollout: envs, policy samples and values into a buffer of rollout_steps x num_envs
        self.rollout = VectorRollout(self.envs, self.device, self.action_space, self.obs_rms, self.reward_scaler)
        self.rollout.reset(cfg.seed)
        check_policy(policy, self.observation_space, self.action_space, self.device,
                     example_obs=index_obs(self.rollout.next_obs, [0]))
        self.policy = policy
        action_shape = () if self.discrete else tuple(self.action_space.shape)
        self.buffer = RolloutBuffer(cfg.rollout_steps, self.num_envs, action_shape, self.discrete, self.device)

        # the critic: the policy's own value head, or a separate network on normalised observations
        if getattr(policy, "has_value", False):
            self.value_net = None
        else:
            if not (isinstance(self.observation_space, gym.spaces.Box) and len(self.observation_space.shape) == 1):
                raise IncompatibleError(
                    f"PPO needs a critic: the policy ({type(policy).__name__}) has no value head (has_value=False) "
                    f"and the kit's ValueNetwork needs flat Box observations, not {self.observation_space}")
            self.value_net = ValueNetwork(int(self.observation_space.shape[0]), hidden=(cfg.hidden_dim, cfg.hidden_dim),
                                          activation=nn.Tanh, ortho_init=True).to(self.device)
        params = [p for p in policy.parameters() if p.requires_grad]
        if self.value_net is not None:
            params += list(self.value_net.parameters())
        self._params = params
        self.optimizer = make_adam(params, cfg.learning_rate)
        self.minibatch_generator = torch.Generator().manual_seed(cfg.seed)

    # (the rollout's state under the names the trainer had before it moved there)
    @property
    def _next_obs(self):
        return self.rollout.next_obs

    @property
    def _tensor_env(self) -> bool:
        return self.rollout.tensor_env

    # ------------------------------------------------------------------------------------------
    # the networks: pi(a|s) and V(s)
    # ------------------------------------------------------------------------------------------
    def _value(self, obs) -> torch.Tensor:
        if self.value_net is None:
            return self.policy.value(obs).reshape(-1)
        return self.value_net(self.policy.normalize(obs))

    def _act(self, obs, with_value: bool = True):
        """Sample actions; return (actions, log-probabilities, values or None without ``with_value``)."""
        actions, log_probs, values = self.policy.act(obs)
        if not with_value:
            return actions, log_probs.reshape(-1), None
        if values is None or self.value_net is not None:
            values = self._value(obs)
        return actions, log_probs.reshape(-1), values.reshape(-1)

    def _evaluate(self, obs, actions):
        """(log pi(a|s), entropy, V(s)) with gradients."""
        log_probs, entropy, values = self.policy.evaluate_actions(obs, actions)
        if values is None or self.value_net is not None:
            values = self._value(obs)
        return log_probs.reshape(-1), entropy.reshape(-1), values.reshape(-1)

    def predict(self, obs, deterministic: bool = True):
        action = self.policy.predict(obs, deterministic=deterministic)
        if not self.discrete and isinstance(self.action_space, gym.spaces.Box):
            action = np.clip(action, self.action_space.low, self.action_space.high)
        return action

    # ------------------------------------------------------------------------------------------
    # 1. collect a rollout
    # ------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def collect(self) -> int:
        cfg = self.config
        if cfg.ppo_anneal_lr:  # linear annealing to 0 over total_timesteps
            frac = max(1.0 - self.global_step / cfg.total_timesteps, 0.0)
            for group in self.optimizer.param_groups:
                group["lr"] = frac * cfg.learning_rate
        if self.obs_rms is not None:  # freeze the statistics for this rollout and its update
            self.policy.set_obs_normalization(self.obs_rms.mean.float(), self.obs_rms.std().float())
        # a separate critic does not act: V(s_t) of the whole rollout comes in one pass after it
        finished = self.rollout.collect(self.buffer, self._act, self._value, late_values=self.value_net is not None,
                                        seed=cfg.seed + self.global_step)
        for episode_return, length in finished:
            self.record_episode(episode_return, length)
        return cfg.rollout_steps * self.num_envs

    # ------------------------------------------------------------------------------------------
    # 2. advantages and 3. epochs of minibatch updates
    # ------------------------------------------------------------------------------------------
    def learn(self) -> dict:
        cfg, buf = self.config, self.buffer
        advantages, returns = compute_gae(buf.rewards, buf.values, buf.next_values, buf.terminations, buf.dones,
                                          cfg.discount_gamma, cfg.ppo_gae_lambda)
        data = buf.transitions(advantages, returns)
        stats, log_ratios = [], []
        for mb in minibatches(data, cfg.batch_size, cfg.ppo_epochs, self.minibatch_generator, normalize_advantages):
            log_probs, entropy, values = self._evaluate(mb["obs"], mb["actions"])
            log_ratio = log_probs - mb["old_log_probs"]
            ratio = log_ratio.exp()
            pg_loss = clipped_surrogate(ratio, mb["advantages"], cfg.ppo_clip_range)
            v_loss = value_loss(values, mb["old_values"], mb["returns"], cfg.ppo_clip_range_vf)
            ent = entropy.mean()
            loss = pg_loss + cfg.ppo_value_coef * v_loss
            if cfg.ppo_entropy_coef:  # (a zero coefficient adds nothing to the gradient: no backward through H)
                loss = loss - cfg.ppo_entropy_coef * ent
            for param in self._params:  # the optimiser's zero_grad(set_to_none=True), without its profiler range
                param.grad = None
            loss.backward()
            clip_grad_norm(self._params, cfg.ppo_max_grad_norm)
            self.optimizer.step()
            stats.append((pg_loss.detach(), v_loss.detach(), ent.detach()))
            log_ratios.append(log_ratio.detach())
        metrics = {name: torch.stack(values).mean().item()
                   for name, values in zip(("policy_loss", "value_loss", "entropy"), zip(*stats))}
        metrics.update(kl_and_clip_fraction(log_ratios, cfg.ppo_clip_range))
        metrics["explained_variance"] = explained_variance(data["old_values"], data["returns"])
        metrics["learning_rate"] = float(self.optimizer.param_groups[0]["lr"])
        return metrics

    # ------------------------------------------------------------------------------------------
    # checkpoints: networks, optimiser, normalisers and generators are found automatically; the
    # rollout adds the environment's state and its place in it (VectorRollout.checkpoint)
    # ------------------------------------------------------------------------------------------
    def extra_state(self) -> dict:
        # (an env caught part-way through a rollout, by Ctrl-C, is ahead of the rollout: not saved)
        return {**super().extra_state(), **({} if self._mid_rollout else self.rollout.checkpoint())}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        self.rollout.restore(state, self.algorithm)
