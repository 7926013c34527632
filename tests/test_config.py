import argparse
import json

import pytest

from vla_rl_lib import OfflineRLConfig, RLConfig
from vla_rl_lib.errors import ConfigError


def test_offline_defaults_are_the_specifications():
    c = OfflineRLConfig()
    assert (c.num_epochs, c.batch_size, c.learning_rate, c.weight_decay, c.hidden_dim) == (100, 256, 3e-4, 1e-6, 256)
    assert (c.discount_gamma, c.tau, c.save_freq, c.eval_episodes) == (0.99, 0.005, 10, 10)
    assert c.output_dir == "./output/offline_rl"
    assert c.steps_per_epoch == 1000 and c.seed == 0 and c.device == "auto"


def test_online_defaults_are_the_specifications():
    c = RLConfig()
    assert c.algorithm == "ppo" and c.total_timesteps == 1_000_000 and c.rollout_steps == 2048
    assert c.batch_size == 64 and c.learning_rate == 3e-4 and c.discount_gamma == 0.99
    assert (c.ppo_epochs, c.ppo_clip_range, c.ppo_gae_lambda, c.ppo_value_coef, c.ppo_entropy_coef) == (4, 0.2, 0.95, 0.5, 0.01)
    assert c.ppo_clip_range_vf is None
    assert (c.buffer_size, c.learning_starts, c.tau) == (1_000_000, 10_000, 0.005)
    assert (c.log_freq, c.eval_freq, c.save_freq) == (1000, 5000, 10000)
    assert c.output_dir == "./output/online_rl"
    assert (c.group_size, c.kl_coef, c.clip_range, c.alpha) == (4, 0.1, 0.2, "auto")
    assert RLConfig(algorithm="sac").batch_size == 256  # the specification's SAC table


@pytest.mark.parametrize("cls,field,value,words", [
    (OfflineRLConfig, "learning_rate", -1.0, "> 0"),
    (OfflineRLConfig, "discount_gamma", 1.5, "<= 1"),
    (OfflineRLConfig, "batch_size", 0, ">= 1"),
    (OfflineRLConfig, "device", "tpu", "'cpu'"),
    (RLConfig, "algorithm", "dqn", "'ppo'"),
    (RLConfig, "ppo_clip_range", 0.0, "> 0"),
    (RLConfig, "alpha", "sometimes", "'auto'"),
    (RLConfig, "alpha", -0.1, ">= 0"),
    (RLConfig, "group_size", 1, ">= 2"),
    (RLConfig, "tau", float("nan"), "finite"),
])
def test_invalid_values_name_field_value_and_range(cls, field, value, words):
    with pytest.raises(ValueError) as info:
        cls(**{field: value})
    msg = str(info.value)
    assert isinstance(info.value, ConfigError)
    assert f"{cls.__name__}.{field}=" in msg and repr(value) in msg and words in msg


def test_unknown_field_is_rejected():
    with pytest.raises(ConfigError, match="no field"):
        OfflineRLConfig.from_dict({"num_epoch": 3})


@pytest.mark.parametrize("cfg", [OfflineRLConfig(num_epochs=7, dataset="x.hdf5"),
                                 RLConfig(algorithm="sac", alpha=0.2, objective_weights={"safety": 1.0})])
def test_yaml_and_json_round_trip(cfg, tmp_path):
    cls = type(cfg)
    assert cls.from_yaml(cfg.to_yaml()) == cfg
    assert cls.from_json(cfg.to_json()) == cfg
    cfg.to_yaml(tmp_path / "c.yaml")
    cfg.to_json(tmp_path / "c.json")
    assert cls.from_yaml(tmp_path / "c.yaml") == cfg
    assert cls.from_json(tmp_path / "c.json") == cfg
    assert json.loads(cfg.to_json())["seed"] == 0


def test_command_line_flags_come_from_the_dataclass():
    parser = argparse.ArgumentParser()
    RLConfig.add_arguments(parser)
    ns = parser.parse_args(["--total-timesteps", "500", "--ppo_clip_range", "0.1", "--ppo-anneal-lr", "--alpha", "0.3"])
    cfg = RLConfig.from_args(ns)
    assert cfg.total_timesteps == 500 and cfg.ppo_clip_range == 0.1 and cfg.ppo_anneal_lr is True and cfg.alpha == 0.3
    with pytest.raises(ConfigError, match="not a valid"):
        RLConfig.from_args(parser.parse_args(["--total_timesteps", "lots"]))
