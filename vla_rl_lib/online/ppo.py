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
from vla_rl_lib.envs.state import as_checkpoint_value, from_checkpoint_value, get_env_state, restore_env_state
from vla_rl_lib.errors import IncompatibleError
from vla_rl_lib.losses import clip_grad_norm
from vla_rl_lib.nets import ValueNetwork, without_distribution_checks
from vla_rl_lib.online.rollout import (autoreset_mode, check_policy, compute_gae, EpisodeStats, explained_variance,
                                       final_observations, holds_tensors, index_obs, make_adam, obs_to_tensor,
                                       resolve_policy, RewardScaler, RolloutBuffer, rollout_envs, RunningMeanStd,
                                       slice_obs, to_device)
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
    """PPO (see the module docstring). ``PPOTrainer(env, config=RLConfig(...), policy=None)``."""

    algorithm = "ppo"
    Hyperparameters = None

    def __init__(self, env=None, config: Optional[RLConfig] = None, policy: Optional[nn.Module] = None,
                 callbacks: Optional[Iterable] = None, use_wandb: bool = False, progress_bar: bool = False):
        super().__init__(env, config, policy, callbacks, use_wandb, progress_bar)
        self.envs = rollout_envs(self.envs, env, self.env_id, self._make_env)
        cfg = self.config
        policy = resolve_policy(policy, cfg, self.device, self.observation_space, self.action_space)
        self.episodes = EpisodeStats(self.num_envs, self.device)
        self._reset_envs()
        check_policy(policy, self.observation_space, self.action_space, self.device,
                     example_obs=index_obs(self._next_obs, [0]))
        self.policy = policy
        self.discrete = isinstance(self.action_space, gym.spaces.Discrete)

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

        self.minibatch_generator = torch.Generator().manual_seed(cfg.seed)
        action_shape = () if self.discrete else tuple(self.action_space.shape)
        self.buffer = RolloutBuffer(cfg.rollout_steps, self.num_envs, action_shape, self.discrete, self.device)
        self._autoreset = autoreset_mode(self.envs)
        if isinstance(self.action_space, gym.spaces.Box):
            self._low, self._high = self.action_space.low, self.action_space.high
            self._low_t = torch.as_tensor(self._low, dtype=torch.float32, device=self.device)
            self._high_t = torch.as_tensor(self._high, dtype=torch.float32, device=self.device)

    # ------------------------------------------------------------------------------------------
    # acting
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

    def _env_actions(self, actions: torch.Tensor):
        """The actions the env is stepped with: tensors on the device for an env that returns tensors
        (no host copy), else numpy."""
        if self._tensor_env:
            return actions.reshape(-1) if self.discrete else torch.clamp(actions, self._low_t, self._high_t)
        a = actions.cpu().numpy()
        if self.discrete:
            return a.reshape(-1).astype(np.int64)
        return np.clip(a, self._low, self._high)

    @without_distribution_checks
    def predict(self, obs, deterministic: bool = True):
        action = self.policy.predict(obs, deterministic=deterministic)
        if not self.discrete and isinstance(self.action_space, gym.spaces.Box):
            action = np.clip(action, self._low, self._high)
        return action

    # ------------------------------------------------------------------------------------------
    # collecting a rollout
    # ------------------------------------------------------------------------------------------
    def _reset_envs(self) -> None:
        """Start fresh episodes (at construction and after loading a checkpoint)."""
        self._next_obs, _ = self.envs.reset(seed=self.config.seed + self.global_step)
        self._tensor_env = holds_tensors(self._next_obs)
        # NEXT_STEP: the next step is a reset step
        self._after_done = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        self.episodes.reset()
        if getattr(self, "reward_scaler", None) is not None:
            self.reward_scaler.returns.zero_()

    @without_distribution_checks
    @torch.inference_mode()
    def collect(self) -> int:
        cfg, buf = self.config, self.buffer
        if self._next_obs is None:
            self._reset_envs()
        if cfg.ppo_anneal_lr:  # linear annealing to 0 over total_timesteps
            frac = max(1.0 - self.global_step / cfg.total_timesteps, 0.0)
            for group in self.optimizer.param_groups:
                group["lr"] = frac * cfg.learning_rate
        if self.obs_rms is not None:  # freeze the statistics for this rollout and its update
            self.policy.set_obs_normalization(self.obs_rms.mean.float(), self.obs_rms.std().float())
        buf.reset()
        final_values = torch.zeros_like(buf.values)
        has_final = torch.zeros_like(buf.valid)
        same_step = self._autoreset == "same_step"
        # A separate critic does not act: V(s_t) of the whole rollout is computed in one pass after it
        # (the same network and parameters as during the rollout), not in one small pass per step.
        late_values = self.value_net is not None
        obs = self._next_obs
        # Everything below stays on the device: an env that returns tensors is stepped with tensors,
        # and a numpy env's rewards and flags are copied to the device once per step.
        for t in range(cfg.rollout_steps):
            obs_t = obs_to_tensor(obs, self.device)
            actions, log_probs, values = self._act(obs_t, with_value=not late_values)
            next_obs, rewards, terminated, truncated, infos = self.envs.step(self._env_actions(actions))
            rewards = to_device(rewards, self.device, torch.float32)
            terminated = to_device(terminated, self.device, torch.bool)
            truncated = to_device(truncated, self.device, torch.bool)
            dones = terminated | truncated
            valid = ~self._after_done
            if self.obs_rms is not None:
                self.obs_rms.update(obs_t, valid)
            self.episodes.step(rewards, dones, valid)  # reset steps are not transitions: no length
            train_rewards = rewards if self.reward_scaler is None else self.reward_scaler(rewards, dones, valid)
            if same_step:
                cut = truncated & ~terminated
                if bool(cut.any()):  # bootstrap from the true final observation (one sync per step)
                    cut = torch.nonzero(cut).squeeze(1)
                    final = final_observations(infos, cut)
                    final_values[t, cut] = self._value(obs_to_tensor(final, self.device))
                    has_final[t, cut] = True
            else:
                self._after_done = dones
                dones = dones | ~valid  # the reset step ends nothing that follows it
            buf.add(obs_t, actions, log_probs, values, train_rewards, terminated & valid, dones, valid)
            obs = next_obs
        for episode_return, length in self.episodes.finished():  # one host copy per rollout
            self.record_episode(episode_return, length)
        self._next_obs = obs
        buf.finish()
        last_obs = obs_to_tensor(obs, self.device)
        if late_values:
            rollout_obs = buf.flat_obs()
            values = self._value(torch.cat([rollout_obs, last_obs]))
            buf.values.copy_(values[:len(rollout_obs)].reshape(buf.values.shape))
            last_values = values[len(rollout_obs):]
        else:
            last_values = self._value(last_obs)
        buf.next_values[:-1] = buf.values[1:]
        buf.next_values[-1] = last_values
        buf.next_values = torch.where(has_final, final_values, buf.next_values)
        return cfg.rollout_steps * self.num_envs

    # ------------------------------------------------------------------------------------------
    # learning from it
    # ------------------------------------------------------------------------------------------
    @without_distribution_checks
    def learn(self) -> dict:
        cfg, buf = self.config, self.buffer
        advantages, returns = compute_gae(buf.rewards, buf.values, buf.next_values, buf.terminations, buf.dones,
                                          cfg.discount_gamma, cfg.ppo_gae_lambda)
        n = buf.steps * buf.num_envs
        data = {"obs": buf.flat_obs(), "actions": buf.actions.reshape(n, *buf.actions.shape[2:]),
                "old_log_probs": buf.log_probs.reshape(n), "old_values": buf.values.reshape(n),
                "advantages": advantages.reshape(n), "returns": returns.reshape(n)}
        valid = buf.valid.reshape(n)
        keep = None if bool(valid.all()) else torch.nonzero(valid).squeeze(1)
        if keep is not None:  # leave out the NEXT_STEP reset steps once
            data = {k: index_obs(v, keep) for k, v in data.items()}
        size = n if keep is None else keep.numel()
        batch = min(cfg.batch_size, size)
        # One minibatch holding every transition (the zoo's CartPole settings): its loss is a mean over
        # the same set in every epoch, so shuffling changes nothing and its advantages are normalised once.
        whole = batch >= size
        if whole and size > 1:
            data["advantages"] = normalize_advantages(data["advantages"])
        stats, log_ratios = [], []
        for _ in range(cfg.ppo_epochs):
            if whole:
                shuffled = data
            else:  # one gather per epoch; minibatches are slices of it
                order = torch.randperm(size, generator=self.minibatch_generator).to(buf.device)
                shuffled = {k: index_obs(v, order) for k, v in data.items()}
            for start in range(0, size, batch):
                mb = shuffled if whole else {k: slice_obs(v, start, start + batch) for k, v in shuffled.items()}
                adv = mb["advantages"]
                if not whole and adv.numel() > 1:  # per-minibatch advantage normalisation
                    adv = normalize_advantages(adv)
                log_probs, entropy, values = self._evaluate(mb["obs"], mb["actions"])
                log_ratio = log_probs - mb["old_log_probs"]
                ratio = log_ratio.exp()
                pg_loss = clipped_surrogate(ratio, adv, cfg.ppo_clip_range)
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
    # checkpoints: networks, optimiser, normalisers and generators are found automatically. The
    # environment's state (vla_rl_lib.envs.state) and the rollout's place in it are saved here, so
    # a resumed run continues its episodes exactly; an env whose state cannot be saved starts fresh ones.
    # ------------------------------------------------------------------------------------------
    def extra_state(self) -> dict:
        # (an env caught part-way through a rollout, by Ctrl-C, is ahead of _next_obs: not saved)
        env = None if self._next_obs is None or self._mid_rollout else get_env_state(self.envs)
        if env is None:
            return super().extra_state()
        return {**super().extra_state(), "env": env, "rollout": as_checkpoint_value({
            "next_obs": self._next_obs, "after_done": self._after_done,
            "episode_returns": self.episodes.returns, "episode_lengths": self.episodes.lengths})}

    def load_extra_state(self, state: dict) -> None:
        super().load_extra_state(state)
        if not restore_env_state(self.envs, state.get("env"), self.algorithm):
            self._next_obs = None  # fresh episodes at the next collect (reset with seed + global_step)
            return
        rollout = from_checkpoint_value(state["rollout"])
        self._next_obs = rollout["next_obs"]
        self._after_done = rollout["after_done"].to(self.device)
        self.episodes.returns.copy_(rollout["episode_returns"])
        self.episodes.lengths.copy_(rollout["episode_lengths"])
