"""Behaviour cloning (BC) and filtered behaviour cloning (%BC): the floor every offline RL method must beat.

BC is supervised learning of the dataset's actions, no reward involved:

    L_BC = E_(s,a)~D [ ||pi(s) - a||^2 ]

with ``pi(s) = tanh(f(s))`` scaled to the action bounds: the deterministic policy and the
behaviour-cloning term of TD3+BC (Fujimoto & Gu, 2021), so TD3+BC with ``alpha = 0`` is exactly this.

*Filtered* BC (``%BC``, Chen et al., 2021, "Decision Transformer", section 5; CORL's
``any_percent_bc``) first keeps the top ``top_fraction`` of the dataset's *episodes* ranked by
undiscounted return, then clones only those:

    D_top = { episodes tau in D with R(tau) >= the (1 - top_fraction) quantile of returns }
    L_%BC = E_(s,a)~D_top [ ||pi(s) - a||^2 ]

On expert data BC is hard to beat; on mixed data %BC is a strong baseline; on data where no single
trajectory does the task (the maze's stitching datasets) both fail, which is what value-based
methods such as IQL are for. States are normalised with the dataset's mean and standard deviation,
as TD3+BC does.

This is the low-dimensional baseline of the offline trainers (``vla-rl train bc``). The VLA's stage-2
behaviour cloning on images and instructions is :class:`vla_rl_lib.vla.bc.BCTrainer`
(``vla-rl train vla_bc``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vla_rl_lib.config import ConfigBase, hp
from vla_rl_lib.nets import DeterministicPolicy, adam
from vla_rl_lib.trainer import OfflineTrainer

__all__ = ["BCHyperparameters", "BCTrainer", "bc_loss"]


def bc_loss(pi: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """``L_BC = mean_B (pi(s) - a)^2``, averaged over the batch and the action dimensions (as
    TD3+BC's BC term, ``F.mse_loss``)."""
    return F.mse_loss(pi, actions)


@dataclass
class BCHyperparameters(ConfigBase):
    top_fraction: float = hp(1.0, "%BC: clone only the best fraction of episodes by return (1 = plain BC)",
                             low=0, high=1, low_open=True, ui=(0.05, 1.0, 0.05))
    normalize: bool = hp(True, "normalise states with the dataset mean/std")


class BCTrainer(OfflineTrainer):
    """Behaviour cloning, plain or filtered (see the module docstring).

    ``BCTrainer(obs_dim=3, action_dim=1, config=config, top_fraction=0.1)`` is 10%BC;
    ``trainer.train(buffer)``; ``trainer.policy`` acts on raw observations. Logged: ``policy_loss``.
    """

    algorithm = "bc"
    Hyperparameters = BCHyperparameters

    def __init__(self, obs_dim: int, action_dim: int, config=None, callbacks=None, use_wandb: bool = False,
                 progress_bar: bool = False, **hparams):
        super().__init__(obs_dim, action_dim, config, callbacks, use_wandb, progress_bar, **hparams)
        cfg = self.config
        self.policy = DeterministicPolicy(self.obs_dim, self.action_dim, (cfg.hidden_dim, cfg.hidden_dim)).to(self.device)
        self.optimizer = adam(self.policy.parameters(), cfg.learning_rate, weight_decay=cfg.weight_decay)
        self._prenormalized = False

    def attach_buffer(self, buffer) -> None:
        """Keep the top ``top_fraction`` of the episodes (%BC), then fit the normaliser and bounds to them."""
        from vla_rl_lib.data.buffer import EpisodeSubset

        super().attach_buffer(buffer)
        if self.hparams.top_fraction < 1.0 and not isinstance(buffer, EpisodeSubset):
            self.buffer = buffer.top_episodes(self.hparams.top_fraction)
        self._prenormalized = self.fit_policy_to_dataset(self.policy, self.buffer,
                                                         self.hparams.normalize or self.config.normalize_states)

    def update(self, batch: dict) -> dict:
        obs = batch["observations"] if self._prenormalized else self.policy.normalize(batch["observations"])
        loss = bc_loss(self.policy.scale_action(self.policy.net(obs)), batch["actions"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return {"policy_loss": loss.detach()}
