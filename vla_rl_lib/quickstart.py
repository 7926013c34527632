"""The kit's main job without a notebook: a short, real PPO run on CartPole-v1.

``vla-rl quickstart`` trains PPO with rl-baselines3-zoo's tuned CartPole hyperparameters,
evaluates it, and writes into the run directory: ``config.yaml``, ``metrics.csv``, TensorBoard
events, ``checkpoint.pt``, ``reward.png`` (the learning curve) and ``rollout.mp4`` (the trained
agent). The notebook ``notebooks/00_quickstart.ipynb`` walks through the same steps.
"""
from __future__ import annotations

import json
from pathlib import Path


def plot_metrics(run_dir: str | Path, path: str | Path | None = None,
                 keys: tuple[str, ...] = ("mean_reward", "eval/mean_reward")) -> Path:
    """Plot reward curves from ``run_dir/metrics.csv`` to a PNG (headless)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    from vla_rl_lib.logging import read_metrics

    rows = read_metrics(run_dir)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for key in keys:
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            ax.plot(*zip(*pts), marker="." if key.startswith("eval") else None, label=key)
    ax.set_xlabel("environment steps")
    ax.set_ylabel("episode return")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path) if path is not None else Path(run_dir) / "reward.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def quickstart(output_dir: str | Path = "runs/quickstart", smoke: bool = False, seed: int = 0) -> dict:
    from vla_rl_lib.config import RLConfig
    from vla_rl_lib.online.ppo import PPOTrainer
    from vla_rl_lib.video import record_video

    output_dir = Path(output_dir)
    config = RLConfig(algorithm="ppo", env="CartPole-v1", num_envs=8, rollout_steps=32, batch_size=256,
                      ppo_epochs=20, ppo_gae_lambda=0.8, discount_gamma=0.98, learning_rate=1e-3,
                      ppo_entropy_coef=0.0, total_timesteps=20_000 if smoke else 60_000,
                      eval_freq=10_000, eval_episodes=10, log_freq=2_048, save_freq=0, seed=seed,
                      device="cpu", output_dir=str(output_dir))
    trainer = PPOTrainer(env="CartPole-v1", config=config, progress_bar=True)
    trainer.train()
    results = trainer.evaluate(num_episodes=10)
    plot = plot_metrics(output_dir)
    video = record_video(trainer, "CartPole-v1", output_dir / "rollout.mp4", seed=seed)
    summary = {"algorithm": "ppo", "env": "CartPole-v1", "steps": trainer.global_step, **results,
               "plot": str(plot), "video": str(video), "run_dir": str(output_dir)}
    (output_dir / "metrics.json").write_text(json.dumps(summary, indent=2))
    print(f"PPO on CartPole-v1: {trainer.global_step} steps, evaluation mean reward "
          f"{results['mean_reward']:.1f} +- {results['std_reward']:.1f}")
    print(f"run directory: {output_dir.resolve()}")
    for name in ("config.yaml", "metrics.csv", "metrics.json", "checkpoint.pt", "reward.png", "rollout.mp4", "tb/"):
        print(f"  {name}")
    print(f"open it in JupyterLab:  jupyter lab {output_dir}")
    return summary
