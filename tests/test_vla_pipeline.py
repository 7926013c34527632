"""Stage 2 (behaviour cloning) and stage 3 (RL from the saved model) of the VLA pipeline."""
import numpy as np
import pytest
import torch

from vla_rl_lib.config import OfflineRLConfig, RLConfig
from vla_rl_lib.data.buffer import OfflineReplayBuffer
from vla_rl_lib.envs.driving import STATE_DIM, DrivingEnv
from vla_rl_lib.envs.expert import collect_dataset
from vla_rl_lib.errors import ConfigError, DatasetError
from vla_rl_lib.vla.bc import BCTrainer, bc_mse_loss, bc_token_loss, random_shift
from vla_rl_lib.vla.model import VLAConfig, VLAModel
from vla_rl_lib.vla.pipeline import (CurriculumCallback, evaluate_success, get_difficulty, grpo_from_model,
                                     iql_from_model, ppo_from_model, set_env_difficulty)
from vla_rl_lib.vla.policy import VLAPolicy

TINY = dict(image_size=32, vision_channels=[8, 16, 16], embed_dim=32, hidden_dim=64, text_heads=2,
            state_indices=[1, 2])


@pytest.fixture(scope="module")
def demos():
    return collect_dataset(3000, seed=0, image_size=32)


@pytest.fixture(scope="module")
def trained(demos, tmp_path_factory):
    """A BC model trained on the small demonstration set (shared by the tests below)."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("bc")
    cfg = OfflineRLConfig(num_epochs=1, steps_per_epoch=1000, batch_size=64, learning_rate=2e-3, eval_freq=0,
                          eval_episodes=0, save_freq=0, log_freq=50, output_dir=str(out))
    trainer = BCTrainer(STATE_DIM, 2, cfg, model=VLAConfig(**TINY))
    trainer.train(OfflineReplayBuffer(STATE_DIM, 2).load_dataset(demos))
    return trainer


def test_losses_and_augmentation():
    pred, target = torch.tensor([[0.5, -0.5]]), torch.tensor([[0.0, 0.0]])
    assert torch.isclose(bc_mse_loss(pred, target), torch.tensor(0.5))
    logits = torch.zeros(1, 2, 4)
    assert torch.isclose(bc_token_loss(logits, torch.tensor([[1, 3]])), torch.tensor(2 * float(np.log(4.0))), atol=1e-5)
    img = torch.arange(2 * 8 * 8 * 3, dtype=torch.int64).reshape(2, 8, 8, 3).to(torch.uint8)
    shifted = random_shift(img, 2, torch.Generator().manual_seed(0))
    assert shifted.shape == img.shape and shifted.dtype == torch.uint8
    assert torch.equal(random_shift(img, 0), img)


@pytest.mark.slow
def test_bc_learns_to_drive_and_follows_the_instruction(trained, tmp_path):
    out = trained.run_dir
    assert (out / "best" / "model.safetensors").exists() and (out / "final" / "config.json").exists()
    import csv

    rows = csv.DictReader(open(out / "metrics.csv"))
    losses = [float(r["bc_loss"]) for r in rows if r.get("bc_loss")]
    assert losses[-1] < 0.7 * losses[0]

    torch.manual_seed(0)
    untrained = VLAPolicy(VLAModel(**TINY))
    before = evaluate_success(untrained, 6, seed=500_000)
    after = evaluate_success(trained.policy, 6, seed=500_000)
    print("untrained", before, "BC", after)
    assert after["success_rate"] >= before["success_rate"] + 0.15, (before, after)

    # the same images with opposite instructions give steering of opposite sign
    env = DrivingEnv(image_size=32)
    obs = [env.reset(seed=700 + k)[0] for k in range(16)]
    images = np.stack([o["image"] for o in obs])
    state = np.stack([o["state"] for o in obs])
    steer = {}
    for text in ("change to the left lane", "change to the right lane"):
        a = trained.policy.predict({"image": images, "instruction": [text] * 16, "state": state})
        steer[text] = a[:, 0].mean()
    print("steering", steer)
    assert steer["change to the left lane"] < -0.05 < 0.05 < steer["change to the right lane"], steer

    # the saved best model is the trained one
    again = VLAPolicy(VLAModel.from_pretrained(out / "best"))
    batch = {"image": images, "instruction": ["keep the lane"] * 16, "state": state}
    assert np.allclose(again.predict(batch), trained.policy.predict(batch), atol=1e-6)


def test_bc_trainer_errors_and_resume(demos, tmp_path):
    cfg = OfflineRLConfig(num_epochs=1, steps_per_epoch=4, batch_size=8, eval_freq=0, eval_episodes=0,
                          save_freq=0, log_freq=2, output_dir=str(tmp_path / "r"))
    buffer = OfflineReplayBuffer(STATE_DIM, 2).load_dataset(demos)
    with pytest.raises(DatasetError, match="32x32 but the model reads 64x64"):
        BCTrainer(STATE_DIM, 2, cfg, model=VLAConfig()).train(buffer)
    no_images = {k: v for k, v in demos.items() if k not in ("images", "next_images")}
    with pytest.raises(DatasetError, match="images"):
        BCTrainer(STATE_DIM, 2, cfg).train(OfflineReplayBuffer(STATE_DIM, 2).load_dataset(no_images))
    with pytest.raises(ConfigError):
        BCTrainer(STATE_DIM, 2, cfg, fusion="concat")
    trainer = BCTrainer(STATE_DIM, 2, cfg, model=VLAConfig(**TINY), action_head="tokens")
    trainer.train(buffer)
    path = trainer.save()
    restored = BCTrainer.from_checkpoint(path)
    assert restored.global_step == 4 and restored.model.config == trainer.model.config
    for a, b in zip(trainer.model.state_dict().values(), restored.model.state_dict().values()):
        assert torch.equal(a, b)


def test_token_head_bc_step(demos, tmp_path):
    cfg = OfflineRLConfig(num_epochs=1, steps_per_epoch=30, batch_size=32, learning_rate=1e-3, eval_freq=0,
                          eval_episodes=0, save_freq=0, log_freq=10, output_dir=str(tmp_path))
    trainer = BCTrainer(STATE_DIM, 2, cfg, model=VLAConfig(**dict(TINY, action_head="tokens")))
    trainer.train(OfflineReplayBuffer(STATE_DIM, 2).load_dataset(demos))
    import csv

    losses = [float(r["bc_loss"]) for r in csv.DictReader(open(tmp_path / "metrics.csv")) if r.get("bc_loss")]
    assert losses[0] <= 2 * np.log(256) + 0.1 and losses[-1] < losses[0] - 0.5


# -- curriculum ------------------------------------------------------------------------------------
def test_get_difficulty_schedule():
    assert [get_difficulty(s) for s in (0, 9_999, 10_000, 49_999, 50_000, 10**6)] == \
        ["easy", "easy", "medium", "medium", "hard", "hard"]
    with pytest.raises(ConfigError, match="difficulty"):
        CurriculumCallback([(0, "easy"), (10, "extreme")])


def test_set_env_difficulty_reaches_every_env():
    import gymnasium as gym

    from vla_rl_lib.envs.batched import BatchedDrivingEnv

    sync = gym.vector.SyncVectorEnv([lambda: DrivingEnv(image_size=32) for _ in range(3)])
    assert set_env_difficulty(sync, "hard") == 3
    assert all(e.difficulty.name == "hard" for e in sync.envs)
    batched = BatchedDrivingEnv(num_envs=4, image_size=32)
    assert set_env_difficulty(batched, "medium") == 4 and batched.difficulty.name == "medium"


# -- stage 3 -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "best"
    VLAModel(**TINY).save_pretrained(path)
    return path


def test_ppo_accepts_vla_policy_and_updates_with_curriculum(saved_model, tmp_path):
    cfg = RLConfig(env="driving", num_envs=4, rollout_steps=16, batch_size=32, ppo_epochs=2, total_timesteps=128,
                   eval_episodes=0, log_freq=64, save_freq=0, output_dir=str(tmp_path))
    curriculum = CurriculumCallback([(0, "easy"), (64, "medium"), (128, "hard")])
    trainer = ppo_from_model(saved_model, config=cfg, callbacks=[curriculum])
    assert isinstance(trainer.policy, VLAPolicy)
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    trainer.train()
    assert trainer.global_step == 128
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.policy.parameters()))
    assert curriculum.history == [(0, "easy"), (64, "medium"), (128, "hard")]
    assert trainer.envs.difficulty.name == "hard"
    import csv

    rows = [r for r in csv.DictReader(open(tmp_path / "metrics.csv")) if r.get("value_loss")]
    assert rows and all(np.isfinite(float(r["policy_loss"])) for r in rows)
    # a policy handed over directly works too (offline -> online)
    direct = ppo_from_model(config=cfg.replace(total_timesteps=64), policy=trainer.policy)
    assert direct.policy is trainer.policy


def test_grpo_accepts_vla_policy(saved_model, tmp_path):
    cfg = RLConfig(env="driving", group_size=2, num_groups=2, num_iterations=1, batch_size=64, grpo_epochs=1,
                   eval_episodes=0, save_freq=0, log_freq=10, output_dir=str(tmp_path))
    trainer = grpo_from_model(saved_model, env=DrivingEnv(image_size=32, max_episode_steps=15), config=cfg)
    before = [p.detach().clone() for p in trainer.policy.parameters()]
    trainer.train()
    assert trainer.iteration == 1 and trainer.global_step > 0
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.policy.parameters()))


def test_iql_trains_the_vla_actor_from_model_path(saved_model, demos, tmp_path):
    cfg = OfflineRLConfig(num_epochs=1, steps_per_epoch=5, batch_size=16, eval_freq=0, eval_episodes=0,
                          save_freq=0, log_freq=5, output_dir=str(tmp_path))
    trainer = iql_from_model(saved_model, cfg)
    assert isinstance(trainer.policy, VLAPolicy)
    before = [p.detach().clone() for p in trainer.policy.model.parameters()]
    trainer.train(OfflineReplayBuffer(STATE_DIM, 2).load_dataset(demos))
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.policy.model.parameters()))
    res = trainer.evaluate(num_episodes=1, env=DrivingEnv(image_size=32))
    assert np.isfinite(res["mean_reward"])
    from vla_rl_lib.vla.pipeline import from_checkpoint

    reopened = from_checkpoint(trainer.run_dir / "checkpoint.pt")  # the VLA actor is rebuilt, then loaded
    assert isinstance(reopened.policy, VLAPolicy) and reopened.global_step == 5
    for a, b in zip(trainer.policy.model.parameters(), reopened.policy.model.parameters()):
        assert torch.equal(a, b)


def test_model_path_on_the_command_line_trains_and_reopens_the_vla(tmp_path, capsys):
    """`--model_path` is turned into the VLA policy by the command line (trainers load no models), and a
    checkpoint of such a run reopens with that policy (`vla-rl evaluate`, vla.pipeline.from_checkpoint)."""
    from vla_rl_lib.cli import main
    from vla_rl_lib.trainer import Trainer
    from vla_rl_lib.vla.pipeline import from_checkpoint

    saved_model = tmp_path / "model"
    VLAModel(**dict(TINY, image_size=64)).save_pretrained(saved_model)  # the camera size of `--env driving`
    out = tmp_path / "ppo"
    assert main(["train", "ppo", "--model_path", str(saved_model), "--env", "driving", "--num_envs", "1",
                 "--rollout_steps", "8", "--batch_size", "8", "--ppo_epochs", "1", "--total_timesteps", "8",
                 "--eval_episodes", "0", "--save_freq", "0", "--output_dir", str(out), "--no-progress"]) == 0
    reopened = from_checkpoint(out / "checkpoint.pt")
    assert isinstance(reopened.policy, VLAPolicy) and reopened.global_step == 8
    with pytest.raises(ConfigError, match="model_path"):  # the trainers themselves no longer load it
        Trainer.from_checkpoint(out / "checkpoint.pt")
    assert main(["evaluate", str(out / "checkpoint.pt"), "--num_episodes", "1"]) == 0
    assert '"mean_reward"' in capsys.readouterr().out
