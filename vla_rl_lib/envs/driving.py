"""A language-conditioned driving simulator: a straight multi-lane road seen from above.

Why it exists: CARLA and Isaac Gym do not run on a laptop CPU, yet a vision-language-action (VLA)
policy needs a simulator where *the words matter*. Here every episode gives the car one of five
instructions, and the same picture asks for different actions depending on the instruction:

=========================  ===============================================================
instruction                succeeds when
=========================  ===============================================================
"keep the lane"            the car has driven ``KEEP_DISTANCE`` metres without leaving its lane
"change to the left lane"  the car is centred and straight in the lane to the left
"change to the right lane" the car is centred and straight in the lane to the right
"stop at the line"         the car stands still (< 0.5 m/s) within 4 m before the stop line
"overtake the car ahead"   the car has passed the slow car ahead and is back in its own lane
=========================  ===============================================================

World (units: metres, seconds, radians)::

      x = 0                        x = num_lanes * LANE_WIDTH
      |  lane 0  |  lane 1  |  lane 2  |        y grows in the driving direction (up in the image)
      |          |   [lead] |          |        lane 0 is the leftmost lane
      |==========|==========|==========|  <- stop line (across the whole road)
      |  [car]   |          |   [car]  |
      |          |   [ego]  |          |        the ego car starts in an inner lane
      |          |          |          |        (so "left" and "right" both exist)

* The ego car follows a kinematic bicycle model. Action = ``(steering, acceleration)`` in [-1, 1]:
  steering +1 turns right (towards larger x) with the maximum wheel angle ``MAX_STEER``, and
  acceleration +1 / -1 speeds up / brakes with ``MAX_ACCEL``.
* Other cars drive straight along the centre of their lane at a constant speed. Every lane holds a
  ring of traffic ``TRAFFIC_RING`` metres long around the ego car: a car that falls more than
  ``RING_BEHIND`` metres behind reappears ahead, so the traffic never runs out. The ego lane holds
  one slow *lead car* (the one to follow, stop behind or overtake).
* A collision (axis-aligned boxes overlap, or the car touches the road edge) ends the episode with
  -100. Success ends the episode with a bonus. Otherwise the episode is truncated after
  ``max_episode_steps`` steps (default 200 = 20 s of driving).

The reward is :func:`compute_reward`, the specification's shaping (safety, progress, comfort,
lane keeping, plus a success bonus). Pass ``reward_fn=`` to the environment to use your own.

Speed: the road is pre-rendered once as a strip that is scrolled by slicing; cars are filled
rectangles; all per-step arithmetic is on Python floats or small numpy arrays. One environment
steps at well over 5,000 steps/s with rendering on one core (see ``benchmarks/driving_speed.py``).
``vla_rl_lib.envs.batched.BatchedDrivingEnv`` runs many of these worlds at once in torch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from vla_rl_lib.errors import ConfigError, IncompatibleError

ENV_ID = "vla_rl_lib/Driving-v0"

# --------------------------------------------------------------------------------------------
# Instructions
# --------------------------------------------------------------------------------------------
INSTRUCTIONS = (
    "keep the lane",
    "change to the left lane",
    "change to the right lane",
    "stop at the line",
    "overtake the car ahead",
)
KEEP, LEFT, RIGHT, STOP, OVERTAKE = range(len(INSTRUCTIONS))
#: Characters an instruction may use (the ``Text`` space's charset).
INSTRUCTION_CHARSET = "abcdefghijklmnopqrstuvwxyz "
INSTRUCTION_MAX_LENGTH = 64

# --------------------------------------------------------------------------------------------
# World constants
# --------------------------------------------------------------------------------------------
DT = 0.1  # seconds per step
LANE_WIDTH = 4.0
SHOULDER = 2.0  # grass drawn on each side of the road
CAR_LENGTH = 4.5
CAR_WIDTH = 2.0
WHEELBASE = 2.7
MAX_STEER = 0.35  # wheel angle (rad) at steering = 1
MAX_ACCEL = 4.0  # m/s^2 at acceleration = +-1
MAX_SPEED = 15.0  # m/s
MAX_HEADING = 0.6  # rad; the car cannot turn around on this road
TRAFFIC_RING = 160.0  # metres of traffic kept around the ego car in every lane
RING_BEHIND = 40.0  # a car further behind than this reappears ahead
MAX_CARS_PER_LANE = 5
SENSE_RANGE = 50.0  # gaps in the state vector are divided by this and clipped to [0, 1]

# Task constants
KEEP_DISTANCE = 40.0  # metres to drive for "keep the lane"
KEEP_TOLERANCE = 1.5  # leaving the lane centre by more than this fails "keep the lane"
LANE_TOLERANCE = 0.5  # |offset| (m) that counts as "in the lane centre"
HEADING_TOLERANCE = 0.1  # |heading| (rad) that counts as "straight"
STOP_SPEED = 0.5  # m/s that counts as "stopped"
STOP_ZONE = 4.0  # the car's front must be within this many metres before the line
PASS_MARGIN = 3.0  # metres between our rear bumper and the lead car's front to count as passed

# View (the camera follows the ego car along the road; the road itself never moves sideways)
VIEW_LENGTH = 32.0  # metres of road from the top of the image to the bottom
EGO_ROW_FRACTION = 0.75  # the ego car's centre is drawn this far down the image
DASH_PERIOD = 6.0  # lane marking: 3 m dash, 3 m gap
STOP_LINE_WIDTH = 1.0

#: Draw order = priority: a larger label is painted over a smaller one.
LABELS = ("grass", "road", "lane_marking", "road_edge", "stop_line", "car", "car_window", "ego", "ego_window")
PALETTE = np.array(
    [
        [60, 140, 60],  # grass
        [70, 70, 70],  # road
        [200, 200, 200],  # dashed lane marking
        [235, 235, 235],  # solid road edge
        [250, 250, 250],  # stop line
        [40, 90, 210],  # other cars
        [15, 30, 80],  # their windscreens (at the front: shows the direction of travel)
        [225, 40, 40],  # the ego car
        [90, 10, 10],  # its windscreen (shifted sideways by the heading)
    ],
    dtype=np.uint8,
)

#: Names of the entries of ``obs["state"]``; gaps are in units of SENSE_RANGE, clipped to [0, 1].
STATE_FIELDS = (
    "lane_offset",  # (x - target lane centre) / LANE_WIDTH, signed (+ = right of target)
    "heading",  # rad, + = pointing right
    "speed",  # v / MAX_SPEED
    "road_position",  # (x - road centre) / (road width / 2), in [-1, 1] on the road
    "stop_line_distance",  # (stop line - front bumper) / SENSE_RANGE, clipped to [-1, 1]
    "gap_ahead",  # free space to the next car in our lane; 1 = none in range
    "closing_speed",  # (v - speed of that car) / MAX_SPEED; 0 if none
    "gap_left_ahead",  # same for the lane to the left, ahead ...
    "gap_left_behind",  # ... and behind; 0 when there is no lane on that side
    "gap_right_ahead",
    "gap_right_behind",
    "lead_car_offset",  # (lead car y - ego y) / SENSE_RANGE, clipped to [-1, 1]
    "start_lane_offset",  # (x - centre of the lane we started in) / LANE_WIDTH
) + tuple(f"instruction_{i}" for i in range(len(INSTRUCTIONS)))  # one-hot, for state-only agents
STATE_DIM = len(STATE_FIELDS)
STATE_BOUND = 3.0  # every entry stays within [-3, 3] (the Box bounds of obs["state"])


@dataclass(frozen=True)
class Difficulty:
    """How hard the traffic is. Ranges are (low, high), sampled uniformly per episode."""

    name: str
    cars_per_lane: tuple  # (low, high) inclusive: cars on the ring of every other lane
    lane_speed: tuple  # m/s of the traffic in the other lanes
    lead_speed: tuple  # m/s of the slow lead car in our lane
    action_noise: float  # std of Gaussian noise added to the executed action


DIFFICULTIES = {
    "easy": Difficulty("easy", (1, 2), (8.0, 11.0), (3.0, 5.0), 0.0),
    "medium": Difficulty("medium", (2, 3), (7.0, 11.0), (3.0, 5.5), 0.05),
    "hard": Difficulty("hard", (3, 5), (6.5, 12.0), (3.0, 6.0), 0.1),
}


def get_difficulty(name: str) -> Difficulty:
    """The :class:`Difficulty` called ``name``; a :class:`ConfigError` names the allowed values."""
    if isinstance(name, Difficulty):
        return name
    if name not in DIFFICULTIES:
        raise ConfigError(
            f"difficulty={name!r} is not a driving difficulty; allowed values: {', '.join(DIFFICULTIES)}"
        )
    return DIFFICULTIES[name]


def instruction_id(text: str) -> int:
    """Index of ``text`` in :data:`INSTRUCTIONS`; a :class:`ConfigError` lists the valid ones."""
    if isinstance(text, (int, np.integer)) and 0 <= int(text) < len(INSTRUCTIONS):
        return int(text)
    key = " ".join(str(text).lower().split())
    if key not in INSTRUCTIONS:
        raise ConfigError(
            f"instruction={text!r} is not one the driving simulator understands; use one of: "
            + ", ".join(repr(s) for s in INSTRUCTIONS)
        )
    return INSTRUCTIONS.index(key)


def max_cars(num_lanes: int) -> int:
    """Number of traffic slots per world: the lead car plus a full ring in every other lane."""
    return 1 + (num_lanes - 1) * MAX_CARS_PER_LANE


def lane_centre(lane):
    """x of the centre of ``lane`` (lane 0 is the leftmost)."""
    return (lane + 0.5) * LANE_WIDTH


# --------------------------------------------------------------------------------------------
# The reward: read it, change it, or pass your own ``reward_fn`` with the same signature.
# --------------------------------------------------------------------------------------------
def compute_reward(*, collision, success, progress_delta, lane_offset, action, prev_action):
    """The specification's reward shaping for driving, returned term by term.

    .. math::

        r_t = \\underbrace{-100\\,[\\text{collision}]}_{\\text{safety}}
            + \\underbrace{0.1\\,\\Delta\\text{progress}_t}_{\\text{progress}}
            \\underbrace{- 0.1 \\sum_i |a_{t,i} - a_{t-1,i}|}_{\\text{comfort}}
            \\underbrace{- 0.5\\,|\\text{lateral offset}_t|}_{\\text{lane}}
            + \\underbrace{10\\,[\\text{success}]}_{\\text{success}}

    ``progress_delta`` is the metres gained towards the task this step (for "stop at the line"
    progress stops counting at the line), ``lane_offset`` the metres between the car and the centre
    of the lane it should be in. The same code works on Python floats, numpy arrays and torch
    tensors (the batched simulator calls it on whole batches). The terms sum to the reward; GRPO
    can use them as a vector reward.
    """
    return {
        "safety": -100.0 * collision,
        "progress": 0.1 * progress_delta,
        "comfort": -0.1 * abs(action - prev_action).sum(-1),
        "lane": -0.5 * abs(lane_offset),
        "success": 10.0 * success,
    }


REWARD_TERMS = ("safety", "progress", "comfort", "lane", "success")


# --------------------------------------------------------------------------------------------
# Scenarios: everything random about an episode is drawn here, from one numpy Generator, in a
# fixed order that does not depend on the instruction. Same seed -> same traffic, whatever the
# instruction; the batched simulator calls the same function, so it sees the same worlds.
# --------------------------------------------------------------------------------------------
@dataclass
class Scenario:
    instruction: int
    start_lane: int
    ego_speed: float
    npc_x: np.ndarray  # (max_cars,) slot 0 is the lead car; unused slots sit far off the road
    npc_y: np.ndarray
    npc_v: np.ndarray
    stop_line_y: float


UNUSED_X = -100.0  # x of unused traffic slots: never on the road, never in view


def sample_scenario(rng: np.random.Generator, difficulty: Difficulty, num_lanes: int,
                    instruction: Optional[int] = None) -> Scenario:
    """Draw one episode's world. ``instruction`` (an index) overrides the sampled one."""
    sampled_instruction = int(rng.integers(len(INSTRUCTIONS)))
    start_lane = int(rng.integers(1, num_lanes - 1))  # an inner lane: left and right both exist
    ego_speed = float(rng.uniform(5.0, 8.0))
    lead_gap = float(rng.uniform(10.0, 18.0))  # bumper to bumper
    lead_speed = float(rng.uniform(*difficulty.lead_speed))
    stop_line_y = CAR_LENGTH / 2 + float(rng.uniform(30.0, 45.0))

    k = max_cars(num_lanes)
    npc_x = np.full(k, UNUSED_X)
    npc_y = np.zeros(k)
    npc_v = np.zeros(k)
    npc_x[0], npc_y[0], npc_v[0] = lane_centre(start_lane), lead_gap + CAR_LENGTH, lead_speed
    slot = 1
    lo, hi = difficulty.cars_per_lane
    for lane in range(num_lanes):
        if lane == start_lane:
            continue
        speed = float(rng.uniform(*difficulty.lane_speed))
        n = int(rng.integers(lo, hi + 1))
        phase = float(rng.uniform(0.0, TRAFFIC_RING))
        spacing = TRAFFIC_RING / n  # evenly spaced, then jittered by up to a quarter of the free gap
        jitter = rng.uniform(-0.25, 0.25, size=MAX_CARS_PER_LANE) * (spacing - 2 * CAR_LENGTH)
        ys = phase + np.arange(n) * spacing + jitter[:n]
        ys = np.mod(ys + RING_BEHIND, TRAFFIC_RING) - RING_BEHIND  # into [-RING_BEHIND, ring - behind)
        npc_x[slot:slot + n] = lane_centre(lane)
        npc_y[slot:slot + n] = ys
        npc_v[slot:slot + n] = speed
        slot += MAX_CARS_PER_LANE
    if instruction is None:
        instruction = sampled_instruction
    return Scenario(instruction, start_lane, ego_speed, npc_x, npc_y, npc_v, stop_line_y)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------
