"""PPO: the loss functions against slow reference code, the rollout machinery (autoreset modes,
truncation bootstrap, dict observations, normalisers), hand-off of offline policies, checkpoints,
bad input, and learning (CartPole-v1 solved; Pendulum-v1 beyond random)."""
import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn as nn

from vla_rl_lib.callbacks import StopOnReward
from vla_rl_lib.config import RLConfig
from vla_rl_lib.errors import IncompatibleError, UnknownEnvironmentError
from vla_rl_lib.nets import CategoricalPolicy, DeterministicPolicy, GaussianPolicy, Policy, TanhGaussianPolicy
from vla_rl_lib.online.ppo import PPOTrainer, clipped_surrogate, value_loss
from vla_rl_lib.online.rollout import (GaussianExploration, RewardScaler, RunningMeanStd, compute_gae,
                                       concat_obs, index_obs, stack_obs)

# rl-baselines3-zoo's tuned PPO for CartPole-v1
ZOO_CARTPOLE = dict(env="CartPole-v1", num_envs=8, rollout_steps=32, batch_size=256, ppo_gae_lambda=0.8,
                    discount_gamma=0.98, ppo_epochs=20, learning_rate=1e-3, ppo_clip_range=0.2, ppo_entropy_coef=0.0)


def small_config(tmp_path, **kw):
    base = dict(num_envs=2, rollout_steps=16, batch_size=16, ppo_epochs=2, total_timesteps=64, eval_freq=0,
                eval_episodes=0, save_freq=0, log_freq=32, device="cpu", output_dir=str(tmp_path / "run"))
    base.update(kw)
    return RLConfig(**base)


# ------------------------------------------------------------------------------------------------
# loss functions
# ------------------------------------------------------------------------------------------------
def reference_gae(rewards, values, next_values, terms, dones, gamma, lam):
    T, N = rewards.shape
    adv = np.zeros((T, N))
    for i in range(N):
        running = 0.0
        for t in reversed(range(T)):
            boot = 0.0 if terms[t, i] else gamma * next_values[t, i]
            delta = rewards[t, i] + boot - values[t, i]
            running = delta + (0.0 if dones[t, i] else gamma * lam * running)
            adv[t, i] = running
    return adv, adv + values


def test_compute_gae_matches_a_slow_reference_loop():
    rng = np.random.default_rng(0)
    T, N = 37, 5
    rewards, values, next_values = rng.normal(size=(3, T, N))
    terms = rng.random((T, N)) < 0.1
    truncs = (rng.random((T, N)) < 0.1) & ~terms
    dones = terms | truncs
    adv, ret = compute_gae(*(torch.tensor(x, dtype=torch.float64) for x in (rewards, values, next_values, terms, dones)),
                           gamma=0.97, gae_lambda=0.9)
    ref_adv, ref_ret = reference_gae(rewards, values, next_values, terms, dones, 0.97, 0.9)
    np.testing.assert_allclose(adv.numpy(), ref_adv, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ret.numpy(), ref_ret, rtol=1e-10, atol=1e-10)


def test_compute_gae_bootstraps_truncation_but_not_termination():
    # one step, V(s)=1, V(s')=10, r=1, gamma=0.5
    r, v, nv = torch.tensor([[1.0, 1.0]]), torch.tensor([[1.0, 1.0]]), torch.tensor([[10.0, 10.0]])
    terms, dones = torch.tensor([[1.0, 0.0]]), torch.tensor([[1.0, 1.0]])  # env 0 terminated, env 1 truncated
    adv, _ = compute_gae(r, v, nv, terms, dones, gamma=0.5, gae_lambda=0.95)
    assert adv[0, 0].item() == pytest.approx(1.0 - 1.0)           # r - V(s)
    assert adv[0, 1].item() == pytest.approx(1.0 + 0.5 * 10 - 1.0)  # r + gamma V(s_final) - V(s)
    # an episode end stops the recursion: the step before a done does not see the next episode
    r2 = torch.tensor([[0.0], [0.0], [5.0]])
    adv2, _ = compute_gae(r2, torch.zeros(3, 1), torch.zeros(3, 1), torch.zeros(3, 1),
                          torch.tensor([[0.0], [1.0], [0.0]]), gamma=1.0, gae_lambda=1.0)
    assert adv2[:, 0].tolist() == [0.0, 0.0, 5.0]


