"""The kit leaves torch's distribution argument checks as the user set them (issue 18): its policies
skip the checks locally (validate_args=False), never by switching torch's global default."""
from __future__ import annotations

import pytest
import torch
from torch.distributions import Distribution, Normal

from vla_rl_lib.config import RLConfig
from vla_rl_lib.nets import CategoricalPolicy, GaussianPolicy, TanhGaussianPolicy
from vla_rl_lib.offline.iql import IQLTrainer
from vla_rl_lib.online.ppo import PPOTrainer

from shipped_pendulum import buffer as pendulum_buffer, config as pendulum_config


def kit_calls(tmp_path):
    """A few kit calls that build distributions: IQL updates, a PPO rollout and update, predictions."""
    IQLTrainer(3, 1, config=pendulum_config(tmp_path / "iql", 3, hidden_dim=8, batch_size=8)).train(pendulum_buffer())
    ppo = PPOTrainer(config=RLConfig(env="Pendulum-v1", num_envs=1, rollout_steps=8, batch_size=8, ppo_epochs=1,
                                     total_timesteps=8, eval_freq=0, eval_episodes=0, save_freq=0, device="cpu",
                                     hidden_dim=8, output_dir=str(tmp_path / "ppo"))).train()
    ppo.predict(torch.zeros(3).numpy())
    obs = torch.zeros(4, 3)
    for policy in (GaussianPolicy(3, 2, (8,)), TanhGaussianPolicy(3, 2, (8,)), CategoricalPolicy(3, 2, (8,))):
        policy.log_prob(obs, policy.get_action(obs))


@pytest.fixture
def restore_default():
    yield
    Distribution.set_default_validate_args(True)  # torch's default (outside python -O)


def test_a_users_bad_distribution_still_raises_after_kit_calls(tmp_path, restore_default):
    Distribution.set_default_validate_args(True)
    kit_calls(tmp_path)
    with pytest.raises(ValueError, match="scale"):
        Normal(torch.tensor(0.0), torch.tensor(-1.0))


class Probe(GaussianPolicy):
    """A user's policy that notes, each time the kit asks it for a distribution, whether a bad
    ``Normal`` of its own would be caught at that moment."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.caught = []

    def distribution(self, obs):
        try:
            Normal(torch.tensor(0.0), torch.tensor(-1.0))
            self.caught.append(False)
        except ValueError:
            self.caught.append(True)
        return super().distribution(obs)


def test_checks_stay_on_inside_the_kits_rollouts_and_updates(tmp_path, restore_default):
    Distribution.set_default_validate_args(True)
    probe = Probe(3, 1, (8,), action_low=-2.0, action_high=2.0)
    PPOTrainer(config=RLConfig(env="Pendulum-v1", num_envs=1, rollout_steps=8, batch_size=8, ppo_epochs=1,
                               total_timesteps=16, eval_freq=0, eval_episodes=0, save_freq=0, device="cpu",
                               output_dir=str(tmp_path / "ppo")), policy=probe).train()
    assert len(probe.caught) > 16 and all(probe.caught)  # acting and learning, never with the checks off


def test_a_user_who_switched_the_checks_off_keeps_them_off(tmp_path, restore_default):
    Distribution.set_default_validate_args(False)
    kit_calls(tmp_path)
    Normal(torch.tensor(0.0), torch.tensor(-1.0))  # no check, as the user asked
