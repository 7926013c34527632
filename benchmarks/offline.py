"""Offline RL benchmark: the kit's IQL, CQL, TD3+BC and Decision Transformer against d3rlpy's and a raw loop.

For each method and seed, on one dataset, in the same run:

* **kit**: ``<Method>Trainer.train(buffer)`` for ``--steps`` gradient steps, then ``evaluate``;
* **d3rlpy**: the same algorithm in d3rlpy 2.x (run by ``benchmarks/d3rlpy_runner.py`` with the
  python of d3rlpy's own virtual environment, ``--d3rlpy-python``; d3rlpy pins gymnasium 1.0), with
  the same network sizes, batch size, learning rates, data preprocessing and step count;
* **raw loop** (during the first seed's kit run): the kit's own networks and optimisers (a separate
  copy) driven by a bare ``for`` loop that samples a batch and does only the method's
  forward/backward/optimizer work (no trainer, no metrics, no logging) -- the machine's limit for
  that computation. It runs in bursts of ``--raw-burst`` steps after every ``--raw-every`` steps of
  the trainer, so both are timed under the same load; the bursts' time is taken out of the kit's.

Reported: D4RL-normalised score (mean +- std over seeds, each seed the mean of ``--eval-episodes``
episodes) and gradient steps per second (timed from the end of the first step to the end of the last,
so one-off setup such as indexing the dataset is excluded for every contestant). When the dataset is
the real ``hopper-medium-v2``, CORL's published "last" scores are printed beside them.

    python benchmarks/offline.py --dataset hopper-medium-v0 --steps 20000 --seeds 0,1,2

Not part of CI. Needs the dataset on this machine (no substitute is used) and, for the d3rlpy
column, a virtual environment with d3rlpy (``python -m venv /work/venv-d3rlpy;
/work/venv-d3rlpy/bin/pip install torch==2.13.0; /work/venv-d3rlpy/bin/pip install d3rlpy``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vla_rl_lib.config import OfflineRLConfig
from vla_rl_lib.data.buffer import OfflineReplayBuffer
from vla_rl_lib.data.datasets import load_dataset, normalized_score
from vla_rl_lib.losses import soft_update

HERE = Path(__file__).resolve().parent
METHODS = ("iql", "cql", "td3_bc", "dt")
LABELS = {"iql": "IQL", "cql": "CQL", "td3_bc": "TD3+BC", "dt": "DT"}
CORL_LAST = {"iql": 67.53, "cql": 59.08, "td3_bc": 60.37, "dt": 65.10}  # CORL, hopper-medium-v2, "last"


# ------------------------------------------------------------------------------------------------
# the kit's trainers, set up identically for the three contestants
# ------------------------------------------------------------------------------------------------
def make_trainer(method: str, obs_dim: int, act_dim: int, args, seed: int, out: Path):
    common = dict(num_epochs=1, steps_per_epoch=args.steps, eval_episodes=0, save_freq=0, eval_freq=0,
                  log_freq=args.log_freq, hidden_dim=args.hidden, batch_size=args.batch_size, device="cpu",
                  normalize_states=True, seed=seed, output_dir=str(out), precision=args.precision)
    if method == "iql":
        from vla_rl_lib.offline.iql import IQLTrainer

        return IQLTrainer(obs_dim, act_dim, config=OfflineRLConfig(**common), expectile=0.7, temperature=3.0)
    if method == "cql":
        from vla_rl_lib.offline.cql import CQLTrainer

        return CQLTrainer(obs_dim, act_dim, config=OfflineRLConfig(**common), cql_alpha=5.0, cql_samples=10,
                          min_q_weight=1.0)
    if method == "td3_bc":
        from vla_rl_lib.offline.td3_bc import TD3BCTrainer

        return TD3BCTrainer(obs_dim, act_dim, config=OfflineRLConfig(**common), alpha=2.5)
    if method == "dt":
        from vla_rl_lib.offline.decision_transformer import DecisionTransformerTrainer

        common.update(batch_size=args.dt_batch_size, learning_rate=args.dt_learning_rate, weight_decay=1e-4)
        return DecisionTransformerTrainer(obs_dim, act_dim, config=OfflineRLConfig(**common), context_length=20,
                                          n_layer=3, n_head=1, embed_dim=128, warmup_steps=dt_warmup(args))
    raise SystemExit(f"unknown method {method}")


def dt_warmup(args) -> int:
    return min(10_000, max(1, args.steps // 10))


def make_buffer(method: str, data: dict, obs_dim: int, act_dim: int) -> OfflineReplayBuffer:
    # IQL scales rewards by 1000 / (max return - min return) (CORL; d3rlpy's ReturnBasedRewardScaler)
    return OfflineReplayBuffer(obs_dim, act_dim, normalize_rewards=(method == "iql")).load_dataset(data)


class StepClock:
    """Callback: the time at the end of the first and of the last gradient step."""

    def __init__(self):
        self.first = self.last = self.cpu_first = self.cpu_last = None
        self.raw_seconds = self.raw_cpu_seconds = 0.0  # time spent inside the clock on other work (InterleavedRaw)
        self.raw_steps = 0

    def on_train_start(self, trainer):
        return None

    def on_step(self, trainer):
        now, cpu = time.perf_counter(), time.process_time()
        if self.first is None:
            self.first, self.cpu_first = now, cpu
        self.last, self.cpu_last = now, cpu
        return None

    def on_log(self, trainer, metrics):
        return None

    def on_evaluation(self, trainer, results):
        return None

    def on_train_end(self, trainer):
        return None


class InterleavedRaw(StepClock):
    """A StepClock that runs ``raw(n)`` for ``burst`` steps after every ``every`` trainer steps and
    keeps the bursts' time apart (the trainer's clock is corrected by it)."""

    def __init__(self, raw, every: int, burst: int):
        super().__init__()
        self.raw, self.every, self.burst = raw, every, burst

    def on_step(self, trainer):
        super().on_step(trainer)
        step = trainer.global_step
        if step % self.every == 0 and step < trainer.total_steps:  # (a burst after the last step is outside the clock)
            t, c = time.perf_counter(), time.process_time()
            self.raw(self.burst)
            self.raw_seconds += time.perf_counter() - t
            self.raw_cpu_seconds += time.process_time() - c
            self.raw_steps += self.burst
        return None


def make_raw(method, data, obs_dim, act_dim, args, workdir):
    """``raw(n)``: ``n`` steps of the method's raw loop on a separate trainer's networks and buffer."""
    trainer = make_trainer(method, obs_dim, act_dim, args, 0, workdir / f"raw_{method}")
    trainer.attach_buffer(make_buffer(method, data, obs_dim, act_dim))  # the trainer's normaliser, bounds, DT index
    gen = torch.Generator().manual_seed(0)

    def raw(n):  # its own random numbers: the kit run it is interleaved with draws the same ones as without it
        with torch.random.fork_rng(devices=[]), trainer.autocast():  # (and the trainer's precision)
            RAW[method](trainer, trainer.buffer, n, gen)

    raw(1)  # warm-up, as the others' clocks start after their first step
    return raw


def run_kit(method, data, obs_dim, act_dim, env_id, args, seed, workdir, raw=None) -> dict:
    torch.manual_seed(seed)
    trainer = make_trainer(method, obs_dim, act_dim, args, seed, workdir / f"kit_{method}_{seed}")
    buffer = make_buffer(method, data, obs_dim, act_dim)
    clock = StepClock() if raw is None else InterleavedRaw(raw, args.raw_every, args.raw_burst)
    trainer.train(buffer, callbacks=[clock])
    raw_wall, raw_cpu = clock.raw_seconds, clock.raw_cpu_seconds
    sps = (args.steps - 1) / max(clock.last - clock.first - raw_wall, 1e-9)
    cpu_sps = (args.steps - 1) / max(clock.cpu_last - clock.cpu_first - raw_cpu, 1e-9)
    returns = []
    if args.eval_episodes:
        res = trainer.evaluate(num_episodes=args.eval_episodes, env=env_id, seed=10_000)
        returns = [res["mean_reward"]]
    out = {"steps_per_second": sps, "cpu_steps_per_second": cpu_sps, "mean_return": float(np.mean(returns)) if returns else None}
    if method == "dt":
        out["target_return"] = float(trainer.policy.target_return)
    if raw is not None:
        out["raw"] = {"steps_per_second": clock.raw_steps / max(raw_wall, 1e-9),
                      "cpu_steps_per_second": clock.raw_steps / max(raw_cpu, 1e-9), "steps": clock.raw_steps}
    return out


# ------------------------------------------------------------------------------------------------
# raw loops: the same forward/backward/optimizer work, no trainer around it
# ------------------------------------------------------------------------------------------------
def raw_iql(t, buffer, steps, gen):
    actor, qf, qft, vf = t.actor, t.qf, t.qf_target, t.vf
    gamma, tau, beta, expectile = t.config.discount_gamma, t.config.tau, t.hparams.temperature, t.hparams.expectile
    bs = t.config.batch_size
    for _ in range(steps):
        b = buffer.sample(bs, generator=gen)
        obs, nobs = actor.normalize(b["observations"]), actor.normalize(b["next_observations"])
        a = actor.unscale_action(b["actions"])
        with torch.no_grad():
            tq = qft(obs, a).min(0).values
            nv = vf(nobs)
        adv = tq - vf(obs)
        v_loss = (torch.where(adv < 0, 1 - expectile, expectile) * adv.pow(2)).mean()
        t.v_optimizer.zero_grad(set_to_none=True)
        v_loss.backward()
        t.v_optimizer.step()
        y = b["rewards"] + gamma * (1 - b["dones"]) * nv
        q_loss = (qf(obs, a) - y).pow(2).mean(1).sum()
        t.q_optimizer.zero_grad(set_to_none=True)
        q_loss.backward()
        t.q_optimizer.step()
        w = torch.exp(beta * adv.detach()).clamp(max=100.0)
        pi_loss = (w * -actor.log_prob(b["observations"], b["actions"])).mean()
        t.actor_optimizer.zero_grad(set_to_none=True)
        pi_loss.backward()
        t.actor_optimizer.step()
        t.actor_lr_schedule.step()
        soft_update(qft, qf, tau)


def raw_cql(t, buffer, steps, gen):
    actor, qf, qft = t.actor, t.qf, t.qf_target
    gamma, tau, n = t.config.discount_gamma, t.config.tau, t.hparams.cql_samples
    weight = t.hparams.cql_alpha * t.hparams.min_q_weight
    bs = t.config.batch_size
    for _ in range(steps):
        b = buffer.sample(bs, generator=gen)
        raw, nraw = b["observations"], b["next_observations"]
        obs, nobs = actor.normalize(raw), actor.normalize(nraw)
        a = actor.unscale_action(b["actions"])
        act_dim = a.shape[1]
        alpha = t.log_alpha().exp().detach()
        with torch.no_grad():
            na, _ = actor.sample(nraw, deterministic=t.hparams.target_action == "mean")
            y = b["rewards"] + gamma * (1 - b["dones"]) * qft(nobs, na).min(0).values
            ra = torch.rand(bs * n, act_dim) * 2 - 1
            pa, plog = actor.sample(raw, num_samples=n)
            npa, nplog = actor.sample(nraw, num_samples=n)
        q = qf(torch.cat([obs, obs.repeat_interleave(n, 0).repeat(3, 1)]), torch.cat([a, ra, pa, npa]))
        qd = q[:, :bs]
        qr, qp, qn = q[:, bs:].reshape(q.shape[0], 3, bs, n).unbind(1)
        lse = torch.logsumexp(torch.cat([qr - act_dim * math.log(0.5), qn - nplog.view(bs, n), qp - plog.view(bs, n)],
                                        -1), -1)
        loss = (qd - y).pow(2).mean(1).sum() + weight * (lse - qd).mean(1).sum()
        t.q_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t.q_optimizer.step()
        new_a, log_pi = actor.sample(raw)
        alpha_loss = -(t.log_alpha() * (log_pi.detach() + t.target_entropy)).mean()
        t.alpha_optimizer.zero_grad(set_to_none=True)
        alpha_loss.backward()
        t.alpha_optimizer.step()
        qf.requires_grad_(False)
        pi_loss = (alpha * log_pi - qf(obs, new_a).min(0).values).mean()
        qf.requires_grad_(True)
        t.actor_optimizer.zero_grad(set_to_none=True)
        pi_loss.backward()
        t.actor_optimizer.step()
        soft_update(qft, qf, tau)


def raw_td3_bc(t, buffer, steps, gen):
    pol, pol_t, q, q_t = t.policy, t.actor_target, t.critic, t.critic_target
    gamma, tau, alpha = t.config.discount_gamma, t.config.tau, t.hparams.alpha
    low, high = pol.action_low, pol.action_high
    half = 0.5 * (high - low)
    bs = t.config.batch_size
    for step in range(steps):
        b = buffer.sample(bs, generator=gen)
        obs, nobs, a = pol.normalize(b["observations"]), pol.normalize(b["next_observations"]), b["actions"]
        with torch.no_grad():
            noise = (torch.randn_like(a) * 0.2).clamp(-0.5, 0.5)
            na = torch.max(torch.min(pol_t.scale_action(pol_t.net(nobs)) + noise * half, high), low)
            y = b["rewards"] + gamma * (1 - b["dones"]) * q_t(nobs, na).min(0).values
        q_loss = (q(obs, a) - y).pow(2).mean(1).sum()
        t.critic_optimizer.zero_grad(set_to_none=True)
        q_loss.backward()
        t.critic_optimizer.step()
        if (step + 1) % 2 == 0:
            pi = pol.scale_action(pol.net(obs))
            q.requires_grad_(False)
            q_pi = q(obs, pi, members=slice(0, 1))[0]
            lmbda = alpha / q_pi.abs().mean().detach()
            loss = -lmbda * q_pi.mean() + (pi - a).pow(2).mean()
            t.actor_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            q.requires_grad_(True)
            t.actor_optimizer.step()
            soft_update(q_t, q, tau)
            soft_update(pol_t, pol, tau)


def raw_dt(t, buffer, steps, gen):
    pol = t.policy
    sampler = t.buffer  # the trainer's episode-window sampler (built by attach_buffer)
    params = list(pol.parameters())
    for _ in range(steps):
        b = sampler.sample(t.config.batch_size, generator=gen)
        states = pol.normalize(b["observations"])
        actions = pol.unscale_action(b["actions"]).clamp(-1.0, 1.0)
        pred = pol.model(states, actions, b["returns_to_go"] / pol.reward_scale, b["timesteps"])
        mask = b["mask"].unsqueeze(-1).to(pred.dtype)
        loss = ((pred - actions).pow(2) * mask).sum() / (mask.sum() * actions.shape[-1])
        t.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 0.25)
        t.optimizer.step()
        t.scheduler.step()


# (the kit's policies build their distributions with validate_args=False, in the raw loops as in the kit)
RAW = {"iql": raw_iql, "cql": raw_cql, "td3_bc": raw_td3_bc, "dt": raw_dt}


# ------------------------------------------------------------------------------------------------
# d3rlpy, through its own python
# ------------------------------------------------------------------------------------------------
def run_d3rlpy(method, npz, env_id, args, seed, target_return) -> dict:
    spec = dict(algo=method, npz=str(npz), steps=args.steps, seed=seed, hidden=args.hidden,
                batch_size=args.dt_batch_size if method == "dt" else args.batch_size,
                eval_episodes=args.eval_episodes, eval_seed=10_000, env_id=env_id, threads=args.threads,
                target_return=target_return, context_length=20, embed_dim=128,
                dt_learning_rate=args.dt_learning_rate, dt_weight_decay=1e-4, dt_warmup=dt_warmup(args))
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    proc = subprocess.run([args.d3rlpy_python, str(HERE / "d3rlpy_runner.py"), json.dumps(spec)],
                          capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"d3rlpy {method} seed {seed} failed:\n{proc.stderr[-3000:]}")
    res = json.loads(lines[-1])
    return {"steps_per_second": res["steps_per_second"], "cpu_steps_per_second": res.get("cpu_steps_per_second"),
            "mean_return": float(np.mean(res["returns"])) if res["returns"] else None, "version": res["d3rlpy"]}


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------
def score_stats(name, runs):
    rets = [r["mean_return"] for r in runs if r.get("mean_return") is not None]
    if not rets:
        return None, None, None
    scores = normalized_score(name, rets)
    scores = None if scores is None else np.atleast_1d(scores)
    if scores is None:
        return float(np.mean(rets)), float(np.std(rets)), "return"
    return float(np.mean(scores)), float(np.std(scores)), "score"


def fmt(mean, std):
    return "n/a" if mean is None else f"{mean:.1f} ± {std:.1f}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="hopper-medium-v0", help="kit dataset name, D4RL name or .hdf5 path")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--steps", type=int, default=20_000, help="gradient steps per run")
    p.add_argument("--raw-every", type=int, default=100, help="a raw-loop burst after every this many kit steps")
    p.add_argument("--raw-burst", type=int, default=20, help="raw-loop steps per burst")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--eval-episodes", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--dt-batch-size", type=int, default=64)
    p.add_argument("--dt-learning-rate", type=float, default=1e-4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--log-freq", type=int, default=1000, help="the kit trainer's log_freq (metrics.csv rows)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                   help="the kit's (and the raw loop's) matmul precision; d3rlpy always runs float32")
    p.add_argument("--threads", type=int, default=1, help="torch threads for every contestant")
    p.add_argument("--d3rlpy-python", default="/work/venv-d3rlpy/bin/python")
    p.add_argument("--no-d3rlpy", action="store_true")
    p.add_argument("--no-raw", action="store_true")
    p.add_argument("--output", default=None, help="write all figures to this JSON file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]

    data = load_dataset(args.dataset)
    name = str(data.get("metadata/name") or args.dataset)
    env_id = str(data.get("metadata/env_id") or "")
    if not env_id:
        raise SystemExit(f"{args.dataset} names no environment to evaluate on")
    obs_dim, act_dim = data["observations"].shape[1], data["actions"].shape[1]
    print(f"dataset {name}: {len(data['observations'])} rows, obs {obs_dim}, act {act_dim}, evaluated on {env_id}; "
          f"{args.steps} steps, seeds {seeds}, {args.eval_episodes} episodes, torch threads {args.threads}, kit precision {args.precision}", flush=True)

    results: dict = {"dataset": name, "env_id": env_id, "steps": args.steps, "precision": args.precision, "seeds": seeds, "methods": {}}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        npz = workdir / "data.npz"
        np.savez(npz, **{k: np.asarray(data[k]) for k in ("observations", "actions", "rewards", "terminals",
                                                           "timeouts")})
        for method in methods:
            entry = results["methods"].setdefault(method, {"kit": [], "d3rlpy": [], "raw": None})
            for seed in seeds:
                raw = None if (args.no_raw or seed != seeds[0]) else make_raw(method, data, obs_dim, act_dim, args, workdir)
                kit = run_kit(method, data, obs_dim, act_dim, env_id, args, seed, workdir, raw)
                if raw is not None:
                    entry["raw"] = kit.pop("raw")
                    print(f"  {method} raw loop     : {entry['raw']} (interleaved with seed {seed}'s kit run)", flush=True)
                entry["kit"].append(kit)
                print(f"  {method} seed {seed} kit    : {kit}", flush=True)
                if not args.no_d3rlpy:
                    d3 = run_d3rlpy(method, npz, env_id, args, seed, kit.get("target_return"))
                    entry["d3rlpy"].append(d3)
                    print(f"  {method} seed {seed} d3rlpy : {d3}", flush=True)

    corl = name == "hopper-medium-v2"
    head = ("| method | kit score | d3rlpy score |" + (" CORL last |" if corl else "")
            + " kit steps/s | d3rlpy steps/s | raw steps/s | kit / d3rlpy | kit / raw |"
            + " kit CPU steps/s | d3rlpy CPU steps/s | raw CPU steps/s | CPU kit / d3rlpy | CPU kit / raw |")
    print("\n" + head)
    print("|" + "---|" * (head.count("|") - 1))

    def mean_of(runs, key):
        vals = [r[key] for r in runs if r.get(key)]
        return float(np.mean(vals)) if vals else None

    def num(x):
        return "n/a" if x is None else f"{x:.1f}"

    def ratio(a, b, pct=False):
        if a is None or b is None:
            return "n/a"
        return f"{100 * a / b:.0f}%" if pct else f"{a / b:.2f}x"

    for method, entry in results["methods"].items():
        ks, kd, unit = score_stats(name, entry["kit"])
        ds, dd, _ = score_stats(name, entry["d3rlpy"])
        raw = [entry["raw"]] if entry["raw"] else []
        k, d, r = (mean_of(entry["kit"], "steps_per_second"), mean_of(entry["d3rlpy"], "steps_per_second"),
                   mean_of(raw, "steps_per_second"))
        kc, dc, rc = (mean_of(entry["kit"], "cpu_steps_per_second"), mean_of(entry["d3rlpy"], "cpu_steps_per_second"),
                      mean_of(raw, "cpu_steps_per_second"))
        entry["summary"] = dict(kit_score=ks, kit_score_std=kd, d3rlpy_score=ds, d3rlpy_score_std=dd, unit=unit,
                                kit_sps=k, d3rlpy_sps=d, raw_sps=r, kit_cpu_sps=kc, d3rlpy_cpu_sps=dc, raw_cpu_sps=rc)
        row = f"| {LABELS[method]} | {fmt(ks, kd)} | {fmt(ds, dd)} |" + (f" {CORL_LAST[method]:.2f} |" if corl else "")
        row += f" {num(k)} | {num(d)} | {num(r)} | {ratio(k, d)} | {ratio(k, r, True)} |"
        row += f" {num(kc)} | {num(dc)} | {num(rc)} | {ratio(kc, dc)} | {ratio(kc, rc, True)} |"
        print(row)
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
