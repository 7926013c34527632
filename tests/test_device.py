"""Device handling, checked on the CPU: nothing in a training path goes through numpy.

``no_host_copies`` (tests/conftest.py) makes ``np.asarray(tensor)`` and ``tensor.numpy()`` raise:
on a CPU they silently work, on a GPU they crash or stall, so these tests catch the device bugs
that a CPU-only CI would otherwise miss. They also check that every trainer takes its device as a
``torch.device`` or as a string, that checkpoints move between device types, and the batched
simulator's on-device sampler (same seed -> same scenario, no per-world Python loop).
"""
import numpy as np
import pytest
import torch

from vla_rl_lib.config import OfflineRLConfig, RLConfig
from vla_rl_lib.data.buffer import OfflineReplayBuffer
from vla_rl_lib.envs import driving as D
from vla_rl_lib.envs.batched import BatchedDrivingEnv
from vla_rl_lib.envs.text import IndexedText
from vla_rl_lib.trainer import get_trainer_class, load_generator_state
from vla_rl_lib.vla.model import VLAModel
from vla_rl_lib.vla.policy import VLAPolicy

TINY = dict(image_size=32, vision_channels=[8, 16, 16], embed_dim=32, hidden_dim=64, text_heads=2,
            state_indices=[1, 2])
# On a machine with CUDA (the GPU check runs this file there too) every device test also runs on it.
DEVICES = [torch.device("cpu"), "cpu"] + ([torch.device("cuda"), "cuda"] if torch.cuda.is_available() else [])


def same_device(actual: torch.device, asked) -> bool:
    return actual.type == torch.device(asked).type


def random_dataset(n=400, obs_dim=3, act_dim=1, episode=50, seed=0):
    rng = np.random.default_rng(seed)
    obs = rng.normal(size=(n, obs_dim)).astype(np.float32) * 3 + 1
    timeouts = np.zeros(n, bool)
    timeouts[episode - 1::episode] = True
    return {"observations": obs, "actions": rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
            "rewards": rng.normal(size=n).astype(np.float32), "terminals": np.zeros(n, bool),
            "timeouts": timeouts, "next_observations": np.roll(obs, -1, 0)}


def offline_config(tmp_path, device, **kw):
    return OfflineRLConfig(device=device, num_epochs=1, steps_per_epoch=4, batch_size=16, eval_freq=0,
                           eval_episodes=0, save_freq=0, log_freq=2, output_dir=str(tmp_path), **kw)


# ---- the two crashes seen on a GPU, as CPU regressions ---------------------------------------------------
def test_td3_bc_trains_without_host_copies(tmp_path, no_host_copies):
    """TD3+BC on CUDA crashed before training: set_obs_normalization called np.asarray on a CUDA tensor."""
    trainer = get_trainer_class("td3_bc")(3, 1, offline_config(tmp_path, "cpu", normalize_states=True))
    buffer = OfflineReplayBuffer(3, 1).load_dataset(random_dataset())
    with no_host_copies():
        trainer.train(buffer)
    assert trainer.global_step == 4
    torch.testing.assert_close(trainer.actor_target.obs_mean, trainer.policy.obs_mean)
    assert float(trainer.policy.obs_mean[0]) == pytest.approx(1.0, abs=0.5)  # the dataset's statistics


def tensor_driving_env(n=4, **kw):
    """The simulator's GPU code path on the CPU: torch backend, on-device sampler, mask painter."""
    return BatchedDrivingEnv(n, image_size=32, max_episode_steps=12, backend="torch", painter="masks", **kw)


def ppo_on(envs, device, tmp_path, **kw):
    cfg = RLConfig(device=device, rollout_steps=16, batch_size=32, ppo_epochs=1, eval_episodes=0, eval_freq=0,
                   save_freq=0, log_freq=64, total_timesteps=64, output_dir=str(tmp_path), seed=3, **kw)
    torch.manual_seed(0)
    return get_trainer_class("ppo")(env=envs, policy=VLAPolicy(VLAModel(**TINY)), config=cfg)


@pytest.mark.parametrize("device", DEVICES)
def test_ppo_rollout_on_a_tensor_env_stays_on_the_device(tmp_path, no_host_copies, device):
    """PPO on the batched simulator with return_tensors="torch" crashed in its first rollout on CUDA
    (np.asarray(terminated)); here no tensor may go through numpy during collect and learn."""
    envs = tensor_driving_env(return_tensors="torch", device=torch.device(device).type)  # the env on the same device
    trainer = ppo_on(envs, device, tmp_path, ppo_normalize_reward=True)
    assert trainer._tensor_env and isinstance(trainer._next_obs["instruction"], IndexedText)
    with no_host_copies():
        for _ in range(2):
            assert trainer.collect() == 64
            metrics = trainer.learn()
    assert np.isfinite(metrics["policy_loss"]) and trainer.episodes_done >= 4  # 12-step episodes ended
    assert all(length <= 12 for length in trainer.recent_lengths)


