"""SAC: the kit against Stable-Baselines3 in one run on the same machine (not part of CI).

For each environment, with the same hyperparameters (SB3's SAC defaults except learning_starts:
lr 3e-4, batch 256, 2x256 hidden, tau 0.005, gamma 0.99, buffer 1e6, auto entropy with target
-|A|, one gradient step per environment step):

* ``kit``: ``SACTrainer`` for ``--steps`` environment steps, then a 10-episode deterministic
  evaluation (episode seeds seed+10000+i);
* ``sb3``: Stable-Baselines3's SAC, run by ``benchmarks/sb3_sac_runner.py`` in the separate venv
  ``--sb3-python`` (default /work/venv-sb3/bin/python), evaluated the same way;
* ``raw (kit update)``: the kit's own ``SACTrainer.update`` called on batches from a filled replay
  buffer in a bare loop: the same update work with no environment, no action selection, no
  trainer loop -- the issue's "raw loop that only does the same update work";
* ``raw (plain torch)``: an independent, minimal hand-written SAC update (two nn.Sequential
  critics, fused Adam) on tensors -- a check that the kit's update is itself not slow.

Speeds are environment steps (or updates) per second after ``learning_starts``, one update per
step, one torch thread for everyone; both per wall-clock second and per second of the process's
own CPU time (``time.process_time``), which is far less sensitive to other jobs on a shared machine. Prints a table and, with ``--json``, writes the rows.

    python benchmarks/online_sac.py --envs Pendulum-v1 Hopper-v5 --steps 20000 10000
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
DEFAULT_SB3_PYTHON = "/work/venv-sb3/bin/python"


def _hp(args) -> dict:
    return dict(learning_rate=args.lr, batch_size=args.batch_size, hidden_dim=args.hidden, tau=args.tau,
                discount_gamma=args.gamma, buffer_size=args.buffer_size, learning_starts=args.learning_starts)


def run_kit(env_id: str, steps: int, seed: int, args) -> dict:
    from vla_rl_lib.config import RLConfig
    from vla_rl_lib.online.sac import SACTrainer

    cfg = RLConfig(algorithm="sac", env=env_id, total_timesteps=steps, alpha="auto", eval_freq=args.curve_every,
                   eval_episodes=args.eval_episodes, save_freq=0, log_freq=1000, seed=seed,
                   output_dir=str(Path(args.output_dir) / f"kit_{env_id}_{seed}"), device="cpu", **_hp(args))
    trainer = SACTrainer(env=env_id, config=cfg)
    clock, curve = {}, []

    class Clock:
        def on_train_start(self, t): return None
        def on_log(self, t, m): return None
        def on_train_end(self, t): return None

        def on_evaluation(self, t, r):
            curve.append((t.global_step, round(float(r["mean_reward"]), 1)))

        def on_step(self, t):
            if "t0" not in clock and t.global_step > args.learning_starts:
                clock["t0"], clock["c0"], clock["n0"] = time.perf_counter(), time.process_time(), t.global_step
            clock["t1"], clock["c1"], clock["n1"] = time.perf_counter(), time.process_time(), t.global_step
            return None

    # the update work (replay sampling + update, i.e. what the raw loop does) timed inside this same
    # run, so the trainer's overhead is measured under exactly the load the trainer ran under
    work, learn = {"cpu": 0.0}, trainer.learn

    def timed_learn():
        c = time.process_time()
        out = learn()
        if "c0" in clock:  # inside the timed window (from the first step after learning_starts)
            work["cpu"] += time.process_time() - c
        return out

    trainer.learn = timed_learn
    t0 = time.perf_counter()
    trainer.train(callbacks=[Clock()])
    total = time.perf_counter() - t0
    ev = trainer.last_evaluation or trainer.evaluate(args.eval_episodes)
    sps = (clock["n1"] - clock["n0"]) / (clock["t1"] - clock["t0"])
    cpu_sps = (clock["n1"] - clock["n0"]) / (clock["c1"] - clock["c0"])
    return {"library": "kit", "env": env_id, "seed": seed, "steps": trainer.global_step,
            "mean_reward": ev["mean_reward"], "std_reward": ev["std_reward"], "learn_steps_per_second": sps,
            "learn_steps_per_cpu_second": cpu_sps, "total_seconds": total,
            "update_work_share": work["cpu"] / (clock["c1"] - clock["c0"]),
            **({"curve": curve, "note": "speed includes the periodic evaluations"} if args.curve_every else {})}


def run_sb3(env_id: str, steps: int, seed: int, args) -> dict:
    if not Path(args.sb3_python).exists():
        return {"library": "sb3", "env": env_id, "error": f"{args.sb3_python} not found; create the venv "
                "(python -m venv /work/venv-sb3; pip install torch==2.13.0 stable-baselines3 'gymnasium[mujoco]')"}
    cmd = [args.sb3_python, str(HERE / "sb3_sac_runner.py"), "--env", env_id, "--steps", str(steps), "--seed", str(seed),
           "--learning-starts", str(args.learning_starts), "--lr", str(args.lr), "--batch-size", str(args.batch_size),
           "--hidden", str(args.hidden), "--tau", str(args.tau), "--gamma", str(args.gamma),
           "--buffer-size", str(args.buffer_size), "--eval-episodes", str(args.eval_episodes),
           "--eval-seed", str(seed + 10_000)]
    env = dict(os.environ, MUJOCO_GL=os.environ.get("MUJOCO_GL", "egl"))
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        return {"library": "sb3", "env": env_id, "error": out.stderr.strip().splitlines()[-1] if out.stderr else "failed"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_raw_kit_update(env_id: str, updates: int, seed: int, args) -> dict:
    """The kit's SACTrainer.update in a bare loop on a filled buffer (no env, no trainer loop)."""
    from vla_rl_lib.config import RLConfig
    from vla_rl_lib.online.sac import SACTrainer

    cfg = RLConfig(algorithm="sac", env=env_id, total_timesteps=args.learning_starts, eval_episodes=0, save_freq=0,
                   seed=seed, output_dir=str(Path(args.output_dir) / f"raw_{env_id}_{seed}"), device="cpu", **_hp(args))
    trainer = SACTrainer(env=env_id, config=cfg)
    while trainer.global_step < args.learning_starts:
        trainer.global_step += trainer.collect()
    buf, gen, bs = trainer.replay_buffer, trainer.sample_generator, cfg.batch_size
    for _ in range(20):
        trainer.update(buf.sample(bs, gen))
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(updates):
        trainer.update(buf.sample(bs, gen))
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    return {"library": "raw (kit update)", "env": env_id, "seed": seed, "updates": updates,
            "learn_steps_per_second": updates / dt, "learn_steps_per_cpu_second": updates / dc}