def test_categorical_policy_samples_by_inversion_with_the_softmax_probabilities():
    torch.manual_seed(0)
    policy = CategoricalPolicy(3, 4)
    with torch.no_grad():
        policy.net[-1].bias.copy_(torch.tensor([1.5, 0.0, -1.0, 0.7]))
    obs = torch.zeros(40_000, 3)
    actions, log_probs, value = policy.act(obs)
    probs = torch.softmax(policy.net(obs[:1]), -1)[0]
    freq = torch.bincount(actions, minlength=4).float() / len(actions)
    assert value is None and actions.dtype == torch.long and int(actions.max()) <= 3
    assert torch.allclose(freq, probs, atol=0.01), (freq, probs)  # 4 sigma of a 40k-sample frequency
    assert torch.allclose(log_probs, probs.log()[actions], atol=1e-6)


def test_clipped_surrogate_value_and_gradient():
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    ratio = torch.tensor([1.1, 1.5, 0.9, 0.5], requires_grad=True)
    loss = clipped_surrogate(ratio, adv, clip_range=0.2)
    # min(rA, clip(r)A): 1.1, 1.2 (clipped), -0.9, -0.8 (clipped: min(-0.5, -0.8))
    assert loss.item() == pytest.approx(-(1.1 + 1.2 - 0.9 - 0.8) / 4)
    loss.backward()
    # gradient -A/n where the unclipped term is the minimum, 0 where the clipped one is
    np.testing.assert_allclose(ratio.grad.numpy(), [-0.25, 0.0, 0.25, 0.0])


def test_value_loss_with_and_without_clipping():
    v = torch.tensor([2.0, 0.0], requires_grad=True)
    old, ret = torch.tensor([0.0, 0.0]), torch.tensor([3.0, 1.0])
    assert value_loss(v, old, ret).item() == pytest.approx((1 + 1) / 2)
    clipped = value_loss(v, old, ret, clip_range_vf=0.5)  # max((2-3)^2, (0.5-3)^2) = 6.25 ; (0-1)^2 = 1
    assert clipped.item() == pytest.approx((6.25 + 1.0) / 2)
    clipped.backward()
    assert v.grad[0].item() == 0.0  # the clipped branch is constant in v


def test_running_statistics_match_numpy():
    rng = np.random.default_rng(1)
    data = rng.normal(3.0, 2.0, size=(1000, 3))
    rms = RunningMeanStd((3,), epsilon=0.0)
    for chunk in np.array_split(data, 7):
        rms.update(chunk)
    np.testing.assert_allclose(rms.mean.numpy(), data.mean(0), rtol=1e-9)
    np.testing.assert_allclose(rms.var.numpy(), data.var(0), rtol=1e-9)
    scaler = RewardScaler(num_envs=1, gamma=0.5)
    out = [scaler(np.array([1.0]), np.array([False]))[0] for _ in range(50)]
    assert out[-1] == pytest.approx(1.0 / np.sqrt(scaler.rms.var.item() + 1e-8))
    assert scaler.returns.item() == pytest.approx(2.0, rel=1e-6)  # G = 1 / (1 - gamma)


def test_observation_helpers_handle_dicts_with_strings():
    single = [{"state": np.full(2, i, np.float32), "instruction": f"go {i}"} for i in range(3)]
    batch = stack_obs(single)
    assert batch["state"].shape == (3, 2) and batch["instruction"] == ["go 0", "go 1", "go 2"]
    both = concat_obs([batch, batch])
    assert both["state"].shape == (6, 2) and len(both["instruction"]) == 6
    picked = index_obs(both, torch.tensor([5, 0]))
    assert picked["instruction"] == ["go 2", "go 0"] and picked["state"][:, 0].tolist() == [2.0, 0.0]


