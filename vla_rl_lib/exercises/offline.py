"""Offline RL exercises: expectile loss, IQL advantage weights, CQL penalty, TD3+BC actor loss,
returns-to-go. References are the library's own functions."""
from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F

from vla_rl_lib.exercises.core import Case, Exercise, Mistake, check, random_generator, random_tensor


# -- expectile loss ---------------------------------------------------------------------------------
def _expectile_ref(diff, expectile):
    from vla_rl_lib.offline.iql import expectile_loss

    return expectile_loss(diff, expectile)


EXPECTILE = Exercise(
    name="expectile_loss",
    reference=_expectile_ref,
    cases=lambda: [
        Case("random, tau=0.7", dict(diff=random_tensor(64, seed=0), expectile=0.7)),
        Case("random, tau=0.9", dict(diff=random_tensor(32, seed=1, scale=3.0), expectile=0.9)),
        Case("tau=0.5 is plain MSE/2-weighted", dict(diff=random_tensor(16, seed=2), expectile=0.5)),
        Case("all errors negative", dict(diff=-random_tensor(8, seed=3).abs() - 0.1, expectile=0.8)),
        Case("zero error", dict(diff=torch.zeros(5, dtype=torch.float64), expectile=0.7)),
    ],
    mistakes=[
        Mistake("swapped weights", lambda diff, expectile: (torch.where(diff > 0, 1 - expectile, expectile) * diff**2).mean(),
                "the weights are swapped: an error u = Q - V > 0 (V too low) weighs tau, u < 0 weighs 1 - tau."),
        Mistake("no square", lambda diff, expectile: (torch.where(diff < 0, 1 - expectile, expectile) * diff.abs()).mean(),
                "that is the quantile (absolute) loss; expectile regression squares the error: |tau - 1(u<0)| * u^2."),
        Mistake("sum", lambda diff, expectile: (torch.where(diff < 0, 1 - expectile, expectile) * diff**2).sum(),
                "average over the batch (mean), do not sum."),
    ],
    grad_inputs=("diff",),
)


def check_expectile_loss(fn, verbose: bool = True):
    """Check ``expectile_loss(diff, expectile) -> scalar``: mean of |tau - 1(u<0)| u^2."""
    return check(fn, EXPECTILE, verbose)


# -- IQL advantage weights ----------------------------------------------------------------------------
def _weights_ref(advantages, temperature, max_weight=100.0):
    from vla_rl_lib.offline.iql import advantage_weights

    return advantage_weights(advantages, temperature, max_weight)


ADV_WEIGHTS = Exercise(
    name="advantage_weights",
    reference=_weights_ref,
    cases=lambda: [
        Case("random, beta=3", dict(advantages=random_tensor(32, seed=10), temperature=3.0)),
        Case("large advantages hit the clip", dict(advantages=torch.tensor([0.0, 1.0, 2.0, 10.0], dtype=torch.float64), temperature=3.0)),
        Case("negative advantages", dict(advantages=-random_tensor(8, seed=11).abs(), temperature=1.0)),
        Case("custom clip", dict(advantages=random_tensor(16, seed=12, scale=4.0), temperature=2.0, max_weight=10.0)),
    ],
    mistakes=[
        Mistake("no clip", lambda advantages, temperature, max_weight=100.0: torch.exp(temperature * advantages),
                "clip the weights at max_weight (100): exp(beta * A) explodes for large advantages."),
        Mistake("divided by temperature", lambda advantages, temperature, max_weight=100.0:
                torch.exp(advantages / temperature).clamp(max=max_weight),
                "IQL multiplies by the temperature beta: exp(beta * A), not exp(A / beta)."),
        Mistake("softmax", lambda advantages, temperature, max_weight=100.0: torch.softmax(temperature * advantages, 0),
                "the weights are not normalised over the batch: w = min(exp(beta * A), max_weight)."),
        Mistake("not detached", lambda advantages, temperature, max_weight=100.0:
                torch.exp(temperature * advantages).clamp(max=max_weight),
                "the weights only scale the imitation loss: no gradient may flow into the critics through them "
                "(use advantages.detach())."),
    ],
    grad_inputs=("advantages",),
)


def check_advantage_weights(fn, verbose: bool = True):
    """Check ``advantage_weights(advantages, temperature, max_weight=100.0) -> (B,)``."""
    return check(fn, ADV_WEIGHTS, verbose)


# -- CQL penalty ------------------------------------------------------------------------------------
def _cql_ref(q_data, q_sampled):
    """Student form: mean_B[ logsumexp over {sampled actions, data action} Q(s, .) - Q(s, a_data) ]."""
    from vla_rl_lib.offline.cql import cql_penalty

    empty = q_sampled[:, :0].unsqueeze(0)
    return cql_penalty(q_data.unsqueeze(0), q_sampled.unsqueeze(0), empty, empty, q_sampled[:, :0], q_sampled[:, :0],
                       action_dim=1, importance_sampling=False)[0]