def run_raw_plain_torch(env_id: str, updates: int, seed: int, args) -> dict:
    """A minimal hand-written SAC update (CleanRL-like layout) on random tensors of the env's sizes."""
    import gymnasium as gym
    import torch.nn as nn
    import torch.nn.functional as F

    env = gym.make(env_id)
    od, ad = env.observation_space.shape[0], env.action_space.shape[0]
    env.close()
    torch.manual_seed(seed)
    h, bs, n = args.hidden, args.batch_size, 10_000

    def net(i, o):
        return nn.Sequential(nn.Linear(i, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, o))

    actor, q1, q2 = net(od, 2 * ad), net(od + ad, 1), net(od + ad, 1)
    q1t, q2t = copy.deepcopy(q1), copy.deepcopy(q2)
    log_alpha = torch.zeros((), requires_grad=True)
    qopt = torch.optim.Adam(list(q1.parameters()) + list(q2.parameters()), lr=args.lr, fused=True)
    aopt = torch.optim.Adam(actor.parameters(), lr=args.lr, fused=True)
    alopt = torch.optim.Adam([log_alpha], lr=args.lr, fused=True)
    O, A, R, O2, D = (torch.randn(n, od), torch.rand(n, ad) * 2 - 1, torch.randn(n), torch.randn(n, od),
                      torch.zeros(n))
    qparams = list(q1.parameters()) + list(q2.parameters())
    targets = list(q1t.parameters()) + list(q2t.parameters())

    def pi(o):
        mean, log_std = actor(o).chunk(2, -1)
        log_std = log_std.clamp(-20, 2)
        std = log_std.exp()
        u = mean + std * torch.randn_like(mean)
        a = torch.tanh(u)
        logp = (-0.5 * ((u - mean) / std) ** 2 - log_std - 0.5 * np.log(2 * np.pi)
                - 2 * (np.log(2) - u - F.softplus(-2 * u))).sum(-1)
        return a, logp

    def update():
        idx = torch.randint(0, n, (bs,))
        o, a, r, o2, d = O[idx], A[idx], R[idx], O2[idx], D[idx]
        a_pi, logp = pi(o)
        alpha = log_alpha.detach().exp()
        aloss = -(log_alpha * (logp + (-ad)).detach()).mean()
        alopt.zero_grad(); aloss.backward(); alopt.step()
        with torch.no_grad():
            a2, logp2 = pi(o2)
            x2 = torch.cat([o2, a2], -1)
            y = r + args.gamma * (1 - d) * (torch.min(q1t(x2), q2t(x2)).squeeze(-1) - alpha * logp2)
        x = torch.cat([o, a], -1)
        qloss = 0.5 * (F.mse_loss(q1(x).squeeze(-1), y) + F.mse_loss(q2(x).squeeze(-1), y))
        qopt.zero_grad(); qloss.backward(); qopt.step()
        for p in qparams:
            p.requires_grad_(False)
        xp = torch.cat([o, a_pi], -1)
        ploss = (alpha * logp - torch.min(q1(xp), q2(xp)).squeeze(-1)).mean()
        aopt.zero_grad(); ploss.backward(); aopt.step()
        for p in qparams:
            p.requires_grad_(True)
        with torch.no_grad():
            torch._foreach_lerp_(targets, qparams, args.tau)

    for _ in range(20):
        update()
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(updates):
        update()
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    return {"library": "raw (plain torch)", "env": env_id, "seed": seed, "updates": updates,
            "learn_steps_per_second": updates / dt, "learn_steps_per_cpu_second": updates / dc}


