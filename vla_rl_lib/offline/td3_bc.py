"""TD3+BC: TD3 with a behaviour-cloning term (Fujimoto & Gu, "A Minimalist Approach to Offline
Reinforcement Learning", NeurIPS 2021).

TD3+BC changes two things in TD3 (Fujimoto et al., 2018) to make it work offline:

1. the actor maximises ``lambda * Q(s, pi(s))`` while staying close to the data action,

       L_actor = -lambda * mean_B Q_1(s, pi(s)) + mean_B (pi(s) - a)^2,
       lambda  = alpha / mean_B |Q_1(s, pi(s))|      (not differentiated),

   so ``alpha`` trades RL against behaviour cloning independently of the scale of Q;
2. states are normalised with the dataset's mean and standard deviation (``std + 1e-3``).

Everything else is TD3:

* twin critics trained on the clipped double-Q target with target policy smoothing
  ``y = r + gamma (1 - d) min_i Q'_i(s', clip(pi'(s') + clip(eps, -c, c), low, high))``,
  ``eps ~ N(0, sigma^2)``;
* the actor and all target networks are updated once every ``policy_delay`` critic steps
  (Polyak averaging with ``tau``).

Actions are in the environment's units, as in the reference implementation (which multiplies a
tanh output by ``max_action``); ``policy_noise`` and ``noise_clip`` are fractions of the action
half-range ``(high - low) / 2`` (``max_action`` for symmetric bounds), so for D4RL locomotion
(bounds [-1, 1]) the numbers are exactly the paper's.

State normalisation: the paper always normalises states; here the ``normalize`` hyperparameter
(default ``True``) does that regardless of ``OfflineRLConfig.normalize_states`` (which also turns it
on). The statistics live in the policy (``policy.obs_mean/obs_std``), so ``trainer.policy`` takes raw
observations and can be handed to an online trainer as is.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vla_rl_lib.config import ConfigBase, hp
from vla_rl_lib.losses import critic_loss, soft_update
from vla_rl_lib.nets import DeterministicPolicy, QEnsemble, adam
from vla_rl_lib.trainer import OfflineTrainer

__all__ = ["TD3BCHyperparameters", "TD3BCTrainer", "td3_target", "critic_loss", "td3_bc_actor_loss"]

STD_EPS = 1e-3  # added to the state standard deviation, as the paper's code


@dataclass
class TD3BCHyperparameters(ConfigBase):
    alpha: float = hp(2.5, "TD3+BC: weight alpha of the Q term; lambda = alpha / mean|Q| (0 = pure BC)",
                      low=0, ui=(0.0, 10.0, 0.1))
    noise_clip: float = hp(0.5, "TD3+BC: clip c of the target policy noise (fraction of the action half-range)",
                           low=0, ui=(0.0, 1.0, 0.05))
    policy_delay: int = hp(2, "TD3+BC: critic updates per actor and target-network update", low=1, ui=(1, 10, 1))
    policy_noise: float = hp(0.2, "TD3+BC: std sigma of the target policy smoothing noise "
                                  "(fraction of the action half-range)", low=0, ui=(0.0, 1.0, 0.05))
    normalize: bool = hp(True, "TD3+BC: normalise states with the dataset mean/std (the paper does)")


# ------------------------------------------------------------------------------------------------
# losses
# ------------------------------------------------------------------------------------------------
def td3_target(rewards: torch.Tensor, dones: torch.Tensor, next_q: torch.Tensor, gamma: float) -> torch.Tensor:
    """Clipped double-Q target ``y = r + gamma * (1 - d) * min_i Q'_i(s', a~')``.

    ``next_q`` is ``(n_critics, B)``: the target critics at the smoothed target action
    ``a~' = clip(pi'(s') + clip(eps, -c, c), low, high)``.
    """
    return rewards + gamma * (1.0 - dones) * next_q.min(dim=0).values


def td3_bc_actor_loss(q_pi: torch.Tensor, pi: torch.Tensor, actions: torch.Tensor, alpha: float):
    """``L_pi = -lambda * mean_B Q(s, pi(s)) + mean_B (pi(s) - a)^2`` with
    ``lambda = alpha / mean_B |Q(s, pi(s))|`` held constant (detached).

    ``(pi(s) - a)^2`` is averaged over the batch and the action dimensions (``F.mse_loss``), as in
    the paper's code. Returns ``(loss, bc_loss, lambda)``.
    """
    lmbda = alpha / q_pi.abs().mean().detach().clamp_min(1e-8)
    bc = F.mse_loss(pi, actions)
    return -lmbda * q_pi.mean() + bc, bc, lmbda


# ------------------------------------------------------------------------------------------------
# dataset helpers
# ------------------------------------------------------------------------------------------------
# ------------------------------------------------------------------------------------------------
# trainer
# ------------------------------------------------------------------------------------------------
class TD3BCTrainer(OfflineTrainer):
    """TD3+BC (see the module docstring).

    Example::

        trainer = TD3BCTrainer(obs_dim=11, action_dim=3, config=OfflineRLConfig(), alpha=2.5)
        trainer.train(buffer)
        trainer.evaluate(num_episodes=10)

    Logged metrics: ``q_loss`` (both critics), ``policy_loss``, ``bc_loss``, ``lambda`` and
    ``q_mean`` (mean of ``Q_1(s, pi(s))``). Actor metrics are those of the latest actor update
    (the actor is updated every ``policy_delay`` steps).
    """

    algorithm = "td3_bc"
    Hyperparameters = TD3BCHyperparameters

    def __init__(self, obs_dim: int, action_dim: int, config=None, callbacks=None, use_wandb: bool = False,
                 progress_bar: bool = False, **hparams):
        super().__init__(obs_dim, action_dim, config, callbacks, use_wandb, progress_bar, **hparams)
        cfg, dev = self.config, self.device
        hidden = (cfg.hidden_dim, cfg.hidden_dim)
        self.policy = DeterministicPolicy(self.obs_dim, self.action_dim, hidden).to(dev)
        self.actor_target = copy.deepcopy(self.policy).requires_grad_(False)
        self.critic = QEnsemble(self.obs_dim, self.action_dim, hidden, n=2).to(dev)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_optimizer = adam(self.policy.parameters(), cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.critic_optimizer = adam(self.critic.parameters(), cfg.learning_rate, weight_decay=cfg.weight_decay)
        # the buffer stores observations already normalised (OfflineReplayBuffer(normalize_states=True))
        self._prenormalized = False
        self._actor_metrics: dict = {}

    # -- dataset --------------------------------------------------------------------------------
    def attach_buffer(self, buffer) -> None:
        """Check sizes, then take the action bounds and the state normaliser from the dataset."""
        super().attach_buffer(buffer)
        self._prenormalized = self.fit_policy_to_dataset(self.policy, buffer,
                                                         self.hparams.normalize or self.config.normalize_states)
        self.actor_target.set_obs_normalization(self.policy.obs_mean, self.policy.obs_std)
        self.actor_target.set_action_bounds(self.policy.action_low, self.policy.action_high)

    def _normalized(self, obs: torch.Tensor) -> torch.Tensor:
        return obs if self._prenormalized else self.policy.normalize(obs)

    # -- one gradient step ----------------------------------------------------------------------
    def update(self, batch: dict) -> dict:
        hp_, cfg = self.hparams, self.config
        obs = self._normalized(batch["observations"])
        next_obs = self._normalized(batch["next_observations"])
        actions, rewards, dones = batch["actions"], batch["rewards"], batch["dones"]
        policy, low, high = self.policy, self.policy.action_low, self.policy.action_high
        half_range = 0.5 * (high - low)

        # critic: clipped double Q with target policy smoothing
        with torch.no_grad():
            noise = (torch.randn_like(actions) * hp_.policy_noise).clamp(-hp_.noise_clip, hp_.noise_clip)
            next_actions = self.actor_target.scale_action(self.actor_target.net(next_obs))
            next_actions = torch.max(torch.min(next_actions + noise * half_range, high), low)
            target = td3_target(rewards, dones, self.critic_target(next_obs, next_actions), cfg.discount_gamma)
        q = self.critic(obs, actions)
        q_loss = critic_loss(q, target)
        self.critic_optimizer.zero_grad(set_to_none=True)
        q_loss.backward()
        self.critic_optimizer.step()

        # delayed actor and target updates (self.global_step counts steps before this one)
        if (self.global_step + 1) % hp_.policy_delay == 0:
            pi = policy.scale_action(policy.net(obs))
            self.critic.requires_grad_(False)  # the actor loss moves only the actor
            q_pi = self.critic(obs, pi, members=slice(0, 1))[0]  # Q_1 only
            loss, bc, lmbda = td3_bc_actor_loss(q_pi, pi, actions, hp_.alpha)
            self.actor_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.critic.requires_grad_(True)
            self.actor_optimizer.step()
            soft_update(self.critic_target, self.critic, cfg.tau)
            soft_update(self.actor_target, self.policy, cfg.tau)
            self._actor_metrics = {"policy_loss": loss.detach(), "bc_loss": bc.detach(),
                                   "lambda": lmbda.detach(), "q_mean": q_pi.detach().mean()}
        return {"q_loss": q_loss.detach(), **self._actor_metrics}
