"""Notebook and widget costs: what the live plot adds to training, and how long each notebook takes.

    python benchmarks/notebooks.py                 # live-plot overhead only (about a minute)
    python benchmarks/notebooks.py --notebooks     # + every notebook with smoke=True through papermill
    python benchmarks/notebooks.py --notebooks --full 00_quickstart   # + the named notebooks at full size

Live-plot overhead: the same PPO run on CartPole-v1 (one torch thread) with no callback (the peer),
with ``LivePlot`` at its defaults (``min_interval=2``, ``max_overhead=0.1``), with the 2 s interval
alone, and with neither (a redraw at every log, what an unthrottled plot costs). The plot renders into its Image widget in every case, as in a
notebook.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def ppo_seconds(callbacks, steps: int, out: str) -> tuple[float, int]:
    from vla_rl_lib import PPOTrainer, RLConfig

    cfg = RLConfig(env="CartPole-v1", total_timesteps=steps, num_envs=4, rollout_steps=64, log_freq=256,
                   eval_freq=0, eval_episodes=0, save_freq=0, seed=0, output_dir=out)
    trainer = PPOTrainer(env="CartPole-v1", config=cfg, callbacks=callbacks)
    t0 = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t0, trainer.global_step


def live_plot_overhead(steps: int) -> None:
    from widgets import LivePlot

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ppo_seconds([], 512, f"{tmp}/warm")  # imports and first-call costs out of the way
        base, n = ppo_seconds([], steps, f"{tmp}/none")
        rows.append(("no callback (peer)", base, 0))
        for interval, overhead in ((2.0, 0.1), (2.0, None), (0.0, None)):
            plot = LivePlot(min_interval=interval, display=False, max_overhead=overhead)
            plot.widget  # noqa: B018 - render into the Image widget as a notebook would
            sec, _ = ppo_seconds([plot], steps, f"{tmp}/plot{interval}{overhead}")
            rows.append((f"LivePlot({interval:g} s, max_overhead={overhead})", sec, plot.redraws))
    print(f"\nPPO on CartPole-v1, {n} environment steps, log every 256 steps ({n // 256} logs):")
    print(f"{'callback':38s} {'seconds':>8s} {'overhead':>9s} {'redraws':>8s}")
    for name, sec, redraws in rows:
        print(f"{name:38s} {sec:8.1f} {100 * (sec / base - 1):8.0f}% {redraws:8d}")


def notebook_times(names: list[str], smoke: bool) -> None:
    from vla_rl_lib.notebook import run_notebook

    print(f"\nnotebooks through papermill, smoke={smoke} (kernel start and imports included):")
    total = 0.0
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            t0 = time.perf_counter()
            try:
                run_notebook(ROOT / "notebooks" / f"{name}.ipynb", {"smoke": smoke}, Path(tmp) / name, timeout=3600)
                status = "ok"
            except Exception as exc:  # noqa: BLE001 - report and go on
                status = f"FAILED: {str(exc)[:120]}"
            sec = time.perf_counter() - t0
            total += sec
            print(f"  {name:28s} {sec:7.1f} s  {status}", flush=True)
    print(f"  {'total':28s} {total:7.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=16_384, help="PPO steps of the overhead runs")
    parser.add_argument("--notebooks", action="store_true", help="time every notebook with smoke=True")
    parser.add_argument("--full", nargs="*", default=[], help="also time these notebooks with smoke=False")
    args = parser.parse_args()
    torch.set_num_threads(1)
    live_plot_overhead(args.steps)
    if args.notebooks:
        names = sorted(p.stem for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
        notebook_times(names, smoke=True)
    if args.full:
        notebook_times(args.full, smoke=False)


if __name__ == "__main__":
    main()
