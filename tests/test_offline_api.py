"""The specification's offline Python example, with its imports pointing at ``vla_rl_lib``, for all four
offline trainers (IQL, CQL, TD3+BC, Decision Transformer), and the surface every trainer offers:
``.policy``, ``predict``, ``evaluate`` (default environment: the dataset's), ``save``/``load``,
``global_step``, ``vla-rl train <algo>``.

The specification's example reads ``hopper-medium-v2`` through ``d4rl`` (``env.get_dataset()``) and
trains 100 epochs. Neither d4rl nor that file exists on CI machines and 100k gradient steps do not
fit a unit test, so ``dataset`` here is a dict in the exact layout ``env.get_dataset()`` returns,
recorded from Hopper-v5 (same 11-d observation and 3-d action layout as hopper-v2) with random
actions, and ``num_epochs``/``steps_per_epoch`` are small. Every other line is the example's.

TD3+BC and the Decision Transformer are written by another part of the project; their cases are
skipped only while their module files do not exist (an import error in an existing file fails).
"""
from __future__ import annotations

import functools
import importlib
from pathlib import Path

import numpy as np
import pytest

import vla_rl_lib

OFFLINE_DIR = Path(vla_rl_lib.__file__).parent / "offline"

CASES = {
    # name: (module file, class name, the specification's keyword arguments)
    "iql": ("iql.py", "IQLTrainer", dict(expectile=0.7, temperature=3.0)),
    "cql": ("cql.py", "CQLTrainer", dict(cql_alpha=5.0, cql_samples=10, min_q_weight=1.0)),
    "td3_bc": ("td3_bc.py", "TD3BCTrainer", dict(alpha=2.5, noise_clip=0.5, policy_delay=2)),
    "dt": ("decision_transformer.py", "DecisionTransformerTrainer",
           dict(context_length=20, n_layer=3, n_head=1, embed_dim=128)),
}


def _trainer_class(name: str):
    file, cls, _ = CASES[name]
    if not (OFFLINE_DIR / file).exists():
        pytest.skip(f"vla_rl_lib/offline/{file} does not exist yet")
    return getattr(vla_rl_lib, cls)  # the top-level export, as the example imports it


@functools.lru_cache(maxsize=None)
def hopper_get_dataset(steps: int = 600, seed: int = 0) -> dict:
    """What ``d4rl``'s ``env.get_dataset()`` returns, recorded from Hopper-v5 with random actions."""
    import gymnasium as gym

    env = gym.make("Hopper-v5")
    rng = np.random.default_rng(seed)
    cols = {k: [] for k in ("observations", "actions", "rewards", "terminals", "timeouts")}
    obs, _ = env.reset(seed=seed)
    for t in range(steps):
        action = rng.uniform(-1, 1, 3).astype(np.float32)
        nxt, reward, term, trunc, _ = env.step(action)
        last = t == steps - 1
        cols["observations"].append(obs)
        cols["actions"].append(action)
        cols["rewards"].append(reward)
        cols["terminals"].append(term)
        cols["timeouts"].append(trunc or last)
        obs = nxt
        if term or trunc:
            obs, _ = env.reset()
    env.close()
    data = {k: np.asarray(v, dtype=np.float32 if k in ("observations", "actions", "rewards") else bool)
            for k, v in cols.items()}
    return data