CQL = Exercise(
    name="cql_penalty",
    reference=_cql_ref,
    cases=lambda: [
        Case("random B=16 N=10", dict(q_data=random_tensor(16, seed=20), q_sampled=random_tensor(16, 10, seed=21))),
        Case("large Q values (numerical stability)", dict(q_data=random_tensor(8, seed=22) + 1000.0,
                                                          q_sampled=random_tensor(8, 4, seed=23) + 1000.0)),
        Case("one sampled action", dict(q_data=random_tensor(4, seed=24), q_sampled=random_tensor(4, 1, seed=25))),
    ],
    mistakes=[
        Mistake("sign", lambda q_data, q_sampled: -_cql_ref(q_data, q_sampled),
                "the sign is flipped: the penalty pushes DOWN the soft-maximum over actions and UP the data action's Q."),
        Mistake("max", lambda q_data, q_sampled: (torch.maximum(q_sampled.max(1).values, q_data) - q_data).mean(),
                "use log-sum-exp (a soft maximum, torch.logsumexp), not a hard max."),
        Mistake("data excluded", lambda q_data, q_sampled: (torch.logsumexp(q_sampled, 1) - q_data).mean(),
                "include the data action's Q inside the log-sum-exp together with the sampled actions."),
        Mistake("naive logsumexp", lambda q_data, q_sampled: (torch.log(torch.exp(torch.cat([q_sampled, q_data[:, None]], 1)).sum(1)) - q_data).mean(),
                "log(sum(exp(.))) overflows for large Q: use torch.logsumexp."),
    ],
    grad_inputs=("q_data", "q_sampled"),
)


def check_cql_penalty(fn, verbose: bool = True):
    """Check ``cql_penalty(q_data (B,), q_sampled (B, N)) -> scalar``."""
    return check(fn, CQL, verbose)


# -- TD3+BC actor loss --------------------------------------------------------------------------------
def _td3bc_ref(q_pi, pi, actions, alpha):
    from vla_rl_lib.offline.td3_bc import td3_bc_actor_loss

    return td3_bc_actor_loss(q_pi, pi, actions, alpha)[0]


TD3BC = Exercise(
    name="td3_bc_actor_loss",
    reference=_td3bc_ref,
    cases=lambda: [
        Case("random, alpha=2.5", dict(q_pi=random_tensor(32, seed=30, scale=20), pi=torch.tanh(random_tensor(32, 3, seed=31)),
                                      actions=torch.tanh(random_tensor(32, 3, seed=32)), alpha=2.5)),
        Case("negative Q values", dict(q_pi=-random_tensor(8, seed=33).abs() * 50, pi=torch.tanh(random_tensor(8, 2, seed=34)),
                                       actions=torch.tanh(random_tensor(8, 2, seed=35)), alpha=1.0)),
        Case("alpha=0 is pure BC", dict(q_pi=random_tensor(8, seed=36), pi=torch.tanh(random_tensor(8, 1, seed=37)),
                                        actions=torch.tanh(random_tensor(8, 1, seed=38)), alpha=0.0)),
    ],
    mistakes=[
        Mistake("lambda not detached", lambda q_pi, pi, actions, alpha:
                -(alpha / q_pi.abs().mean()) * q_pi.mean() + F.mse_loss(pi, actions),
                "lambda = alpha / mean|Q| is a constant scale: compute it from q_pi.detach() (or .abs().mean().detach())."),
        Mistake("sign", lambda q_pi, pi, actions, alpha:
                (alpha / q_pi.abs().mean().detach()) * q_pi.mean() + F.mse_loss(pi, actions),
                "the actor MAXIMISES Q, so the loss has -lambda * mean Q."),
        Mistake("lambda inverted", lambda q_pi, pi, actions, alpha:
                -(alpha * q_pi.abs().mean().detach()) * q_pi.mean() + F.mse_loss(pi, actions),
                "lambda = alpha / mean|Q|, dividing by the Q scale, not multiplying."),
        Mistake("bc summed", lambda q_pi, pi, actions, alpha:
                -(alpha / q_pi.abs().mean().detach()) * q_pi.mean() + ((pi - actions) ** 2).sum(-1).mean(),
                "the BC term is the mean over batch AND action dimensions (F.mse_loss(pi, actions))."),
    ],
    grad_inputs=("q_pi", "pi"),
)


def check_td3_bc_actor_loss(fn, verbose: bool = True):
    """Check ``td3_bc_actor_loss(q_pi, pi, actions, alpha) -> scalar``."""
    return check(fn, TD3BC, verbose)


# -- returns-to-go ------------------------------------------------------------------------------------
def _rtg_ref(rewards):
    from vla_rl_lib.data.buffer import returns_to_go

    return returns_to_go(np.asarray(rewards, dtype=np.float32))


RTG = Exercise(
    name="returns_to_go",
    reference=_rtg_ref,
    cases=lambda: [
        Case("simple", dict(rewards=np.array([1.0, 2.0, 3.0], dtype=np.float32))),
        Case("random episode", dict(rewards=random_generator(40).normal(size=50).astype(np.float32))),
        Case("single step", dict(rewards=np.array([5.0], dtype=np.float32))),
        Case("zeros then reward", dict(rewards=np.array([0, 0, 0, 1], dtype=np.float32))),
    ],
    mistakes=[
        Mistake("off by one (excludes r_t)", lambda rewards: np.concatenate([np.cumsum(rewards[::-1])[::-1][1:], [0.0]]),
                "off by one: the return-to-go at t INCLUDES r_t: rtg[t] = r[t] + r[t+1] + ... + r[T-1]."),
        Mistake("forward cumsum", lambda rewards: np.cumsum(rewards),
                "that is the return so far (a forward cumulative sum); returns-to-go sum the rewards still to come."),
        Mistake("discounted", lambda rewards: np.array([sum(0.99**k * r for k, r in enumerate(rewards[t:])) for t in range(len(rewards))]),
                "the Decision Transformer conditions on UNDISCOUNTED returns-to-go."),
    ],
    rtol=1e-5, atol=1e-4,
)


def check_returns_to_go(fn, verbose: bool = True):
    """Check ``returns_to_go(rewards: np.ndarray) -> np.ndarray`` (undiscounted)."""
    return check(fn, RTG, verbose)
