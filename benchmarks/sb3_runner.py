"""Stable-Baselines3 side of ``benchmarks/online.py`` (run with the SB3 virtual environment's python).

Trains SB3's PPO on CartPole-v1 with the hyperparameters given on the command line, evaluates the
deterministic policy on 10 episodes every ``--eval-freq`` environment steps (between rollouts, after
the update, as the kit's trainer does) with the kit's protocol (episode ``i`` reset with seed
``seed + 10000 + i``, so both libraries are scored on the same start states and SB3's runs are
reproducible), stops at ``--threshold``, and prints one JSON line:
``{"reached_at", "train_seconds", "eval_seconds", "curve": [[step, mean], ...]}``.
``train_seconds`` is the wall-clock time spent training, evaluation excluded; ``train_cpu_seconds`` the
same in CPU time of this process (``time.process_time``), less sensitive to other jobs on the machine.

    /work/venv-sb3/bin/python benchmarks/sb3_runner.py --seed 0 --max-steps 100000

``--dump-first-update PATH`` instead saves SB3's first rollout and its weights before and after the
first update, for ``benchmarks/online.py --parts equivalence``.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from sb3_eval import episode_returns


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--env", default="CartPole-v1")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=100_000)
    p.add_argument("--eval-freq", type=int, default=10_240)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--threshold", type=float, default=500.0)
    p.add_argument("--n-envs", type=int, default=8)
    p.add_argument("--n-steps", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--gae-lambda", type=float, default=0.8)
    p.add_argument("--gamma", type=float, default=0.98)
    p.add_argument("--n-epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--clip", type=float, default=0.2)
    p.add_argument("--ent-coef", type=float, default=0.0)
    p.add_argument("--dump-first-update", default=None, metavar="NPZ",
                   help="instead of training: collect one rollout, run one update (n_epochs passes) and save the "
                        "rollout buffer, the last observation and the weights before and after it to NPZ")
    p.add_argument("--time-phases", type=int, default=0, metavar="N",
                   help="instead of training to a threshold: train 3 + N iterations and print the CPU ms of "
                        "collect_rollouts() and train() per iteration over the last N")
    args = p.parse_args()
    torch.set_num_threads(1)

    import gymnasium as gym
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    def evaluate(model, env) -> float:
        """The kit's evaluation protocol (``Trainer.evaluate``): episode ``i`` starts from
        ``reset(seed=seed + 10000 + i)``, deterministic actions; the mean return."""
        return float(np.mean(episode_returns(model, env, args.eval_episodes, args.seed + 10_000)))

    class EvalAndStop(BaseCallback):
        def __init__(self):
            super().__init__()
            self.eval_env = gym.make(args.env)
            self.eval_seconds, self.eval_cpu_seconds, self.curve, self.reached_at, self.last = 0.0, 0.0, [], None, 0
            self.stop = False

        def _on_rollout_start(self) -> None:  # after the previous update, like the kit's evaluation
            n = self.num_timesteps
            if n // args.eval_freq > self.last // args.eval_freq:
                t, c = time.perf_counter(), time.process_time()
                mean = evaluate(self.model, self.eval_env)
                self.eval_seconds += time.perf_counter() - t
                self.eval_cpu_seconds += time.process_time() - c
                self.curve.append([n, float(mean)])
                if mean >= args.threshold and self.reached_at is None:
                    self.reached_at = n
                    self.stop = True
            self.last = n

        def _on_step(self) -> bool:
            return not self.stop

    env = make_vec_env(args.env, n_envs=args.n_envs, seed=args.seed)
    model = PPO("MlpPolicy", env, n_steps=args.n_steps, batch_size=args.batch_size, gae_lambda=args.gae_lambda,
                gamma=args.gamma, n_epochs=args.n_epochs, learning_rate=args.lr, clip_range=args.clip,
                ent_coef=args.ent_coef, seed=args.seed, device="cpu", verbose=0)
    if args.dump_first_update:
        dump_first_update(model, args.dump_first_update)
        return
    if args.time_phases:
        time_phases(model, args.time_phases)
        return
    cb = EvalAndStop()
    t0, c0 = time.perf_counter(), time.process_time()
    model.learn(total_timesteps=args.max_steps, callback=cb)
    total, total_cpu = time.perf_counter() - t0, time.process_time() - c0
    if cb.reached_at is None:  # the final policy, like the kit's end-of-training evaluation
        t, c = time.perf_counter(), time.process_time()
        mean = evaluate(model, cb.eval_env)
        cb.eval_seconds += time.perf_counter() - t
        cb.eval_cpu_seconds += time.process_time() - c
        cb.curve.append([model.num_timesteps, float(mean)])
        total += time.perf_counter() - t
        total_cpu += time.process_time() - c
        if mean >= args.threshold:
            cb.reached_at = model.num_timesteps
    print(json.dumps({"library": "sb3", "seed": args.seed, "reached_at": cb.reached_at,
                      "train_seconds": total - cb.eval_seconds, "eval_seconds": cb.eval_seconds,
                      "train_cpu_seconds": total_cpu - cb.eval_cpu_seconds,
                      "steps": int(model.num_timesteps), "curve": cb.curve}))


def time_phases(model, iterations: int) -> None:
    """CPU milliseconds of ``collect_rollouts()`` per rollout and of ``train()`` per gradient step,
    over ``iterations`` iterations after 3 warm-up ones."""
    spent = {"collect_rollouts": [], "train": []}
    for name in spent:
        inner = getattr(model, name)

        def timed(*a, _inner=inner, _name=name, **kw):
            c = time.process_time()
            out = _inner(*a, **kw)
            spent[_name].append(time.process_time() - c)
            return out

        setattr(model, name, timed)
    model.learn(total_timesteps=(3 + iterations) * model.n_steps * model.n_envs)
    updates = model.n_epochs * max(1, model.n_steps * model.n_envs // model.batch_size)
    print(json.dumps({"rollout": float(np.mean(spent["collect_rollouts"][3:])) * 1e3,
                      "update": float(np.mean(spent["train"][3:])) * 1e3 / updates}))


def dump_first_update(model, path: str) -> None:
    """Save SB3's first rollout and its policy weights before and after the first ``train()``."""
    out, train = {}, model.train

    class Done(Exception):
        pass

    def dump_and_train():
        rb = model.rollout_buffer
        for k in ("observations", "actions", "values", "log_probs", "advantages", "returns", "rewards", "episode_starts"):
            out[k] = np.array(getattr(rb, k))
        out["last_obs"], out["last_episode_starts"] = np.array(model._last_obs), np.array(model._last_episode_starts)
        out.update({"before/" + k: v.numpy().copy() for k, v in model.policy.state_dict().items()})
        train()
        out.update({"after/" + k: v.numpy().copy() for k, v in model.policy.state_dict().items()})
        raise Done

    model.train = dump_and_train
    try:
        model.learn(total_timesteps=model.n_steps * model.n_envs)
    except Done:
        pass
    np.savez(path, **out)
    print(json.dumps({"dumped": path}))


if __name__ == "__main__":
    main()