# ------------------------------------------------------------------------------------------------
# rollouts
# ------------------------------------------------------------------------------------------------
class Corridor(gym.Env):
    """Walk right to the goal at x=3 (terminates, +1) or stop after 5 steps (truncated, 0)."""

    observation_space = gym.spaces.Box(-10, 10, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.x, self.t = 0, 0
        return np.array([self.x], np.float32), {}

    def step(self, action):
        self.x += 1 if int(action) == 1 else -1
        self.t += 1
        terminated = self.x >= 3
        return np.array([self.x], np.float32), float(terminated), terminated, self.t >= 5 and not terminated, {}


@pytest.mark.parametrize("mode", [gym.vector.AutoresetMode.NEXT_STEP, gym.vector.AutoresetMode.SAME_STEP])
def test_rollout_bootstraps_truncated_episodes_from_their_final_observation(tmp_path, mode):
    envs = gym.vector.SyncVectorEnv([Corridor, Corridor], autoreset_mode=mode)
    trainer = PPOTrainer(envs, config=small_config(tmp_path, rollout_steps=24))
    trainer.collect()
    buf = trainer.buffer
    with torch.no_grad():
        value_of = lambda x: trainer.value_net(torch.tensor([[float(x)]])).item()
        obs = torch.stack([o for o in buf.obs]).squeeze(-1)  # (T, N)
        checked = 0
        for t in range(buf.steps):
            for i in range(buf.num_envs):
                if not buf.valid[t, i]:
                    assert mode == gym.vector.AutoresetMode.NEXT_STEP and buf.dones[t - 1, i] == 1
                    continue
                if buf.dones[t, i] and not buf.terminations[t, i]:  # truncated: x after the 5th step
                    prev_x = obs[t, i].item()
                    final_x = prev_x + (1 if buf.actions[t, i].item() == 1 else -1)
                    assert buf.next_values[t, i].item() == pytest.approx(value_of(final_x), abs=1e-6)
                    checked += 1
        assert checked > 0
        # the critic's values, computed for the whole rollout after it, are V(s_t) of each stored observation
        torch.testing.assert_close(buf.values, trainer.value_net(buf.obs.reshape(-1, 1)).reshape(buf.values.shape))
    metrics = trainer.learn()
    for key in ("policy_loss", "value_loss", "entropy", "approx_kl", "clip_fraction", "explained_variance",
                "learning_rate"):
        assert np.isfinite(metrics[key])
    # episode statistics count real steps only (5 per truncated episode, 3 per success)
    assert set(trainer.recent_lengths) <= {3, 5} and trainer.recent_lengths


def test_cartpole_rollouts_step_gymnasiums_batched_cartpole_with_the_same_dynamics(tmp_path):
    """PPO built from the id "CartPole-v1" steps gymnasium's numpy-batched CartPoleVectorEnv (its
    registered vector entry point). It must be the same environment: from the same state, the same
    actions give bit-identical observations, rewards and episode ends, with the time limit of 500;
    and, in NEXT_STEP autoreset, the step after an episode end is a reset step the rollout leaves out."""
    trainer = PPOTrainer("CartPole-v1", config=small_config(tmp_path, num_envs=3))
    envs = trainer.envs
    assert type(envs.unwrapped).__name__ == "CartPoleVectorEnv" and envs.unwrapped.max_episode_steps == 500
    single = gym.make("CartPole-v1")
    single.reset(seed=0)
    envs.reset(seed=0)
    envs.unwrapped.state = np.tile(np.array(single.unwrapped.state, dtype=np.float64)[:, None], (1, 3))
    obs, steps = np.array(single.unwrapped.state, dtype=np.float32), 0
    while True:  # a balancing controller, so the episode reaches the time limit
        x, x_dot, theta, theta_dot = obs
        action = int(theta + 0.3 * theta_dot + 0.01 * x + 0.05 * x_dot > 0)
        obs, reward, terminated, truncated, _ = single.step(action)
        v_obs, v_reward, v_term, v_trunc, _ = envs.step(np.full(3, action))
        steps += 1
        np.testing.assert_array_equal(v_obs, np.tile(obs, (3, 1)))
        assert (v_reward == reward).all() and (v_term == terminated).all() and (v_trunc == truncated).all()
        if terminated or truncated:
            break
    assert steps == 500 and truncated and not terminated
    reset_obs, reward, terminated, truncated, _ = envs.step(np.zeros(3, dtype=np.int64))  # NEXT_STEP: the reset step
    assert (reward == 0).all() and not terminated.any() and not truncated.any() and (np.abs(reset_obs) <= 0.05).all()
    # a rollout over episode ends: reset steps are invalid, and every valid step is a real transition
    trainer = PPOTrainer("CartPole-v1", config=small_config(tmp_path, num_envs=3, rollout_steps=64))
    trainer.collect()
    buf = trainer.buffer
    ends = buf.dones.bool() & buf.valid
    assert ends.any() and (~buf.valid[1:] == ends[:-1]).all() and buf.valid[0].all()


class TextWorld(gym.Env):
    """Dict observations with an instruction: reward 1 for the action the instruction names."""

    observation_space = gym.spaces.Dict({"state": gym.spaces.Box(-1, 1, (2,), np.float32),
                                         "instruction": gym.spaces.Text(max_length=16)})
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._obs(), {}

    def _obs(self):
        self.target = int(self.np_random.integers(2))
        return {"state": self.np_random.uniform(-1, 1, 2).astype(np.float32), "instruction": ["left", "right"][self.target]}

    def step(self, action):
        reward = float(int(action) == self.target)
        self.t += 1
        return self._obs(), reward, False, self.t >= 8, {}


class InstructionPolicy(Policy):
    """A tiny language-conditioned policy with a value head (the interface VLAPolicy follows)."""

    discrete, has_value = True, True

    def __init__(self):
        nn.Module.__init__(self)
        self.words = {"left": 0, "right": 1}
        self.embed = nn.Embedding(2, 8)
        self.head = nn.Linear(10, 3)
        self.n_actions = 2

    def _out(self, obs):
        ids = torch.tensor([self.words[w] for w in obs["instruction"]])
        return self.head(torch.cat([self.embed(ids), obs["state"]], -1))

    def distribution(self, obs):
        return torch.distributions.Categorical(logits=self._out(obs)[:, :2])

    def get_action(self, obs, deterministic=False):
        d = self.distribution(obs)
        return d.probs.argmax(-1) if deterministic else d.sample()

    def log_prob(self, obs, actions):
        return self.distribution(obs).log_prob(actions)

    def entropy(self, obs):
        return self.distribution(obs).entropy()

    def value(self, obs):
        return self._out(obs)[:, 2]

    def predict(self, obs, deterministic=True):
        batch = stack_obs([obs])
        with torch.no_grad():
            return int(self.get_action({"state": torch.as_tensor(batch["state"]), "instruction": batch["instruction"]},
                                       deterministic)[0])


def test_ppo_trains_a_dict_observation_policy_with_its_own_value_head(tmp_path):
    torch.manual_seed(0)
    policy = InstructionPolicy()
    cfg = small_config(tmp_path, num_envs=4, rollout_steps=32, batch_size=64, ppo_epochs=4, total_timesteps=2560,
                       learning_rate=3e-2, ppo_entropy_coef=0.0)
    trainer = PPOTrainer(gym.vector.SyncVectorEnv([TextWorld] * 4), config=cfg, policy=policy)
    assert trainer.value_net is None and trainer.policy is policy
    trainer.train()
    result = trainer.evaluate(num_episodes=5, env=TextWorld())
    assert result["mean_reward"] >= 7.5  # 8 steps, reward 1 per correct action (random: 4)


# ------------------------------------------------------------------------------------------------
# policies handed over from offline training
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [
    lambda: GaussianPolicy(3, 1, tanh_mean=True, action_low=-2.0, action_high=2.0),       # IQL
    lambda: TanhGaussianPolicy(3, 1, hidden=(32, 32), action_low=-2.0, action_high=2.0),  # CQL
    lambda: DeterministicPolicy(3, 1, hidden=(32, 32), action_low=-2.0, action_high=2.0),  # TD3+BC
])
def test_offline_policies_are_fine_tuned_in_place(tmp_path, make):
    policy = make()
    policy.set_obs_normalization(np.array([0.1, 0.2, 0.3]), np.array([2.0, 2.0, 2.0]))
    obs = np.array([[0.5, -0.5, 1.0]], np.float32)
    before = policy.predict(obs).copy()
    trainer = PPOTrainer("Pendulum-v1", config=small_config(tmp_path), policy=policy)
    if isinstance(policy, DeterministicPolicy):
        assert isinstance(trainer.policy, GaussianExploration) and trainer.policy.base is policy
    else:
        assert trainer.policy is policy
    np.testing.assert_allclose(trainer.predict(obs), before, atol=1e-6)  # the same behaviour to start from
    trainer.train()
    assert not np.allclose(policy.predict(obs), before)  # the offline policy itself was trained
    torch.testing.assert_close(policy.obs_std, torch.full((3,), 2.0))  # its normaliser is kept


