"""CQL: the penalty's equation, learning on the shipped Pendulum dataset, an inverted penalty, bad input.

Learning is measured on ``pendulum-medium-v0`` (shipped with the kit, ``vla_rl_lib.data.load_dataset``).
How the thresholds were chosen is written in the learning test's docstring.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from vla_rl_lib.errors import ConfigError, DatasetError
from vla_rl_lib.offline.cql import CQLTrainer, cql_penalty, entropy_temperature_loss, sac_policy_loss
from vla_rl_lib.trainer import Trainer

from shipped_pendulum import buffer as _buffer, config as _config


# ------------------------------------------------------------------------------------------------
# the equations
# ------------------------------------------------------------------------------------------------
def test_cql_penalty_matches_importance_sampled_logsumexp():
    g = torch.Generator().manual_seed(0)
    n, b, k, a_dim = 2, 5, 4, 3
    q_data = torch.randn(n, b, generator=g)
    q_rand, q_pi, q_next = (torch.randn(n, b, k, generator=g) for _ in range(3))
    log_pi, log_pi_next = torch.randn(b, k, generator=g), torch.randn(b, k, generator=g)
    got = cql_penalty(q_data, q_rand, q_pi, q_next, log_pi, log_pi_next, a_dim)
    for i in range(n):
        gaps = []
        for j in range(b):
            terms = [q_rand[i, j, m].item() - a_dim * math.log(0.5) for m in range(k)]
            terms += [q_pi[i, j, m].item() - log_pi[j, m].item() for m in range(k)]
            terms += [q_next[i, j, m].item() - log_pi_next[j, m].item() for m in range(k)]
            gaps.append(math.log(sum(math.exp(t) for t in terms)) - q_data[i, j].item())
        assert got[i].item() == pytest.approx(np.mean(gaps), rel=1e-5)


def test_cql_penalty_pushes_ood_down_and_data_up():
    q_data = torch.zeros(1, 4, requires_grad=True)
    q_rand = torch.zeros(1, 4, 3, requires_grad=True)
    zeros = torch.zeros(1, 4, 3)
    gap = cql_penalty(q_data, q_rand, zeros, zeros, torch.zeros(4, 3), torch.zeros(4, 3), 1).sum()
    gap.backward()
    assert torch.all(q_data.grad < 0)  # minimising the penalty raises data-action Q
    assert torch.all(q_rand.grad > 0)  # and lowers sampled-action Q


def test_sac_and_temperature_losses():
    log_pi = torch.tensor([-1.0, -2.0])
    q = torch.tensor([3.0, 5.0])
    assert sac_policy_loss(log_pi, q, torch.tensor(0.5)).item() == pytest.approx(((-0.5 - 3) + (-1 - 5)) / 2)
    log_alpha = torch.tensor(0.3, requires_grad=True)
    entropy_temperature_loss(log_alpha, log_pi, target_entropy=-1.0).backward()
    # entropy (1.5) above target (-1)... d/dlog_alpha = -mean(log_pi + target) = 2.5 > 0: alpha goes down
    assert log_alpha.grad.item() == pytest.approx(2.5)


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kw", [dict(cql_alpha=-1.0), dict(cql_samples=0), dict(min_q_weight=-0.1),
                                dict(alpha=-0.2), dict(actor_learning_rate=0.0), dict(num_critics=0),
                                dict(bc_steps=-1), dict(cql_lagrange=True, cql_alpha=0.0)])
def test_bad_hyperparameters_rejected(kw, tmp_path):
    with pytest.raises(ConfigError) as err:
        CQLTrainer(3, 1, config=_config(tmp_path, 10), **kw)
    assert any(name in str(err.value) for name in kw)


def test_dimension_mismatch_rejected_before_training(tmp_path):
    trainer = CQLTrainer(3, 2, config=_config(tmp_path, 10))
    with pytest.raises(DatasetError, match="action_dim=2"):
        trainer.train(_buffer())
    assert trainer.global_step == 0


# ------------------------------------------------------------------------------------------------
# the trainer
# ------------------------------------------------------------------------------------------------
def test_metrics_lagrange_and_checkpoint(tmp_path):
    trainer = CQLTrainer(3, 1, config=_config(tmp_path, 20, hidden_dim=32, batch_size=32, log_freq=10),
                         cql_lagrange=True, cql_alpha=1.0, cql_target_action_gap=1.0, cql_samples=4)
    start = trainer.log_alpha_prime().item()
    trainer.train(_buffer())
    header = (tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in ("q_loss", "policy_loss", "cql_penalty", "alpha", "alpha_prime", "q_data", "mean_advantage"):
        assert key in header
    assert trainer.log_alpha_prime().item() != start  # the multiplier is tuned
    assert trainer.policy.action_high.item() == pytest.approx(2.0)  # Pendulum's torque bound
    path = trainer.save(tmp_path / "c.pt")
    rebuilt = Trainer.from_checkpoint(path)
    obs = np.array([0.0, 1.0, 0.3], np.float32)
    np.testing.assert_allclose(rebuilt.predict(obs), trainer.predict(obs))
    assert abs(float(rebuilt.predict(obs)[0])) <= 2.0


@pytest.mark.parametrize("target_action", ["mean", "sample"])
def test_td_target_action(tmp_path, target_action):
    """``target_action="mean"`` backs up Q at tanh(mu(s')): the TD target does not depend on the
    random draw; ``"sample"`` draws a' ~ pi(.|s'), so the same update under another seed moves it."""
    trainer = CQLTrainer(3, 1, config=_config(tmp_path, 10, hidden_dim=32, batch_size=32), cql_samples=2,
                         target_action=target_action)
    trainer.attach_buffer(_buffer())
    batch = trainer.buffer.sample(32, generator=torch.Generator().manual_seed(0))
    targets = []
    for seed in (1, 2):
        clone = copy.deepcopy(trainer)
        torch.manual_seed(seed)
        targets.append(float(clone.update(batch)["q_target"]))
    if target_action == "mean":
        assert targets[0] == targets[1]
    else:
        assert targets[0] != targets[1]


# ------------------------------------------------------------------------------------------------
# learning: tests/test_offline_separation.py
# ------------------------------------------------------------------------------------------------
# The learning test that lived here asked for a return below the dataset's own average, which
# behaviour cloning passes as well. It is replaced by tests/test_offline_separation.py, where CQL must
# beat behaviour cloning on mixed data by a margin and CQL without its penalty must not (issue 15).
