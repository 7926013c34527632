"""A point-mass maze for offline RL's *stitching* lesson, in the spirit of D4RL's maze2d (Fu et al., 2020).

The agent is a point mass in a maze of unit cells, drawn as text (``#`` wall, ``S`` start, ``G``
goal, ``.`` open)::

    #######
    #S....#          the start S and the goal G are 10 cells apart along the corridor,
    #####.#          though only 2 apart as the crow flies: going straight for G hits the wall
    #G....#
    #######

* observation ``(x, y, vx, vy)``: position in cell units (``x`` = column, ``y`` = row, cell
  ``(row, col)`` has its centre at ``(col + 0.5, row + 0.5)``) and velocity;
* action ``(ax, ay)`` in ``[-1, 1]^2``: ``v' = clip(DAMPING * v + ACCEL * a, -MAX_SPEED, MAX_SPEED)``,
  ``p' = p + v'``, moving along x then along y; a move that would enter a wall cell is undone on
  that axis and stops the velocity there;
* the episode *terminates* with ``info["success"] = True`` when the point is within
  ``GOAL_RADIUS`` of the goal's centre, and is truncated after ``max_episode_steps`` (100);
* reward, ``reward_type="sparse"`` (``vla_rl_lib/PointMaze-v0``): ``0`` on the step that reaches the
  goal and ``-1`` on every other step (the goal-reaching convention of gymnasium-robotics' Fetch
  tasks, and what IQL's antmaze runs train on, ``r - 1``); ``reward_type="dense"``
  (``vla_rl_lib/PointMazeDense-v0``): minus the straight-line distance to the goal, a reward that
  points into the wall.

Data: D4RL made maze2d's data with a scripted waypoint controller that drives to randomly chosen
nearby cells. :class:`WaypointController` does the same (a PD controller on the centres of the
cells of the shortest path), and :func:`collect_stitching_dataset` records *hops* between random
cells at most ``max_hop`` cells apart (3), each hop one episode, starting anywhere in the maze. No
single hop goes from ``S`` to ``G`` (10 cells), so an agent evaluated from ``S`` has to *stitch*
pieces of different trajectories together: behaviour cloning and return-conditioned sequence models
copy hops that wander, while a learned value function (IQL) chains them towards the goal.

Plain numpy; one environment steps at tens of thousands of steps per second.
"""
from __future__ import annotations

from collections import deque
from typing import Optional

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from vla_rl_lib.errors import ConfigError

SPARSE_ID = "vla_rl_lib/PointMaze-v0"
DENSE_ID = "vla_rl_lib/PointMazeDense-v0"

STITCH_MAZE = (
    "#######",
    "#S....#",
    "#####.#",
    "#G....#",
    "#######",
)
DAMPING = 0.6
ACCEL = 0.25
MAX_SPEED = 0.5
GOAL_RADIUS = 0.5
START_NOISE = 0.1
MAX_EPISODE_STEPS = 100