def test_policy_that_does_not_fit_the_action_space_is_rejected(tmp_path):
    cfg = small_config(tmp_path)
    with pytest.raises(IncompatibleError, match="3 actions"):
        PPOTrainer("CartPole-v1", config=cfg, policy=CategoricalPolicy(4, 3))
    with pytest.raises(IncompatibleError, match="continuous"):
        PPOTrainer("CartPole-v1", config=cfg, policy=GaussianPolicy(4, 2))
    with pytest.raises(IncompatibleError, match="size 5"):
        PPOTrainer("Pendulum-v1", config=cfg, policy=GaussianPolicy(5, 1))
    with pytest.raises(IncompatibleError, match="shape"):
        PPOTrainer("Pendulum-v1", config=cfg, policy=GaussianPolicy(3, 2))


def test_unknown_environment_id_is_one_clear_error(tmp_path):
    with pytest.raises(UnknownEnvironmentError, match="CartPole-v1"):
        PPOTrainer("CartPol-v1", config=small_config(tmp_path))


# ------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------
def test_normaliser_statistics_are_saved_and_restored(tmp_path):
    cfg = small_config(tmp_path, env="Pendulum-v1", ppo_normalize_obs=True, ppo_normalize_reward=True,
                       ppo_anneal_lr=True, total_timesteps=96)
    trainer = PPOTrainer(config=cfg).train()
    assert trainer.obs_rms.count.item() > 90 and trainer.reward_scaler.rms.count.item() > 90
    assert trainer.optimizer.param_groups[0]["lr"] < cfg.learning_rate  # annealed
    path = trainer.save(tmp_path / "ckpt.pt")
    restored = PPOTrainer.from_checkpoint(path, output_dir=str(tmp_path / "other"))
    for a, b in [(trainer.obs_rms.mean, restored.obs_rms.mean), (trainer.obs_rms.var, restored.obs_rms.var),
                 (trainer.reward_scaler.rms.var, restored.reward_scaler.rms.var),
                 (trainer.policy.obs_mean, restored.policy.obs_mean), (trainer.policy.obs_std, restored.policy.obs_std)]:
        torch.testing.assert_close(a, b)
    assert restored.global_step == trainer.global_step == 96
    obs = np.array([0.3, -0.9, 0.4], np.float32)
    np.testing.assert_allclose(restored.predict(obs), trainer.predict(obs))


