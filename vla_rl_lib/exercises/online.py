"""Online RL exercises: GAE, PPO's clipped surrogate, SAC's temperature loss, GRPO's group-relative
advantages and the k3 KL estimate. References are the library's own functions."""
from __future__ import annotations

import torch

from vla_rl_lib.exercises.core import Case, Exercise, Mistake, check, random_tensor


# -- GAE ------------------------------------------------------------------------------------------
def _gae_ref(rewards, values, next_values, terminations, dones, gamma, gae_lambda):
    from vla_rl_lib.online.rollout import compute_gae

    return compute_gae(rewards, values, next_values, terminations, dones, gamma, gae_lambda)[0]


def _gae_loop(rewards, values, next_values, terminations, dones, gamma, gae_lambda, use_done=True, use_term=True):
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[0])
    for t in reversed(range(rewards.shape[0])):
        boot = next_values[t] * (1 - terminations[t]) if use_term else next_values[t]
        delta = rewards[t] + gamma * boot - values[t]
        cont = (1 - dones[t]) if use_done else 1.0
        last = delta + gamma * gae_lambda * cont * last
        adv[t] = last
    return adv


def _gae_cases():
    T, N = 8, 3
    term = torch.zeros(T, N, dtype=torch.float64)
    trunc = torch.zeros(T, N, dtype=torch.float64)
    term[3, 0] = 1.0          # env 0 terminates at t=3
    trunc[5, 1] = 1.0         # env 1 is cut by its time limit at t=5 (bootstrapped)
    base = dict(rewards=random_tensor(T, N, seed=50), values=random_tensor(T, N, seed=51),
                next_values=random_tensor(T, N, seed=52), gamma=0.99, gae_lambda=0.95)
    no_end = torch.zeros(T, N, dtype=torch.float64)
    return [
        Case("no episode ends", dict(base, terminations=no_end, dones=no_end)),
        Case("termination and truncation", dict(base, terminations=term, dones=torch.maximum(term, trunc))),
        Case("lambda=0 is one-step TD", dict(base, terminations=term, dones=term, gae_lambda=0.0)),
        Case("lambda=1, gamma=1", dict(base, terminations=term, dones=term, gamma=1.0, gae_lambda=1.0)),
    ]


GAE = Exercise(
    name="compute_gae",
    reference=_gae_ref,
    cases=_gae_cases,
    mistakes=[
        Mistake("forgotten done mask", lambda **kw: _gae_loop(**kw, use_done=False),
                "the recursion must stop at episode ends: multiply the carried advantage by (1 - done_t)."),
        Mistake("bootstraps through termination", lambda **kw: _gae_loop(**kw, use_term=False),
                "do not bootstrap from V(s_{t+1}) when the episode TERMINATED: multiply it by (1 - term_t)."),
        Mistake("done used for bootstrap", lambda **kw: _gae_loop(**{**kw, "terminations": kw["dones"]}),
                "a truncated episode (time limit) still bootstraps from the value of its final observation: "
                "mask the bootstrap with terminations, not dones."),
        Mistake("no lambda", lambda **kw: _gae_loop(**{**kw, "gae_lambda": 1.0}),
                "the carried advantage is discounted by gamma * lambda, not gamma alone."),
    ],
)


def check_compute_gae(fn, verbose: bool = True):
    """Check ``compute_gae(rewards, values, next_values, terminations, dones, gamma, gae_lambda) -> advantages (T, N)``."""
    return check(fn, GAE, verbose)


# -- PPO clipped surrogate ----------------------------------------------------------------------------
def _surrogate_ref(ratio, advantages, clip_range):
    from vla_rl_lib.online.ppo import clipped_surrogate

    return clipped_surrogate(ratio, advantages, clip_range)


SURROGATE = Exercise(
    name="clipped_surrogate",
    reference=_surrogate_ref,
    cases=lambda: [
        Case("ratios near 1", dict(ratio=1 + 0.1 * random_tensor(64, seed=60), advantages=random_tensor(64, seed=61), clip_range=0.2)),
        Case("ratios far from 1", dict(ratio=torch.exp(random_tensor(64, seed=62)), advantages=random_tensor(64, seed=63), clip_range=0.2)),
        Case("edges", dict(ratio=torch.tensor([0.5, 0.8, 1.0, 1.2, 1.5, 0.5, 1.5], dtype=torch.float64),
                           advantages=torch.tensor([1.0, 1.0, 1.0, 1.0, 1.0, -1.0, -1.0], dtype=torch.float64), clip_range=0.2)),
    ],
    mistakes=[
        Mistake("objective not loss", lambda ratio, advantages, clip_range: -_surrogate_ref(ratio, advantages, clip_range),
                "return the LOSS to minimise: the negative of the clipped objective."),
        Mistake("max", lambda ratio, advantages, clip_range:
                -torch.max(ratio * advantages, ratio.clamp(1 - clip_range, 1 + clip_range) * advantages).mean(),
                "take the MIN of the clipped and unclipped terms (a pessimistic bound), not the max."),
        Mistake("clipped only", lambda ratio, advantages, clip_range:
                -(ratio.clamp(1 - clip_range, 1 + clip_range) * advantages).mean(),
                "keep both terms: min(r A, clip(r, 1-eps, 1+eps) A)."),
    ],
    grad_inputs=("ratio",),
)


def check_clipped_surrogate(fn, verbose: bool = True):
    """Check ``clipped_surrogate(ratio, advantages, clip_range) -> scalar loss``."""
    return check(fn, SURROGATE, verbose)


# -- SAC temperature loss -----------------------------------------------------------------------------
def _temperature_ref(log_alpha, log_pi, target_entropy):
    from vla_rl_lib.online.sac import sac_temperature_loss

    return sac_temperature_loss(log_alpha, log_pi, target_entropy)


