"""Online RL benchmarks for PPO and GRPO (not part of CI). Prints its figures; see docs/benchmarks.md.

Parts (``--parts``, comma separated):

* ``cartpole``: the kit's PPO against Stable-Baselines3's PPO, run in this same process tree on the
  same machine with the same hyperparameters (rl-baselines3-zoo's tuned CartPole-v1: 8 envs, n_steps
  32, batch 256, gae_lambda 0.8, gamma 0.98, 20 epochs, lr 1e-3, clip 0.2, ent 0; constants, as the
  issue lists them: the zoo anneals lr and clip linearly). Both evaluate the deterministic policy on
  10 episodes every ``--eval-freq`` steps after an update, with the same protocol (episode ``i`` reset
  with seed ``seed + 10000 + i``), and stop at a mean of 500. Reported:
  training wall-clock to 500 (evaluation time excluded for both, reported separately) and steps.
  SB3 runs through ``benchmarks/sb3_runner.py`` with the python of ``--sb3-python``
  (a separate virtual environment: ``/work/venv-sb3``). Seeds are interleaved kit/SB3.
* ``speed``: the same two PPOs' training throughput over ``--speed-steps`` steps (no evaluation until
  the end), in wall-clock and CPU time.
* ``equivalence``: SB3's first rollout and first update (20 epochs) replayed through the kit's GAE and
  learn() from SB3's initial weights; prints the largest differences (values, log-probabilities,
  advantages, weights after the update).
* ``phases``: where the time of one PPO iteration (256 env steps: a rollout, then 20 updates) goes,
  in CPU milliseconds: the kit's ``collect()`` and ``learn()``, SB3's ``collect_rollouts()`` and
  ``train()`` (timed inside ``sb3_runner.py --time-phases``), and a **bare loop** of the same work in
  plain torch (the same two 64x64 tanh networks as tensors, ``F.linear`` forward, the same loss,
  backward, gradient clip and fused Adam; the rollout as policy forward + sample + vector-env step,
  nothing stored). The bare loop is the floor for this computation on the machine, so SB3's time
  over the bare loop's is the most any PPO written in PyTorch can gain per step here.
* ``checkpoints``: the same two PPOs evaluated at fixed steps (every ``--eval-freq`` up to
  ``--max-steps``) without stopping, to compare learning per step across many seeds.
* ``grpo``: GRPO and PPO on CartPole-v1 at equal environment steps (``--grpo-steps``): evaluation
  curves of both.
* ``mujoco``: PPO learning curves on HalfCheetah-v5 and Hopper-v5 at ``--mujoco-steps`` with
  CleanRL's ppo_continuous_action defaults (1 env, 2048 steps, 32 minibatches of 64, 10 epochs,
  lr 3e-4 annealed, gamma 0.99, lambda 0.95, obs and reward normalisation), and SAC through the SAC
  helper's ``benchmarks/online_sac.py`` ``run_sac_benchmark`` when that file is present.

Every process uses one torch thread. Example::

    python benchmarks/online.py --parts cartpole,grpo,mujoco --seeds 0,1,2 --mujoco-steps 100000
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ZOO = dict(num_envs=8, rollout_steps=32, batch_size=256, ppo_gae_lambda=0.8, discount_gamma=0.98, ppo_epochs=20,
           learning_rate=1e-3, ppo_clip_range=0.2, ppo_entropy_coef=0.0)


class _Timed:
    """Wraps a trainer's evaluate() to count the time spent evaluating and record the curve."""

    def __init__(self, trainer, threshold=None):
        self.trainer, self.threshold = trainer, threshold
        self.seconds, self.cpu_seconds, self.curve, self.reached_at = 0.0, 0.0, [], None
        inner = trainer.evaluate

        def evaluate(*a, **kw):
            t, c = time.perf_counter(), time.process_time()
            out = inner(*a, **kw)
            self.seconds += time.perf_counter() - t
            self.cpu_seconds += time.process_time() - c
            return out

        trainer.evaluate = evaluate

    def callback(self):
        from vla_rl_lib.callbacks import Callback

        timed = self

        class Record(Callback):
            def on_evaluation(self, trainer, results):
                timed.curve.append([trainer.global_step, results["mean_reward"]])
                if timed.threshold is not None and results["mean_reward"] >= timed.threshold:
                    if timed.reached_at is None:
                        timed.reached_at = trainer.global_step
                    return False
                return None

        return Record()