def test_same_seed_same_run_and_resume_continues_it(tmp_path):
    """Two runs with one seed give identical weights. A resumed run restores weights, optimiser,
    normalisers, generators and ``global_step`` exactly (and, on CartPole-v1's batched vector env,
    the environment's state: that the continuation is bit-identical is tested in test_resume_exact.py)."""
    def run(out, steps):
        return PPOTrainer(config=small_config(tmp_path, env="CartPole-v1", output_dir=str(tmp_path / out),
                                              total_timesteps=steps)).train()

    a, b = run("a", 128), run("b", 128)
    for (name, pa), pb in zip(a.policy.state_dict().items(), b.policy.state_dict().values()):
        torch.testing.assert_close(pa, pb, msg=name)
    short = run("c", 64)
    resumed = PPOTrainer.from_checkpoint(short.run_dir / "checkpoint.pt")
    assert resumed.global_step == 64
    for pa, pb in zip(short.optimizer.state_dict()["state"].values(), resumed.optimizer.state_dict()["state"].values()):
        torch.testing.assert_close(pa["exp_avg"], pb["exp_avg"])
    resumed.train(total_timesteps=128)
    assert resumed.global_step == 128
    assert not torch.equal(resumed.policy.net[0].weight, short.policy.net[0].weight)  # it kept learning