def run_sac_benchmark(args=None, steps=None, seed: int = 0, **overrides) -> list[dict]:
    """Run the comparison and return one dict per (env, library).

    ``args`` is this script's argparse namespace, or an env id (``steps`` and ``seed`` then say the
    budget), as ``benchmarks/online.py`` calls it.
    """
    if args is None or isinstance(args, str):
        ns = build_parser().parse_args([])
        if isinstance(args, str):
            ns.envs, ns.steps = [args], [int(steps or ns.steps[0])]
        ns.seeds = [seed]
        for k, v in overrides.items():
            setattr(ns, k, v)
        args = ns
    torch.set_num_threads(1)
    rows = []
    budgets = list(args.steps) + [args.steps[-1]] * (len(args.envs) - len(args.steps))
    for env_id, steps_i in zip(args.envs, budgets):
        for s in args.seeds:
            for name, fn in (("kit", lambda: run_kit(env_id, steps_i, s, args)),
                             ("sb3", lambda: run_sb3(env_id, steps_i, s, args)),
                             ("raw (kit update)", lambda: run_raw_kit_update(env_id, args.raw_updates, s, args)),
                             ("raw (plain torch)", lambda: run_raw_plain_torch(env_id, args.raw_updates, s, args))):
                if name.startswith("raw") and s != args.seeds[0]:
                    continue
                if (name == "sb3" and args.no_sb3) or (args.libraries and name.split(" ")[0] not in args.libraries):
                    continue
                row = fn()
                rows.append(row)
                print(json.dumps(row), flush=True)
    return rows


def summarize(rows: list[dict]) -> str:
    """A table of the rows and the speed ratios the issue asks for."""
    lines = [f"{'env':<12} {'library':<18} {'steps':>6} {'return':>16} {'learn steps/s':>14} {'per CPU s':>10}"]
    for r in rows:
        ret = f"{r['mean_reward']:.1f} +- {r['std_reward']:.1f}" if "mean_reward" in r else r.get("error", "-")[:16]
        steps = r.get("steps", r.get("updates", ""))
        lines.append(f"{r['env']:<12} {r['library']:<18} {steps:>6} {ret:>16} {r.get('learn_steps_per_second', float('nan')):>14.1f} "
                     f"{r.get('learn_steps_per_cpu_second', float('nan')):>10.1f}")
    for key, label in (("learn_steps_per_second", "wall"), ("learn_steps_per_cpu_second", "CPU")):
        by_env: dict = {}
        for r in rows:
            if key in r:
                by_env.setdefault(r["env"], {}).setdefault(r["library"], []).append(r[key])
        for env_id, libs in by_env.items():
            kit = np.mean(libs.get("kit", [np.nan]))
            parts = [f"{env_id} ({label} time): kit/sb3 speed {kit / np.mean(libs.get('sb3', [np.nan])):.2f}x"]
            for raw in ("raw (kit update)", "raw (plain torch)"):
                if raw in libs:
                    parts.append(f"kit/{raw} {kit / np.mean(libs[raw]):.2f}")
            lines.append("; ".join(parts))
    for r in rows:
        if "update_work_share" in r:
            lines.append(f"{r['env']} seed {r['seed']}: the update work (sampling + update, as the raw loop) is "
                         f"{100 * r['update_work_share']:.1f}% of the kit's learning-phase CPU time in the same run")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--envs", nargs="+", default=["Pendulum-v1", "Hopper-v5"])
    p.add_argument("--steps", nargs="+", type=int, default=[20_000, 10_000], help="budget per env (same order)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--learning-starts", type=int, default=1000)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--tau", type=float, default=0.005)
    p.add_argument("--gamma", type=float, default=0.99)
    p.add_argument("--buffer-size", type=int, default=1_000_000)
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--raw-updates", type=int, default=1000)
    p.add_argument("--curve-every", type=int, default=0,
                   help="kit: evaluate every this many steps and report the learning curve (its speed then "
                        "includes the evaluations); 0: evaluate once at the end")
    p.add_argument("--sb3-python", default=DEFAULT_SB3_PYTHON)
    p.add_argument("--no-sb3", action="store_true")
    p.add_argument("--libraries", nargs="+", choices=("kit", "sb3", "raw"), default=None,
                   help="run only these (e.g. to run kit and sb3 as concurrent processes under the same load)")
    p.add_argument("--output-dir", default="/tmp/vla_rl_sac_bench")
    p.add_argument("--json", default=None, help="write the rows to this file")
    return p


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    rows = run_sac_benchmark(args)
    print(summarize(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))
    main()
