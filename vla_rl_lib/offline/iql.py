"""Implicit Q-Learning (IQL; Kostrikov, Nair and Levine, 2021, "Offline Reinforcement Learning with
Implicit Q-Learning").

IQL never asks the critic about actions that are not in the dataset. It learns

1. a state value ``V(s)`` by *expectile regression* on the (target) Q-values of dataset actions,
   an upper expectile (``tau > 0.5``) approximating the best action *supported by the data*:

       L_V = E_(s,a)~D [ L2_tau( min_i Q_target_i(s, a) - V(s) ) ],   L2_tau(u) = |tau - 1(u < 0)| u^2

2. twin Q-functions by a Bellman backup *through V* (no max over actions, no policy samples):

       L_Q = E_(s,a,r,s',d)~D [ sum_i ( r + gamma (1 - d) V(s') - Q_i(s, a) )^2 ]

3. the policy by advantage-weighted regression (AWR) onto dataset actions:

       L_pi = E_(s,a)~D [ -min(exp(beta * (Q_target(s, a) - V(s))), 100) * log pi(a | s) ]

   with ``beta`` the ``temperature`` (a deterministic policy replaces ``-log pi`` by ``||pi(s) - a||^2``).

and moves the target critic by Polyak averaging, ``Q_target <- tau_polyak Q + (1 - tau_polyak) Q_target``.

Implementation details follow CORL's single-file IQL (Tarasov et al.): a Gaussian policy with a
tanh-squashed mean and state-independent log std, optional actor dropout, a cosine schedule of the
actor's learning rate over the whole run, ``V(s')`` taken before the value step, and the weight
clip at 100. Critics and value see ``policy.normalize(obs)`` and actions rescaled to [-1, 1].
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from vla_rl_lib.config import ConfigBase, OfflineRLConfig, hp
from vla_rl_lib.errors import ConfigError
from vla_rl_lib.losses import critic_loss, soft_update
from vla_rl_lib.nets import DeterministicPolicy, GaussianPolicy, Policy, QEnsemble, ValueNetwork, adam
from vla_rl_lib.trainer import ActorCriticOfflineTrainer

__all__ = ["IQLHyperparameters", "IQLTrainer", "expectile_loss", "q_loss", "advantage_weights", "awr_policy_loss"]


# ------------------------------------------------------------------------------------------------
# the losses
# ------------------------------------------------------------------------------------------------

def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """Asymmetric squared loss of expectile regression, averaged over the batch.

    ``L2_tau(u) = |tau - 1(u < 0)| * u^2`` with ``u = Q(s, a) - V(s)``: positive errors (V below Q)
    weigh ``tau``, negative ones ``1 - tau``, so for ``tau > 0.5`` V(s) estimates an upper expectile
    of Q(s, a) over the dataset's actions (``tau = 0.5`` is plain mean-squared regression).
    """
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff.pow(2)).mean()


def q_loss(q_values: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """TD regression of every critic onto one target through V (the shared :func:`~vla_rl_lib.losses.critic_loss`).

    ``L_Q = sum_i mean_B (Q_i(s, a) - y)^2`` with ``y = r + gamma (1 - d) V(s')``;
    ``q_values`` is ``(n_critics, B)``, ``target`` is ``(B,)`` and carries no gradient.
    """
    return critic_loss(q_values, target)


def advantage_weights(advantages: torch.Tensor, temperature: float, max_weight: float = 100.0) -> torch.Tensor:
    """Per-sample weights of advantage-weighted regression: ``w = min(exp(beta * A), max_weight)``."""
    return torch.exp(temperature * advantages.detach()).clamp(max=max_weight)


def awr_policy_loss(bc_losses: torch.Tensor, advantages: torch.Tensor, temperature: float,
                    max_weight: float = 100.0) -> torch.Tensor:
    """Advantage-weighted regression: ``L_pi = mean_B[ min(exp(beta * A), max_weight) * l_bc ]``.

    ``bc_losses`` is the per-sample behaviour-cloning loss ``l_bc = -log pi(a|s)`` (or
    ``||pi(s) - a||^2`` for a deterministic policy), ``A = Q(s, a) - V(s)`` the advantage (no
    gradient), ``beta`` the temperature. Actions better than V(s) are imitated more strongly.
    """
    return (advantage_weights(advantages, temperature, max_weight) * bc_losses).mean()


# ------------------------------------------------------------------------------------------------
# the trainer
# ------------------------------------------------------------------------------------------------

@dataclass
class IQLHyperparameters(ConfigBase):
    """IQL's own settings (the shared ones live in :class:`OfflineRLConfig`)."""

    expectile: float = hp(0.7, "expectile tau of the value regression (0.5: mean; ->1: max over data actions)",
                          low=0, high=1, low_open=True, high_open=True, ui=(0.5, 0.99, 0.01))
    temperature: float = hp(3.0, "inverse temperature beta of the advantage weights exp(beta*A)",
                            low=0, low_open=True, ui=(0.1, 10.0, 0.1))
    max_weight: float = hp(100.0, "clip of the advantage weights exp(beta*A)", low=0, low_open=True)
    deterministic_policy: bool = hp(False, "deterministic tanh policy with squared-error regression "
                                           "instead of a Gaussian with log-likelihood")
    actor_dropout: Optional[float] = hp(None, "dropout rate of the actor's hidden layers (None: no dropout)",
                                        low=0, high=1, high_open=True, nullable=True)
    actor_lr_schedule: str = hp("cosine", "actor learning-rate schedule over the run", choices=("cosine", "constant"))
    num_critics: int = hp(2, "number of Q-functions (the value regresses on their minimum)", low=1, ui=(1, 10, 1))


class IQLTrainer(ActorCriticOfflineTrainer):
    """Implicit Q-Learning (see the module docstring for the equations).

    ``IQLTrainer(obs_dim=11, action_dim=3, config=config, expectile=0.7, temperature=3.0)``;
    ``trainer.train(buffer)``; ``trainer.policy`` acts on raw observations. ``policy=`` hands in the
    actor (stage 3 of the VLA recipe: a ``VLAPolicy`` reading images and instructions, built by
    :func:`vla_rl_lib.vla.pipeline.iql_from_model`; the critics still read the state vectors).
    """

    algorithm = "iql"
    Hyperparameters = IQLHyperparameters

    def __init__(self, obs_dim: int, action_dim: int, config: Optional[OfflineRLConfig] = None, callbacks=None,
                 use_wandb: bool = False, progress_bar: bool = False, policy: Optional[nn.Module] = None, **hparams):
        super().__init__(obs_dim, action_dim, config, callbacks, use_wandb, progress_bar, **hparams)
        cfg, hpar = self.config, self.hparams
        hidden = (cfg.hidden_dim, cfg.hidden_dim)
        if policy is not None:
            actor: Policy = policy
        elif cfg.model_path:
            raise ConfigError(f"config.model_path={cfg.model_path!r} is set but no policy was given: trainers do not "
                              "load models themselves; use vla_rl_lib.vla.pipeline.iql_from_model(model_path, config) "
                              "or `vla-rl train iql --model_path`")
        elif hpar.deterministic_policy:
            actor = DeterministicPolicy(obs_dim, action_dim, hidden)
        else:
            actor = GaussianPolicy(obs_dim, action_dim, hidden, activation=nn.ReLU, tanh_mean=True,
                                   ortho_init=False, dropout=hpar.actor_dropout or 0.0)
        self.actor = actor.to(self.device)
        self.qf = QEnsemble(obs_dim, action_dim, hidden, n=hpar.num_critics).to(self.device)
        self.qf_target = copy.deepcopy(self.qf).requires_grad_(False)
        self.vf = ValueNetwork(obs_dim, hidden).to(self.device)
        self.actor_optimizer = adam(self.actor.parameters(), cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.q_optimizer = adam(self.qf.parameters(), cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.v_optimizer = adam(self.vf.parameters(), cfg.learning_rate, weight_decay=cfg.weight_decay)
        if hpar.actor_lr_schedule == "cosine":
            self.actor_lr_schedule = torch.optim.lr_scheduler.CosineAnnealingLR(self.actor_optimizer, self.total_steps)
        else:
            self.actor_lr_schedule = None

    # -- one gradient step ----------------------------------------------------------------------
    def update(self, batch: dict) -> dict:
        cfg, hpar = self.config, self.hparams
        obs_raw = self.raw_observations(batch["observations"])
        obs = self.actor.normalize(obs_raw)
        next_obs = self.actor.normalize(self.raw_observations(batch["next_observations"]))
        actions = batch["actions"]
        unit_actions = self.actor.unscale_action(actions)
        rewards, dones = batch["rewards"], batch["dones"]

        with torch.no_grad():
            target_q = self.qf_target(obs, unit_actions).min(dim=0).values
            next_v = self.vf(next_obs)

        # 1. value: expectile regression on the target critics' minimum
        v = self.vf(obs)
        advantage = target_q - v
        v_loss = expectile_loss(advantage, hpar.expectile)
        self.v_optimizer.zero_grad(set_to_none=True)
        v_loss.backward()
        self.v_optimizer.step()

        # 2. critics: Bellman backup through V(s')
        td_target = rewards + cfg.discount_gamma * (1.0 - dones) * next_v
        qs = self.qf(obs, unit_actions)
        loss_q = q_loss(qs, td_target)
        self.q_optimizer.zero_grad(set_to_none=True)
        loss_q.backward()
        self.q_optimizer.step()

        # 3. policy: advantage-weighted regression onto the dataset's actions
        if hpar.deterministic_policy:
            bc = (self.actor.unit_action(obs_raw) - unit_actions).pow(2).sum(-1)
        else:
            actor_obs = obs_raw
            if hasattr(self.actor, "obs_from_batch"):  # image + instruction actors (VLAPolicy)
                actor_obs = dict(self.actor.obs_from_batch(batch), state=obs_raw)
            bc = -self.actor.log_prob(actor_obs, actions)
        policy_loss = awr_policy_loss(bc, advantage, hpar.temperature, hpar.max_weight)
        self.actor_optimizer.zero_grad(set_to_none=True)
        policy_loss.backward()
        self.actor_optimizer.step()
        if self.actor_lr_schedule is not None:
            self.actor_lr_schedule.step()

        # 4. target critics
        soft_update(self.qf_target, self.qf, cfg.tau)

        adv = advantage.detach()
        return {"v_loss": v_loss.detach(), "q_loss": loss_q.detach(), "policy_loss": policy_loss.detach(),
                "mean_advantage": adv.mean(), "v_mean": v.detach().mean(), "q_mean": qs.detach().mean()}