TEMPERATURE = Exercise(
    name="sac_temperature_loss",
    reference=_temperature_ref,
    cases=lambda: [
        Case("random", dict(log_alpha=torch.tensor(-1.0, dtype=torch.float64), log_pi=random_tensor(32, seed=70), target_entropy=-2.0)),
        Case("entropy too low raises alpha", dict(log_alpha=torch.tensor(0.3, dtype=torch.float64),
                                                  log_pi=torch.full((8,), 3.0, dtype=torch.float64), target_entropy=-1.0)),
        Case("entropy too high", dict(log_alpha=torch.tensor(0.0, dtype=torch.float64),
                                      log_pi=torch.full((8,), -5.0, dtype=torch.float64), target_entropy=-1.0)),
    ],
    mistakes=[
        Mistake("sign", lambda log_alpha, log_pi, target_entropy: (log_alpha * (log_pi + target_entropy).detach()).mean(),
                "the sign is flipped: L = -mean(log_alpha * (log_pi + H_target)); alpha must rise when the entropy is too low."),
        Mistake("not detached", lambda log_alpha, log_pi, target_entropy: -(log_alpha * (log_pi + target_entropy)).mean(),
                "the bracket (log_pi + H_target) is a constant for this loss: detach it."),
        Mistake("alpha not log", lambda log_alpha, log_pi, target_entropy: -(log_alpha.exp() * (log_pi + target_entropy).detach()).mean(),
                "this exercise uses the Stable-Baselines3/CleanRL form on log_alpha, not alpha = exp(log_alpha)."),
        Mistake("entropy minus", lambda log_alpha, log_pi, target_entropy: -(log_alpha * (log_pi - target_entropy).detach()).mean(),
                "it is log_pi + H_target (H_target is negative, e.g. -|A|)."),
    ],
    grad_inputs=("log_alpha", "log_pi"),
)


def check_sac_temperature_loss(fn, verbose: bool = True):
    """Check ``sac_temperature_loss(log_alpha, log_pi, target_entropy) -> scalar``."""
    return check(fn, TEMPERATURE, verbose)


# -- GRPO group-relative advantages --------------------------------------------------------------------
def _group_ref(returns):
    from vla_rl_lib.online.grpo import group_relative_advantages

    return group_relative_advantages(returns)


GROUP = Exercise(
    name="group_relative_advantages",
    reference=_group_ref,
    cases=lambda: [
        Case("3 groups of 4", dict(returns=random_tensor(3, 4, seed=80, scale=10))),
        Case("one group of 8", dict(returns=random_tensor(1, 8, seed=81))),
        Case("a group with equal returns", dict(returns=torch.tensor([[1.0, 1.0, 1.0], [0.0, 1.0, 2.0]], dtype=torch.float64))),
    ],
    mistakes=[
        Mistake("wrong axis", lambda returns: (returns - returns.mean(0, keepdim=True)) / (returns.std(0, keepdim=True) + 1e-8),
                "wrong normalisation axis: normalise WITHIN each group (over the group's rollouts, dim=-1), not across groups."),
        Mistake("no std", lambda returns: returns - returns.mean(-1, keepdim=True),
                "divide by the group's standard deviation (+ eps) as well."),
        Mistake("global", lambda returns: (returns - returns.mean()) / (returns.std() + 1e-8),
                "statistics are per group, not over all rollouts of the batch."),
        Mistake("population std", lambda returns: (returns - returns.mean(-1, keepdim=True)) / (returns.std(-1, unbiased=False, keepdim=True) + 1e-8),
                "use the sample standard deviation (torch.std's default, unbiased=True)."),
    ],
)


def check_group_relative_advantages(fn, verbose: bool = True):
    """Check ``group_relative_advantages(returns (G, K)) -> (G, K)``."""
    return check(fn, GROUP, verbose)


# -- k3 KL estimate ----------------------------------------------------------------------------------
def _k3_ref(log_probs, ref_log_probs):
    from vla_rl_lib.online.grpo import k3_kl

    return k3_kl(log_probs, ref_log_probs)


K3 = Exercise(
    name="k3_kl",
    reference=_k3_ref,
    cases=lambda: [
        Case("random", dict(log_probs=random_tensor(32, seed=90) - 1, ref_log_probs=random_tensor(32, seed=91) - 1)),
        Case("identical policies give 0", dict(log_probs=random_tensor(8, seed=92), ref_log_probs=random_tensor(8, seed=92))),
        Case("far apart", dict(log_probs=torch.tensor([-0.1, -5.0], dtype=torch.float64), ref_log_probs=torch.tensor([-4.0, -0.2], dtype=torch.float64))),
    ],
    mistakes=[
        Mistake("swapped", lambda log_probs, ref_log_probs: _k3_ref(ref_log_probs, log_probs),
                "d = log pi_ref - log pi (reference minus current), so k3 = exp(d) - d - 1."),
        Mistake("k1", lambda log_probs, ref_log_probs: log_probs - ref_log_probs,
                "that is the k1 estimator log(pi/pi_ref): unbiased but can be negative; k3 = exp(d) - d - 1 is always >= 0."),
        Mistake("missing -1", lambda log_probs, ref_log_probs: torch.exp(ref_log_probs - log_probs) - (ref_log_probs - log_probs),
                "subtract 1: k3 = exp(d) - d - 1 (so identical policies give 0)."),
    ],
    grad_inputs=("log_probs",),
)


def check_k3_kl(fn, verbose: bool = True):
    """Check ``k3_kl(log_probs, ref_log_probs) -> per-sample KL estimates``."""
    return check(fn, K3, verbose)