def _round(v):
    """Round half up (numpy and torch round half to even; both simulators use this instead)."""
    return math.floor(v + 0.5)


class RoadGeometry:
    """Pixel geometry of the top-down view, shared by the single and the batched renderer."""

    def __init__(self, num_lanes: int, image_size: int):
        self.num_lanes = num_lanes
        self.size = image_size
        self.road_width = num_lanes * LANE_WIDTH
        self.sx = image_size / (self.road_width + 2 * SHOULDER)  # pixels per metre across
        self.sy = image_size / VIEW_LENGTH  # pixels per metre along the road
        self.ego_row = EGO_ROW_FRACTION * image_size
        self.period = max(2, _round(DASH_PERIOD * self.sy))  # lane-marking period in pixels
        self.ahead = self.ego_row / self.sy + CAR_LENGTH  # metres in view ahead (plus a car)
        self.behind = (image_size - self.ego_row) / self.sy + CAR_LENGTH
        self.road_cols = (_round(SHOULDER * self.sx), _round((SHOULDER + self.road_width) * self.sx))
        self.window_len = max(1, _round(CAR_LENGTH * self.sy / 4))
        self.strip = self._label_strip()

    def col(self, x):
        return (x + SHOULDER) * self.sx

    def row(self, rel_y):
        """Image row (float) of a point ``rel_y`` metres ahead of the ego car."""
        return self.ego_row - rel_y * self.sy

    def _label_strip(self) -> np.ndarray:
        """Labels of the static road, ``size + period`` rows tall; rows repeat with the dashes."""
        h, w = self.size + self.period, self.size
        strip = np.zeros((h, w), dtype=np.uint8)
        c0, c1 = self.road_cols
        strip[:, c0:c1] = LABELS.index("road")
        dash_rows = (np.mod(-np.arange(h), self.period) < self.period / 2)  # row j shows pattern(-j)
        line_w = max(1, _round(0.25 * self.sx))
        for lane in range(1, self.num_lanes):
            c = _round(self.col(lane * LANE_WIDTH) - line_w / 2)
            strip[dash_rows, c:c + line_w] = LABELS.index("lane_marking")
        strip[:, c0:c0 + line_w] = LABELS.index("road_edge")
        strip[:, c1 - line_w:c1] = LABELS.index("road_edge")
        return strip

    def strip_offset(self, ego_y: float) -> int:
        """First strip row of the view, so that the dashes scroll as the car moves forward."""
        c = math.floor(ego_y * self.sy) + _round(self.ego_row)
        return (-c) % self.period


