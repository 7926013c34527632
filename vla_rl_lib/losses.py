"""The pieces of an update step that several algorithms share: the TD critic loss, the Polyak
target update and the global gradient-norm clip.

Each algorithm file keeps its own losses (IQL's expectile regression, CQL's penalty, PPO's clipped
surrogate, ...); what is written here is the same in all of them, so it is written once.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from vla_rl_lib import compat

__all__ = ["critic_loss", "soft_update", "clip_grad_norm"]


def critic_loss(q_values: torch.Tensor, target: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """TD regression of every critic of an ensemble onto one target::

        L_Q = scale * sum_i mean_B ( Q_i(s, a) - y )^2

    ``q_values`` is ``(n_critics, B)``, ``target`` is ``(B,)`` and carries no gradient (it is
    detached here). The target ``y`` is the algorithm's own: ``r + gamma (1 - d) V(s')`` (IQL),
    ``r + gamma (1 - d) min_i Q'_i(s', a')`` (CQL, TD3+BC), the soft target of SAC.

    ``scale`` makes the one convention that differs explicit: IQL, CQL and TD3+BC (as CORL and the
    papers' code) use ``scale=1``; SAC uses ``scale=1/2`` (Stable-Baselines3's
    ``0.5 * sum(mse)``), which halves the gradient; with Adam that changes only the effect of its
    ``eps``, not the direction or size of the steps.
    """
    loss = (q_values - target.detach().unsqueeze(0)).pow(2).mean(dim=1).sum()
    return loss if scale == 1.0 else scale * loss


@torch.no_grad()
def soft_update(target: nn.Module, source: nn.Module, tau: float) -> None:
    """Polyak averaging of a target network::

        theta_target <- tau * theta + (1 - tau) * theta_target

    (one fused ``lerp`` over all parameters where torch offers it, :func:`vla_rl_lib.compat.foreach_lerp_`)."""
    compat.foreach_lerp_(list(target.parameters()), list(source.parameters()), tau)


def clip_grad_norm(params: list, max_norm: float) -> torch.Tensor:
    """Scale all gradients by ``min(1, max_norm / (||g|| + 1e-6))``, ``||g||`` their global L2 norm;
    returns ``||g||``.

    ``torch.nn.utils.clip_grad_norm_``'s rule, in four fused ops (its argument checks and grouping
    by device cost more than the clip itself for a small network)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norm = torch.linalg.vector_norm(torch.stack(compat.foreach_norm(grads)))
    compat.foreach_mul_(grads, torch.clamp(max_norm / (norm + 1e-6), max=1.0))
    return norm
