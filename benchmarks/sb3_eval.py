"""The kit's evaluation protocol for a Stable-Baselines3 model (used by the SB3 runners, which run in
SB3's own virtual environment and import nothing of the kit): deterministic actions, episode ``i``
reset with ``seed=first_seed + i``, as ``vla_rl_lib.trainer.Trainer.evaluate`` does."""
from __future__ import annotations


def episode_returns(model, env, episodes: int, first_seed: int) -> list[float]:
    returns = []
    for episode in range(episodes):
        obs, _ = env.reset(seed=first_seed + episode)
        done, total = False, 0.0
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, terminated, truncated, _ = env.step(action)
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return returns
