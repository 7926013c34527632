"""Conservative Q-Learning (CQL; Kumar, Zhou, Tucker and Levine, 2020, "Conservative Q-Learning for
Offline Reinforcement Learning"), the CQL(H) variant on a SAC backbone.

Offline, a critic trained by plain Bellman backups overestimates actions the dataset never shows,
and the policy exploits exactly those errors. CQL adds a penalty that pushes Q down on actions the
policy (or chance) proposes and up on the dataset's actions:

    L_Q = sum_i [ mean_B (Q_i(s, a) - y)^2 + alpha_cql * w_min * mean_B( log sum_{a'} exp Q_i(s, a') - Q_i(s, a) ) ]

with the soft-max over actions estimated by importance sampling from ``N`` uniform actions and ``N``
policy actions at ``s`` and at ``s'`` (all scored at ``s``), each corrected by its sampling density:

    log sum exp Q(s, .) ~= logsumexp( [Q(s, a_unif) - log(0.5^|A|), Q(s, a_pi(s)) - log pi(a_pi(s)|s),
                                       Q(s, a_pi(s')) - log pi(a_pi(s')|s')] )

The rest is SAC: the target ``y = r + gamma (1 - d) min_i Q_target_i(s', a')`` with ``a'`` the
policy's mean action ``tanh(mu(s'))`` (``target_action="mean"``, d3rlpy's choice: the action the
evaluated policy takes) or a sample ``a' ~ pi(.|s')`` (``"sample"``, CORL and the authors' code),
optionally ``- alpha log pi(a'|s')`` ("backup entropy"); the policy loss
``L_pi = E[alpha log pi(a|s) - min_i Q_i(s, a)]``, ``a ~ pi(.|s)`` reparameterised, and the entropy
temperature tuned towards ``target_entropy = -|A|``: ``L_alpha = -E[log alpha (log pi(a|s) + target_entropy)]``.

With ``cql_lagrange=True`` the penalty weight becomes a Lagrange multiplier ``alpha'`` that keeps
the gap ``log sum exp Q - Q(s, a)`` near ``cql_target_action_gap``:
``L_Q += alpha' alpha_cql w_min (gap - target)``, ``L_alpha' = -alpha' alpha_cql w_min (gap - target)``.

Details follow CORL's single-file CQL and the authors' code: ``N = cql_samples = 10``, importance
sampling on, temperature 1, actions in [-1, 1] for the critics, soft target updates every step,
optional behaviour-cloning warm-up of the policy (``bc_steps``). One update steps the critics first
and then the temperature and the policy against the updated critics, as the kit's ``SACTrainer``,
Stable-Baselines3 and d3rlpy do (CORL steps the policy first).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn

from vla_rl_lib.config import ConfigBase, OfflineRLConfig, hp
from vla_rl_lib.losses import critic_loss, soft_update
from vla_rl_lib.nets import QEnsemble, adam, TanhGaussianPolicy
from vla_rl_lib.trainer import ActorCriticOfflineTrainer
from vla_rl_lib.errors import ConfigError

__all__ = ["CQLHyperparameters", "CQLTrainer", "cql_penalty", "sac_policy_loss", "entropy_temperature_loss",
           "Scalar"]


# ------------------------------------------------------------------------------------------------
# the losses
# ------------------------------------------------------------------------------------------------

def cql_penalty(q_data: torch.Tensor, q_random: torch.Tensor, q_policy: torch.Tensor, q_next_policy: torch.Tensor,
                log_pi: torch.Tensor, log_pi_next: torch.Tensor, action_dim: int,
                importance_sampling: bool = True) -> torch.Tensor:
    """The conservative gap of each critic: ``mean_B[ log sum_{a'} exp Q_i(s, a') - Q_i(s, a) ]``.

    ``q_data`` is ``(n, B)``: Q of the dataset's actions; ``q_random``, ``q_policy``,
    ``q_next_policy`` are ``(n, B, N)``: Q at ``s`` of ``N`` uniform actions in [-1, 1]^|A|, of ``N``
    policy actions sampled at ``s`` and ``N`` sampled at ``s'``; ``log_pi``/``log_pi_next`` ``(B, N)``
    their log densities. With importance sampling,

        log sum exp Q ~= logsumexp_j [ Q(s, a_j) - log mu(a_j) ]   (mu: the density a_j was drawn from)

    with ``log mu = |A| log 0.5`` for the uniform actions. Without it, the data action's Q joins the
    plain log-sum-exp (CORL's variant). Returns ``(n,)``; the loss adds ``alpha_cql * w_min`` times it.
    """
    if importance_sampling:
        log_uniform = action_dim * math.log(0.5)
        cat = torch.cat([q_random - log_uniform, q_next_policy - log_pi_next.unsqueeze(0),
                         q_policy - log_pi.unsqueeze(0)], dim=-1)
    else:
        cat = torch.cat([q_random, q_data.unsqueeze(-1), q_next_policy, q_policy], dim=-1)
    soft_max_q = torch.logsumexp(cat, dim=-1)  # (n, B)
    return (soft_max_q - q_data).mean(dim=1)


def sac_policy_loss(log_pi: torch.Tensor, q_new: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """SAC's actor loss ``L_pi = mean_B[ alpha log pi(a|s) - min_i Q_i(s, a) ]``, ``a ~ pi(.|s)`` reparameterised."""
    return (alpha * log_pi - q_new).mean()


def entropy_temperature_loss(log_alpha: torch.Tensor, log_pi: torch.Tensor, target_entropy: float) -> torch.Tensor:
    """Automatic entropy tuning: ``L_alpha = -mean_B[ log alpha * (log pi(a|s) + target_entropy) ]``."""
    return -(log_alpha * (log_pi.detach() + target_entropy)).mean()


class Scalar(nn.Module):
    """One learnable number (``log alpha``, ``log alpha'``) as a module, so checkpoints find it."""

    def __init__(self, value: float):
        super().__init__()
        self.value = nn.Parameter(torch.tensor(float(value)))

    def forward(self) -> torch.Tensor:
        return self.value


# ------------------------------------------------------------------------------------------------
# the trainer
# ------------------------------------------------------------------------------------------------

@dataclass
class CQLHyperparameters(ConfigBase):
    """CQL's own settings (the shared ones live in :class:`OfflineRLConfig`)."""

    cql_alpha: float = hp(5.0, "weight alpha of the conservative penalty", low=0, ui=(0.0, 20.0, 0.5))
    cql_samples: int = hp(10, "actions sampled per state (uniform, policy at s, policy at s') for the log-sum-exp",
                          low=1, ui=(1, 50, 1))
    min_q_weight: float = hp(1.0, "extra factor on the conservative (min-Q) term, as in the CQL authors' code", low=0)
    cql_lagrange: bool = hp(False, "tune the penalty weight as a Lagrange multiplier towards cql_target_action_gap")
    cql_target_action_gap: float = hp(10.0, "Lagrange: target value of log-sum-exp Q - Q(data) (the threshold)")
    cql_importance_sampling: bool = hp(True, "correct the log-sum-exp samples by their densities")
    actor_learning_rate: Optional[float] = hp(1e-4, "actor (and entropy temperature) learning rate "
                                                    "(None: config.learning_rate)", low=0, low_open=True, nullable=True)
    alpha: Optional[float] = hp(None, "fixed SAC entropy temperature (None: automatic tuning)", low=0, nullable=True)
    target_entropy: Optional[float] = hp(None, "entropy target of automatic tuning (None: -action_dim)", nullable=True)
    target_action: str = hp("mean", "the policy action of the TD target at s': 'mean' (tanh of the Gaussian's mean, "
                                     "the action evaluation takes; d3rlpy) or 'sample' (a' ~ pi(.|s'); CORL, the "
                                     "authors' code)", choices=("mean", "sample"))
    backup_entropy: bool = hp(False, "subtract alpha * log pi(a'|s') in the TD target (SAC's soft backup)")
    bc_steps: int = hp(0, "first steps in which the actor does behaviour cloning instead of maximising Q", low=0)
    num_critics: int = hp(2, "number of Q-functions (targets and policy use their minimum)", low=1, ui=(1, 10, 1))


class CQLTrainer(ActorCriticOfflineTrainer):
    """Conservative Q-Learning on SAC (see the module docstring for the equations).

    ``CQLTrainer(obs_dim, action_dim, config=config, cql_alpha=5.0)``; ``trainer.train(buffer)``.
    """

    algorithm = "cql"
    compile_retains_graphs = True  # compiled, its temperature and actor losses share one forward (compile.py)
    Hyperparameters = CQLHyperparameters

    def __init__(self, obs_dim: int, action_dim: int, config: Optional[OfflineRLConfig] = None, callbacks=None,
                 use_wandb: bool = False, progress_bar: bool = False, **hparams):
        super().__init__(obs_dim, action_dim, config, callbacks, use_wandb, progress_bar, **hparams)
        cfg, hpar = self.config, self.hparams
        if hpar.cql_lagrange and hpar.cql_alpha == 0:
            raise ConfigError("CQLHyperparameters.cql_lagrange=True needs cql_alpha > 0 (it scales the multiplier); "
                              "set cql_alpha=1.0 or turn cql_lagrange off")
        hidden = (cfg.hidden_dim, cfg.hidden_dim)
        actor_lr = hpar.actor_learning_rate or cfg.learning_rate
        self.actor = TanhGaussianPolicy(obs_dim, action_dim, hidden).to(self.device)
        self.qf = QEnsemble(obs_dim, action_dim, hidden, n=hpar.num_critics).to(self.device)
        self.qf_target = copy.deepcopy(self.qf).requires_grad_(False)
        self.actor_optimizer = adam(self.actor.parameters(), actor_lr, weight_decay=cfg.weight_decay)
        self.q_optimizer = adam(self.qf.parameters(), cfg.learning_rate, weight_decay=cfg.weight_decay)
        self.target_entropy = float(-action_dim if hpar.target_entropy is None else hpar.target_entropy)
        self.log_alpha = Scalar(0.0 if hpar.alpha is None else math.log(max(hpar.alpha, 1e-30))).to(self.device)
        self.alpha_optimizer = adam(self.log_alpha.parameters(), actor_lr) if hpar.alpha is None else None
        self.log_alpha_prime = Scalar(0.0).to(self.device)
        self.alpha_prime_optimizer = (adam(self.log_alpha_prime.parameters(), cfg.learning_rate)
                                      if hpar.cql_lagrange else None)
        self._random_generator = None

    # -- one gradient step ----------------------------------------------------------------------
    def update(self, batch: dict) -> dict:
        cfg, hpar = self.config, self.hparams
        n_samples, n_critics = hpar.cql_samples, self.qf.n
        obs_raw = self.raw_observations(batch["observations"])
        next_raw = self.raw_observations(batch["next_observations"])
        obs, next_obs = self.actor.normalize(obs_raw), self.actor.normalize(next_raw)
        actions = self.actor.unscale_action(batch["actions"])
        rewards, dones = batch["rewards"], batch["dones"]
        batch_size, act_dim = actions.shape

        alpha = self.log_alpha().exp().detach()  # this step's losses use alpha before its update

        # 1. TD target from the target critics at the policy's action for s' (its mean, or a sample)
        with torch.no_grad():
            next_actions, next_log_pi = self.actor.sample(next_raw, deterministic=hpar.target_action == "mean")
            target_q = self.qf_target(next_obs, next_actions).min(dim=0).values
            if hpar.backup_entropy:
                target_q = target_q - alpha * next_log_pi
            td_target = rewards + cfg.discount_gamma * (1.0 - dones) * target_q

            # actions for the log-sum-exp: N uniform, N from pi(.|s), N from pi(.|s'); all scored at s
            # (one actor pass per state, N samples from it; rows b*N .. b*N+N-1 belong to state b)
            random_actions = torch.rand(batch_size * n_samples, act_dim, device=obs.device) * 2 - 1
            pi_actions, pi_log = self.actor.sample(obs_raw, num_samples=n_samples)
            next_pi_actions, next_pi_log = self.actor.sample(next_raw, num_samples=n_samples)

        # 2. critics: one fused forward over data, uniform and policy actions
        obs_all = torch.cat([obs, obs.repeat_interleave(n_samples, dim=0).repeat(3, 1)])
        act_all = torch.cat([actions, random_actions, pi_actions, next_pi_actions])
        q_all = self.qf(obs_all, act_all)  # (n, B + 3BN)
        q_data = q_all[:, :batch_size]
        q_rand, q_pi, q_next_pi = q_all[:, batch_size:].reshape(n_critics, 3, batch_size, n_samples).unbind(1)
        td_loss = critic_loss(q_data, td_target)
        gap = cql_penalty(q_data, q_rand, q_pi, q_next_pi, pi_log.view(batch_size, n_samples),
                          next_pi_log.view(batch_size, n_samples), act_dim, hpar.cql_importance_sampling)
        weight = hpar.cql_alpha * hpar.min_q_weight
        if self.alpha_prime_optimizer is not None:
            alpha_prime = self.log_alpha_prime().exp().clamp(0.0, 1e6)
            alpha_prime_loss = -(alpha_prime * weight * (gap.detach() - hpar.cql_target_action_gap)).sum() / n_critics
            self.alpha_prime_optimizer.zero_grad(set_to_none=True)
            alpha_prime_loss.backward()
            self.alpha_prime_optimizer.step()
            conservative = alpha_prime.detach() * weight * (gap - hpar.cql_target_action_gap)
        else:
            alpha_prime = None
            conservative = weight * gap
        total_q_loss = td_loss + conservative.sum()
        self.q_optimizer.zero_grad(set_to_none=True)
        total_q_loss.backward()
        self.q_optimizer.step()

        # 3. entropy temperature and policy, against the critics just updated (the critics get no
        #    gradient from the actor's loss)
        new_actions, log_pi = self.actor.sample(obs_raw)
        if self.alpha_optimizer is not None:
            alpha_loss = entropy_temperature_loss(self.log_alpha(), log_pi, self.target_entropy)
            self.alpha_optimizer.zero_grad(set_to_none=True)
            alpha_loss.backward()
            self.alpha_optimizer.step()
        if self.global_step < hpar.bc_steps:
            policy_loss = (alpha * log_pi - self.actor.log_prob(obs_raw, batch["actions"])).mean()
        else:
            self.qf.requires_grad_(False)
            q_new = self.qf(obs, new_actions).min(dim=0).values
            self.qf.requires_grad_(True)
            policy_loss = sac_policy_loss(log_pi, q_new, alpha)
        self.actor_optimizer.zero_grad(set_to_none=True)
        policy_loss.backward()
        self.actor_optimizer.step()

        # 4. target critics
        soft_update(self.qf_target, self.qf, cfg.tau)

        metrics = {"q_loss": td_loss.detach(), "policy_loss": policy_loss.detach(), "cql_penalty": gap.detach().mean(),
                   "alpha": alpha, "entropy": -log_pi.detach().mean(), "q_data": q_data.detach().mean(),
                   "q_random": q_rand.detach().mean(), "q_policy": q_pi.detach().mean(),
                   "q_target": td_target.mean()}
        if alpha_prime is not None:
            metrics["alpha_prime"] = alpha_prime.detach()
        # how much better the dataset's actions look than the policy's, both scored by the critics
        # before this step's update (the penalty's N policy samples at s stand for a ~ pi(.|s))
        metrics["mean_advantage"] = (q_data.detach().min(dim=0).values - q_pi.detach().min(dim=0).values.mean(-1)).mean()
        return metrics