def test_ppo_same_step_autoreset_on_a_tensor_env(tmp_path, no_host_copies):
    """SAME_STEP: truncated episodes bootstrap from info["final_obs"] (tensors) without numpy."""
    trainer = ppo_on(tensor_driving_env(return_tensors="torch", autoreset_mode="same_step"), "cpu", tmp_path)
    with no_host_copies():
        trainer.collect()
    assert bool(trainer.buffer.valid.all())  # no reset steps in SAME_STEP mode
    assert 12 in trainer.recent_lengths  # episodes were cut by the time limit: final_obs was read


def test_tensor_and_numpy_envs_give_the_same_rollout(tmp_path):
    """The on-device rollout is the same algorithm as the numpy one: same env, seeds and policy ->
    the same rewards, flags, values and advantages' inputs."""
    buffers = []
    for kind in ("numpy", "torch"):
        trainer = ppo_on(tensor_driving_env(return_tensors=kind), "cpu", tmp_path / kind)
        torch.manual_seed(1)
        trainer.collect()
        buffers.append(trainer.buffer)
    a, b = buffers
    for name in ("rewards", "terminations", "dones", "valid", "values", "next_values", "log_probs", "actions"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), msg=name)
    assert a.valid.logical_not().any()  # NEXT_STEP reset steps were met (and left out the same way)


