"""The compiled update path (vla_rl_lib/compile.py) computes what the eager one does.

torch.compile takes 20-40 s per algorithm on a CPU, so these tests are marked slow.
``fallback_random`` makes inductor draw random numbers as eager torch does (SAC samples actions
inside its update), so the two paths see the same numbers and must agree to float rounding.
"""
import csv

import numpy as np
import pytest
import torch

from test_device import random_dataset
from vla_rl_lib.compile import compiled_update, prepare_optimizers, resolve_mode
from vla_rl_lib.config import OfflineRLConfig, RLConfig
from vla_rl_lib.data.buffer import OfflineReplayBuffer
from vla_rl_lib.errors import ConfigError
from vla_rl_lib.trainer import get_trainer_class


def losses(run_dir) -> dict:
    rows = list(csv.DictReader(open(run_dir / "metrics.csv")))
    keys = [k for k in rows[0] if k.endswith("loss")]
    return {k: np.array([float(r[k]) for r in rows if r.get(k)]) for k in keys}


@pytest.fixture
def same_random_numbers():
    import torch._inductor.config as inductor

    with inductor.patch(fallback_random=True):
        yield


def test_modes_and_optimizers():
    assert resolve_mode("auto", torch.device("cuda")) == "reduce-overhead"
    assert resolve_mode("auto", torch.device("cpu")) == "default"
    net = torch.nn.Linear(2, 1)
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 10)
    prepare_optimizers(opt)
    lr = opt.param_groups[0]["lr"]
    assert isinstance(lr, torch.Tensor) and float(lr) == pytest.approx(0.1)
    net(torch.ones(1, 2)).sum().backward()
    opt.step()
    schedule.step()  # updates the tensor in place: a compiled step reads the new value without recompiling
    assert opt.param_groups[0]["lr"] is lr and float(lr) < 0.1
    opt.zero_grad()
    assert net.weight.grad is None
    assert compiled_update(lambda batch: batch, "cpu", "default")({"x": torch.ones(1)})["x"].item() == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["iql", "cql"])
def test_compiled_offline_update_matches_eager(tmp_path, same_random_numbers, name):
    """IQL (its cosine actor schedule: learning rates as tensors) and CQL (its temperature and actor
    losses share a sampled action: graphs retained) for 12 steps, both ways."""
    runs = {}
    for compile_ in (False, True):
        torch.manual_seed(0)
        cfg = OfflineRLConfig(device="cpu", num_epochs=1, steps_per_epoch=12, batch_size=32, hidden_dim=64,
                              eval_freq=0, eval_episodes=0, save_freq=0, log_freq=1, compile=compile_,
                              output_dir=str(tmp_path / str(compile_)))
        trainer = get_trainer_class(name)(3, 1, cfg)
        trainer.train(OfflineReplayBuffer(3, 1).load_dataset(random_dataset()))
        runs[compile_] = losses(trainer.run_dir)
    for key, eager in runs[False].items():
        np.testing.assert_allclose(runs[True][key], eager, rtol=1e-4, atol=1e-5, err_msg=key)
        assert len(eager) == 12


@pytest.mark.slow
def test_compiled_sac_update_matches_eager(tmp_path, same_random_numbers):
    """SAC with a fixed temperature (compile=True refuses alpha='auto': see vla_rl_lib/online/sac.py)."""
    with pytest.raises(ConfigError, match="alpha='auto'"):
        get_trainer_class("sac")(env="Pendulum-v1", config=RLConfig(algorithm="sac", device="cpu", compile=True))
    results = []
    for compile_ in (False, True):
        cfg = RLConfig(algorithm="sac", device="cpu", total_timesteps=60, learning_starts=40, batch_size=32, alpha=0.2,
                       hidden_dim=64, eval_freq=0, eval_episodes=0, save_freq=0, log_freq=1, seed=0, compile=compile_,
                       output_dir=str(tmp_path / str(compile_)))
        trainer = get_trainer_class("sac")(env="Pendulum-v1", config=cfg).train()
        results.append(losses(trainer.run_dir))
    for key, eager in results[0].items():
        assert len(eager) >= 15
        np.testing.assert_allclose(results[1][key], eager, rtol=1e-4, atol=1e-5, err_msg=key)
