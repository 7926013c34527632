"""The shared update pieces (vla_rl_lib/losses.py) against their equations."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from vla_rl_lib.losses import clip_grad_norm, critic_loss, soft_update


def test_critic_loss_sums_the_critics_mean_squared_errors_and_scales():
    q = torch.tensor([[1.0, 2.0], [3.0, 0.0]], requires_grad=True)
    y = torch.tensor([1.0, 1.0], requires_grad=True)
    assert critic_loss(q, y).item() == pytest.approx((0 + 1) / 2 + (4 + 1) / 2)
    assert critic_loss(q, y, scale=0.5).item() == pytest.approx(0.5 * 3.0)
    critic_loss(q, y).backward()
    assert y.grad is None  # the target is a constant
    torch.testing.assert_close(q.grad, torch.tensor([[0.0, 1.0], [2.0, -1.0]]))  # 2 (Q - y) / B


def test_soft_update_is_polyak_averaging():
    torch.manual_seed(0)
    source, target = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.detach().clone() for p in target.parameters()]
    soft_update(target, source, 0.1)
    for new, old, src in zip(target.parameters(), before, source.parameters()):
        torch.testing.assert_close(new, 0.1 * src + 0.9 * old)
        assert not new.requires_grad or new.grad is None


def test_clip_grad_norm_follows_torchs_rule():
    torch.manual_seed(0)
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    b.load_state_dict(a.state_dict())
    x = torch.randn(8, 4)
    for net in (a, b):
        (net(x) ** 2).sum().mul(10).backward()
    norm = clip_grad_norm(list(a.parameters()), 0.5)
    reference = nn.utils.clip_grad_norm_(b.parameters(), 0.5)
    torch.testing.assert_close(norm, reference)
    assert norm > 0.5  # the clip acted
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad)
    assert clip_grad_norm([nn.Parameter(torch.zeros(2))], 1.0).item() == 0.0  # no gradients: nothing to clip
