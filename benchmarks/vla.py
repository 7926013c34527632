"""The VLA pipeline's measured gain: stage-2 behaviour cloning, then each stage-3 RL method.

Stage 2 clones the scripted expert on a deliberately small demonstration set, so the model is
imperfect. Stage 3 starts every method from that saved model (``--model_path`` style):

* IQL  (option A, offline): on a larger mixed-quality driving dataset (expert + noisy expert);
* PPO  (option B, online): on the batched driving simulator;
* GRPO (online): groups of rollouts from a shared reset seed;
* IQL -> PPO (offline to online): PPO from ``iql_trainer.policy`` at a lower learning rate.

Every model is scored by :func:`vla_rl_lib.vla.pipeline.evaluate_success`: the success rate per
instruction on held-out seeds (never used for training), deterministic actions. The table prints
the overall success rate, its gain over BC, the collision rate and the wall-clock time of each stage.

    python benchmarks/vla.py                 # the full run quoted in docs/benchmarks.md
    python benchmarks/vla.py --quick         # a smoke run (minutes; numbers are not meaningful)

Figures are measured with ``torch.set_num_threads(1)`` on a shared 2-core CPU machine unless
stated otherwise.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from vla_rl_lib.config import OfflineRLConfig, RLConfig
from vla_rl_lib.data.buffer import OfflineReplayBuffer
from vla_rl_lib.envs.driving import INSTRUCTIONS, STATE_DIM, DrivingEnv
from vla_rl_lib.envs.expert import collect_dataset
from vla_rl_lib.vla.bc import PROPRIO_INDICES, BCTrainer
from vla_rl_lib.vla.model import VLAConfig
from vla_rl_lib.vla.pipeline import (evaluate_success, grpo_from_model, iql_from_model, offline_to_online,
                                     ppo_from_model)

SHORT = {"keep the lane": "keep", "change to the left lane": "left", "change to the right lane": "right",
         "stop at the line": "stop", "overtake the car ahead": "overtake"}


def merge(*datasets: dict) -> dict:
    """Concatenate D4RL-layout dicts row-wise (array keys only; metadata of the first)."""
    out = {}
    for k, v in datasets[0].items():
        if isinstance(v, np.ndarray) and v.ndim >= 1 and all(isinstance(d.get(k), np.ndarray) for d in datasets):
            out[k] = np.concatenate([d[k] for d in datasets])
        elif k.startswith("metadata/"):
            out[k] = v
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output_dir", default="./output/vla_benchmark")
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--demo_size", type=int, default=5000, help="transitions of expert demonstrations for BC")
    p.add_argument("--bc_steps", type=int, default=1500)
    p.add_argument("--offline_size", type=int, default=20000, help="transitions of the IQL dataset")
    p.add_argument("--iql_steps", type=int, default=1500)
    p.add_argument("--ppo_steps", type=int, default=61440)
    p.add_argument("--ppo_lr", type=float, default=3e-4)
    p.add_argument("--grpo_iterations", type=int, default=15)
    p.add_argument("--grpo_groups", type=int, default=8, help="GRPO groups (of 8 rollouts) per iteration")
    p.add_argument("--grpo_epochs", type=int, default=2)
    p.add_argument("--grpo_lr", type=float, default=None, help="default: ppo_lr")
    p.add_argument("--grpo_kl", type=float, default=0.02)
    p.add_argument("--grpo_objectives", default=None,
                   help="vector reward for GRPO, e.g. 'safety=1,success=1,progress=0.5' (default: the scalar reward)")
    p.add_argument("--o2o_steps", type=int, default=None, help="PPO steps after IQL (default: ppo_steps)")
    p.add_argument("--episodes", type=int, default=40, help="held-out episodes per instruction")
    p.add_argument("--log_std", type=float, default=-1.0, help="exploration log std for RL fine-tuning")
    p.add_argument("--methods", default="iql,ppo,grpo,iql_ppo")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model_path", default=None,
                   help="reuse a saved stage-2 model (e.g. OUTPUT_DIR/stage2_action_head/best) instead of training one")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script")
    return p


def parse(argv=None) -> argparse.Namespace:
    args = parser().parse_args(argv)
    if args.quick:
        args.demo_size, args.bc_steps, args.offline_size, args.iql_steps = 600, 30, 800, 20
        args.ppo_steps, args.grpo_iterations, args.episodes = 1024, 1, 2
    return args


def train_stage2(args, out: Path) -> tuple:
    """Stage 2: behaviour cloning on a small demonstration set, or the saved ``--model_path``.
    Returns ``(model folder, policy, training seconds (nan when loaded), demo-collection seconds)``."""
    if args.model_path:
        from vla_rl_lib.vla.policy import load_policy

        return Path(args.model_path), load_policy(args.model_path), float("nan"), 0.0
    t = time.time()
    demos = collect_dataset(args.demo_size, seed=args.seed, image_size=args.image_size)
    buffer = OfflineReplayBuffer(STATE_DIM, 2).load_dataset(demos)
    collect_seconds = time.time() - t
    print(f"demonstrations: {len(buffer)} transitions, {demos['metadata/episodes']} episodes", flush=True)
    model_cfg = VLAConfig(image_size=args.image_size, vision_channels=[8, 16, 16], embed_dim=32, hidden_dim=64,
                          state_indices=list(PROPRIO_INDICES), log_std_init=args.log_std)
    bc_cfg = OfflineRLConfig(num_epochs=1, steps_per_epoch=args.bc_steps, batch_size=128, learning_rate=1e-3,
                             eval_freq=0, eval_episodes=0, save_freq=0, log_freq=100, seed=args.seed,
                             output_dir=str(out / "stage2_action_head"))
    t = time.time()
    bc = BCTrainer(STATE_DIM, 2, bc_cfg, model=model_cfg)
    bc.train(buffer)
    return bc.best_model_path, bc.policy, time.time() - t, collect_seconds


def main(argv=None) -> dict:
    args = parse(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    methods = [m for m in args.methods.split(",") if m]
    rows, times = {}, {}

    def score(name, policy, seconds):
        t = time.time()
        res = evaluate_success(policy, args.episodes, seed=1_000_000, image_size=args.image_size)
        res["eval_seconds"] = time.time() - t
        res["train_seconds"] = seconds
        rows[name] = res
        print(f"[{name}] success {res['success_rate']:.3f} collisions {res['collision_rate']:.3f} "
              f"train {seconds:.0f}s eval {res['eval_seconds']:.0f}s", flush=True)

    # ---- stage 2: behaviour cloning on a small demonstration set --------------------------------
    model_path, bc_policy, bc_seconds, collect_seconds = train_stage2(args, out)
    if collect_seconds:
        times["collect demos"] = collect_seconds
    score("BC (stage 2)", bc_policy, bc_seconds)

    # ---- stage 3 ----------------------------------------------------------------------------
    iql = None
    if "iql" in methods or "iql_ppo" in methods:
        t = time.time()
        mixed = merge(collect_dataset(args.offline_size // 2, seed=args.seed + 1, image_size=args.image_size),
                      collect_dataset(args.offline_size - args.offline_size // 2, seed=args.seed + 2,
                                      quality="medium", noise=0.5, image_size=args.image_size))
        offline = OfflineReplayBuffer(STATE_DIM, 2).load_dataset(mixed)
        times["collect IQL data"] = time.time() - t
        t = time.time()
        iql_cfg = OfflineRLConfig(num_epochs=1, steps_per_epoch=args.iql_steps, batch_size=128, learning_rate=3e-4,
                                  eval_freq=0, eval_episodes=0, save_freq=0, log_freq=100, seed=args.seed,
                                  output_dir=str(out / "stage3b_iql"))
        iql = iql_from_model(model_path, iql_cfg, expectile=0.7, temperature=3.0, actor_lr_schedule="constant")
        iql.train(offline)
        if "iql" in methods:
            score("IQL (A, offline)", iql.policy, time.time() - t)
        iql_seconds = time.time() - t

    ppo_cfg = RLConfig(env="driving", num_envs=16, rollout_steps=128, batch_size=256, ppo_epochs=4,
                       learning_rate=args.ppo_lr, total_timesteps=args.ppo_steps, ppo_entropy_coef=0.0,
                       ppo_normalize_reward=True, eval_episodes=0, log_freq=2048, save_freq=0, seed=args.seed,
                       output_dir=str(out / "stage3c_ppo"))
    if "ppo" in methods:
        t = time.time()
        ppo = ppo_from_model(model_path, config=ppo_cfg)
        ppo.train()
        score("PPO (B, online)", ppo.policy, time.time() - t)

    if "grpo" in methods:
        t = time.time()
        grpo_cfg = RLConfig(env="driving", group_size=8, num_groups=args.grpo_groups,
                            num_iterations=args.grpo_iterations, total_timesteps=10**9, batch_size=256,
                            grpo_epochs=args.grpo_epochs, learning_rate=args.grpo_lr or args.ppo_lr,
                            kl_coef=args.grpo_kl, eval_episodes=0,
                            objective_weights={k: float(v) for k, v in (kv.split("=") for kv in
                                                                        args.grpo_objectives.split(","))}
                            if args.grpo_objectives else None, log_freq=1000, save_freq=0, seed=args.seed,
                            output_dir=str(out / "stage3_grpo"))
        grpo = grpo_from_model(model_path, config=grpo_cfg)
        grpo.train()
        score("GRPO (online)", grpo.policy, time.time() - t)

    if "iql_ppo" in methods and iql is not None:
        t = time.time()
        o2o_cfg = ppo_cfg.replace(total_timesteps=args.o2o_steps or args.ppo_steps,
                                  output_dir=str(out / "stage3d_offline_to_online"))
        o2o = offline_to_online(iql, config=o2o_cfg, learning_rate=args.ppo_lr / 3)
        o2o.train()
        score("IQL -> PPO (offline to online)", o2o.policy, time.time() - t + iql_seconds)

    # ---- the table ----------------------------------------------------------------------------
    base = rows["BC (stage 2)"]["success_rate"]
    head = f"{'stage':<32} {'success':>8} {'gain':>7} " + " ".join(f"{SHORT[i]:>8}" for i in INSTRUCTIONS) + \
        f" {'collide':>8} {'train s':>8}"
    print("\n" + head + "\n" + "-" * len(head))
    for name, r in rows.items():
        gain = "" if name.startswith("BC") else f"{100 * (r['success_rate'] - base):+.0f}"
        print(f"{name:<32} {100 * r['success_rate']:>7.0f}% {gain:>7} "
              + " ".join(f"{100 * r['per_instruction'][i]:>7.0f}%" for i in INSTRUCTIONS)
              + f" {100 * r['collision_rate']:>7.0f}% {r['train_seconds']:>8.0f}")
    print(f"\nsuccess = share of {args.episodes} held-out episodes per instruction (seeds 1000000+k); "
          f"gain in points over BC; data collection: "
          + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()))
    (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows, "times": times}, indent=2))
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
