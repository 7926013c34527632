"""A scripted driver that sees everything, and the dataset collector built on it.

:class:`DrivingExpert` reads the simulator's privileged state (the exact positions and speeds of
every car, the instruction, the stop line) and drives with three small controllers:

* **steering** tracks the centre ``x*`` of a chosen lane: a wanted sideways speed
  ``u = clip(k_x (x* - x))`` gives a wanted heading ``asin(u / v)``, and the wheel angle that turns
  the car towards it follows from the bicycle model ``dheading/dt = v tan(delta) / wheelbase``;
* **speed** follows a wanted speed, limited by the car ahead (keep a gap of a few metres, never
  faster than it once close) and, for "stop at the line", by the braking curve ``v = sqrt(2 b d)``;
* **lane choice** implements the instruction: stay, change when the gap in the target lane is
  safe (otherwise let the blocking car pass or drop behind it), or overtake: out to a faster
  lane, past the lead car, back into the own lane.

:func:`collect_dataset` drives the simulator with this expert (optionally noisy, or a random
policy) and returns the arrays of a D4RL-layout dataset, with images and instructions.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from vla_rl_lib.envs.driving import (
    CAR_LENGTH, CAR_WIDTH, DT, ENV_ID, INSTRUCTIONS, LANE_WIDTH, LEFT, MAX_ACCEL, MAX_SPEED,
    MAX_STEER, OVERTAKE, REWARD_TERMS, RIGHT, STATE_DIM, STOP, WHEELBASE, DrivingEnv, get_difficulty,
    lane_centre,
)
from vla_rl_lib.errors import ConfigError

QUALITIES = ("expert", "medium", "random")


class DrivingExpert:
    """Scripted controller for :class:`DrivingEnv` using privileged state.

    ``act(env_or_state)`` accepts the environment (wrapped or not) or the dict returned by
    ``env.unwrapped.privileged_state()`` and returns a float32 action (steering, acceleration).
    It keeps no memory between calls, so one expert can drive many environments.
    """

    def __init__(self, cruise_speed: float = 10.0, passing_speed: float = 13.0):
        self.cruise_speed = cruise_speed
        self.passing_speed = passing_speed

    # ---- helpers on the privileged state --------------------------------------------------------
    @staticmethod
    def _state(env_or_state) -> dict:
        if isinstance(env_or_state, dict):
            return env_or_state
        return env_or_state.unwrapped.privileged_state()

    @staticmethod
    def _lane_of(x):
        return np.floor(np.asarray(x) / LANE_WIDTH)

    def _safe_to_enter(self, s, lane) -> bool:
        """No car in ``lane`` within a speed-dependent gap ahead or behind us."""
        if lane < 0 or lane >= s["num_lanes"]:
            return False
        mask = self._lane_of(s["npc_x"]) == lane
        rel = s["npc_y"][mask] - s["y"]
        dv = s["npc_v"][mask] - s["v"]
        ahead = rel >= 0
        need_ahead = 4.0 + np.maximum(-dv, 0.0) * 1.5  # we are faster: need room to brake
        need_behind = 4.0 + np.maximum(dv, 0.0) * 2.0  # they are faster: they must not reach us
        gap = np.abs(rel) - CAR_LENGTH
        return bool(np.all(np.where(ahead, gap >= need_ahead, gap >= need_behind)))

    def _blocker_speed(self, s, lane, cruise):
        """Wanted speed while waiting to enter ``lane``: let a faster car pass, drop behind a slower."""
        mask = self._lane_of(s["npc_x"]) == lane
        rel = s["npc_y"][mask] - s["y"]
        if not mask.any():
            return cruise
        i = int(np.argmin(np.abs(rel)))
        v_npc = s["npc_v"][mask][i]
        if rel[i] < 0:  # beside or behind us
            return max(v_npc - 3.0, 2.0) if v_npc > s["v"] else cruise
        return max(v_npc - 2.0, 2.0) if v_npc < s["v"] + 1.0 else cruise

    def _follow_speed(self, s, wanted, lanes=None):
        """``wanted`` limited by the nearest car ahead that overlaps our path (or is in ``lanes``)."""
        rel = s["npc_y"] - s["y"]
        near = np.abs(s["npc_x"] - s["x"]) < CAR_WIDTH + 0.8
        if lanes is not None:
            near |= np.isin(self._lane_of(s["npc_x"]), list(lanes))
        mask = near & (rel > 0)
        if not mask.any():
            return wanted
        i = int(np.argmin(np.where(mask, rel, np.inf)))
        gap = rel[i] - CAR_LENGTH
        return min(wanted, max(0.0, s["npc_v"][i] + 0.6 * (gap - 6.0)))

    @staticmethod
    def _steer_to(s, target_x) -> float:
        v = max(s["v"], 1.0)
        lateral = float(np.clip(1.0 * (target_x - s["x"]), -2.5, 2.5))  # wanted sideways speed (m/s)
        heading_wanted = math.asin(max(-0.45, min(0.45, lateral / v)))
        yaw_rate = 4.0 * (heading_wanted - s["heading"])
        delta = math.atan(yaw_rate * WHEELBASE / max(s["v"], 0.5))
        return float(np.clip(delta / MAX_STEER, -1.0, 1.0))

    @staticmethod
    def _speed_to(s, v_target) -> float:
        accel = 2.0 * (v_target - s["v"])  # m/s^2, reached in about half a second
        return float(np.clip(accel / MAX_ACCEL, -1.0, 1.0))

    # ---- the policy ----------------------------------------------------------------------------
    def act(self, env_or_state) -> np.ndarray:
        s = self._state(env_or_state)
        task, start = s["task"], s["start_lane"]
        x = s["x"]
        start_x = lane_centre(start)
        lane_now = int(min(max(math.floor(x / LANE_WIDTH), 0), s["num_lanes"] - 1))
        target_lane, wanted, lanes = start, self.cruise_speed, None

        if task in (LEFT, RIGHT):
            goal = start - 1 if task == LEFT else start + 1
            committed = abs(x - lane_centre(goal)) < abs(x - start_x)
            if committed or self._safe_to_enter(s, goal):
                target_lane, lanes = goal, (goal,)
            else:
                wanted = self._blocker_speed(s, goal, self.cruise_speed)
        elif task == OVERTAKE:
            if not s["passed"]:
                if abs(x - start_x) < 1.0:  # still in our lane: pick a faster, free passing lane
                    lead_v = s["npc_v"][0]
                    for side in (start - 1, start + 1):
                        mask = self._lane_of(s["npc_x"]) == side
                        lane_v = s["npc_v"][mask].min() if mask.any() else MAX_SPEED
                        if lane_v > lead_v + 1.0 and self._safe_to_enter(s, side):
                            target_lane, lanes = side, (side,)
                            break
                else:  # on the way out or in the passing lane: drive past
                    side = start - 1 if x < start_x else start + 1
                    target_lane, wanted, lanes = side, self.passing_speed, (side,)
            else:
                committed = abs(x - start_x) < LANE_WIDTH / 2
                if committed or self._safe_to_enter(s, start):
                    target_lane, lanes = start, (start,)
                else:
                    target_lane, wanted, lanes = lane_now, self.cruise_speed, (lane_now,)

        v_target = self._follow_speed(s, wanted, lanes)
        if task == STOP:
            to_line = s["stop_line_y"] - (s["y"] + CAR_LENGTH / 2) - 1.5  # stop about 1.5 m before it
            v_target = min(v_target, math.sqrt(2 * 2.0 * max(to_line, 0.0)))
        steer = self._steer_to(s, lane_centre(target_lane))
        accel = -1.0 if v_target <= 0.3 else self._speed_to(s, v_target)  # stand firmly
        return np.array([steer, accel], dtype=np.float32)

    __call__ = act


def collect_dataset(size: int, seed: int = 0, quality: str = "expert", difficulty: str = "easy",
                    image_size: int = 64, noise: float = 1.5, instruction: Optional[str] = None,
                    max_episode_steps: int = 200) -> dict:
    """Drive the simulator for ``size`` transitions and return D4RL-layout arrays.

    ``quality``: "expert" (the scripted expert), "medium" (the expert's action plus Gaussian noise
    of std ``noise``, clipped; the default 1.5 succeeds in roughly half of the
    episodes on "easy", as D4RL's "medium" policies reach about a third to a half of expert) or
    "random" (uniform actions). Keys: ``observations`` and
    ``next_observations`` (state vectors, float32), ``actions``, ``rewards``, ``terminals``,
    ``timeouts`` (bool), ``images`` (uint8 N,H,W,3, the image the action was chosen on),
    ``next_images``, ``instructions`` (bytes strings), ``infos/success``, ``infos/collision``,
    ``infos/instruction_id``, ``reward_terms/<term>`` and ``metadata/...``. Episodes are cut at
    ``size``; the last one is then marked as a timeout.
    """
    if quality not in QUALITIES:
        raise ConfigError(f"quality={quality!r} is not a dataset quality; allowed values: {', '.join(QUALITIES)}")
    if int(size) < 1:
        raise ConfigError(f"size={size!r} must be >= 1")
    get_difficulty(difficulty)
    size = int(size)
    env = DrivingEnv(difficulty=difficulty, image_size=image_size, instruction=instruction,
                     max_episode_steps=max_episode_steps)
    expert = DrivingExpert()
    rng = np.random.default_rng(seed + 1_000_003)  # the behaviour noise, apart from the env's own
    out = {
        "observations": np.zeros((size, STATE_DIM), np.float32),
        "next_observations": np.zeros((size, STATE_DIM), np.float32),
        "actions": np.zeros((size, 2), np.float32),
        "rewards": np.zeros(size, np.float32),
        "terminals": np.zeros(size, bool),
        "timeouts": np.zeros(size, bool),
        "images": np.zeros((size, image_size, image_size, 3), np.uint8),
        "next_images": np.zeros((size, image_size, image_size, 3), np.uint8),
        "instructions": np.zeros(size, dtype="S64"),
        "infos/success": np.zeros(size, bool),
        "infos/collision": np.zeros(size, bool),
        "infos/instruction_id": np.zeros(size, np.int64),
    }
    terms = {k: np.zeros(size, np.float32) for k in REWARD_TERMS}
    obs, _ = env.reset(seed=int(seed))
    episodes, successes = 0, 0
    for t in range(size):
        if quality == "random":
            action = rng.uniform(-1.0, 1.0, 2).astype(np.float32)
        else:
            action = expert.act(env)
            if quality == "medium":
                action = np.clip(action + rng.normal(0.0, noise, 2), -1.0, 1.0).astype(np.float32)
        next_obs, reward, terminated, truncated, info = env.step(action)
        out["observations"][t] = obs["state"]
        out["images"][t] = obs["image"]
        out["instructions"][t] = obs["instruction"].encode()
        out["infos/instruction_id"][t] = INSTRUCTIONS.index(obs["instruction"])
        out["actions"][t] = action
        out["rewards"][t] = reward
        out["next_observations"][t] = next_obs["state"]
        out["next_images"][t] = next_obs["image"]
        out["terminals"][t] = terminated
        out["timeouts"][t] = truncated or (t == size - 1 and not terminated)
        out["infos/success"][t] = info["success"]
        out["infos/collision"][t] = info["collision"]
        for k in REWARD_TERMS:
            terms[k][t] = info["reward_terms"].get(k, 0.0)
        obs = next_obs
        if terminated or truncated:
            episodes += 1
            successes += int(info["success"])
            obs, _ = env.reset()
    out.update({f"reward_terms/{k}": v for k, v in terms.items()})
    out.update({
        "metadata/env_id": ENV_ID,
        "metadata/quality": quality,
        "metadata/seed": int(seed),
        "metadata/difficulty": str(difficulty),
        "metadata/image_size": int(image_size),
        "metadata/instructions": list(INSTRUCTIONS),
        "metadata/episodes": episodes,
        "metadata/success_rate": successes / episodes if episodes else float("nan"),
        "metadata/dt": DT,
    })
    return out


def expert_success_rates(difficulty: str = "easy", episodes: int = 40, seed: int = 0) -> dict:
    """Success rate of :class:`DrivingExpert` per instruction over seeds ``seed .. seed+episodes-1``."""
    env, expert = DrivingEnv(difficulty=difficulty), DrivingExpert()
    rates = {}
    for text in INSTRUCTIONS:
        wins = 0
        for s in range(seed, seed + episodes):
            env.reset(seed=s, options={"instruction": text})
            done = False
            while not done:
                _, _, terminated, truncated, info = env.step(expert.act(env))
                done = terminated or truncated
            wins += int(info["success"])
        rates[text] = wins / episodes
    return rates


if __name__ == "__main__":  # python -m vla_rl_lib.envs.expert [difficulty ...]
    import sys

    for name in sys.argv[1:] or ["easy", "medium", "hard"]:
        for text, rate in expert_success_rates(name).items():
            print(f"{name:7s} {text:26s} {rate:6.1%}")
