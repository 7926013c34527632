"""Critic-free RL (GRPO, RLOO) against PPO with a value head, from one stage-2 VLA, at equal env steps.

Stage 2 is the behaviour-cloned model of ``benchmarks/vla.py`` (same data, model and steps; or
``--model_path``). Every method then starts from that saved model, on the batched driving
simulator, for each seed in ``--seeds``; the success rate on held-out seeds
(:func:`vla_rl_lib.vla.pipeline.evaluate_success`, episode k of each instruction reset with seed
1,000,000 + k, deterministic actions) is measured when the run passes each budget of ``--budgets``
environment steps (a GRPO iteration ends at an episode boundary, so it is measured at the first
iteration that reaches the budget: the step count is printed).

Methods (``--methods``; recipes in ``METHODS``):

* ``ppo``        PPO with the VLA's value head, the settings of ``benchmarks/vla.py``;
* ``grpo``       GRPO, the kit's driving recipe (0/1 success reward, dynamic sampling, clip-higher, no KL);
* ``rloo``       the same with leave-one-out baselines instead of group normalisation (RLOO/LOOP);
* ``grpo_spec``  GRPO with RLConfig's defaults (the specification's: group size 4, KL 0.1, clip 0.2,
  shaped return);
* ``mo_safety`` / ``mo_progress``: multi-objective GRPO on the reward terms, weights safety 1 / progress
  0.1 and the reverse (the collision rate and the metres driven show the trade-off);
* ``grpo-<option>``: ``grpo`` with one option toggled (``grpo-return``, ``grpo-no_dynamic``,
  ``grpo-symmetric``, ``grpo-kl``, ``grpo-token``, ``grpo-sigma``; see ``TOGGLES``).

Exploration: PPO and ``grpo_spec`` keep the stage-2 model's noise (log std -1, sigma = 0.37 of the half
action range, as ``benchmarks/vla.py``); the critic-free recipes start from log std -1.5 (sigma = 0.22),
which measured better for them; ``--log_std`` sets one value for every method. Commands and figures:
docs/benchmarks.md, section VLA.

    python benchmarks/vla_critic_free.py                      # the run quoted in docs/benchmarks.md
    python benchmarks/vla_critic_free.py --quick              # a smoke run (seconds; not meaningful)
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vla as stage2_script  # noqa: E402

from vla_rl_lib.config import RLConfig  # noqa: E402
from vla_rl_lib.envs.driving import INSTRUCTIONS  # noqa: E402
from vla_rl_lib.vla.pipeline import (CRITIC_FREE_LOG_STD, CRITIC_FREE_RECIPES, SuccessCurve,  # noqa: E402
                                     evaluate_success, grpo_from_model, ppo_from_model, set_exploration)

METHODS = {
    **CRITIC_FREE_RECIPES,
    "grpo_spec": dict(),  # RLConfig's defaults
    # multi-objective GRPO on the shaped reward's terms: the weights trade collisions against progress
    "mo_safety": dict(CRITIC_FREE_RECIPES["grpo"], grpo_reward="return", objective_weights={"safety": 1.0, "progress": 0.1}),
    "mo_progress": dict(CRITIC_FREE_RECIPES["grpo"], grpo_reward="return", objective_weights={"safety": 0.1, "progress": 1.0}),
}
#: one option of the ``grpo`` recipe toggled at a time
TOGGLES = {
    "return": dict(grpo_reward="return"),
    "no_dynamic": dict(dynamic_sampling=False),
    "symmetric": dict(clip_range_high=None),
    "kl": dict(kl_coef=0.1),
    "token": dict(token_level_ratios=True),
}


def grpo_settings(method: str) -> dict:
    if method in METHODS:
        return METHODS[method]
    name, _, toggle = method.partition("-")
    if name != "grpo" or toggle not in TOGGLES:
        raise SystemExit(f"unknown method {method!r}; use ppo, {', '.join(METHODS)} or grpo-<{'|'.join(TOGGLES)}>")
    return {**METHODS["grpo"], **TOGGLES[toggle]}


def overrides(args) -> dict:
    """``--grpo_set "learning_rate=3e-4,grpo_epochs=2"`` as RLConfig keyword arguments."""
    out = {}
    for item in filter(None, args.grpo_set.split(",")):
        key, _, value = item.partition("=")
        out[key.strip()] = json.loads(value) if value not in ("None", "") else None
    return out


def run_method(method, model_path, seed, args, out) -> tuple[list, float]:
    budgets = [int(b) for b in args.budgets.split(",")]
    common = dict(env="driving", total_timesteps=max(budgets), eval_episodes=0, eval_freq=0, save_freq=0,
                  log_freq=10**9, seed=seed, output_dir=str(out / f"{method}_s{seed}"))
    if method == "ppo":
        cfg = RLConfig(num_envs=16, rollout_steps=128, batch_size=256, ppo_epochs=4, learning_rate=args.ppo_lr,
                       ppo_entropy_coef=0.0, ppo_normalize_reward=True, **common)
        trainer = ppo_from_model(model_path, config=cfg)
    else:
        cfg = RLConfig(algorithm="grpo", num_iterations=10**6, **{**common, **grpo_settings(method), **overrides(args)})
        trainer = grpo_from_model(model_path, config=cfg)
    log_std = args.log_std
    if log_std is None and method != "ppo" and method != "grpo_spec":
        log_std = CRITIC_FREE_LOG_STD
    if log_std is not None:
        set_exploration(trainer, log_std)
    torch.manual_seed(seed)
    at = SuccessCurve(budgets, args.episodes, image_size=args.image_size)
    t = time.process_time()
    trainer.train(callbacks=[at])
    return at.scores, time.process_time() - t


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output_dir", default="./output/vla_critic_free")
    p.add_argument("--model_path", default=None, help="a saved stage-2 model (default: train it as benchmarks/vla.py)")
    p.add_argument("--methods", default="ppo,grpo,rloo,grpo_spec")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--budgets", default="61440,122880,245760", help="env steps at which to score every method")
    p.add_argument("--episodes", type=int, default=40, help="held-out episodes per instruction")
    p.add_argument("--log_std", type=float, default=None,
                   help="exploration log std for every method (default: the stage-2 model's, -1, for ppo and grpo_spec; "
                        "-1.5 for the critic-free recipes)")
    p.add_argument("--ppo_lr", type=float, default=3e-4)
    p.add_argument("--grpo_set", default="", help="override settings of every GRPO recipe, e.g. 'learning_rate=3e-4'")
    p.add_argument("--image_size", type=int, default=32)
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script")
    args = p.parse_args(argv)
    stage2 = ["--image_size", str(args.image_size)] + (["--model_path", args.model_path] if args.model_path else [])
    if args.quick:
        args.budgets, args.episodes, args.seeds = "2048,4096", 2, "0"
        stage2 += ["--quick"]
    torch.set_num_threads(1)
    torch.manual_seed(0)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model_path, bc_policy, _, _ = stage2_script.train_stage2(stage2_script.parse(stage2), out)
    bc = evaluate_success(bc_policy, args.episodes, seed=1_000_000, image_size=args.image_size)
    print(f"[BC (stage 2)] success {100 * bc['success_rate']:.1f}% (model {model_path})", flush=True)
    results = {}
    for method in args.methods.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            scores, seconds = run_method(method, model_path, seed, args, out)
            results.setdefault(method, []).append({"seed": seed, "cpu_seconds": seconds, "scores": [
                {"budget": b, "steps": s, **r} for b, s, r in scores]})
            print(f"[{method} seed {seed}] " + ", ".join(f"{s} steps: {100 * r['success_rate']:.1f}%"
                                                     for _, s, r in scores) + f" ({seconds:.0f} CPU s)", flush=True)
    report(bc, results, args)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "bc": bc, "results": results}, indent=2))
    return results


def report(bc: dict, results: dict, args) -> None:
    base = 100 * bc["success_rate"]
    print(f"\nBC (stage 2): {base:.1f}% success on held-out seeds ({args.episodes} episodes per instruction)")
    head = f"{'method':<20} {'budget':>8} {'success mean +- std':>20} {'gain':>7}  per seed"
    print(head + "\n" + "-" * len(head))
    for method, runs in results.items():
        for k, budget in enumerate(int(b) for b in args.budgets.split(",")):
            rates = [100 * r["scores"][k]["success_rate"] for r in runs if len(r["scores"]) > k]
            print(f"{method:<20} {budget:>8} {np.mean(rates):>12.1f} +- {np.std(rates):>4.1f} "
                  f"{np.mean(rates) - base:>+7.1f}  " + " / ".join(f"{x:.1f}" for x in rates))
    last = len(args.budgets.split(",")) - 1
    print(f"\nper instruction at {args.budgets.split(',')[-1]} steps (mean over seeds), collisions, metres driven:")
    print(f"{'method':<20} " + " ".join(f"{stage2_script.SHORT[i]:>8}" for i in INSTRUCTIONS) + f" {'collide':>8} {'metres':>7}")
    print(f"{'BC (stage 2)':<20} " + " ".join(f"{100 * bc['per_instruction'][i]:>7.0f}%" for i in INSTRUCTIONS)
          + f" {100 * bc['collision_rate']:>7.0f}% {bc['mean_progress']:>7.1f}")
    for method, runs in results.items():
        rows = [r["scores"][last] for r in runs if len(r["scores"]) > last]
        print(f"{method:<20} " + " ".join(f"{100 * np.mean([s['per_instruction'][i] for s in rows]):>7.0f}%"
                                          for i in INSTRUCTIONS)
              + f" {100 * np.mean([s['collision_rate'] for s in rows]):>7.0f}%"
              + f" {np.mean([s['mean_progress'] for s in rows]):>7.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