class Renderer:
    """Draws one world into an RGB uint8 image by copying the road and filling rectangles."""

    def __init__(self, num_lanes: int, image_size: int):
        self.g = RoadGeometry(num_lanes, image_size)
        self.rgb_strip = PALETTE[self.g.strip]

    def _fill(self, img, top, bottom, left, right, label):
        h = self.g.size
        top, bottom = max(top, 0), min(bottom, h)
        left, right = max(left, 0), min(right, h)
        if top < bottom and left < right:
            img[top:bottom, left:right] = PALETTE[label]

    def _car(self, img, rel_y, x, body, window, window_shift=0):
        g = self.g
        top = _round(g.row(rel_y + CAR_LENGTH / 2))
        bottom = _round(g.row(rel_y - CAR_LENGTH / 2))
        left = _round(g.col(x - CAR_WIDTH / 2))
        right = _round(g.col(x + CAR_WIDTH / 2))
        self._fill(img, top, bottom, left, right, body)
        self._fill(img, top + 1, top + 1 + g.window_len, left + 1 + window_shift,
                   right - 1 + window_shift, window)

    def render(self, ego_x, ego_y, heading, npc_x, npc_y, stop_line_y) -> np.ndarray:
        g = self.g
        o = g.strip_offset(ego_y)
        img = self.rgb_strip[o:o + g.size].copy()
        # stop line: a band across the road
        rel = stop_line_y - ego_y
        top = _round(g.row(rel + STOP_LINE_WIDTH / 2))
        bottom = _round(g.row(rel - STOP_LINE_WIDTH / 2))
        self._fill(img, top, bottom, g.road_cols[0], g.road_cols[1], LABELS.index("stop_line"))
        rel_y = npc_y - ego_y
        for i in np.flatnonzero((rel_y < g.ahead) & (rel_y > -g.behind) & (npc_x > 0)):
            self._car(img, rel_y[i], npc_x[i], 5, 6)
        shift = min(max(_round(math.sin(heading) * CAR_LENGTH / 2 * g.sx), -1), 1)  # stays on the car
        self._car(img, 0.0, ego_x, 7, 8, shift)
        return img


