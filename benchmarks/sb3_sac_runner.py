"""Stable-Baselines3 side of ``benchmarks/online_sac.py`` (run with the SB3 virtual environment's python).

Trains SB3's SAC with the hyperparameters given on the command line (one gradient step per
environment step), then evaluates the deterministic policy, and prints one JSON line:
``{"library", "env", "seed", "steps", "mean_reward", "std_reward", "learn_steps_per_second",
"total_seconds"}``. ``learn_steps_per_second`` counts environment steps per second after
``learning_starts`` (the phase with one update per step), evaluation excluded;
``learn_steps_per_cpu_second`` divides by this process's CPU time instead (less sensitive to
other jobs on a shared machine).

    /work/venv-sb3/bin/python benchmarks/sb3_sac_runner.py --env Pendulum-v1 --steps 20000
"""
from __future__ import annotations

import argparse
import json
import time

import torch
from sb3_eval import episode_returns


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--env", default="Pendulum-v1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20_000)
    p.add_argument("--learning-starts", type=int, default=1000)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--tau", type=float, default=0.005)
    p.add_argument("--gamma", type=float, default=0.99)
    p.add_argument("--buffer-size", type=int, default=1_000_000)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--eval-seed", type=int, default=10_000)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    import gymnasium as gym
    import numpy as np
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import BaseCallback

    class Clock(BaseCallback):
        """Wall-clock time at the first step after learning_starts and at the last step."""

        def __init__(self):
            super().__init__()
            self.t_start = self.c_start = None
            self.n_start = None
            self.t_end = self.c_end = None

        def _on_step(self) -> bool:
            if self.t_start is None and self.num_timesteps > args.learning_starts:
                self.t_start, self.c_start, self.n_start = time.perf_counter(), time.process_time(), self.num_timesteps
            self.t_end, self.c_end = time.perf_counter(), time.process_time()
            return True

    env = gym.make(args.env)
    model = SAC("MlpPolicy", env, learning_rate=args.lr, buffer_size=args.buffer_size,
                learning_starts=args.learning_starts, batch_size=args.batch_size, tau=args.tau, gamma=args.gamma,
                train_freq=1, gradient_steps=1, ent_coef="auto", policy_kwargs={"net_arch": [args.hidden, args.hidden]},
                seed=args.seed, device="cpu", verbose=0)
    clock = Clock()
    t0 = time.perf_counter()
    model.learn(total_timesteps=args.steps, callback=clock)
    total = time.perf_counter() - t0
    learn_sps = (model.num_timesteps - clock.n_start) / (clock.t_end - clock.t_start) if clock.t_start else float("nan")
    learn_cpu_sps = (model.num_timesteps - clock.n_start) / (clock.c_end - clock.c_start) if clock.t_start else float("nan")

    # deterministic evaluation, episode seeds eval_seed + i (the kit's evaluate() convention)
    returns = episode_returns(model, gym.make(args.env), args.eval_episodes, args.eval_seed)
    print(json.dumps({"library": "sb3", "env": args.env, "seed": args.seed, "steps": int(model.num_timesteps),
                      "mean_reward": float(np.mean(returns)), "std_reward": float(np.std(returns)),
                      "learn_steps_per_second": learn_sps, "learn_steps_per_cpu_second": learn_cpu_sps,
                      "total_seconds": total}))


if __name__ == "__main__":
    main()