@pytest.mark.parametrize("name", list(CASES))
def test_specification_example(name, tmp_path, monkeypatch):
    trainer_cls = _trainer_class(name)
    monkeypatch.chdir(tmp_path)
    # --- the specification's example (imports pointing at vla_rl_lib) ---------------------------
    from vla_rl_lib import OfflineReplayBuffer, OfflineRLConfig

    config = OfflineRLConfig(
        num_epochs=2,            # the example says 100 (x 1000 steps); a unit test takes 2 x 5
        steps_per_epoch=5,
        batch_size=256,
        learning_rate=3e-4,
        eval_episodes=0,         # the example's d4rl dict names no environment, so the loop's
        output_dir=f"./output/{name}",  # final evaluation is switched off; evaluate(env=...) below
    )
    trainer = trainer_cls(
        obs_dim=11,
        action_dim=3,
        config=config,
        **CASES[name][2],
    )
    dataset = dict(hopper_get_dataset())  # env.get_dataset() for hopper-medium-v2 in the example
    buffer = OfflineReplayBuffer(obs_dim=11, action_dim=3)
    buffer.load_dataset(dataset)
    trainer.train(buffer)
    # --------------------------------------------------------------------------------------------
    assert trainer.global_step == 10
    out = tmp_path / "output" / name
    assert (out / "checkpoint.pt").is_file() and (out / "metrics.csv").is_file()

    obs = dataset["observations"][0]
    action = trainer.predict(obs, deterministic=True)
    assert isinstance(action, np.ndarray) and action.shape == (3,)
    assert np.all(np.abs(action) <= 1.0 + 1e-6)  # Hopper's action bounds

    results = trainer.evaluate(num_episodes=2, env="Hopper-v5")
    assert {"mean_reward", "std_reward", "mean_length", "episodes"} <= set(results)
    assert results["episodes"] == 2 and np.isfinite(results["mean_reward"])
    assert "normalized_score" in results  # Hopper has D4RL reference returns

    path = trainer.save(tmp_path / "model.pt")
    fresh = trainer_cls(obs_dim=11, action_dim=3, config=config, **CASES[name][2])
    fresh.load(path)
    assert fresh.global_step == 10
    fresh.reset_episode()
    trainer.reset_episode()
    np.testing.assert_allclose(fresh.predict(obs), trainer.predict(obs), rtol=1e-5, atol=1e-6)
    assert isinstance(trainer.policy, vla_rl_lib.nets.Policy)


@pytest.mark.parametrize("name", list(CASES))
def test_evaluate_defaults_to_dataset_environment(name, tmp_path):
    trainer_cls = _trainer_class(name)
    from vla_rl_lib import OfflineReplayBuffer, OfflineRLConfig

    dataset = dict(hopper_get_dataset(), **{"metadata/env_id": "Hopper-v5", "metadata/name": "hopper-random-api"})
    buffer = OfflineReplayBuffer(obs_dim=11, action_dim=3).load_dataset(dataset)
    config = OfflineRLConfig(num_epochs=1, steps_per_epoch=2, batch_size=16, eval_episodes=1,
                             output_dir=str(tmp_path / "run"), device="cpu")
    trainer = trainer_cls(obs_dim=11, action_dim=3, config=config, **CASES[name][2])
    trainer.train(buffer)
    assert trainer.env_id == "Hopper-v5"
    assert trainer.last_evaluation is not None and np.isfinite(trainer.last_evaluation["mean_reward"])
    assert trainer.evaluate(num_episodes=1)["episodes"] == 1


@pytest.mark.parametrize("name", list(CASES))
def test_command_line_trains(name, tmp_path):
    _trainer_class(name)
    from vla_rl_lib.cli import main
    from vla_rl_lib.data.hdf5 import write_hdf5

    path = tmp_path / "hopper_random.hdf5"
    write_hdf5(path, dict(hopper_get_dataset(), **{"metadata/env_id": "Hopper-v5"}))
    out = tmp_path / name
    flags = {"iql": ["--expectile", "0.7", "--temperature", "3.0"], "cql": ["--cql_alpha", "5.0"],
             "td3_bc": ["--alpha", "2.5"], "dt": ["--context_length", "20", "--n_layer", "3", "--n_head", "1",
                                                  "--embed_dim", "128"]}[name]
    code = main(["train", name, "--dataset", str(path), "--num_epochs", "1", "--steps_per_epoch", "3",
                 "--batch_size", "32", "--eval_episodes", "0", "--output_dir", str(out), *flags])
    assert code in (0, None)
    assert (out / "checkpoint.pt").is_file()
    module = importlib.import_module(f"vla_rl_lib.offline.{CASES[name][0][:-3]}")
    trainer = getattr(module, CASES[name][1]).from_checkpoint(out / "checkpoint.pt")
    assert trainer.global_step == 3
