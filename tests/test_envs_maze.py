"""The point-mass maze (vla_rl_lib.envs.maze) and its stitching datasets."""
from __future__ import annotations

import numpy as np
import pytest

from vla_rl_lib.data import load_dataset
from vla_rl_lib.data.buffer import episode_bounds
from vla_rl_lib.envs import make_env
from vla_rl_lib.envs.maze import (PointMazeEnv, WaypointController, collect_stitching_dataset,
                                  evaluation_pairs_uncovered, shortest_path)
from vla_rl_lib.errors import ConfigError


def test_registered_ids_and_spaces():
    for env_id, reward_type in (("vla_rl_lib/PointMaze-v0", "sparse"), ("vla_rl_lib/PointMazeDense-v0", "dense")):
        env = make_env(env_id)
        assert env.unwrapped.reward_type == reward_type and env.spec.max_episode_steps == 100
        obs, info = env.reset(seed=0)
        assert obs.shape == (4,) and env.action_space.shape == (2,) and info["success"] is False
        assert env.observation_space.contains(obs)


def test_walls_stop_the_point_and_rewards():
    env = PointMazeEnv()
    env.reset(seed=0)
    start = env.pos.copy()
    for _ in range(10):  # straight down from S is a wall: the point may not leave its row
        obs, reward, terminated, truncated, info = env.step(np.array([0.0, 1.0]))
        assert reward == -1.0 and not terminated
    assert env.cell_of(env.pos) == env.start_cell and env.vel[1] == 0.0
    assert abs(env.pos[0] - start[0]) < 1e-9
    dense = PointMazeEnv(reward_type="dense")
    dense.reset(seed=0)
    _, r, *_ = dense.step(np.zeros(2))
    assert r == pytest.approx(-np.linalg.norm(dense.pos - dense.goal))
    with pytest.raises(ConfigError, match="reward_type"):
        PointMazeEnv(reward_type="shaped")


def test_waypoint_controller_reaches_the_goal_from_the_start():
    env = make_env("vla_rl_lib/PointMaze-v0")
    obs, _ = env.reset(seed=3)
    controller = WaypointController(env.unwrapped, env.unwrapped.goal_cell, 0.3, np.random.default_rng(0))
    total, done = 0.0, False
    while not done:
        obs, r, terminated, truncated, info = env.step(controller(obs))
        total += r
        done = terminated or truncated
    assert info["success"] and terminated and -30 < total < 0
    assert len(shortest_path(env.unwrapped.walls, env.unwrapped.start_cell, env.unwrapped.goal_cell)) == 11


def test_stitching_data_never_connects_start_and_goal():
    data = collect_stitching_dataset(3000, seed=1)
    assert data["observations"].shape == (3000, 4) and data["metadata/start_goal_cells"] == 10
    assert evaluation_pairs_uncovered(data)
    bounds = episode_bounds(data["terminals"], data["timeouts"])
    assert len(bounds) > 200 and data["terminals"].sum() > 0  # hops through the goal end there
    np.testing.assert_array_equal(data["rewards"][data["terminals"]], 0.0)
    # a dataset of long trips would fail the check
    trips = collect_stitching_dataset(3000, seed=1, max_hop=10)
    assert not evaluation_pairs_uncovered(trips)


@pytest.mark.parametrize("name,env_id", [("maze-stitch-v0", "vla_rl_lib/PointMaze-v0"),
                                         ("maze-stitch-dense-v0", "vla_rl_lib/PointMazeDense-v0")])
def test_shipped_maze_datasets(name, env_id):
    data = load_dataset(name)
    assert data["metadata/env_id"] == env_id
    assert evaluation_pairs_uncovered(data)
    assert len(data["rewards"]) == 30_000
