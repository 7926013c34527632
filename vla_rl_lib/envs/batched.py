"""Many driving worlds stepped at once with torch: a gymnasium vector env.

:class:`BatchedDrivingEnv` holds every world's state as tensors of shape ``(num_envs, ...)`` and
runs the same dynamics, task logic, state vector, reward (:func:`compute_reward` is called on whole
batches) and picture as :class:`~vla_rl_lib.envs.driving.DrivingEnv`. New episodes are drawn by
the same :func:`~vla_rl_lib.envs.driving.sample_scenario`, from one numpy Generator per world seeded
``seed + i`` exactly as gymnasium seeds a ``SyncVectorEnv``: the batched env and a SyncVectorEnv of
``DrivingEnv`` given the same seed and actions produce the same episodes (up to float rounding).

Rendering is batched too: the road is gathered from a pre-drawn label strip, every car's rectangle
is the outer product of a row mask and a column mask (one ``bmm`` paints all cars of all worlds),
labels are combined by ``max`` (a higher label is painted on top), and a palette lookup makes RGB.

``device="cuda"`` runs it all on a GPU. ``return_tensors="numpy"`` (default, as gymnasium vector
envs do) or ``"torch"`` (tensors on ``device``; best on a GPU) chooses what ``step`` returns.
Autoreset follows gymnasium's ``NEXT_STEP`` mode by default (the step after an episode ends resets
that world and ignores its action; reward 0, not done); ``autoreset_mode="same_step"`` resets in the
same step and puts the last observation in ``info["final_obs"]`` (valid where
``info["_final_obs"]``).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import numpy as np
import torch
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from vla_rl_lib.envs import driving as D
from vla_rl_lib.errors import ConfigError, IncompatibleError

_MODES = {"next_step": AutoresetMode.NEXT_STEP, "same_step": AutoresetMode.SAME_STEP}


class BatchedDrivingEnv(VectorEnv):
    """``num_envs`` driving worlds in torch tensors (see the module docstring).

    Args are those of :class:`DrivingEnv` plus ``num_envs``, ``device``, ``dtype`` (float64 on CPU,
    float32 on CUDA by default), ``return_tensors`` ("numpy" | "torch"), ``autoreset_mode``
    ("next_step" | "same_step") and ``render_images`` (False leaves ``image`` all zeros, faster).
    """

    def __init__(self, num_envs: int = 64, difficulty: str = "easy", instruction: Optional[str] = None,
                 image_size: int = 64, num_lanes: int = 3, max_episode_steps: int = 200,
                 reward_fn: Optional[Callable[..., Any]] = None, device: str = "cpu",
                 dtype: Optional[torch.dtype] = None, return_tensors: str = "numpy",
                 autoreset_mode: str = "next_step", render_images: bool = True):
        if int(num_envs) < 1:
            raise ConfigError(f"num_envs={num_envs!r} must be >= 1")
        if return_tensors not in ("numpy", "torch"):
            raise ConfigError(f"return_tensors={return_tensors!r}: use 'numpy' or 'torch'")
        if autoreset_mode not in _MODES:
            raise ConfigError(f"autoreset_mode={autoreset_mode!r}: use one of {', '.join(_MODES)}")
        # one single env describes the spaces and validates the shared arguments
        single = D.DrivingEnv(difficulty=difficulty, instruction=instruction, image_size=image_size,
                              num_lanes=num_lanes, max_episode_steps=max_episode_steps)
        self.num_envs = int(num_envs)
        self.difficulty = single.difficulty
        self.instruction = single.instruction
        self.image_size, self.num_lanes = single.image_size, single.num_lanes
        self.max_episode_steps = single.max_episode_steps
        self.reward_fn = D.compute_reward if reward_fn is None else reward_fn
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError("device='cuda' was asked for but torch sees no CUDA device; use device='cpu'")
        self.dtype = dtype or (torch.float64 if self.device.type == "cpu" else torch.float32)
        self.return_tensors = return_tensors
        self.render_images = bool(render_images)
        self.metadata = {"autoreset_mode": _MODES[autoreset_mode], "render_modes": []}

        self.single_observation_space = single.observation_space
        self.single_action_space = single.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)

        n, k, dev, dt = self.num_envs, D.max_cars(self.num_lanes), self.device, self.dtype
        # All per-world state lives in three tensors (floats, integers, flags); the names below are
        # views into them, so a new episode is written with one row assignment per tensor and the
        # dynamics update the views in place.
        self._floats = torch.zeros(n, 9 + 3 * k, dtype=dt, device=dev)
        self._ints = torch.zeros(n, 3, dtype=torch.long, device=dev)
        self._flags = torch.zeros(n, 3, dtype=torch.bool, device=dev)
        f = self._floats
        self.x, self.y, self.v, self.heading = f[:, 0], f[:, 1], f[:, 2], f[:, 3]
        self.stop_line_y, self.progress, self.noise = f[:, 4], f[:, 5], f[:, 6]
        self.prev_action = f[:, 7:9]
        self.npc_x, self.npc_y, self.npc_v = f[:, 9:9 + k], f[:, 9 + k:9 + 2 * k], f[:, 9 + 2 * k:]
        self.task, self.start_lane, self.steps = self._ints[:, 0], self._ints[:, 1], self._ints[:, 2]
        self.passed, self.failed, self._needs_reset = self._flags[:, 0], self._flags[:, 1], self._flags[:, 2]
        self._lane_centres = (torch.arange(self.num_lanes, dtype=dt, device=dev) + 0.5) * D.LANE_WIDTH
        shift = torch.zeros(len(D.INSTRUCTIONS), dtype=dt, device=dev)
        shift[D.LEFT], shift[D.RIGHT] = -D.LANE_WIDTH, D.LANE_WIDTH
        self._task_shift = shift  # target lane centre - start lane centre, per instruction
        half_road, sr = self.num_lanes * D.LANE_WIDTH / 2, D.SENSE_RANGE
        self._state_scale = 1.0 / torch.tensor(  # divisors of the first 13 state entries (STATE_FIELDS)
            [D.LANE_WIDTH, 1.0, D.MAX_SPEED, half_road, sr, sr, D.MAX_SPEED, sr, sr, sr, sr, sr, D.LANE_WIDTH],
            dtype=dt, device=dev)
        self._rngs = [seeding.np_random(None)[0] for _ in range(n)]
        self._fixed = [None if self.instruction is None else D.instruction_id(self.instruction)] * n
        self._loaded = False

        # rendering constants
        g = self._geom = D.RoadGeometry(self.num_lanes, self.image_size)
        self._strip = torch.as_tensor(g.strip, device=dev)
        self._palette = torch.as_tensor(D.PALETTE, device=dev)
        self._ego_top = D._round(g.row(D.CAR_LENGTH / 2))
        self._ego_bottom = D._round(g.row(-D.CAR_LENGTH / 2))
        self._arange_h = torch.arange(g.size, device=dev)
        self._world = torch.arange(n, device=dev)
        self._side = torch.tensor([-1.0, 0.0, 1.0], dtype=dt, device=dev)  # left, own, right lane
        self._ahead = torch.tensor([True, False], device=dev)
        self._spare = n * g.size * g.size  # index of the spare pixel that takes clipped paint
        views = [torch.as_tensor(D.PALETTE[g.strip[o:o + g.size]]) for o in range(g.period)]
        self._road_views = torch.stack(views).to(dev)  # (period, H, W, 3): every scroll position
        self._colour_cache = {}
        self._rgb = torch.arange(3, device=dev)
        self._car_h = int(np.ceil(D.CAR_LENGTH * g.sy)) + 1  # patch sizes that hold any rounding
        self._car_w = int(np.ceil(D.CAR_WIDTH * g.sx)) + 1
        self._line_h = int(np.ceil(D.STOP_LINE_WIDTH * g.sy)) + 1

    # ---- curriculum --------------------------------------------------------------------------
    def set_difficulty(self, difficulty: str) -> None:
        """Use ``difficulty`` for every episode that starts from now on."""
        self.difficulty = D.get_difficulty(difficulty)

    # ---- episodes ------------------------------------------------------------------------------
    def _load(self, indices) -> None:
        """Draw new scenarios for worlds ``indices`` (each from its own Generator) and reset them."""
        idx = list(indices)
        if not idx:
            return
        scs = [D.sample_scenario(self._rngs[i], self.difficulty, self.num_lanes, self._fixed[i]) for i in idx]
        noise = self.difficulty.action_noise
        floats = np.stack([np.concatenate([[D.lane_centre(sc.start_lane), 0.0, sc.ego_speed, 0.0, sc.stop_line_y,
                                            0.0, noise, 0.0, 0.0], sc.npc_x, sc.npc_y, sc.npc_v]) for sc in scs])
        ints = np.array([[sc.instruction, sc.start_lane, 0] for sc in scs])
        if len(idx) <= 4:  # the usual autoreset of a few worlds: plain row copies are cheapest
            for j, i in enumerate(idx):
                self._floats[i].copy_(torch.from_numpy(floats[j]))
                self._ints[i].copy_(torch.from_numpy(ints[j]))
                self._flags[i] = False
        else:
            ii = torch.as_tensor(idx, device=self.device)
            self._floats[ii] = torch.as_tensor(floats, dtype=self.dtype, device=self.device)
            self._ints[ii] = torch.as_tensor(ints, device=self.device)
            self._flags[ii] = False
        self._any_noise = noise > 0 or bool((self.noise > 0).any())
        self._refresh()

    def reset(self, *, seed=None, options: Optional[dict] = None):
        options = dict(options or {})
        unknown = set(options) - {"instruction", "difficulty", "reset_mask"}
        if unknown:
            raise ConfigError(f"reset options {sorted(unknown)} are not understood; "
                              "use 'instruction', 'difficulty' and/or 'reset_mask'")
        if "difficulty" in options:
            self.set_difficulty(options["difficulty"])
        mask = options.get("reset_mask")
        idx = list(range(self.num_envs)) if mask is None else [int(i) for i in np.flatnonzero(np.asarray(mask))]
        if seed is not None:
            seeds = [seed + i for i in range(self.num_envs)] if isinstance(seed, (int, np.integer)) else list(seed)
            if len(seeds) != self.num_envs:
                raise ConfigError(f"seed list has {len(seeds)} entries for {self.num_envs} envs")
            for i in idx:
                self._rngs[i] = seeding.np_random(None if seeds[i] is None else int(seeds[i]))[0]
        if "instruction" in options:
            ins = options["instruction"]
            ins = [ins] * self.num_envs if ins is None or isinstance(ins, (str, int)) else list(ins)
            if len(ins) != self.num_envs:
                raise ConfigError(f"instruction list has {len(ins)} entries for {self.num_envs} envs")
            for i in idx:
                self._fixed[i] = None if ins[i] is None else D.instruction_id(ins[i])
        self._load(idx)
        self._loaded = True
        info = self._info(torch.zeros(self.num_envs, dtype=torch.bool, device=self.device),
                          torch.zeros(self.num_envs, dtype=torch.bool, device=self.device),
                          {k: torch.zeros(self.num_envs, dtype=self.dtype, device=self.device)
                           for k in D.REWARD_TERMS})
        return self._out(self._observation()), self._out(info)

    def step(self, actions):
        if not self._loaded:
            raise ConfigError("call reset() before step() on BatchedDrivingEnv")
        a = torch.as_tensor(actions, device=self.device).to(self.dtype)
        if tuple(a.shape) != (self.num_envs, 2):
            raise IncompatibleError(
                f"batched driving actions must have shape ({self.num_envs}, 2) = (steering, acceleration) "
                f"per env, got {tuple(a.shape)}"
            )
        a = a.clamp(-1.0, 1.0)
        resetting = self._needs_reset.clone() if self.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP \
            else torch.zeros_like(self._needs_reset)
        executed = a
        if self._any_noise:  # the same draws as DrivingEnv, from each world's Generator
            active = (~resetting).cpu().numpy()
            noise = np.zeros((self.num_envs, 2))
            for i, std in enumerate(self.noise.cpu().numpy()):
                if std > 0 and active[i]:
                    noise[i] = self._rngs[i].normal(0.0, std, 2)
            executed = (a + torch.as_tensor(noise, dtype=self.dtype, device=self.device)).clamp(-1.0, 1.0)

        # 1. ego cars: kinematic bicycle, semi-implicit Euler (as DrivingEnv.step), in place
        steer, accel = executed[:, 0], executed[:, 1]
        self.v.copy_((self.v + accel * D.MAX_ACCEL * D.DT).clamp(0.0, D.MAX_SPEED))
        self.heading.copy_((self.heading + self.v / D.WHEELBASE * torch.tan(steer * D.MAX_STEER) * D.DT).clamp(
            -D.MAX_HEADING, D.MAX_HEADING))
        self.x.add_(self.v * torch.sin(self.heading) * D.DT)
        self.y.add_(self.v * torch.cos(self.heading) * D.DT)
        # 2. traffic: straight on, wrapped on a ring around the ego car
        self.npc_y.add_(self.npc_v * D.DT)
        rel = self.npc_y - self.y[:, None]
        self.npc_y.add_(torch.where(rel < -D.RING_BEHIND, D.TRAFFIC_RING, 0.0)
                        - torch.where(rel >= D.TRAFFIC_RING - D.RING_BEHIND, D.TRAFFIC_RING, 0.0))
        # 3. what happened
        self._refresh()
        collision = self._collided()
        success = self._update_task() & ~collision
        progress = torch.where(self.task == D.STOP,
                               torch.minimum(self.y, self.stop_line_y - D.CAR_LENGTH / 2), self.y)
        terms = self.reward_fn(collision=collision, success=success, progress_delta=progress - self.progress,
                               lane_offset=self._lane_offset(), action=a, prev_action=self.prev_action)
        if not isinstance(terms, dict):
            terms = {"custom": terms}
        terms = {k: v if isinstance(v, torch.Tensor) and v.shape == (self.num_envs,) and v.dtype == self.dtype
                 else torch.as_tensor(v, dtype=self.dtype, device=self.device).expand(self.num_envs).clone()
                 for k, v in terms.items()}
        reward = sum(terms.values())
        self.progress.copy_(progress)
        self.prev_action.copy_(a)
        self.steps.add_(1)
        terminated = collision | success
        truncated = ~terminated & (self.steps >= self.max_episode_steps)

        if resetting.any():  # NEXT_STEP: these worlds only reset this step
            self._load(resetting.nonzero().flatten().tolist())
            for tensor in (reward, terminated, truncated, collision, success, *terms.values()):
                tensor[resetting] = 0
        info = self._info(collision, success, terms)  # before a SAME_STEP reset: the finished step
        done = terminated | truncated
        if self.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP:
            self._needs_reset.copy_(done)
        elif done.any():  # SAME_STEP: keep the last observation, start the next episode at once
            info["final_obs"], info["_final_obs"] = self._observation(), done
            self._load(done.nonzero().flatten().tolist())
        return (self._out(self._observation()), self._out(reward.float()), self._out(terminated),
                self._out(truncated), self._out(info))

    # ---- task logic (vectorised DrivingEnv methods) -----------------------------------------------
    def _start_x(self):
        return self._lane_centres[self.start_lane]

    def _refresh(self):
        """Cache the offsets from the start lane and the target lane after the state changed."""
        self._start_off = self.x - self._start_x()
        self._lane_off = self.x - self._target_x()

    def _current_lane(self):
        return torch.floor(self.x / D.LANE_WIDTH).clamp(0, self.num_lanes - 1)

    def _target_x(self):
        nearest = self._lane_centres[self._current_lane().long()]
        return torch.where(self.task == D.OVERTAKE, nearest, self._start_x() + self._task_shift[self.task])

    def _lane_offset(self):
        return self._lane_off

    def _collided(self):
        road = self.num_lanes * D.LANE_WIDTH
        off_road = (self.x - D.CAR_WIDTH / 2 < 0.0) | (self.x + D.CAR_WIDTH / 2 > road)
        hit = ((self.npc_x - self.x[:, None]).abs() < D.CAR_WIDTH) & \
              ((self.npc_y - self.y[:, None]).abs() < D.CAR_LENGTH)
        return off_road | hit.any(1)

    def _update_task(self):
        task = self.task
        start_off = self._start_off
        straight = self.heading.abs() < D.HEADING_TOLERANCE
        to_line = self.stop_line_y - (self.y + D.CAR_LENGTH / 2)
        self.failed |= ((task == D.KEEP) & (start_off.abs() > D.KEEP_TOLERANCE)) | ((task == D.STOP) & (to_line < 0))
        passed_now = (self.y - D.CAR_LENGTH / 2) - (self.npc_y[:, 0] + D.CAR_LENGTH / 2) >= D.PASS_MARGIN
        self.passed |= (task == D.OVERTAKE) & passed_now
        keep = ~self.failed & (self.y >= D.KEEP_DISTANCE)
        change = (self._lane_offset().abs() < D.LANE_TOLERANCE) & straight
        stop = ~self.failed & (self.v < D.STOP_SPEED) & (to_line <= D.STOP_ZONE) & (start_off.abs() < 1.0)
        overtake = self.passed & (start_off.abs() < D.LANE_TOLERANCE) & straight
        return torch.stack([keep, change, change, stop, overtake], 1).gather(1, task[:, None]).squeeze(1)

    # ---- observations ----------------------------------------------------------------------------
    def _gaps(self):
        """Gaps (m, clipped to SENSE_RANGE) to the nearest cars ahead/behind in the lanes left of,
        at and right of the ego car, as (N, 3, 2) [lane, ahead/behind], and the speed of the car
        ahead in the ego lane (as DrivingEnv._gaps)."""
        lane = self._current_lane()
        lanes = lane[:, None] + self._side  # (N, 3)
        rel = (self.npc_y - self.y[:, None])[:, None, None, :]  # (N, 1, 1, K)
        npc_lane = torch.floor(self.npc_x / D.LANE_WIDTH)[:, None, None, :]
        side = torch.where(self._ahead[None, None, :, None], rel >= 0, rel < 0)  # (N, 1, 2, K)
        mask = (npc_lane == lanes[:, :, None, None]) & side  # (N, 3, 2, K)
        d = torch.where(mask, rel.abs(), torch.full_like(mask, float("inf"), dtype=self.dtype))
        dmin, i = d.min(-1)
        gap = torch.where(mask.any(-1), (dmin - D.CAR_LENGTH).clamp(0.0, D.SENSE_RANGE),
                          torch.full_like(dmin, D.SENSE_RANGE))
        valid = (lanes >= 0) & (lanes < self.num_lanes)
        gap = torch.where(valid[:, :, None], gap, torch.zeros_like(gap))
        v_ahead = self.npc_v.gather(1, i[:, 1, 0:1]).squeeze(1)
        return gap, v_ahead

    def _state(self):
        gaps, v_ahead = self._gaps()
        gap = gaps[:, 1, 0]
        closing = torch.where(gap < D.SENSE_RANGE, self.v - v_ahead, torch.zeros_like(gap))
        half_road = self.num_lanes * D.LANE_WIDTH / 2
        raw = torch.stack([
            self._lane_offset(),
            self.heading,
            self.v,
            self.x - half_road,
            (self.stop_line_y - self.y - D.CAR_LENGTH / 2).clamp(-D.SENSE_RANGE, D.SENSE_RANGE),
            gap,
            closing,
            gaps[:, 0, 0], gaps[:, 0, 1], gaps[:, 2, 0], gaps[:, 2, 1],
            (self.npc_y[:, 0] - self.y).clamp(-D.SENSE_RANGE, D.SENSE_RANGE),
            self._start_off,
        ], 1)
        onehot = torch.nn.functional.one_hot(self.task, len(D.INSTRUCTIONS))
        return torch.cat([raw * self._state_scale, onehot], 1).float()

    def _paint(self, buf, world, top, bottom, left, right, h_max, w_max, label):
        """Fill rectangles [top, bottom) x [left, right) of image ``world`` with colour ``label``.

        All arguments but the patch size are 1-D, one entry per rectangle. ``buf`` is the flat
        uint8 byte buffer of all images (N*H*W*3 bytes plus one spare pixel). Every rectangle is an
        ``h_max`` x ``w_max`` patch of byte addresses; addresses outside the rectangle or the image
        go to the spare pixel. One ``scatter_``
        paints all rectangles of all worlds (overlapping rectangles of one call: either may win).
        """
        size, spare = self.image_size, self._spare * 3
        rows = top[:, None] + self._arange_h[:h_max]  # (M, h_max)
        cols = left[:, None] + self._arange_h[:w_max]  # (M, w_max)
        rok = (rows >= 0) & (rows < size) & (rows < bottom[:, None])
        cok = (cols >= 0) & (cols < size) & (cols < right[:, None])
        # byte address = row part + column part; a part outside the rectangle or image is `spare`,
        # so that the sum is >= spare and the clamp sends that pixel to the spare one
        row_part = torch.where(rok, (world[:, None] * size + rows) * (size * 3), spare)
        col_part = torch.where(cok, cols * 3, spare)
        pixel = (row_part[:, :, None] + col_part[:, None, :]).clamp_(max=spare)  # (M, h_max, w_max)
        addr = (pixel[..., None] + self._rgb).flatten()  # every byte: (M * h_max * w_max * 3)
        counts = torch.bincount(label, minlength=len(D.PALETTE)).tolist() if label.dim() else None
        if counts is None:  # one colour for all
            colours = self._colour_bytes(int(label), addr.numel())
        else:  # rectangles come grouped by label (in increasing order)
            per = h_max * w_max * 3
            colours = torch.cat([self._colour_bytes(lab, c * per) for lab, c in enumerate(counts) if c])
        buf.scatter_(0, addr, colours)

    def _colour_bytes(self, label: int, count: int):
        """``count`` bytes of the colour ``label`` repeated (RGBRGB...), from a growing cache."""
        cached = self._colour_cache.get(label)
        if cached is None or cached.numel() < count:
            cached = self._palette[label].repeat(max(count, 3 * 4096) // 3 + 1)
            self._colour_cache[label] = cached
        return cached[:count]

    def _render(self):
        g, n, size = self._geom, self.num_envs, self.image_size
        rnd = lambda v: torch.floor(v + 0.5).long()  # noqa: E731  (round half up, as DrivingEnv)
        buf = torch.empty((n * size * size + 1) * 3, dtype=torch.uint8, device=self.device)
        image = buf[:-3].view(n, size, size, 3)
        # road: one of the `period` pre-drawn scrolled views
        c = torch.floor(self.y * g.sy).long() + D._round(g.ego_row)
        torch.index_select(self._road_views, 0, torch.remainder(-c, g.period), out=image)
        # stop line: a band across the road
        rel = self.stop_line_y - self.y
        top = rnd(g.ego_row - (rel + D.STOP_LINE_WIDTH / 2) * g.sy)
        bottom = rnd(g.ego_row - (rel - D.STOP_LINE_WIDTH / 2) * g.sy)
        c0, c1 = g.road_cols
        seen = (bottom > 0) & (top < size)
        if seen.any():
            w = seen.nonzero().flatten()
            self._paint(buf, w, top[w], bottom[w], torch.full_like(w, c0), torch.full_like(w, c1),
                        self._line_h, c1 - c0, torch.tensor(4))
        # cars: the other cars in view and the ego car (fixed rows; columns from x) in one go,
        # then all windscreens (the ego's shifted sideways by its heading)
        rel = self.npc_y - self.y[:, None]
        w, k = ((rel < g.ahead) & (rel > -g.behind) & (self.npc_x > 0)).nonzero(as_tuple=True)
        world = torch.cat([w, self._world])
        rel = torch.cat([rel[w, k], torch.zeros_like(self.y)])
        x = torch.cat([self.npc_x[w, k], self.x])
        top = rnd(g.ego_row - (rel + D.CAR_LENGTH / 2) * g.sy)
        bottom = rnd(g.ego_row - (rel - D.CAR_LENGTH / 2) * g.sy)
        left = rnd((x - D.CAR_WIDTH / 2 + D.SHOULDER) * g.sx)
        right = rnd((x + D.CAR_WIDTH / 2 + D.SHOULDER) * g.sx)
        body = torch.cat([torch.full_like(w, 5), torch.full_like(self._world, 7)])
        self._paint(buf, world, top, bottom, left, right, self._car_h, self._car_w, body)
        shift = torch.cat([torch.zeros_like(w), rnd(torch.sin(self.heading) * D.CAR_LENGTH / 2 * g.sx).clamp(-1, 1)])
        self._paint(buf, world, top + 1, top + 1 + g.window_len, left + 1 + shift, right - 1 + shift,
                    g.window_len, self._car_w, body + 1)
        return image

    def _observation(self):
        if self.render_images:
            image = self._render()
        else:
            image = torch.zeros(self.num_envs, self.image_size, self.image_size, 3, dtype=torch.uint8,
                                device=self.device)
        instructions = tuple(D.INSTRUCTIONS[t] for t in self.task.tolist())
        return {"image": image, "instruction": instructions, "state": self._state()}

    def _info(self, collision, success, terms):
        return {
            "success": success.clone(),
            "collision": collision.clone(),
            "lane_offset": self._lane_offset().float(),
            "progress": self.progress.float(),
            "reward_terms": {k: v.float() for k, v in terms.items()},
            "instruction": tuple(D.INSTRUCTIONS[t] for t in self.task.tolist()),
        }

    def _out(self, value):
        """Tensors -> numpy arrays when ``return_tensors="numpy"`` (recursively through dicts)."""
        if self.return_tensors == "torch":
            return value
        if isinstance(value, dict):
            return {k: self._out(v) for k, v in value.items()}
        if isinstance(value, torch.Tensor):
            return value.cpu().numpy()
        return value

    def privileged_state(self, i: int) -> dict:
        """World ``i``'s full state as :meth:`DrivingEnv.privileged_state` gives it (for experts)."""
        f = lambda t: t[i].item()  # noqa: E731
        return {
            "x": f(self.x), "y": f(self.y), "v": f(self.v), "heading": f(self.heading),
            "task": int(self.task[i]), "start_lane": int(self.start_lane[i]), "num_lanes": self.num_lanes,
            "npc_x": self.npc_x[i].cpu().numpy().astype(np.float64),
            "npc_y": self.npc_y[i].cpu().numpy().astype(np.float64),
            "npc_v": self.npc_v[i].cpu().numpy().astype(np.float64),
            "stop_line_y": f(self.stop_line_y), "passed": bool(self.passed[i]), "failed": bool(self.failed[i]),
            "steps": int(self.steps[i]), "progress": f(self.progress),
        }
