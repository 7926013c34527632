"""Train and evaluate one d3rlpy algorithm on a dataset: the peer run of ``benchmarks/offline.py``.

Runs inside d3rlpy's own virtual environment (d3rlpy 2.8 pins gymnasium 1.0, the kit uses 1.4), so
it imports neither the kit nor anything but numpy, torch, gymnasium and d3rlpy. Called as

    /work/venv-d3rlpy/bin/python benchmarks/d3rlpy_runner.py '<json spec>'

where the spec names the algorithm (iql, cql, td3_bc, dt), an ``.npz`` file with the dataset
(observations, actions, rewards, terminals, timeouts), the gradient steps, seed, batch size, hidden
width, evaluation environment and episodes. It prints one JSON line: training seconds, gradient
steps per second and the evaluation returns.
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np


def build(spec: dict):
    import d3rlpy
    from d3rlpy.models import VectorEncoderFactory
    from d3rlpy.optimizers import AdamFactory, AdamWFactory
    from d3rlpy.optimizers.lr_schedulers import CosineAnnealingLRFactory, WarmupSchedulerFactory
    from d3rlpy.preprocessing import MultiplyRewardScaler, ReturnBasedRewardScaler, StandardObservationScaler

    h = spec["hidden"]
    enc = VectorEncoderFactory(hidden_units=[h, h])
    obs_scaler = StandardObservationScaler()
    algo = spec["algo"]
    if algo == "iql":
        return d3rlpy.algos.IQLConfig(
            batch_size=spec["batch_size"], gamma=0.99, tau=0.005, actor_learning_rate=3e-4, critic_learning_rate=3e-4,
            actor_optim_factory=AdamFactory(lr_scheduler_factory=CosineAnnealingLRFactory(T_max=spec["steps"])),
            actor_encoder_factory=enc, critic_encoder_factory=enc, value_encoder_factory=enc,
            expectile=0.7, weight_temp=3.0, max_weight=100.0, n_critics=2,
            observation_scaler=obs_scaler, reward_scaler=ReturnBasedRewardScaler(multiplier=1000.0),
        ).create(device="cpu:0")
    if algo == "cql":
        return d3rlpy.algos.CQLConfig(
            batch_size=spec["batch_size"], gamma=0.99, tau=0.005, actor_learning_rate=1e-4, critic_learning_rate=3e-4,
            temp_learning_rate=1e-4, alpha_learning_rate=0.0, initial_alpha=1.0, conservative_weight=5.0,
            n_action_samples=10, soft_q_backup=False, n_critics=2,
            actor_encoder_factory=enc, critic_encoder_factory=enc, observation_scaler=obs_scaler,
        ).create(device="cpu:0")
    if algo == "td3_bc":
        return d3rlpy.algos.TD3PlusBCConfig(
            batch_size=spec["batch_size"], gamma=0.99, tau=0.005, actor_learning_rate=3e-4, critic_learning_rate=3e-4,
            alpha=2.5, target_smoothing_sigma=0.2, target_smoothing_clip=0.5, update_actor_interval=2, n_critics=2,
            actor_encoder_factory=enc, critic_encoder_factory=enc, observation_scaler=obs_scaler,
        ).create(device="cpu:0")
    if algo == "dt":
        return d3rlpy.algos.DecisionTransformerConfig(
            batch_size=spec["batch_size"], context_size=spec["context_length"], num_heads=1, num_layers=3,
            learning_rate=spec["dt_learning_rate"], max_timestep=1000,
            encoder_factory=VectorEncoderFactory(hidden_units=[spec["embed_dim"]], exclude_last_activation=True),
            optim_factory=AdamWFactory(weight_decay=spec["dt_weight_decay"], clip_grad_norm=0.25,
                                       lr_scheduler_factory=WarmupSchedulerFactory(warmup_steps=spec["dt_warmup"])),
            observation_scaler=obs_scaler, reward_scaler=MultiplyRewardScaler(1.0 / 1000.0),
            position_encoding_type=d3rlpy.PositionEncodingType.GLOBAL,
        ).create(device="cpu:0")
    raise SystemExit(f"unknown algorithm {algo!r}")


def evaluate(algo, spec: dict) -> list[float]:
    import gymnasium as gym

    env = gym.make(spec["env_id"])
    returns = []
    for episode in range(spec["eval_episodes"]):
        obs, _ = env.reset(seed=spec["eval_seed"] + episode)
        total, done = 0.0, False
        if spec["algo"] == "dt":
            actor = algo.as_stateful_wrapper(target_return=spec["target_return"])
            reward = 0.0
            while not done:
                action = actor.predict(np.asarray(obs, np.float32), reward)
                obs, reward, term, trunc, _ = env.step(action)
                total += float(reward)
                done = term or trunc
        else:
            while not done:
                action = algo.predict(np.asarray(obs, np.float32)[None])[0]
                obs, reward, term, trunc, _ = env.step(action)
                total += float(reward)
                done = term or trunc
        returns.append(total)
    env.close()
    return returns


def main() -> None:
    spec = json.loads(sys.argv[1])
    import torch
    import d3rlpy
    from d3rlpy.logging import NoopAdapterFactory

    torch.set_num_threads(spec["threads"])
    d3rlpy.seed(spec["seed"])
    data = np.load(spec["npz"])
    dataset = d3rlpy.dataset.MDPDataset(
        observations=data["observations"], actions=data["actions"], rewards=data["rewards"],
        terminals=data["terminals"].astype(np.float32), timeouts=data["timeouts"].astype(np.float32),
        action_space=d3rlpy.ActionSpace.CONTINUOUS)
    algo = build(spec)
    # the clock runs from the end of the first gradient step to the end of the last (setup such as
    # fitting scalers and indexing episodes is excluded), as benchmarks/offline.py does for the kit
    marks: dict = {}

    def on_step(_algo, _epoch, total_step):
        if total_step == 1:
            marks["first"], marks["cpu_first"] = time.perf_counter(), time.process_time()
        marks["last"], marks["cpu_last"] = time.perf_counter(), time.process_time()

    start = time.perf_counter()
    algo.fit(dataset, n_steps=spec["steps"], n_steps_per_epoch=spec["steps"], logger_adapter=NoopAdapterFactory(),
             show_progress=False, save_interval=10 ** 9, callback=on_step)
    total = time.perf_counter() - start
    timed = max(marks["last"] - marks["first"], 1e-9)
    returns = evaluate(algo, spec) if spec["eval_episodes"] > 0 else []
    cpu = max(marks["cpu_last"] - marks["cpu_first"], 1e-9)
    print(json.dumps({"fit_seconds": total, "steps_per_second": (spec["steps"] - 1) / timed,
                      "cpu_steps_per_second": (spec["steps"] - 1) / cpu, "returns": returns,
                      "d3rlpy": d3rlpy.__version__, "torch": torch.__version__}))


if __name__ == "__main__":
    main()
