"""VLAPolicy: the policy interface over a VLAModel, consistent with its distribution."""
import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Normal

from vla_rl_lib.envs.driving import DrivingEnv
from vla_rl_lib.errors import CheckpointError, IncompatibleError
from vla_rl_lib.vla.model import VLAModel
from vla_rl_lib.vla.policy import VLAPolicy, load_policy

TINY = dict(image_size=32, vision_channels=[8, 16, 16], embed_dim=32, hidden_dim=32, text_heads=2)


def obs_batch(n=4, seed=0):
    env = DrivingEnv(image_size=32)
    obs = [env.reset(seed=seed + i)[0] for i in range(n)]
    return {"image": np.stack([o["image"] for o in obs]), "instruction": [o["instruction"] for o in obs],
            "state": np.stack([o["state"] for o in obs])}


@pytest.mark.parametrize("fusion", ["film", "cross_attention"])
def test_continuous_policy_matches_its_gaussian(fusion):
    torch.manual_seed(0)
    policy = VLAPolicy(VLAModel(fusion=fusion, state_indices=[1, 2], **TINY))
    obs = obs_batch()
    assert policy.has_value and not policy.discrete
    out = policy(obs)
    dist = Normal(out["mean"], out["log_std"].exp())
    actions = policy.get_action(obs)
    assert actions.shape == (4, 2)
    assert torch.allclose(policy.log_prob(obs, actions), dist.log_prob(actions).sum(-1), atol=1e-5)
    assert torch.allclose(policy.entropy(obs), dist.entropy().sum(-1), atol=1e-5)
    assert torch.allclose(policy.value(obs), out["value"])
    lp, ent, val = policy.evaluate_actions(obs, actions)
    assert torch.allclose(lp, policy.log_prob(obs, actions)) and torch.allclose(ent, policy.entropy(obs))
    assert torch.allclose(val, policy.value(obs))
    a, lp2, v2 = policy.act(obs)
    assert torch.allclose(lp2, dist.log_prob(a).sum(-1), atol=1e-5) and torch.allclose(v2, out["value"])
    # deterministic = the mean; samples spread with sigma = exp(log_std_init)
    assert torch.allclose(policy.get_action(obs, deterministic=True), out["mean"])
    many = {"image": np.repeat(obs["image"][:1], 400, 0), "instruction": obs["instruction"][0],
            "state": np.repeat(obs["state"][:1], 400, 0)}
    samples = policy.get_action(many)
    assert abs(samples.std(0).mean().item() - np.exp(policy.model.config.log_std_init)) < 0.05
    # gradients reach the model through log_prob
    policy.log_prob(obs, actions).sum().backward()
    assert policy.model.log_std.grad is not None and policy.model.action_out.weight.grad.abs().sum() > 0


def test_token_policy_is_a_categorical_per_dimension():
    torch.manual_seed(0)
    policy = VLAPolicy(VLAModel(action_head="tokens", **TINY))
    obs = obs_batch()
    out = policy(obs)
    dist = Categorical(logits=out["logits"])
    actions = policy.get_action(obs)
    tokens = ((actions + 1) / 2 * 256).floor().long()
    assert torch.allclose(actions, -1 + (2 * tokens.float() + 1) / 256, atol=1e-6)  # bin centres
    assert torch.allclose(policy.log_prob(obs, actions), dist.log_prob(tokens).sum(-1), atol=1e-5)
    assert torch.allclose(policy.entropy(obs), dist.entropy().sum(-1), atol=1e-5)
    # any action in a bin has that bin's likelihood
    assert torch.allclose(policy.log_prob(obs, actions + 0.5 / 256), policy.log_prob(obs, actions), atol=1e-5)
    # an untrained head is close to uniform: entropy ~ 2 log 256
    assert abs(policy.entropy(obs).mean().item() - 2 * np.log(256)) < 0.05
    assert torch.allclose(policy.get_action(obs, deterministic=True), out["predicted_actions"])


def test_predict_single_and_batch_and_bad_obs():
    policy = VLAPolicy(VLAModel(state_indices=[1, 2], **TINY))
    env = DrivingEnv(image_size=32)
    obs, _ = env.reset(seed=3)
    a = policy.predict(obs)
    assert isinstance(a, np.ndarray) and a.shape == (2,)
    obs2, *_ = env.step(a)
    assert policy.predict(obs_batch(3)).shape == (3, 2)
    # torch tensors and bytes instructions (as HDF5 stores them) work too
    b = obs_batch(2)
    tb = {"image": torch.as_tensor(b["image"]), "instruction": [s.encode() for s in b["instruction"]],
          "state": torch.as_tensor(b["state"])}
    assert np.allclose(policy.predict(tb), policy.predict(b))
    with pytest.raises(IncompatibleError, match="dict"):
        policy.predict(obs["state"])
    with pytest.raises(IncompatibleError, match="image"):
        policy.get_action({"instruction": ["keep the lane"]})
    with pytest.raises(IncompatibleError, match="one instruction per image"):
        policy.get_action({"image": b["image"], "instruction": ["a", "b", "c"], "state": b["state"]})
    with pytest.raises(IncompatibleError, match=r"\(B, 32, 32, 3\)"):
        VLAPolicy(VLAModel(**TINY)).predict(DrivingEnv(image_size=64).reset(seed=0)[0])


def test_action_bounds_are_respected():
    model = VLAModel(**TINY)
    policy = VLAPolicy(model, action_low=[-2.0, 0.0], action_high=[2.0, 1.0])
    obs = obs_batch(2)
    unit = policy(obs)["mean"]
    a = policy.get_action(obs, deterministic=True)
    assert torch.allclose(a[:, 0], unit[:, 0] * 2.0, atol=1e-6)
    assert torch.allclose(a[:, 1], (unit[:, 1] + 1) / 2, atol=1e-6)
    dist = Normal(unit, policy(obs)["log_std"].exp())
    assert torch.allclose(policy.log_prob(obs, a), dist.log_prob(policy.unscale_action(a)).sum(-1), atol=1e-5)


def test_load_policy(tmp_path):
    import gymnasium as gym

    VLAModel(**TINY).save_pretrained(tmp_path / "m")
    policy = load_policy(tmp_path / "m", action_space=gym.spaces.Box(-1, 1, (2,)))
    assert isinstance(policy, VLAPolicy) and policy.model.config.image_size == 32
    with pytest.raises(IncompatibleError, match="action space"):
        load_policy(tmp_path / "m", action_space=gym.spaces.Box(-1, 1, (3,)))
    with pytest.raises(CheckpointError, match="missing"):
        (tmp_path / "m" / "model.safetensors").unlink()
        load_policy(tmp_path / "m")


def test_obs_from_batch():
    batch = {"observations": torch.zeros(2, 18), "next_observations": torch.ones(2, 18),
             "images": torch.zeros(2, 32, 32, 3, dtype=torch.uint8),
             "next_images": torch.ones(2, 32, 32, 3, dtype=torch.uint8), "instructions": ["keep the lane"] * 2}
    obs = VLAPolicy.obs_from_batch(batch)
    nxt = VLAPolicy.obs_from_batch(batch, next=True)
    assert obs["state"].sum() == 0 and nxt["state"].sum() == 36 and nxt["image"].sum() > 0
    policy = VLAPolicy(VLAModel(**TINY))
    assert policy.get_action(obs).shape == (2, 2)
    with pytest.raises(IncompatibleError, match="images and instructions"):
        VLAPolicy.obs_from_batch({"observations": torch.zeros(2, 18)})