# ------------------------------------------------------------------------------------------------
# learning
# ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ppo_solves_cartpole(tmp_path):
    """rl-zoo's tuned hyperparameters. Measured with benchmarks/online.py (seeds 0-4, evaluation every
    10,240 steps): every seed reached an evaluation mean of 500 by 41k steps; seed 1 at 20,480, so the
    test uses seed 1 to keep CI short. Evaluations every 10,240 steps stop training once the mean
    reaches 475; the budget of 100k steps leaves room for a different trajectory on another machine."""
    cfg = RLConfig(**ZOO_CARTPOLE, total_timesteps=100_000, eval_freq=10_240, eval_episodes=10, log_freq=5000,
                   save_freq=0, seed=1, device="cpu", output_dir=str(tmp_path / "run"))
    stop = StopOnReward(475)
    trainer = PPOTrainer(config=cfg).train(callbacks=[stop])
    result = trainer.evaluate(num_episodes=10)
    assert result["mean_reward"] >= 475, (stop.reached_at, result)


@pytest.mark.slow
def test_ppo_continuous_learns_pendulum_beyond_random(tmp_path):
    """A random policy scores about -1200 on Pendulum-v1. PPO with a Gaussian policy and reward
    scaling reached about -130 (evaluation mean) by 20k steps when measured (seed 0); the test asks
    for better than -400 after 24k steps."""
    cfg = RLConfig(env="Pendulum-v1", num_envs=4, rollout_steps=256, batch_size=64, ppo_gae_lambda=0.95,
                   discount_gamma=0.9, ppo_epochs=10, learning_rate=1e-3, ppo_entropy_coef=0.0,
                   ppo_normalize_reward=True, total_timesteps=24_576, eval_freq=0, eval_episodes=0, save_freq=0,
                   log_freq=10_000, seed=0, device="cpu", output_dir=str(tmp_path / "run"))
    trainer = PPOTrainer(config=cfg).train()
    assert trainer.evaluate(num_episodes=10)["mean_reward"] > -400


def test_final_observations_from_both_vector_env_layouts():
    from vla_rl_lib.online.rollout import final_observations

    per_env = np.empty(3, dtype=object)
    per_env[:] = [np.full(2, i, dtype=np.float32) for i in range(3)]
    np.testing.assert_array_equal(final_observations({"final_obs": per_env}, [0, 2]), [[0, 0], [2, 2]])
    batched = {"state": np.arange(6, dtype=np.float32).reshape(3, 2), "instruction": ["a", "b", "c"]}
    out = final_observations({"final_obs": batched}, np.array([1, 2]))
    np.testing.assert_array_equal(out["state"], [[2, 3], [4, 5]])
    assert out["instruction"] == ["b", "c"]


def test_ppo_on_the_batched_driving_simulator_with_same_step_autoreset(tmp_path):
    from vla_rl_lib import RLConfig
    from vla_rl_lib.envs import BatchedDrivingEnv

    envs = BatchedDrivingEnv(4, autoreset_mode="same_step", max_episode_steps=20)
    from vla_rl_lib.vla import VLAModel, VLAPolicy

    policy = VLAPolicy(VLAModel())
    config = RLConfig(total_timesteps=96, rollout_steps=24, batch_size=48, ppo_epochs=1, eval_episodes=0,
                      save_freq=0, device="cpu", output_dir=str(tmp_path))
    trainer = PPOTrainer(env=envs, config=config, policy=policy)
    trainer.train()
    assert trainer.global_step == 96 and trainer.episodes_done >= 4  # episodes ended and were bootstrapped