class PointMazeEnv(gym.Env):
    """A point mass in a maze; see the module docstring for the dynamics and rewards.

    ``reset(options={"start": (row, col)})`` starts in another cell (dataset collection does).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, maze: tuple[str, ...] = STITCH_MAZE, reward_type: str = "sparse",
                 render_mode: Optional[str] = None):
        if reward_type not in ("sparse", "dense"):
            raise ConfigError(f"reward_type={reward_type!r} must be 'sparse' or 'dense'")
        rows = [str(r) for r in maze]
        if len({len(r) for r in rows}) != 1:
            raise ConfigError("every row of the maze must have the same length")
        self.maze = tuple(rows)
        self.walls = np.array([[c == "#" for c in r] for r in rows])
        found = {c: (i, j) for i, r in enumerate(rows) for j, c in enumerate(r) if c in "SG"}
        if set(found) != {"S", "G"}:
            raise ConfigError("the maze needs exactly one start 'S' and one goal 'G'")
        self.start_cell, self.goal_cell = found["S"], found["G"]
        self.goal = cell_center(self.goal_cell)
        self.reward_type = reward_type
        self.render_mode = render_mode
        h, w = self.walls.shape
        high = np.array([w, h, MAX_SPEED, MAX_SPEED], np.float32)
        self.observation_space = spaces.Box(np.array([0, 0, -MAX_SPEED, -MAX_SPEED], np.float32), high)
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.pos = np.zeros(2)
        self.vel = np.zeros(2)

    # -- geometry ---------------------------------------------------------------------------
    @property
    def open_cells(self) -> list[tuple[int, int]]:
        return [tuple(int(v) for v in c) for c in np.argwhere(~self.walls)]

    def is_wall(self, p: np.ndarray) -> bool:
        col, row = int(np.floor(p[0])), int(np.floor(p[1]))
        h, w = self.walls.shape
        return not (0 <= row < h and 0 <= col < w) or bool(self.walls[row, col])

    def cell_of(self, p: np.ndarray) -> tuple[int, int]:
        return int(np.floor(p[1])), int(np.floor(p[0]))

    def _obs(self) -> np.ndarray:
        return np.array([*self.pos, *self.vel], np.float32)

    # -- gymnasium --------------------------------------------------------------------------
    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        cell = tuple((options or {}).get("start", self.start_cell))
        if self.walls[cell]:
            raise ConfigError(f"start cell {cell} is a wall")
        self.pos = cell_center(cell) + self.np_random.uniform(-START_NOISE, START_NOISE, 2)
        self.vel = np.zeros(2)
        return self._obs(), {"success": False}

    def step(self, action):
        a = np.clip(np.asarray(action, np.float64).reshape(2), -1.0, 1.0)
        self.vel = np.clip(DAMPING * self.vel + ACCEL * a, -MAX_SPEED, MAX_SPEED)
        for axis in (0, 1):  # move along x, then along y; a wall stops that axis
            moved = self.pos.copy()
            moved[axis] += self.vel[axis]
            if self.is_wall(moved):
                self.vel[axis] = 0.0
            else:
                self.pos = moved
        dist = float(np.linalg.norm(self.pos - self.goal))
        success = dist < GOAL_RADIUS
        if self.reward_type == "sparse":
            reward = 0.0 if success else -1.0
        else:
            reward = -dist
        return self._obs(), reward, success, False, {"success": success}

    def render(self):
        """A top view: walls dark, goal green, the point red (16 pixels per cell)."""
        s = 16
        h, w = self.walls.shape
        img = np.full((h * s, w * s, 3), 235, np.uint8)
        img[np.repeat(np.repeat(self.walls, s, 0), s, 1)] = (60, 60, 70)
        yy, xx = np.mgrid[0:h * s, 0:w * s]
        for centre, colour, radius in ((self.goal, (40, 170, 60), GOAL_RADIUS), (self.pos, (200, 40, 40), 0.2)):
            mask = (xx - centre[0] * s) ** 2 + (yy - centre[1] * s) ** 2 <= (radius * s) ** 2
            img[mask] = colour
        return img


def cell_center(cell) -> np.ndarray:
    return np.array([cell[1] + 0.5, cell[0] + 0.5], np.float64)


def shortest_path(walls: np.ndarray, start: tuple[int, int], goal: tuple[int, int]) -> list[tuple[int, int]]:
    """Cells from ``start`` to ``goal`` (both included) along a shortest 4-connected path (BFS)."""
    prev = {start: None}
    queue = deque([start])
    while queue:
        cell = queue.popleft()
        if cell == goal:
            break
        for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0)):
            nxt = (cell[0] + dr, cell[1] + dc)
            if nxt not in prev and not walls[nxt]:
                prev[nxt] = cell
                queue.append(nxt)
    if goal not in prev:
        raise ConfigError(f"no path from {start} to {goal}")
    path = [goal]
    while path[-1] != start:
        path.append(prev[path[-1]])
    return path[::-1]


class WaypointController:
    """D4RL's maze2d data collector: a PD controller towards the centre of the next cell of the
    shortest path to a target cell, ``a = clip(KP * (waypoint - p) - KD * v, -1, 1)``, plus Gaussian
    action noise of standard deviation ``noise``."""

    KP, KD = 4.0, 2.0

    def __init__(self, env: PointMazeEnv, target: tuple[int, int], noise: float, rng: np.random.Generator):
        self.env, self.noise, self.rng = env, float(noise), rng
        self.path = shortest_path(env.walls, env.cell_of(env.pos), target)
        self.target = cell_center(target)

    def done(self) -> bool:
        return bool(np.linalg.norm(self.env.pos - self.target) < 0.25 and np.linalg.norm(self.env.vel) < 0.1)

    def __call__(self, obs: np.ndarray) -> np.ndarray:
        pos, vel = np.asarray(obs[:2], np.float64), np.asarray(obs[2:], np.float64)
        here = self.env.cell_of(pos)
        if here in self.path:  # drop the cells already reached
            self.path = self.path[self.path.index(here):]
        waypoint = cell_center(self.path[1]) if len(self.path) > 1 else self.target
        action = self.KP * (waypoint - pos) - self.KD * vel
        action = action + self.rng.normal(0.0, self.noise, 2)
        return np.clip(action, -1.0, 1.0).astype(np.float32)


ROW_KEYS = ("observations", "next_observations", "actions", "rewards", "terminals", "timeouts")


def _drive(size: int, seed: int, reward_type: str, noise: float, max_steps: int, choose) -> tuple[dict, PointMazeEnv]:
    """Episodes of the waypoint controller until ``size`` rows: ``choose(env, rng, episode) -> (start,
    target)`` picks each episode's cells. An episode ends with a terminal at the goal, or with a
    timeout on arrival, after ``max_steps`` or at row ``size``."""
    if int(size) < 2:
        raise ConfigError(f"size={size!r} must be at least 2 rows")
    env = PointMazeEnv(reward_type=reward_type)
    rng = np.random.default_rng(seed)
    rows = {k: [] for k in ROW_KEYS}
    n, episode = 0, 0
    while n < size:
        start, target = choose(env, rng, episode)
        obs, _ = env.reset(seed=int(seed) * 100_003 + episode, options={"start": start})
        controller = WaypointController(env, target, noise, rng)
        for t in range(max_steps):
            action = controller(obs)
            next_obs, reward, terminated, _, _ = env.step(action)
            last = terminated or controller.done() or t == max_steps - 1 or n == size - 1
            for key, value in zip(ROW_KEYS, (obs, next_obs, action, reward, terminated, last and not terminated)):
                rows[key].append(value)
            n += 1
            obs = next_obs
            if last:
                break
        episode += 1
    data = {k: np.asarray(v, bool if k in ("terminals", "timeouts") else np.float32) for k, v in rows.items()}
    data.update({"metadata/maze": "\n".join(env.maze), "metadata/action_noise": float(noise),
                 "metadata/reward_type": reward_type})
    return data, env


def collect_stitching_dataset(size: int, seed: int = 0, reward_type: str = "sparse", max_hop: int = 3,
                              noise: float = 0.3, max_hop_steps: int = 40) -> dict:
    """D4RL-layout rows of waypoint-controller hops between random cells at most ``max_hop`` apart.

    Each hop is one episode: it starts at a random open cell (centre plus noise), drives to a random
    cell 1..``max_hop`` cells away along the maze, and ends with a timeout on arrival (or after
    ``max_hop_steps``), or with a terminal when it passes through the goal (reward as the env's).
    Returns observations, next_observations, actions, rewards, terminals, timeouts and
    ``metadata/...`` describing the recipe.
    """
    if int(max_hop) < 1:
        raise ConfigError(f"max_hop={max_hop!r} must be >= 1")
    walls = PointMazeEnv().walls
    cells = PointMazeEnv().open_cells
    dist = {(a, b): len(shortest_path(walls, a, b)) - 1 for a in cells for b in cells}

    def hop(env, rng, episode):
        start = cells[rng.integers(len(cells))]
        targets = [c for c in cells if 1 <= dist[start, c] <= max_hop]
        return start, targets[rng.integers(len(targets))]

    data, env = _drive(size, seed, reward_type, noise, max_hop_steps, hop)
    data.update({
        "metadata/algorithm": "waypoint controller (vla_rl_lib.envs.maze.WaypointController), D4RL maze2d's recipe",
        "metadata/max_hop": int(max_hop),
        "metadata/start_goal_cells": int(dist[env.start_cell, env.goal_cell]),
    })
    return data


def collect_mixed_dataset(size: int, seed: int = 0, reward_type: str = "sparse", noise: float = 0.3,
                          max_steps: int = 60) -> dict:
    """Mixed-quality maze data in the spirit of D4RL's ``medium-expert``: alternate episodes of two
    waypoint controllers from random open cells, one driving to the goal ``G`` (expert: the episode
    terminates there) and one driving to the far end ``S`` (a policy for another task: it times out
    on arrival). Cloning both averages "towards G" with "towards S" in every corridor cell; a value
    function tells them apart.
    """
    def to_goal_or_start(env, rng, episode):
        target = env.goal_cell if episode % 2 == 0 else env.start_cell
        start = target
        while start == target:
            start = env.open_cells[rng.integers(len(env.open_cells))]
        return start, target

    data, _ = _drive(size, seed, reward_type, noise, max_steps, to_goal_or_start)
    data["metadata/algorithm"] = ("waypoint controllers (vla_rl_lib.envs.maze.WaypointController): half to the goal, "
                                  "half to the start cell")
    return data


def evaluation_pairs_uncovered(data: dict) -> bool:
    """Whether no episode of ``data`` visits both the start cell and the goal cell (stitching needed)."""
    env = PointMazeEnv()
    ends = np.flatnonzero(np.logical_or(data["terminals"], data["timeouts"])) + 1  # an episode ends after its flag
    starts = np.concatenate([[0], ends])
    for s, e in zip(starts, np.concatenate([ends, [len(data["terminals"])]])):
        cells = {env.cell_of(p) for p in data["observations"][s:e, :2]}
        cells |= {env.cell_of(p) for p in data["next_observations"][s:e, :2]}
        if env.start_cell in cells and env.goal_cell in cells:
            return False
    return True