# --------------------------------------------------------------------------------------------
# The environment
# --------------------------------------------------------------------------------------------
class DrivingEnv(gym.Env):
    """Language-conditioned top-down driving (gymnasium id ``vla_rl_lib/Driving-v0``).

    Args:
        difficulty: "easy", "medium" or "hard" (traffic density, speeds, action noise).
        instruction: always use this instruction; ``None`` samples one per episode.
        image_size: side of the square RGB observation in pixels (default 64).
        num_lanes: lanes on the road (>= 3; the car starts in an inner lane).
        max_episode_steps: time limit (truncation), 10 steps per simulated second.
        reward_fn: function with :func:`compute_reward`'s keyword signature returning a dict of
            reward terms (or a number); the reward is their sum.
        render_mode: ``"rgb_array"`` for :meth:`render` (a larger picture for videos).
        render_size: side of the :meth:`render` picture in pixels.

    Observation: ``{"image": uint8 (H, W, 3), "instruction": str, "state": float32 (STATE_DIM,)}``.
    Action: ``float32 (2,)`` = (steering, acceleration) in [-1, 1].
    ``reset(seed=s, options={"instruction": ..., "difficulty": ...})`` reproduces a scenario exactly.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": int(round(1 / DT))}

    def __init__(self, difficulty: str = "easy", instruction: Optional[str] = None, image_size: int = 64,
                 num_lanes: int = 3, max_episode_steps: int = 200,
                 reward_fn: Optional[Callable[..., Any]] = None, render_mode: Optional[str] = None,
                 render_size: int = 256):
        super().__init__()
        if int(num_lanes) < 3:
            raise ConfigError(f"num_lanes={num_lanes!r} is too small: the driving simulator needs >= 3 lanes")
        if int(image_size) < 16:
            raise ConfigError(f"image_size={image_size!r} is too small: use >= 16 pixels")
        if int(max_episode_steps) < 1:
            raise ConfigError(f"max_episode_steps={max_episode_steps!r} must be >= 1")
        if render_mode not in (None, "rgb_array"):
            raise ConfigError(f"render_mode={render_mode!r}: the driving simulator supports None or 'rgb_array'")
        self.difficulty = get_difficulty(difficulty)
        self.instruction = None if instruction is None else INSTRUCTIONS[instruction_id(instruction)]
        self.image_size = int(image_size)
        self.num_lanes = int(num_lanes)
        self.max_episode_steps = int(max_episode_steps)
        self.reward_fn = compute_reward if reward_fn is None else reward_fn
        self.render_mode = render_mode
        self.renderer = Renderer(self.num_lanes, self.image_size)
        self._big_renderer = None
        self._render_size = int(render_size)

        self.observation_space = spaces.Dict({
            "image": spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8),
            "instruction": spaces.Text(max_length=INSTRUCTION_MAX_LENGTH, min_length=1,
                                       charset=INSTRUCTION_CHARSET),
            "state": spaces.Box(-STATE_BOUND, STATE_BOUND, (STATE_DIM,), np.float32),
        })
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._scenario: Optional[Scenario] = None

    # ---- curriculum -----------------------------------------------------------------------
    def set_difficulty(self, difficulty: str) -> None:
        """Use ``difficulty`` ("easy" | "medium" | "hard") from the next reset on."""
        self.difficulty = get_difficulty(difficulty)

    # ---- gymnasium API ---------------------------------------------------------------------
    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        options = dict(options or {})
        unknown = set(options) - {"instruction", "difficulty"}
        if unknown:
            raise ConfigError(f"reset options {sorted(unknown)} are not understood; "
                              "use 'instruction' and/or 'difficulty'")
        if "difficulty" in options:
            self.set_difficulty(options["difficulty"])
        fixed = options.get("instruction", self.instruction)
        fixed_id = None if fixed is None else instruction_id(fixed)
        sc = sample_scenario(self.np_random, self.difficulty, self.num_lanes, fixed_id)
        self._scenario = sc
        self.task = sc.instruction
        self.start_lane = sc.start_lane
        self.x, self.y, self.v, self.heading = lane_centre(sc.start_lane), 0.0, sc.ego_speed, 0.0
        self.npc_x, self.npc_y, self.npc_v = sc.npc_x.copy(), sc.npc_y.copy(), sc.npc_v.copy()
        self.stop_line_y = sc.stop_line_y
        self.noise = self.difficulty.action_noise
        self.steps = 0
        self.passed = False  # overtake: have we passed the lead car?
        self.failed = False  # keep: left the lane; stop: crossed the line
        self.progress = 0.0
        self.prev_action = np.zeros(2)
        return self._observation(), self._info(False, False, {k: 0.0 for k in REWARD_TERMS})

    def step(self, action):
        if self._scenario is None:
            raise gym.error.ResetNeeded("call reset() before step()")
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (2,):
            raise IncompatibleError(
                f"the driving action must have shape (2,) = (steering, acceleration) in [-1, 1], "
                f"got shape {a.shape}; for token actions wrap the env in DiscretizeActions"
            )
        if not np.all(np.isfinite(a)):
            raise IncompatibleError(f"the driving action must be finite, got {a.tolist()}")
        a = np.clip(a, -1.0, 1.0)
        executed = a
        if self.noise > 0:
            executed = np.clip(a + self.np_random.normal(0.0, self.noise, 2), -1.0, 1.0)

        # 1. the ego car: kinematic bicycle, semi-implicit Euler
        steer, accel = float(executed[0]), float(executed[1])
        self.v = min(max(self.v + accel * MAX_ACCEL * DT, 0.0), MAX_SPEED)
        self.heading += self.v / WHEELBASE * math.tan(steer * MAX_STEER) * DT
        self.heading = min(max(self.heading, -MAX_HEADING), MAX_HEADING)
        self.x += self.v * math.sin(self.heading) * DT
        self.y += self.v * math.cos(self.heading) * DT

        # 2. traffic: straight ahead at constant speed, wrapped on a ring around the ego car
        self.npc_y += self.npc_v * DT
        rel = self.npc_y - self.y
        self.npc_y[rel < -RING_BEHIND] += TRAFFIC_RING
        self.npc_y[rel >= TRAFFIC_RING - RING_BEHIND] -= TRAFFIC_RING

        # 3. what happened
        collision = self._collided()
        success = self._update_task() and not collision
        progress = self._task_progress()
        terms = self.reward_fn(collision=collision, success=success, progress_delta=progress - self.progress,
                               lane_offset=self._lane_offset(), action=a, prev_action=self.prev_action)
        if not isinstance(terms, dict):
            terms = {"custom": terms}
        terms = {k: float(v) for k, v in terms.items()}
        reward = float(sum(terms.values()))
        self.progress = progress
        self.prev_action = a
        self.steps += 1
        terminated = collision or success
        truncated = (not terminated) and self.steps >= self.max_episode_steps
        return self._observation(), reward, terminated, truncated, self._info(collision, success, terms)

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        if self._big_renderer is None:
            self._big_renderer = Renderer(self.num_lanes, self._render_size)
        return self._big_renderer.render(self.x, self.y, self.heading, self.npc_x, self.npc_y, self.stop_line_y)

    # ---- task logic -------------------------------------------------------------------------
    def target_x(self) -> float:
        """x of the lane centre the car should be in now (the lane term of the reward uses it)."""
        start = lane_centre(self.start_lane)
        if self.task == LEFT:
            return start - LANE_WIDTH
        if self.task == RIGHT:
            return start + LANE_WIDTH
        if self.task == OVERTAKE:  # any lane is fine while overtaking: the nearest centre
            lane = min(max(math.floor(self.x / LANE_WIDTH), 0), self.num_lanes - 1)
            return lane_centre(lane)
        return start

    def _lane_offset(self) -> float:
        return self.x - self.target_x()

    def _collided(self) -> bool:
        road = self.num_lanes * LANE_WIDTH
        if self.x - CAR_WIDTH / 2 < 0.0 or self.x + CAR_WIDTH / 2 > road:
            return True  # hit the barrier at the road edge
        hit = (np.abs(self.npc_x - self.x) < CAR_WIDTH) & (np.abs(self.npc_y - self.y) < CAR_LENGTH)
        return bool(hit.any())

    def _task_progress(self) -> float:
        """Metres gained towards the task; "stop at the line" stops counting at the line."""
        if self.task == STOP:
            return min(self.y, self.stop_line_y - CAR_LENGTH / 2)
        return self.y

    def _update_task(self) -> bool:
        """Update the failure/passed flags and say whether the instruction is fulfilled now."""
        start_off = self.x - lane_centre(self.start_lane)
        straight = abs(self.heading) < HEADING_TOLERANCE
        if self.task == KEEP:
            self.failed |= abs(start_off) > KEEP_TOLERANCE
            return (not self.failed) and self.y >= KEEP_DISTANCE
        if self.task in (LEFT, RIGHT):
            return abs(self._lane_offset()) < LANE_TOLERANCE and straight
        if self.task == STOP:
            to_line = self.stop_line_y - (self.y + CAR_LENGTH / 2)
            self.failed |= to_line < 0.0
            return (not self.failed) and self.v < STOP_SPEED and to_line <= STOP_ZONE and abs(start_off) < 1.0
        # OVERTAKE
        if (self.y - CAR_LENGTH / 2) - (self.npc_y[0] + CAR_LENGTH / 2) >= PASS_MARGIN:
            self.passed = True
        return self.passed and abs(start_off) < LANE_TOLERANCE and straight

    # ---- observations -------------------------------------------------------------------------
    def _gaps(self):
        """Gaps (m) to the nearest cars ahead/behind in the ego, left and right lanes."""
        lane = min(max(math.floor(self.x / LANE_WIDTH), 0), self.num_lanes - 1)
        npc_lane = np.floor(self.npc_x / LANE_WIDTH)
        rel = self.npc_y - self.y

        def nearest(l, ahead):
            if l < 0 or l >= self.num_lanes:
                return 0.0, 0.0  # no lane there: no room at all
            mask = (npc_lane == l) & ((rel >= 0) if ahead else (rel < 0))
            if not mask.any():
                return SENSE_RANGE, 0.0
            d = np.where(mask, np.abs(rel), np.inf)
            i = int(np.argmin(d))
            return min(max(d[i] - CAR_LENGTH, 0.0), SENSE_RANGE), self.npc_v[i]

        gap, v_ahead = nearest(lane, True)
        closing = (self.v - v_ahead) if gap < SENSE_RANGE else 0.0
        return (gap, closing, nearest(lane - 1, True)[0], nearest(lane - 1, False)[0],
                nearest(lane + 1, True)[0], nearest(lane + 1, False)[0])

    def _state(self) -> np.ndarray:
        gap, closing, la, lb, ra, rb = self._gaps()
        half_road = self.num_lanes * LANE_WIDTH / 2
        s = np.zeros(STATE_DIM, dtype=np.float32)
        s[:13] = (
            self._lane_offset() / LANE_WIDTH,
            self.heading,
            self.v / MAX_SPEED,
            (self.x - half_road) / half_road,
            min(max((self.stop_line_y - self.y - CAR_LENGTH / 2) / SENSE_RANGE, -1.0), 1.0),
            gap / SENSE_RANGE,
            closing / MAX_SPEED,
            la / SENSE_RANGE, lb / SENSE_RANGE, ra / SENSE_RANGE, rb / SENSE_RANGE,
            min(max((self.npc_y[0] - self.y) / SENSE_RANGE, -1.0), 1.0),
            (self.x - lane_centre(self.start_lane)) / LANE_WIDTH,
        )
        s[13 + self.task] = 1.0
        return s

    def _observation(self) -> dict:
        image = self.renderer.render(self.x, self.y, self.heading, self.npc_x, self.npc_y, self.stop_line_y)
        return {"image": image, "instruction": INSTRUCTIONS[self.task], "state": self._state()}

    def _info(self, collision, success, terms) -> dict:
        return {
            "success": bool(success),
            "collision": bool(collision),
            "lane_offset": float(self._lane_offset()),
            "progress": float(self.progress),
            "reward_terms": terms,
            "instruction": INSTRUCTIONS[self.task],
        }

    def privileged_state(self) -> dict:
        """Everything about the world, for scripted experts and tests (not for the policy)."""
        return {
            "x": self.x, "y": self.y, "v": self.v, "heading": self.heading,
            "task": self.task, "start_lane": self.start_lane, "num_lanes": self.num_lanes,
            "npc_x": self.npc_x.copy(), "npc_y": self.npc_y.copy(), "npc_v": self.npc_v.copy(),
            "stop_line_y": self.stop_line_y, "passed": self.passed, "failed": self.failed,
            "steps": self.steps, "progress": self.progress,
        }