def kit_ppo_cartpole(seed: int, max_steps: int, eval_freq: int, threshold: float | None = 500.0) -> dict:
    from vla_rl_lib import PPOTrainer, RLConfig

    out = tempfile.mkdtemp(prefix="kit_ppo_")
    cfg = RLConfig(env="CartPole-v1", **ZOO, total_timesteps=max_steps, eval_freq=eval_freq, eval_episodes=10,
                   save_freq=0, log_freq=1000, seed=seed, device="cpu", output_dir=out)
    trainer = PPOTrainer(config=cfg)
    timed = _Timed(trainer, threshold)
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.train(callbacks=[timed.callback()])
    total, total_cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"library": "kit", "seed": seed, "reached_at": timed.reached_at, "train_seconds": total - timed.seconds,
            "eval_seconds": timed.seconds, "train_cpu_seconds": total_cpu - timed.cpu_seconds,
            "steps": trainer.global_step, "curve": timed.curve}


def run_sb3_runner(python: str, seed: int, *options) -> dict:
    """Run ``sb3_runner.py`` with SB3's python and return the JSON line it prints last."""
    cmd = [python, str(HERE / "sb3_runner.py"), "--seed", str(seed), *map(str, options)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"SB3 runner failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def sb3_ppo_cartpole(python: str, seed: int, max_steps: int, eval_freq: int, threshold: float = 500.0) -> dict:
    return run_sb3_runner(python, seed, "--max-steps", max_steps, "--eval-freq", eval_freq, "--threshold", threshold)


def part_cartpole(args) -> dict:
    rows = []
    for seed in args.seeds:
        for fn in (lambda: kit_ppo_cartpole(seed, args.max_steps, args.eval_freq),
                   lambda: sb3_ppo_cartpole(args.sb3_python, seed, args.max_steps, args.eval_freq)):
            r = fn()
            rows.append(r)
            print(f"  {r['library']:4s} seed {seed}: reached 500 at {r['reached_at']} steps, "
                  f"train {r['train_seconds']:.2f}s wall, {r['train_cpu_seconds']:.2f}s CPU "
                  f"(+ eval {r['eval_seconds']:.1f}s); curve {r['curve']}", flush=True)
    summary = {}
    for lib in ("kit", "sb3"):
        mine = [r for r in rows if r["library"] == lib]
        solved = [r for r in mine if r["reached_at"] is not None]
        summary[lib] = {"solved": f"{len(solved)}/{len(mine)}",
                        "median_train_seconds_to_500": float(np.median([r["train_seconds"] for r in solved])) if solved else None,
                        "median_train_cpu_seconds_to_500":
                            float(np.median([r["train_cpu_seconds"] for r in solved])) if solved else None,
                        "median_steps_to_500": float(np.median([r["reached_at"] for r in solved])) if solved else None,
                        **throughput(mine)}
    for key, name in (("median_train_seconds_to_500", "time_ratio_kit_over_sb3"),
                      ("median_train_cpu_seconds_to_500", "cpu_time_ratio_kit_over_sb3")):
        k, s = summary["kit"][key], summary["sb3"][key]
        summary[name] = (k / s) if (k and s) else None
    print("PPO CartPole-v1, kit vs SB3:", json.dumps(summary, indent=1), flush=True)
    return {"runs": rows, "summary": summary}


def throughput(runs: list[dict]) -> dict:
    """Median training steps per wall-clock and per CPU second over ``runs``."""
    return {"median_steps_per_second": float(np.median([r["steps"] / r["train_seconds"] for r in runs])),
            "median_steps_per_cpu_second": float(np.median([r["steps"] / r["train_cpu_seconds"] for r in runs]))}


def part_speed(args) -> dict:
    """Training throughput of both PPOs over --speed-steps steps without intermediate evaluation."""
    rows = []
    for seed in args.seeds:
        big = 10 * args.speed_steps
        kit = kit_ppo_cartpole(seed, args.speed_steps, big, threshold=None)
        sb3 = sb3_ppo_cartpole(args.sb3_python, seed, args.speed_steps, big, threshold=1e9)
        rows += [kit, sb3]
        print(f"  seed {seed}: kit {kit['steps'] / kit['train_seconds']:.0f} steps/s wall, "
              f"{kit['steps'] / kit['train_cpu_seconds']:.0f} per CPU s; sb3 {sb3['steps'] / sb3['train_seconds']:.0f} "
              f"wall, {sb3['steps'] / sb3['train_cpu_seconds']:.0f} per CPU s", flush=True)
    summary = {}
    for lib in ("kit", "sb3"):
        summary[lib] = throughput([r for r in rows if r["library"] == lib])
    summary["speedup_kit_over_sb3"] = summary["kit"]["median_steps_per_second"] / summary["sb3"]["median_steps_per_second"]
    summary["cpu_speedup_kit_over_sb3"] = (summary["kit"]["median_steps_per_cpu_second"]
                                           / summary["sb3"]["median_steps_per_cpu_second"])
    print("PPO CartPole-v1 throughput, kit vs SB3:", json.dumps(summary, indent=1), flush=True)
    return {"runs": rows, "summary": summary}


def part_equivalence(args) -> dict:
    """The kit's PPO update against SB3's on the same data: SB3 collects its first rollout and runs
    its first update (20 epochs); the kit starts from SB3's initial weights, takes the same rollout
    (observations, actions, log-probabilities, values, rewards, episode ends), computes its own GAE
    and runs its own learn(). Reported: the largest differences in values, log-probabilities,
    advantages, and in every weight after the update (next to the size of the update)."""
    from vla_rl_lib import PPOTrainer, RLConfig
    from vla_rl_lib.online.rollout import compute_gae

    results = {}
    for seed in args.seeds:
        path = Path(tempfile.mkdtemp(prefix="ppo_equiv_")) / "sb3.npz"
        run_sb3_runner(args.sb3_python, seed, "--dump-first-update", path)
        d = np.load(path)
        steps, n = d["values"].shape
        trainer = PPOTrainer(config=RLConfig(env="CartPole-v1", **ZOO, total_timesteps=steps * n, eval_freq=0,
                                             eval_episodes=0, save_freq=0, seed=seed, device="cpu",
                                             output_dir=tempfile.mkdtemp(prefix="ppo_equiv_")))
        pol, val = trainer.policy.net, trainer.value_net.net
        layers = {"mlp_extractor.policy_net.0": pol[0], "mlp_extractor.policy_net.2": pol[2], "action_net": pol[4],
                  "mlp_extractor.value_net.0": val[0], "mlp_extractor.value_net.2": val[2], "value_net": val[4]}
        with torch.no_grad():
            for name, layer in layers.items():
                layer.weight.copy_(torch.from_numpy(d[f"before/{name}.weight"]))
                layer.bias.copy_(torch.from_numpy(d[f"before/{name}.bias"]))
        # SB3 marks episode starts; the kit marks the step that ends an episode (no time-limit cut this early)
        ends = np.concatenate([d["episode_starts"][1:], d["last_episode_starts"][None]], 0).astype(bool)
        buf = trainer.buffer
        buf.reset()
        obs = torch.from_numpy(d["observations"]).float()
        for t in range(steps):
            buf.add(obs[t], torch.from_numpy(d["actions"][t].reshape(n)).long(), torch.from_numpy(d["log_probs"][t]).float(),
                    torch.from_numpy(d["values"][t]).float(), d["rewards"][t], ends[t], ends[t], np.ones(n, bool))
        buf.finish()
        with torch.no_grad():
            flat = obs.reshape(steps * n, -1)
            values = trainer.value_net(flat).reshape(steps, n)
            log_probs = trainer.policy.evaluate_actions(flat, buf.actions.reshape(-1))[0].reshape(steps, n)
            buf.next_values[:-1] = buf.values[1:]
            buf.next_values[-1] = trainer.value_net(torch.from_numpy(d["last_obs"]).float())
        advantages, _ = compute_gae(buf.rewards, buf.values, buf.next_values, buf.terminations, buf.dones,
                                    ZOO["discount_gamma"], ZOO["ppo_gae_lambda"])
        row = {"episode_ends": int(ends.sum()),
               "max_abs_diff_values": float((values - buf.values).abs().max()),
               "max_abs_diff_log_probs": float((log_probs - buf.log_probs).abs().max()),
               "max_abs_diff_advantages": float((advantages - torch.from_numpy(d["advantages"])).abs().max())}
        trainer.learn()
        weight_diff, update = 0.0, 0.0
        with torch.no_grad():
            for name, layer in layers.items():
                for part in ("weight", "bias"):
                    after, before = d[f"after/{name}.{part}"], d[f"before/{name}.{part}"]
                    weight_diff = max(weight_diff, float(np.abs(getattr(layer, part).numpy() - after).max()))
                    update = max(update, float(np.abs(after - before).max()))
        row.update({"max_abs_diff_weights_after_update": weight_diff, "max_abs_update_sb3": update})
        results[seed] = row
        print(f"  seed {seed}: {json.dumps(row)}", flush=True)
    return results


def bare_ppo(trainer):
    """The bare loop's ``rollout()`` (32 vector steps) and ``update()`` (one gradient step) on a copy
    of ``trainer``'s networks (plain tensors) and on its last rollout (see ``phases`` above)."""
    import torch.nn.functional as F
    from vla_rl_lib.nets import adam
    from vla_rl_lib.losses import clip_grad_norm
    from vla_rl_lib.online.ppo import normalize_advantages
    from vla_rl_lib.online.rollout import compute_gae

    def tensors(seq):
        return [t.detach().clone().requires_grad_() for m in seq if hasattr(m, "weight") for t in (m.weight, m.bias)]

    pi, vf = tensors(trainer.policy.net), tensors(trainer.value_net.net)
    params = pi + vf
    opt = adam(params, ZOO["learning_rate"], eps=1e-5)

    def net(w, x):
        x = torch.tanh(F.linear(x, w[0], w[1]))
        return F.linear(torch.tanh(F.linear(x, w[2], w[3])), w[4], w[5])

    buf = trainer.buffer
    adv, ret = compute_gae(buf.rewards, buf.values, buf.next_values, buf.terminations, buf.dones,
                           ZOO["discount_gamma"], ZOO["ppo_gae_lambda"])
    obs, actions = buf.flat_obs().clone(), buf.actions.reshape(-1, 1).clone()
    old_log_probs, adv, ret = buf.log_probs.reshape(-1).clone(), normalize_advantages(adv.reshape(-1)), ret.reshape(-1)

    def update():
        log_pi = torch.log_softmax(net(pi, obs), -1)
        ratio = (log_pi.gather(1, actions).squeeze(1) - old_log_probs).exp()
        loss = -torch.min(ratio * adv, ratio.clamp(0.8, 1.2) * adv).mean() + 0.5 * F.mse_loss(net(vf, obs).squeeze(1), ret)
        for p in params:
            p.grad = None
        loss.backward()
        clip_grad_norm(params, 0.5)
        opt.step()

    envs = type(trainer.envs)(num_envs=trainer.num_envs)  # its own copy of the kit's batched CartPole
    state = {"obs": envs.reset(seed=0)[0]}

    @torch.inference_mode()
    def rollout():
        for _ in range(ZOO["rollout_steps"]):
            cdf = torch.softmax(net(pi, torch.as_tensor(state["obs"])), -1).cumsum(-1)
            action = (cdf < torch.rand(cdf.shape[0], 1)).sum(-1).clamp_(max=cdf.shape[1] - 1)
            state["obs"] = envs.step(action.numpy())[0]

    return rollout, update


def part_phases(args) -> dict:
    """CPU time per phase of one PPO iteration: kit and the bare loop interleaved iteration by
    iteration (the same load for both), then SB3 (module docstring)."""
    from vla_rl_lib import PPOTrainer, RLConfig

    iterations = 40
    rows = []
    for seed in args.seeds:
        trainer = PPOTrainer(config=RLConfig(env="CartPole-v1", **ZOO, total_timesteps=10**6, eval_freq=0,
                                             save_freq=0, seed=seed, device="cpu",
                                             output_dir=tempfile.mkdtemp(prefix="ppo_phases_")))
        for _ in range(3):
            trainer.collect(), trainer.learn()
        bare_rollout, bare_update = bare_ppo(trainer)
        steps = {"kit rollout": trainer.collect, "kit learn": trainer.learn, "bare rollout": bare_rollout,
                 "bare learn": lambda: [bare_update() for _ in range(ZOO["ppo_epochs"])]}
        spent = dict.fromkeys(steps, 0.0)
        for i in range(3 + iterations):
            for name, fn in steps.items():
                c = time.process_time()
                fn()
                if i >= 3:
                    spent[name] += time.process_time() - c
        ms = {k: v / iterations * 1e3 for k, v in spent.items()}
        kit = {"rollout": ms["kit rollout"], "update": ms["kit learn"] / ZOO["ppo_epochs"]}
        bare = {"rollout": ms["bare rollout"], "update": ms["bare learn"] / ZOO["ppo_epochs"]}
        sb3 = run_sb3_runner(args.sb3_python, seed, "--time-phases", iterations)
        row = {"seed": seed}
        for lib, t in (("kit", kit), ("sb3", sb3), ("bare", bare)):
            t = {**t, "iteration": t["rollout"] + ZOO["ppo_epochs"] * t["update"]}
            row[lib] = t
            print(f"  seed {seed} {lib:4s}: rollout {t['rollout']:.2f} ms, update {t['update']:.3f} ms, "
                  f"iteration (rollout + {ZOO['ppo_epochs']} updates) {t['iteration']:.2f} ms", flush=True)
        rows.append(row)
    summary = {lib: {k: float(np.median([r[lib][k] for r in rows])) for k in ("rollout", "update", "iteration")}
               for lib in ("kit", "sb3", "bare")}
    summary["sb3_over_kit"] = summary["sb3"]["iteration"] / summary["kit"]["iteration"]
    summary["sb3_over_bare"] = summary["sb3"]["iteration"] / summary["bare"]["iteration"]
    summary["kit_over_bare"] = summary["bare"]["iteration"] / summary["kit"]["iteration"]
    print("PPO iteration phases (CPU ms, medians):", json.dumps(summary, indent=1), flush=True)
    return {"runs": rows, "summary": summary}


def part_checkpoints(args) -> dict:
    """Evaluation means of kit and SB3 PPO at fixed steps (every --eval-freq up to --max-steps), no early stop."""
    rows = []
    for seed in args.seeds:
        kit = kit_ppo_cartpole(seed, args.max_steps, args.eval_freq, threshold=None)
        sb3 = sb3_ppo_cartpole(args.sb3_python, seed, args.max_steps, args.eval_freq, threshold=1e9)
        rows += [kit, sb3]
        print(f"  seed {seed}: kit {kit['curve']}  sb3 {sb3['curve']}", flush=True)
    for lib in ("kit", "sb3"):
        curves = [r["curve"] for r in rows if r["library"] == lib]
        for i in range(min(len(c) for c in curves)):
            vals = [c[i][1] for c in curves]
            print(f"  {lib} at ~{curves[0][i][0]} steps: median {np.median(vals):.0f}, "
                  f"at 500: {sum(v >= 500 for v in vals)}/{len(vals)}", flush=True)
    return {"runs": rows}


def part_grpo(args) -> dict:
    from vla_rl_lib import GRPOTrainer, PPOTrainer, RLConfig

    results = {}
    for seed in args.seeds:
        out = tempfile.mkdtemp(prefix="ppo_vs_grpo_")
        ppo = PPOTrainer(config=RLConfig(env="CartPole-v1", **ZOO, total_timesteps=args.grpo_steps,
                                         eval_freq=args.grpo_steps // 10, eval_episodes=10, save_freq=0, seed=seed,
                                         device="cpu", output_dir=out + "/ppo"))
        t_ppo = _Timed(ppo)
        t0 = time.perf_counter()
        ppo.train(callbacks=[t_ppo.callback()])
        ppo_seconds = time.perf_counter() - t0 - t_ppo.seconds
        grpo = GRPOTrainer(config=RLConfig(algorithm="grpo", env="CartPole-v1", group_size=8, num_groups=4,
                                           num_iterations=10_000, learning_rate=3e-3, batch_size=1024, grpo_epochs=2,
                                           kl_coef=0.0, total_timesteps=args.grpo_steps,
                                           eval_freq=args.grpo_steps // 10, eval_episodes=10, save_freq=0,
                                           seed=seed, device="cpu", output_dir=out + "/grpo"))
        t_grpo = _Timed(grpo)
        t0 = time.perf_counter()
        grpo.train(callbacks=[t_grpo.callback()])
        grpo_seconds = time.perf_counter() - t0 - t_grpo.seconds
        results[seed] = {"ppo": {"curve": t_ppo.curve, "train_seconds": ppo_seconds, "steps": ppo.global_step},
                         "grpo": {"curve": t_grpo.curve, "train_seconds": grpo_seconds, "steps": grpo.global_step,
                                  "iterations": grpo.iteration}}
        print(f"  seed {seed}: PPO  {ppo.global_step} steps in {ppo_seconds:.1f}s, curve {t_ppo.curve}", flush=True)
        print(f"  seed {seed}: GRPO {grpo.global_step} steps ({grpo.iteration} iterations) in {grpo_seconds:.1f}s, "
              f"curve {t_grpo.curve}", flush=True)
    return results


def part_mujoco(args) -> dict:
    from vla_rl_lib import PPOTrainer, RLConfig

    results = {}
    for env_id in args.mujoco_envs:
        cfg = RLConfig(env=env_id, num_envs=1, rollout_steps=2048, batch_size=64, ppo_epochs=10, learning_rate=3e-4,
                       ppo_anneal_lr=True, discount_gamma=0.99, ppo_gae_lambda=0.95, ppo_entropy_coef=0.0,
                       ppo_normalize_obs=True, ppo_normalize_reward=True, total_timesteps=args.mujoco_steps,
                       eval_freq=args.mujoco_steps // 5, eval_episodes=5, save_freq=0, seed=args.seeds[0],
                       device="cpu", output_dir=tempfile.mkdtemp(prefix="ppo_mujoco_"))
        trainer = PPOTrainer(config=cfg)
        timed = _Timed(trainer)
        t0 = time.perf_counter()
        trainer.train(callbacks=[timed.callback()])
        seconds = time.perf_counter() - t0 - timed.seconds
        results[f"ppo/{env_id}"] = {"curve": timed.curve, "train_seconds": seconds, "steps": trainer.global_step}
        print(f"  PPO {env_id}: {trainer.global_step} steps in {seconds:.0f}s "
              f"({trainer.global_step / seconds:.0f} steps/s), eval curve {timed.curve}", flush=True)
    if args.with_sac:
        sys.path.insert(0, str(HERE))
        try:
            from online_sac import run_sac_benchmark  # the SAC helper's benchmark
        except ImportError as exc:
            print(f"  SAC skipped: benchmarks/online_sac.py has no run_sac_benchmark ({exc})", flush=True)
        else:
            for env_id in args.mujoco_envs:
                results[f"sac/{env_id}"] = run_sac_benchmark(env_id, args.sac_steps, seed=args.seeds[0])
                print(f"  SAC {env_id}: {results[f'sac/{env_id}']}", flush=True)
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--parts", default="cartpole,grpo,mujoco")
    p.add_argument("--seeds", default="0,1,2", type=lambda s: [int(x) for x in s.split(",")])
    p.add_argument("--max-steps", type=int, default=100_000, help="CartPole budget of each run")
    p.add_argument("--eval-freq", type=int, default=10_240, help="CartPole evaluation period (env steps)")
    p.add_argument("--speed-steps", type=int, default=20_480, help="steps of each --parts speed run")
    p.add_argument("--grpo-steps", type=int, default=100_000, help="env steps of the GRPO-vs-PPO comparison")
    p.add_argument("--mujoco-steps", type=int, default=100_000)
    p.add_argument("--mujoco-envs", default="HalfCheetah-v5,Hopper-v5", type=lambda s: s.split(","))
    p.add_argument("--with-sac", action="store_true", help="also run the SAC helper's run_sac_benchmark")
    p.add_argument("--sac-steps", type=int, default=20_000)
    p.add_argument("--sb3-python", default="/work/venv-sb3/bin/python")
    p.add_argument("--out", default=None, help="write all results as JSON here")
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"torch threads: {torch.get_num_threads()}; started {time.strftime('%H:%M:%S')}", flush=True)
    results = {}
    for part in args.parts.split(","):
        print(f"== {part} ==", flush=True)
        results[part] = {"cartpole": part_cartpole, "speed": part_speed, "equivalence": part_equivalence,
                         "checkpoints": part_checkpoints, "phases": part_phases, "grpo": part_grpo,
                         "mujoco": part_mujoco}[part](args)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"finished {time.strftime('%H:%M:%S')}", flush=True)


if __name__ == "__main__":
    main()