# ---- every trainer takes its device as torch.device or string -------------------------------------------
OFFLINE = ["iql", "cql", "td3_bc", "dt"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", OFFLINE)
def test_offline_trainers_take_a_device_train_save_and_load(tmp_path, no_host_copies, name, device):
    kw = {"context_length": 5, "n_layer": 1, "embed_dim": 32, "n_head": 2} if name == "dt" else {}
    cls = get_trainer_class(name)
    trainer = cls(3, 1, offline_config(tmp_path, device), **kw)
    assert same_device(trainer.device, device) and str(trainer.config.device).startswith(torch.device(device).type)
    with no_host_copies(numpy_method=False):  # (the DT's sampler reads the episodes once, explicitly)
        trainer.train(OfflineReplayBuffer(3, 1).load_dataset(random_dataset()))
    path = trainer.save(tmp_path / "ckpt.pt")
    again = cls(3, 1, offline_config(tmp_path / "again", "cpu"), **kw).load(path)  # on the CPU, from any device
    assert again.global_step == 4
    for p, q in zip(trainer.policy.parameters(), again.policy.parameters()):
        torch.testing.assert_close(p.cpu(), q)


def test_behaviour_cloning_takes_a_torch_device(tmp_path, no_host_copies):
    from vla_rl_lib.envs.expert import collect_dataset
    from vla_rl_lib.vla.model import VLAConfig

    data = collect_dataset(200, seed=0, image_size=32)
    trainer = get_trainer_class("vla_bc")(D.STATE_DIM, 2, offline_config(tmp_path, torch.device("cpu")),
                                      model=VLAConfig(**TINY))
    with no_host_copies(numpy_method=False):
        trainer.train(OfflineReplayBuffer(D.STATE_DIM, 2).load_dataset(data))
    assert trainer.global_step == 4


@pytest.mark.parametrize("device", DEVICES)
def test_online_trainers_take_a_device(tmp_path, device):
    common = dict(device=device, eval_episodes=0, eval_freq=0, save_freq=0, log_freq=10_000, seed=0)
    ppo = get_trainer_class("ppo")(env="CartPole-v1", config=RLConfig(
        num_envs=2, rollout_steps=16, batch_size=16, ppo_epochs=1, total_timesteps=32,
        output_dir=str(tmp_path / "ppo"), **common)).train()
    sac = get_trainer_class("sac")(env="Pendulum-v1", config=RLConfig(
        algorithm="sac", total_timesteps=40, learning_starts=20, batch_size=16, output_dir=str(tmp_path / "sac"),
        **common)).train()
    grpo = get_trainer_class("grpo")(env="CartPole-v1", config=RLConfig(
        algorithm="grpo", group_size=2, num_groups=2, num_iterations=1, output_dir=str(tmp_path / "grpo"),
        **common)).train()
    for trainer in (ppo, sac, grpo):
        assert same_device(trainer.device, device) and trainer.global_step > 0
        again = type(trainer).from_checkpoint(trainer.run_dir / "checkpoint.pt")
        assert again.global_step == trainer.global_step


def test_config_device_and_cross_device_generator_state():
    assert RLConfig(device=torch.device("cuda", 1)).device == "cuda:1"
    generator = torch.Generator()
    load_generator_state(generator, torch.zeros(16, dtype=torch.uint8), 7)  # a CUDA generator's state
    assert torch.equal(generator.get_state(), torch.Generator().manual_seed(7).get_state())


# ---- the batched simulator's on-device sampler --------------------------------------------------------
@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_same_seed_same_world_and_noise(monkeypatch, backend):
    """GRPO's contract, on both backends: worlds reset with one seed drive the same episode."""
    if backend == "torch":  # the on-device sampler: no per-world Python sampling at all
        monkeypatch.setattr(D, "sample_scenario", lambda *a, **k: pytest.fail("a per-world Python sampler ran"))
    env = BatchedDrivingEnv(6, difficulty="hard", backend=backend, return_tensors="torch", render_images=False)
    assert env.sampler == ("batched" if backend == "torch" else "per_world")
    obs, _ = env.reset(seed=[5, 5, 5, 9, 9, 11])
    state = obs["state"]
    assert torch.equal(state[0], state[1]) and torch.equal(state[0], state[2]) and torch.equal(state[3], state[4])
    assert not torch.equal(state[0], state[3])
    for _ in range(30):  # the same actions: worlds with one seed stay identical (same action noise too)
        obs, *_ = env.step(torch.tensor([[0.1, 0.3]]).expand(6, 2))
    state = obs["state"]
    assert torch.equal(state[0], state[2]) and torch.equal(state[3], state[4]) and not torch.equal(state[0], state[3])
    # reset_mask with a seed list: only the masked worlds start again (GRPO's groups)
    before = obs["state"].clone()
    obs, _ = env.reset(seed=[5, 5, 5, 1, 1, 1], options={"reset_mask": torch.tensor([0, 0, 0, 1, 1, 0])})
    assert torch.equal(obs["state"][:3], before[:3]) and torch.equal(obs["state"][5], before[5])
    assert torch.equal(obs["state"][3], obs["state"][4]) and not torch.equal(obs["state"][3], before[3])


def test_batched_sampler_agrees_across_backends():
    # the numpy backend can use the same sampler: the same scenarios
    twin = BatchedDrivingEnv(6, difficulty="hard", backend="numpy", sampler="batched", render_images=False)
    first, _ = twin.reset(seed=[5, 5, 5, 9, 9, 11])
    again, _ = BatchedDrivingEnv(6, difficulty="hard", backend="torch", render_images=False).reset(
        seed=[5, 5, 5, 9, 9, 11])
    np.testing.assert_allclose(first["state"], again["state"], atol=1e-6)


def test_batched_sampler_draws_the_scenario_distribution():
    """The on-device sampler draws what sample_scenario draws (compared over 2,000 worlds each)."""
    n, lanes = 2000, 3
    fast = BatchedDrivingEnv(n, difficulty="hard", backend="torch", render_images=False)
    slow = BatchedDrivingEnv(n, difficulty="hard", backend="numpy", render_images=False)
    fast.reset(seed=0)
    slow.reset(seed=0)
    for env in (fast, slow):
        assert set(np.unique(np.asarray(env.task)).tolist()) == set(range(len(D.INSTRUCTIONS)))
        assert set(np.unique(np.asarray(env.start_lane)).tolist()) == {1}  # inner lanes of 3
    stats = []
    for env in (fast, slow):
        cars = (np.asarray(env.npc_x) > 0).sum(1)
        stats.append([np.asarray(env.v).mean(), np.asarray(env.stop_line_y).mean(), cars.mean(),
                      np.asarray(env.npc_v)[:, 0].mean()])
        # each instruction 1/5 of the time (sampling std 0.009 at n=2000: 0.04 is over 4 std)
        np.testing.assert_allclose(np.bincount(np.asarray(env.task), minlength=5) / n, 0.2, atol=0.04)
    # sampling error of these means at n=2000 is ~1% of each; 5% tolerances keep the test stable
    np.testing.assert_allclose(stats[0], stats[1], rtol=0.05)
    assert fast.npc_x.shape[1] == D.max_cars(lanes)


def test_gpu_check_script_runs_and_writes_its_table(tmp_path):
    """benchmarks/gpu.py (the one-command GPU check) at smoke size, one cheap section and a bad one."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu)
    code = gpu.main(["--smoke", "--device", "cpu", "--sections", "simulator,nonsense", "--out", str(tmp_path)])
    rows = json.loads((tmp_path / "gpu.json").read_text())["rows"]
    assert code == 1  # the unknown section is a FAILED row, and the run says so
    assert [r["status"] for r in rows if r["section"] == "nonsense"] == ["FAILED"]
    sim = [r for r in rows if r["section"] == "simulator"]
    assert len(sim) == 5 and all(r["status"] == "ok" for r in sim)
    assert "| simulator |" in (tmp_path / "gpu.md").read_text()


def test_a_gpu_run_opens_on_a_cpu_only_machine(tmp_path, monkeypatch):
    """A checkpoint whose config says device='cuda' loads with device='cpu' where there is no GPU."""
    from vla_rl_lib.trainer import Trainer

    trainer = get_trainer_class("td3_bc")(3, 1, offline_config(tmp_path, "cpu"))
    trainer.train(OfflineReplayBuffer(3, 1).load_dataset(random_dataset()))
    state = torch.load(trainer.run_dir / "checkpoint.pt", weights_only=True)
    state["meta"]["config"]["device"] = "cuda"  # as a GPU machine writes it
    torch.save(state, tmp_path / "gpu.pt")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match="no CUDA device"):
        again = Trainer.from_checkpoint(tmp_path / "gpu.pt")
    assert again.device == torch.device("cpu") and again.global_step == 4
