"""``OfflineRLConfig.precision="bf16"``: bfloat16 matmuls, float32 weights and outputs, still learning."""
from __future__ import annotations

import pytest
import torch

from vla_rl_lib import trainer as trainer_module
from vla_rl_lib.config import OfflineRLConfig
from vla_rl_lib.errors import ConfigError
from vla_rl_lib.nets import OutputLinear, QEnsemble, TanhGaussianPolicy, mlp
from vla_rl_lib.offline.td3_bc import TD3BCTrainer

needs_bf16 = pytest.mark.skipif(not trainer_module.native_bf16("cpu"),
                                reason="this CPU has no native bfloat16 (AVX512-BF16/AMX)")


def _config(tmp_path, steps=10, precision="bf16", **kw):
    return OfflineRLConfig(num_epochs=1, steps_per_epoch=steps, batch_size=256, hidden_dim=64, eval_episodes=0,
                           save_freq=0, eval_freq=0, log_freq=1000, device="cpu", seed=0,
                           output_dir=str(tmp_path), precision=precision, **kw)


def test_precision_is_validated():
    with pytest.raises(ConfigError, match="precision"):
        OfflineRLConfig(precision="fp16")


def test_fp32_runs_without_autocast(tmp_path):
    trainer = TD3BCTrainer(3, 1, config=_config(tmp_path, precision="fp32"))
    with trainer.autocast():
        assert not torch.is_autocast_enabled("cpu")


def test_bf16_without_native_support_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(trainer_module, "native_bf16", lambda kind: False)
    trainer = TD3BCTrainer(3, 1, config=_config(tmp_path))
    with pytest.raises(ConfigError, match="native bfloat16.*precision='fp32'"):
        trainer.autocast()


@needs_bf16
def test_hidden_layers_run_in_bf16_and_outputs_in_float32(tmp_path):
    trainer = TD3BCTrainer(3, 1, config=_config(tmp_path))
    net = mlp(5, 2, (16, 16))
    seen = []
    net[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    q = QEnsemble(3, 1, (16, 16), n=2)
    with trainer.autocast():
        assert net(torch.randn(4, 5)).dtype == torch.float32
        assert seen == [torch.bfloat16]  # the hidden matmul ran in bfloat16
        for rows in (8, QEnsemble.LOOP_ROWS):  # both the batched and the per-member path
            out = q(torch.randn(rows, 3), torch.randn(rows, 1))
            assert out.dtype == torch.float32 and out.shape == (2, rows)
    assert isinstance(net[-1], OutputLinear) and net[-1].weight.dtype == torch.float32


@needs_bf16
def test_a_network_stepped_inside_one_update_is_seen_with_its_new_weights(tmp_path):
    """TD3+BC's actor loss reads the critic its own update has just stepped: under bf16 autocast it
    must see the new weights, not the bf16 copies autocast cached before the optimiser step."""
    trainer = TD3BCTrainer(3, 1, config=_config(tmp_path))
    net = mlp(5, 1, (16, 16))
    x = torch.randn(4, 5)
    with trainer.autocast():
        before = net(x)
        with torch.no_grad():
            net[0].weight.mul_(10.0)  # what an optimiser step does: an in-place change of the weights
        after = net(x)
    assert not torch.allclose(before, after)


@needs_bf16
def test_float32_output_keeps_large_values_exact_enough():
    """A bfloat16 output of ~300 would be rounded to a multiple of 2; the float32 output layer is not."""
    torch.manual_seed(0)
    layer = OutputLinear(64, 1)
    with torch.no_grad():
        layer.weight.fill_(1.0)
        layer.bias.fill_(0.0)
    x = torch.full((1, 64), 4.6875)  # exactly representable in bfloat16; sum 300.0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x + torch.tensor([[0.0] * 63 + [0.5]]))
    assert y.dtype == torch.float32 and abs(y.item() - 300.5) < 1e-3


def test_sample_many_actions_from_one_pass_matches_repeated_states():
    policy = TanhGaussianPolicy(4, 2, (16, 16))
    obs = torch.randn(3, 4)
    torch.manual_seed(1)
    a, logp = policy.sample(obs, num_samples=5)
    torch.manual_seed(1)
    b, logq = policy.sample(obs.repeat_interleave(5, dim=0))
    assert a.shape == (15, 2) and torch.allclose(a, b, atol=1e-6) and torch.allclose(logp, logq, atol=1e-5)


@needs_bf16
@pytest.mark.slow
def test_td3_bc_learns_in_bf16():
    """The TD3+BC learning test's data, budget and margin over BC (tests/test_offline_separation.py), in
    bfloat16 (measured: success 1.0 in bf16, as in float32; BC 0.0)."""
    from test_offline_separation import MARGIN, MIXED, _success

    assert _success("td3_bc", MIXED, precision="bf16") >= _success("bc", MIXED) + MARGIN
