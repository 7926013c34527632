"""CARLA adapter: the driving task interface of :class:`DrivingEnv` on a real CARLA server.

**Untested here.** The machines this kit is developed on cannot run a CARLA server, so this adapter
has only been checked for its error paths (no ``carla`` package, no server reachable). It follows
the public CARLA 0.9.x Python API; treat it as a starting point and report what needs fixing.

What it maps:

* observation ``{"image", "instruction", "state"}`` as in :class:`DrivingEnv`: ``image`` from an
  RGB camera looking down on the ego vehicle (``image_size`` square), ``instruction`` one of
  :data:`INSTRUCTIONS`, ``state`` a short vector (lane offset, heading error, speed, distance to the
  virtual stop line, instruction one-hot);
* action (steering, acceleration) in [-1, 1] -> ``carla.VehicleControl(steer, throttle, brake)``;
* reward: the same :func:`compute_reward` terms (collision from a collision sensor, progress along
  the lane from the map's waypoints, lane offset from the target lane's waypoint, comfort from the
  action change, success as in the simulator, with the stop line placed ``stop_distance`` metres
  ahead along the lane and the lead car spawned ``lead_distance`` metres ahead for overtaking).

Without a reachable server it fails with one :class:`CarlaConnectionError` naming host and port.
Install the client with ``pip install carla`` (the version must match your server).
"""
from __future__ import annotations

import math
import queue
from typing import Optional

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from vla_rl_lib.envs.driving import (
    INSTRUCTION_CHARSET, INSTRUCTION_MAX_LENGTH, INSTRUCTIONS, KEEP, KEEP_DISTANCE, LANE_TOLERANCE, LEFT,
    HEADING_TOLERANCE, PASS_MARGIN, RIGHT, STOP, STOP_SPEED, STOP_ZONE, compute_reward,
    instruction_id,
)
from vla_rl_lib.errors import VLARLError, optional_import

CARLA_STATE_DIM = 4 + len(INSTRUCTIONS)


class CarlaConnectionError(VLARLError, ConnectionError):
    """No CARLA server answered at the given host and port."""


def connect(host: str = "localhost", port: int = 2000, timeout: float = 5.0):
    """A ``carla.Client`` connected to a running server, or one clear error naming host and port."""
    carla = optional_import("carla", "carla", "The CARLA adapter")
    try:
        client = carla.Client(host, int(port))
        client.set_timeout(float(timeout))
        client.get_server_version()  # the first call that really talks to the server
    except RuntimeError as exc:
        raise CarlaConnectionError(
            f"no CARLA server answered at {host}:{port} within {timeout:g} s ({exc}). Start one "
            f"(e.g. ./CarlaUE4.sh -carla-rpc-port={port}) or pass host=/port= of a running server; "
            "the kit's own simulator needs no server: make_env('driving')."
        ) from exc
    return carla, client


class CarlaDrivingEnv(gym.Env):
    """The kit's five driving instructions on a CARLA server (untested here; see module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(self, host: str = "localhost", port: int = 2000, timeout: float = 5.0,
                 town: Optional[str] = None, instruction: Optional[str] = None, image_size: int = 64,
                 max_episode_steps: int = 200, reward_fn=None, stop_distance: float = 40.0,
                 lead_distance: float = 20.0, lead_speed: float = 4.0, fixed_delta_seconds: float = 0.1):
        self.carla, self.client = connect(host, port, timeout)
        self.world = self.client.load_world(town) if town else self.client.get_world()
        self.map = self.world.get_map()
        settings = self.world.get_settings()
        settings.synchronous_mode = True
        settings.fixed_delta_seconds = fixed_delta_seconds
        self.world.apply_settings(settings)
        self.instruction = None if instruction is None else INSTRUCTIONS[instruction_id(instruction)]
        self.image_size = int(image_size)
        self.max_episode_steps = int(max_episode_steps)
        self.reward_fn = reward_fn or compute_reward
        self.stop_distance, self.lead_distance, self.lead_speed = stop_distance, lead_distance, lead_speed
        self.observation_space = spaces.Dict({
            "image": spaces.Box(0, 255, (self.image_size, self.image_size, 3), np.uint8),
            "instruction": spaces.Text(max_length=INSTRUCTION_MAX_LENGTH, min_length=1, charset=INSTRUCTION_CHARSET),
            "state": spaces.Box(-np.inf, np.inf, (CARLA_STATE_DIM,), np.float32),
        })
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self._actors = []

    # ---- episode setup ---------------------------------------------------------------------------
    def _destroy(self):
        for actor in self._actors:
            try:
                actor.destroy()
            except RuntimeError:
                pass
        self._actors = []

    def reset(self, *, seed: Optional[int] = None, options: Optional[dict] = None):
        super().reset(seed=seed)
        self._destroy()
        carla = self.carla
        options = options or {}
        fixed = options.get("instruction", self.instruction)
        self.task = instruction_id(fixed) if fixed is not None else int(self.np_random.integers(len(INSTRUCTIONS)))
        library = self.world.get_blueprint_library()
        spawns = self.map.get_spawn_points()
        # a spawn point on a road with a lane on both sides, so that every instruction can be done
        order = self.np_random.permutation(len(spawns))
        for i in order:
            wp = self.map.get_waypoint(spawns[i].location)
            if wp.get_left_lane() is not None and wp.get_right_lane() is not None:
                break
        self.ego = self.world.try_spawn_actor(library.filter("vehicle.tesla.model3")[0], spawns[i])
        if self.ego is None:
            raise VLARLError("CARLA could not spawn the ego vehicle (spawn point occupied); reset again")
        self._actors.append(self.ego)
        self.start_wp = self.map.get_waypoint(self.ego.get_location())
        cam_bp = library.find("sensor.camera.rgb")
        cam_bp.set_attribute("image_size_x", str(self.image_size))
        cam_bp.set_attribute("image_size_y", str(self.image_size))
        cam_bp.set_attribute("fov", "90")
        cam_tf = carla.Transform(carla.Location(x=6.0, z=25.0), carla.Rotation(pitch=-90.0))  # top-down
        self.camera = self.world.spawn_actor(cam_bp, cam_tf, attach_to=self.ego)
        self._frames = queue.Queue()
        self.camera.listen(self._frames.put)
        self.collision_sensor = self.world.spawn_actor(library.find("sensor.other.collision"), carla.Transform(),
                                                       attach_to=self.ego)
        self._collided = False
        self.collision_sensor.listen(lambda event: setattr(self, "_collided", True))
        self._actors += [self.camera, self.collision_sensor]
        self.lead = None
        ahead = self.start_wp.next(self.lead_distance)
        if ahead:
            tf = ahead[0].transform
            tf.location.z += 0.5
            self.lead = self.world.try_spawn_actor(library.filter("vehicle.audi.*")[0], tf)
            if self.lead is not None:
                self._actors.append(self.lead)
                self.lead.enable_constant_velocity(carla.Vector3D(self.lead_speed, 0.0, 0.0))
        self.steps, self.progress, self.passed = 0, 0.0, False
        self.prev_action = np.zeros(2)
        self.start_location = self.ego.get_location()
        self.world.tick()
        return self._observation(), {"instruction": INSTRUCTIONS[self.task]}

    # ---- stepping --------------------------------------------------------------------------------
    def _target_wp(self):
        wp = self.map.get_waypoint(self.ego.get_location())
        if self.task == LEFT:
            return wp.get_left_lane() or wp
        if self.task == RIGHT:
            return wp.get_right_lane() or wp
        return wp

    def _lane_offset_and_heading(self):
        tf = self.ego.get_transform()
        wp = self._target_wp().transform
        d = tf.location - wp.location
        yaw = math.radians(wp.rotation.yaw)
        lateral = -d.x * math.sin(yaw) + d.y * math.cos(yaw)
        heading = math.radians((tf.rotation.yaw - wp.rotation.yaw + 180.0) % 360.0 - 180.0)
        return lateral, heading

    def step(self, action):
        a = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        steer, accel = float(a[0]), float(a[1])
        self.ego.apply_control(self.carla.VehicleControl(steer=steer, throttle=max(accel, 0.0), brake=max(-accel, 0.0)))
        self.world.tick()
        self.steps += 1
        travelled = self.ego.get_location().distance(self.start_location)
        speed = self.ego.get_velocity().length()
        lateral, heading = self._lane_offset_and_heading()
        straight = abs(heading) < HEADING_TOLERANCE
        collision = self._collided
        if self.task == KEEP:
            success = travelled >= KEEP_DISTANCE and abs(lateral) < 1.5
        elif self.task in (LEFT, RIGHT):
            success = self.map.get_waypoint(self.ego.get_location()).lane_id != self.start_wp.lane_id \
                and abs(lateral) < LANE_TOLERANCE and straight
        elif self.task == STOP:
            to_line = self.stop_distance - travelled
            success = 0.0 <= to_line <= STOP_ZONE and speed < STOP_SPEED
        else:
            if self.lead is not None:
                ahead = self.ego.get_location().distance(self.start_location) - \
                    self.lead.get_location().distance(self.start_location)
                self.passed |= ahead >= 4.5 + PASS_MARGIN
            success = self.passed and \
                self.map.get_waypoint(self.ego.get_location()).lane_id == self.start_wp.lane_id and straight
        success = bool(success and not collision)
        progress = min(travelled, self.stop_distance) if self.task == STOP else travelled
        terms = self.reward_fn(collision=collision, success=success, progress_delta=progress - self.progress,
                               lane_offset=lateral, action=a, prev_action=self.prev_action)
        terms = {k: float(v) for k, v in (terms if isinstance(terms, dict) else {"custom": terms}).items()}
        self.progress, self.prev_action = progress, a
        terminated = bool(collision or success)
        truncated = (not terminated) and self.steps >= self.max_episode_steps
        info = {"success": success, "collision": bool(collision), "lane_offset": float(lateral),
                "progress": float(progress), "reward_terms": terms, "instruction": INSTRUCTIONS[self.task]}
        return self._observation(), float(sum(terms.values())), terminated, truncated, info

    def _observation(self):
        frame = self._frames.get(timeout=10.0)
        while not self._frames.empty():
            frame = self._frames.get_nowait()
        bgra = np.frombuffer(frame.raw_data, dtype=np.uint8).reshape(frame.height, frame.width, 4)
        image = np.ascontiguousarray(bgra[:, :, 2::-1])
        lateral, heading = self._lane_offset_and_heading()
        state = np.zeros(CARLA_STATE_DIM, dtype=np.float32)
        state[:4] = (lateral / 4.0, heading, self.ego.get_velocity().length() / 15.0,
                     (self.stop_distance - self.ego.get_location().distance(self.start_location)) / 50.0)
        state[4 + self.task] = 1.0
        self._last_image = image
        return {"image": image, "instruction": INSTRUCTIONS[self.task], "state": state}

    def render(self):
        return getattr(self, "_last_image", None)

    def close(self):
        self._destroy()
        try:
            settings = self.world.get_settings()
            settings.synchronous_mode = False
            self.world.apply_settings(settings)
        except (RuntimeError, AttributeError):
            pass


__all__ = ["CarlaDrivingEnv", "CarlaConnectionError", "connect"]
