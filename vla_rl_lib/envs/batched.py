"""Many driving worlds stepped at once: a gymnasium vector env on numpy (CPU) or torch (GPU).

:class:`BatchedDrivingEnv` holds every world's state as arrays of shape ``(num_envs, ...)`` and
runs the same dynamics, task logic, state vector, reward (:func:`compute_reward` is called on whole
batches) and picture as :class:`~vla_rl_lib.envs.driving.DrivingEnv`. 
New episodes come from one of two samplers (``sampler=``):

* ``"per_world"`` (the numpy backend's default): the same :func:`~vla_rl_lib.envs.driving.sample_scenario`,
  from one numpy Generator per world seeded ``seed + i`` exactly as gymnasium seeds a
  ``SyncVectorEnv``: the batched env and a SyncVectorEnv of ``DrivingEnv`` given the same seed and
  actions produce the same episodes (up to float rounding). Resetting loops over the worlds in Python.
* ``"batched"`` (the torch backend's default): the same distribution of scenarios, drawn for all
  worlds at once on the device by a counter-based generator: draw ``d`` of episode ``e`` of a world
  seeded ``s`` is a hash of ``(s, e, d)`` (:func:`uniform_draws`). No Python loop over worlds, no
  host copy; 65,536 worlds reset in a few kernels. The episodes differ from ``DrivingEnv``'s for the
  same seed, but **worlds given the same seed get the same scenario, and the same action-noise
  stream, episode after episode** (the ``e``-th episode since that seed), which is what GRPO's groups
  need: ``reset(seed=[s, s, s, t, t, t])`` starts two groups of three identical worlds.

One implementation, two array libraries. The code below is written once against ``xp``, which is
either ``numpy`` or ``torch``: both spell ``xp.where``, ``xp.floor``, ``xp.sin``, ``xp.stack``,
``xp.zeros(..., dtype=, device=)``, indexing and arithmetic the same way. The handful of calls they
spell differently (copying, clipping, turning floats into integers, ...) live in :class:`_NumpyOps` and
:class:`_TorchOps`. Why numpy on a CPU: a step is a few hundred operations on arrays of ~64
numbers, and numpy does each in about a microsecond where torch's dispatcher needs several; on a
GPU torch runs the same code (``device="cuda"``), and ``backend="torch"`` forces torch on a CPU.

Rendering is batched too: the road comes from one of ``period`` pre-drawn scrolled views, and every
rectangle (stop line, car bodies, windscreens) is cut into one span of pixels per image row; one
indexed assignment per colour copies all spans of all worlds (numpy through a strided view of the
image buffer whose rows are spans, torch through byte addresses).

``return_tensors="numpy"`` (default, as gymnasium vector envs do) or ``"torch"`` (tensors on
``device``; best on a GPU) chooses what ``step`` returns.
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
from vla_rl_lib.envs.text import IndexedText
from vla_rl_lib.errors import ConfigError, IncompatibleError

_MODES = {"next_step": AutoresetMode.NEXT_STEP, "same_step": AutoresetMode.SAME_STEP}


class _NumpyOps:
    """The calls numpy and torch spell differently: numpy's spelling."""

    xp = np
    device = "cpu"
    int64, uint8, float32 = np.int64, np.uint8, np.float32

    def __init__(self, dtype):
        self.float = {torch.float64: np.float64, torch.float32: np.float32}[dtype]

    @staticmethod
    def copy(a):
        return a.copy()

    @staticmethod
    def to_int(a):
        return a.astype(np.int64)

    @staticmethod
    def clip(a, low, high):  # np.clip checks its bounds in Python first: slower on small arrays
        return np.minimum(np.maximum(a, low), high)

    @staticmethod
    def nonzero(mask):
        return np.nonzero(mask)

    @staticmethod
    def take_rows(src, index, out):
        np.take(src, index, axis=0, out=out)

    @staticmethod
    def write_spans(buf, starts, span):
        """``buf[3*s : 3*s + len(span)] = span`` for every ``s`` in ``starts``: a strided view of
        ``buf`` whose row ``s`` is those bytes lets one indexed assignment copy whole spans."""
        count = (buf.shape[0] - span.shape[0]) // 3 + 1  # spans that fit: no view past the end
        rows = np.ndarray((count, span.shape[0]), np.uint8, buffer=buf, strides=(3, 1))
        rows[starts] = span

    @staticmethod
    def to_numpy(a):
        return a

    @staticmethod
    def to_torch(a):
        return torch.from_numpy(a)


class _TorchOps:
    """The calls numpy and torch spell differently: torch's spelling."""

    xp = torch
    int64, uint8, float32 = torch.int64, torch.uint8, torch.float32

    def __init__(self, dtype, device):
        self.float, self.device = dtype, device

    @staticmethod
    def copy(a):
        return a.clone()

    @staticmethod
    def to_int(a):
        return a.long()

    @staticmethod
    def clip(a, low, high):
        return torch.clamp(a, low, high)

    @staticmethod
    def nonzero(mask):
        return torch.nonzero(mask, as_tuple=True)

    @staticmethod
    def take_rows(src, index, out):
        torch.index_select(src, 0, index, out=out)

    @staticmethod
    def write_spans(buf, starts, span):
        """``buf[3*s : 3*s + len(span)] = span`` for every ``s`` in ``starts`` (byte addresses)."""
        buf[starts[:, None] * 3 + torch.arange(span.shape[0], device=buf.device)] = span

    @staticmethod
    def to_numpy(a):
        return a.cpu().numpy()

    @staticmethod
    def to_torch(a):
        return a


# ---- the batched sampler's counter-based generator --------------------------------------------------
_M32, _M16 = 0xFFFFFFFF, 0xFFFF


def _mul32(x, c: int):
    """``(x * c) mod 2**32`` for integer arrays/tensors holding values below ``2**32``, without ever
    overflowing int64 (torch has no uint32 arithmetic): split ``x`` into 16-bit halves."""
    return ((((x >> 16) * c) & _M16) << 16) + (x & _M16) * c & _M32


def mix32(x):
    """Chris Wellons' ``lowbias32`` integer hash on values below ``2**32`` (numpy or torch int64)."""
    x = x & _M32
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _mix32_int(x: int) -> int:
    return int(mix32(np.array([x], dtype=np.int64))[0])


def uniform_draws(key, counter, first: int, count: int, xp, dtype):
    """``count`` uniforms in [0, 1) per world: draws ``first .. first + count - 1`` of stream
    ``(key, counter)`` (``key``: the world's hashed seed, ``counter``: its episode or step number;
    both int64 arrays of shape (N,)). Returns shape (N, count)."""
    draws = xp.asarray([_mix32_int(first + d) for d in range(count)], dtype=key.dtype,
                       **({} if xp is np else {"device": key.device}))
    stream = mix32(key ^ mix32(counter))
    h = mix32(stream[:, None] ^ draws[None, :])
    return xp.asarray(h >> 8, dtype=dtype) * (1.0 / (1 << 24))


def seed_keys(seeds) -> np.ndarray:
    """The 32-bit stream keys of integer seeds (any size: both halves of a 64-bit seed count)."""
    seeds = np.asarray(seeds, dtype=object).astype(np.uint64) if not isinstance(seeds, np.ndarray) \
        else seeds.astype(np.uint64)
    lo = (seeds & np.uint64(_M32)).astype(np.int64)
    hi = (seeds >> np.uint64(32)).astype(np.int64)
    return mix32(lo ^ mix32(hi + 0x632BE5AB))


_SCENARIO_HEAD = 6  # instruction, start lane, ego speed, lead gap, lead speed, stop line
_NOISE_DRAWS = 1 << 20  # noise draws start here in a world's stream (after any scenario's draws)


class BatchedDrivingEnv(VectorEnv):
    """``num_envs`` driving worlds in numpy arrays or torch tensors (see the module docstring).

    Args are those of :class:`DrivingEnv` plus ``num_envs``, ``device``, ``dtype`` (a torch dtype:
    float64 on CPU, float32 on CUDA by default), ``backend`` ("numpy" | "torch"; default numpy on
    the CPU, torch elsewhere), ``return_tensors`` ("numpy" | "torch"), ``autoreset_mode``
    ("next_step" | "same_step"), ``render_images`` (False leaves ``image`` all zeros, faster) and
    ``sampler`` ("per_world" | "batched"; default per_world with numpy, batched with torch: see the
    module docstring).
    """

    def __init__(self, num_envs: int = 64, difficulty: str = "easy", instruction: Optional[str] = None,
                 image_size: int = 64, num_lanes: int = 3, max_episode_steps: int = 200,
                 reward_fn: Optional[Callable[..., Any]] = None, device: str = "cpu",
                 dtype: Optional[torch.dtype] = None, return_tensors: str = "numpy",
                 autoreset_mode: str = "next_step", render_images: bool = True,
                 backend: Optional[str] = None, sampler: Optional[str] = None):
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
        if self.dtype not in (torch.float64, torch.float32):
            raise ConfigError(f"dtype={dtype!r}: use torch.float64 or torch.float32")
        self.backend = backend or ("numpy" if self.device.type == "cpu" else "torch")
        if self.backend not in ("numpy", "torch"):
            raise ConfigError(f"backend={backend!r}: use 'numpy' or 'torch'")
        if self.backend == "numpy" and self.device.type != "cpu":
            raise ConfigError(f"backend='numpy' runs on the CPU only, not on device={device!r}; use backend='torch'")
        self.ops = _NumpyOps(self.dtype) if self.backend == "numpy" else _TorchOps(self.dtype, self.device)
        self.sampler = sampler or ("per_world" if self.backend == "numpy" else "batched")
        if self.sampler not in ("per_world", "batched"):
            raise ConfigError(f"sampler={sampler!r}: use 'per_world' or 'batched'")
        self.return_tensors = return_tensors
        self.render_images = bool(render_images)
        self.metadata = {"autoreset_mode": _MODES[autoreset_mode], "render_modes": []}

        self.single_observation_space = single.observation_space
        self.single_action_space = single.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)

        xp, ops = self.ops.xp, self.ops
        n, k = self.num_envs, D.max_cars(self.num_lanes)
        fl = dict(dtype=ops.float, device=ops.device)
        # All per-world state lives in three arrays (floats, integers, flags); the names below are
        # views into them, so a new episode is written with one row assignment per array and the
        # dynamics update the views in place.
        self._floats = xp.zeros((n, 9 + 3 * k), **fl)
        self._ints = xp.zeros((n, 3), dtype=ops.int64, device=ops.device)
        self._flags = xp.zeros((n, 3), dtype=bool if xp is np else torch.bool, device=ops.device)
        f = self._floats
        self.x, self.y, self.v, self.heading = f[:, 0], f[:, 1], f[:, 2], f[:, 3]
        self.stop_line_y, self.progress, self.noise = f[:, 4], f[:, 5], f[:, 6]
        self.prev_action = f[:, 7:9]
        self.npc_x, self.npc_y, self.npc_v = f[:, 9:9 + k], f[:, 9 + k:9 + 2 * k], f[:, 9 + 2 * k:]
        self.task, self.start_lane, self.steps = self._ints[:, 0], self._ints[:, 1], self._ints[:, 2]
        self.passed, self.failed, self._needs_reset = self._flags[:, 0], self._flags[:, 1], self._flags[:, 2]
        self._lane_centres = xp.asarray(D.lane_centre(np.arange(self.num_lanes)), **fl)
        shift = np.zeros(len(D.INSTRUCTIONS))
        shift[D.LEFT], shift[D.RIGHT] = -D.LANE_WIDTH, D.LANE_WIDTH
        self._task_shift = xp.asarray(shift, **fl)  # target lane centre - start lane centre, per instruction
        half_road, sr = self.num_lanes * D.LANE_WIDTH / 2, D.SENSE_RANGE
        self._state_scale = xp.asarray(1.0 / np.array(  # divisors of the first 13 state entries (STATE_FIELDS)
            [D.LANE_WIDTH, 1.0, D.MAX_SPEED, half_road, sr, sr, D.MAX_SPEED, sr, sr, sr, sr, sr, D.LANE_WIDTH]), **fl)
        self._one_hot = xp.eye(len(D.INSTRUCTIONS), **fl)  # row t = the one-hot code of instruction t
        self._world = xp.arange(n, device=ops.device)
        self._side = xp.asarray([-1.0, 0.0, 1.0], **fl)  # left, own, right lane
        self._ahead = xp.asarray([True, False], device=ops.device)
        self._rngs = [seeding.np_random(None)[0] for _ in range(n)] if self.sampler == "per_world" else None
        # the instruction each world is held to (-1: sampled per episode)
        fixed = -1 if self.instruction is None else D.instruction_id(self.instruction)
        self._fixed = xp.full((n,), fixed, dtype=ops.int64, device=ops.device)
        # the batched sampler's streams: a key per world (its hashed seed) and its episode counter
        entropy = np.random.SeedSequence().generate_state(n, np.uint32).astype(np.int64)
        self._keys = xp.asarray(entropy, device=ops.device)
        self._episode = xp.full((n,), -1, dtype=ops.int64, device=ops.device)
        self._any_noise = False
        self._loaded = False

        # rendering constants
        g = self._geom = D.RoadGeometry(self.num_lanes, self.image_size)
        self._palette = xp.asarray(D.PALETTE, device=ops.device)
        self._arange_h = xp.arange(g.size, device=ops.device)
        self._spans = {}  # (label, width) -> bytes of a span of that colour (see _span)
        views = [D.PALETTE[g.strip[o:o + g.size]] for o in range(g.period)]
        self._road_views = xp.asarray(np.stack(views), device=ops.device)  # (period, H, W, 3): every scroll

    # ---- curriculum --------------------------------------------------------------------------
    def set_difficulty(self, difficulty: str) -> None:
        """Use ``difficulty`` for every episode that starts from now on."""
        self.difficulty = D.get_difficulty(difficulty)

    # ---- episodes ------------------------------------------------------------------------------
    def _load(self, mask) -> None:
        """Draw new scenarios for the worlds where ``mask`` is true and reset them."""
        noise = self.difficulty.action_noise
        if self.sampler == "batched":
            floats, ints = self._sample_batched()
            self._floats[...] = self.ops.xp.where(mask[:, None], floats, self._floats)
            self._ints[...] = self.ops.xp.where(mask[:, None], ints, self._ints)
            self._flags[...] = self._flags & ~mask[:, None]
        else:
            idx = self._indices(mask)
            if not idx:
                return
            scs = [D.sample_scenario(self._rngs[i], self.difficulty, self.num_lanes,
                                     None if int(self._fixed[i]) < 0 else int(self._fixed[i])) for i in idx]
            floats = np.stack([np.concatenate([[D.lane_centre(sc.start_lane), 0.0, sc.ego_speed, 0.0, sc.stop_line_y,
                                                0.0, noise, 0.0, 0.0], sc.npc_x, sc.npc_y, sc.npc_v]) for sc in scs])
            ints = np.array([[sc.instruction, sc.start_lane, 0] for sc in scs])
            xp, ops = self.ops.xp, self.ops
            rows = xp.asarray(idx, device=ops.device)
            self._floats[rows] = xp.asarray(floats, dtype=ops.float, device=ops.device)
            self._ints[rows] = xp.asarray(ints, dtype=ops.int64, device=ops.device)
            self._flags[rows] = False
        # (a device sync only while some world still drives with noise)
        self._any_noise = noise > 0 or (self._any_noise and bool((self.noise > 0).any()))
        self._refresh()

    def _sample_batched(self):
        """Every world's next scenario from its counter-based stream (advancing its episode counter
        is the caller's business): the rows ``_load`` writes, as :func:`sample_scenario` lays them out."""
        xp, ops, diff = self.ops.xp, self.ops, self.difficulty
        n, lanes, per = self.num_envs, self.num_lanes, D.MAX_CARS_PER_LANE
        block = 3 + per  # draws per other lane: speed, car count, phase, jitters
        u = uniform_draws(self._keys, self._episode, 0, _SCENARIO_HEAD + (lanes - 1) * block, xp, ops.float)
        uni = lambda col, lo, hi: lo + (hi - lo) * u[:, col]  # noqa: E731
        sampled = ops.to_int(xp.floor(u[:, 0] * len(D.INSTRUCTIONS)))
        instruction = xp.where(self._fixed >= 0, self._fixed, sampled)
        start_lane = 1 + ops.to_int(xp.floor(u[:, 1] * (lanes - 2)))  # an inner lane
        ego_speed, lead_gap = uni(2, 5.0, 8.0), uni(3, 10.0, 18.0)
        lead_speed, stop_line_y = uni(4, *diff.lead_speed), D.CAR_LENGTH / 2 + uni(5, 30.0, 45.0)
        k = D.max_cars(lanes)
        npc_x = xp.full((n, k), D.UNUSED_X, dtype=ops.float, device=ops.device)
        npc_y = xp.zeros((n, k), dtype=ops.float, device=ops.device)
        npc_v = xp.zeros((n, k), dtype=ops.float, device=ops.device)
        npc_x[:, 0] = self._lane_centres[start_lane]
        npc_y[:, 0], npc_v[:, 0] = lead_gap + D.CAR_LENGTH, lead_speed
        lo, hi = diff.cars_per_lane
        slot = xp.arange(per, device=ops.device)
        for b in range(lanes - 1):  # the other lanes, left to right (a loop over lanes, not worlds)
            c = _SCENARIO_HEAD + b * block
            lane = b + (b >= start_lane)  # skip the start lane
            speed = uni(c, *diff.lane_speed)
            count = lo + ops.to_int(xp.floor(u[:, c + 1] * (hi - lo + 1)))
            phase = uni(c + 2, 0.0, D.TRAFFIC_RING)
            spacing = D.TRAFFIC_RING / xp.asarray(count, dtype=ops.float)
            jitter = (u[:, c + 3:c + 3 + per] - 0.5) * 0.5 * (spacing - 2 * D.CAR_LENGTH)[:, None]
            ys = phase[:, None] + slot * spacing[:, None] + jitter
            ys = (ys + D.RING_BEHIND) % D.TRAFFIC_RING - D.RING_BEHIND
            used = slot[None, :] < count[:, None]
            cols = slice(1 + b * per, 1 + (b + 1) * per)
            npc_x[:, cols] = xp.where(used, self._lane_centres[lane][:, None], D.UNUSED_X)
            npc_y[:, cols] = xp.where(used, ys, 0.0)
            npc_v[:, cols] = xp.where(used, speed[:, None], 0.0)
        zero = xp.zeros(n, dtype=ops.float, device=ops.device)
        floats = xp.concatenate([xp.stack([self._lane_centres[start_lane], zero, ego_speed, zero, stop_line_y, zero,
                                           zero + self.difficulty.action_noise, zero, zero], 1),
                                 npc_x, npc_y, npc_v], 1)
        ints = xp.stack([instruction, start_lane, xp.zeros_like(start_lane)], 1)
        return floats, ints

    def _action_noise(self, active):
        """Gaussian action noise ``N(0, noise^2)`` for the worlds ``active`` (zeros elsewhere)."""
        xp, ops = self.ops.xp, self.ops
        if self.sampler == "batched":  # Box-Muller on draws (step t, 0..3) of the world's episode stream
            counter = self._episode * 4096 + self.steps  # (episodes are far shorter than 4096 steps)
            u = uniform_draws(self._keys, counter, _NOISE_DRAWS, 4, xp, ops.float)
            radius = xp.sqrt(-2.0 * xp.log(1.0 - u[:, :2]))
            z = radius * xp.cos(2 * np.pi * u[:, 2:])
            return xp.where(active[:, None], z * self.noise[:, None], 0.0)
        active, noise = ops.to_numpy(active), np.zeros((self.num_envs, 2))
        for i, std in enumerate(ops.to_numpy(self.noise)):  # the same draws as DrivingEnv
            if std > 0 and active[i]:
                noise[i] = self._rngs[i].normal(0.0, std, 2)
        return xp.asarray(noise, dtype=ops.float, device=ops.device)

    def _indices(self, mask) -> list:
        """Python list of the worlds where ``mask`` is true."""
        return np.flatnonzero(self.ops.to_numpy(mask)).tolist()

    def _as_mask(self, value):
        """A (num_envs,) boolean array of the backend from a list, numpy array or tensor."""
        xp, ops = self.ops.xp, self.ops
        if isinstance(value, torch.Tensor):
            value = value.detach().to(ops.device, torch.bool) if xp is torch else value.detach().cpu().numpy()
        mask = xp.asarray(value, device=ops.device) if xp is torch else np.asarray(value)
        mask = mask != 0
        if tuple(mask.shape) != (self.num_envs,):
            raise ConfigError(f"reset_mask must have one entry per env ({self.num_envs}), got shape {tuple(mask.shape)}")
        return mask

    def reset(self, *, seed=None, options: Optional[dict] = None):
        """Start new episodes in every world, or in the worlds of ``options["reset_mask"]``.

        ``seed``: an int (world ``i`` gets ``seed + i``) or one seed per world (None entries: fresh
        entropy); worlds given the same seed start the same scenario. Options: ``instruction`` (a
        text or index for all worlds, or one per world), ``difficulty``, ``reset_mask``."""
        options = dict(options or {})
        unknown = set(options) - {"instruction", "difficulty", "reset_mask"}
        if unknown:
            raise ConfigError(f"reset options {sorted(unknown)} are not understood; "
                              "use 'instruction', 'difficulty' and/or 'reset_mask'")
        if "difficulty" in options:
            self.set_difficulty(options["difficulty"])
        xp, ops = self.ops.xp, self.ops
        mask = options.get("reset_mask")
        mask = xp.ones(self.num_envs, dtype=self._flags.dtype, device=ops.device) if mask is None else self._as_mask(mask)
        if seed is not None:
            if isinstance(seed, (int, np.integer)):
                seeds = int(seed) + np.arange(self.num_envs, dtype=np.int64)
            else:
                seeds = list(seed.tolist() if hasattr(seed, "tolist") else seed)
                if len(seeds) != self.num_envs:
                    raise ConfigError(f"seed list has {len(seeds)} entries for {self.num_envs} envs")
            if self.sampler == "batched":
                fresh = np.random.SeedSequence().generate_state(self.num_envs, np.uint32)
                seeds = [int(f) + (1 << 40) if s is None else int(s) for s, f in zip(seeds, fresh)] \
                    if not isinstance(seeds, np.ndarray) else seeds
                keys = xp.asarray(seed_keys(seeds), device=ops.device)
                self._keys[...] = xp.where(mask, keys, self._keys)
                self._episode[...] = xp.where(mask, -1, self._episode)
            else:
                for i in self._indices(mask):
                    self._rngs[i] = seeding.np_random(None if seeds[i] is None else int(seeds[i]))[0]
        if "instruction" in options:
            ins = options["instruction"]
            ins = [ins] * self.num_envs if ins is None or isinstance(ins, (str, int)) else list(ins)
            if len(ins) != self.num_envs:
                raise ConfigError(f"instruction list has {len(ins)} entries for {self.num_envs} envs")
            ids = xp.asarray([-1 if x is None else D.instruction_id(x) for x in ins], dtype=ops.int64, device=ops.device)
            self._fixed[...] = xp.where(mask, ids, self._fixed)
        self._start_episodes(mask)
        self._loaded = True
        no = self.ops.copy(self._needs_reset) & False
        info = self._info(no, no, {k: self._batch(0.0) for k in D.REWARD_TERMS})
        return self._out(self._observation()), self._out(info)

    def _start_episodes(self, mask) -> None:
        """Count a new episode of the worlds ``mask`` (their next stream) and load its scenario."""
        if self.sampler == "batched":
            self._episode += mask
        self._load(mask)

    def step(self, actions):
        if not self._loaded:
            raise ConfigError("call reset() before step() on BatchedDrivingEnv")
        xp, ops = self.ops.xp, self.ops
        if isinstance(actions, torch.Tensor) and xp is np:
            actions = actions.detach().cpu().numpy()
        a = xp.asarray(actions, dtype=ops.float, device=ops.device)
        if tuple(a.shape) != (self.num_envs, 2):
            raise IncompatibleError(
                f"batched driving actions must have shape ({self.num_envs}, 2) = (steering, acceleration) "
                f"per env, got {tuple(a.shape)}"
            )
        a = ops.clip(a, -1.0, 1.0)
        next_step = self.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
        resetting = ops.copy(self._needs_reset) if next_step else self._needs_reset & False
        executed = a
        if self._any_noise:
            executed = ops.clip(a + self._action_noise(~resetting), -1.0, 1.0)

        # 1. ego cars: kinematic bicycle, semi-implicit Euler (as DrivingEnv.step), in place
        steer, accel = executed[:, 0], executed[:, 1]
        self.v[...] = ops.clip(self.v + accel * D.MAX_ACCEL * D.DT, 0.0, D.MAX_SPEED)
        self.heading[...] = ops.clip(self.heading + self.v / D.WHEELBASE * xp.tan(steer * D.MAX_STEER) * D.DT,
                                    -D.MAX_HEADING, D.MAX_HEADING)
        self.x += self.v * xp.sin(self.heading) * D.DT
        self.y += self.v * xp.cos(self.heading) * D.DT
        # 2. traffic: straight on, wrapped on a ring around the ego car
        self.npc_y += self.npc_v * D.DT
        rel = self.npc_y - self.y[:, None]
        self.npc_y += D.TRAFFIC_RING * (rel < -D.RING_BEHIND) - D.TRAFFIC_RING * (rel >= D.TRAFFIC_RING - D.RING_BEHIND)
        # 3. what happened
        self._refresh()
        collision = self._collided()
        success = self._update_task() & ~collision
        progress = xp.where(self.task == D.STOP, xp.minimum(self.y, self.stop_line_y - D.CAR_LENGTH / 2), self.y)
        terms = self.reward_fn(collision=collision, success=success, progress_delta=progress - self.progress,
                               lane_offset=self._lane_off, action=a, prev_action=self.prev_action)
        if not isinstance(terms, dict):
            terms = {"custom": terms}
        terms = {k: self._batch(v) for k, v in terms.items()}
        reward = sum(terms.values())
        self.progress[...] = progress
        self.prev_action[...] = a
        self.steps += 1
        terminated = collision | success
        truncated = ~terminated & (self.steps >= self.max_episode_steps)

        if resetting.any():  # NEXT_STEP: these worlds only reset this step
            self._start_episodes(resetting)
            for array in (reward, terminated, truncated, collision, success, *terms.values()):
                array[resetting] = 0
        info = self._info(collision, success, terms)  # before a SAME_STEP reset: the finished step
        done = terminated | truncated
        if next_step:
            self._needs_reset[...] = done
        elif done.any():  # SAME_STEP: keep the last observation, start the next episode at once
            info["final_obs"], info["_final_obs"] = self._observation(), done
            self._start_episodes(done)
        return (self._out(self._observation()), self._out(ops.xp.asarray(reward, dtype=ops.float32)),
                self._out(terminated), self._out(truncated), self._out(info))

    def _batch(self, value):
        """A reward term as its own writable ``(num_envs,)`` float array (a number is broadcast)."""
        xp, ops = self.ops.xp, self.ops
        if isinstance(value, torch.Tensor) and xp is np:
            value = value.detach().cpu().numpy()
        return xp.zeros(self.num_envs, dtype=ops.float, device=ops.device) + \
            xp.asarray(value, dtype=ops.float, device=ops.device)

    # ---- task logic (vectorised DrivingEnv methods) -----------------------------------------------
    def _refresh(self):
        """Cache the offsets from the start lane and the target lane after the state changed."""
        start_x = self._lane_centres[self.start_lane]
        nearest = D.lane_centre(self._current_lane())  # overtaking: any lane centre will do
        target_x = self.ops.xp.where(self.task == D.OVERTAKE, nearest, start_x + self._task_shift[self.task])
        self._start_off = self.x - start_x
        self._lane_off = self.x - target_x

    def _current_lane(self):
        return self.ops.clip(self.ops.xp.floor(self.x / D.LANE_WIDTH), 0, self.num_lanes - 1)

    def _collided(self):
        road = self.num_lanes * D.LANE_WIDTH
        off_road = (self.x - D.CAR_WIDTH / 2 < 0.0) | (self.x + D.CAR_WIDTH / 2 > road)
        hit = (abs(self.npc_x - self.x[:, None]) < D.CAR_WIDTH) & (abs(self.npc_y - self.y[:, None]) < D.CAR_LENGTH)
        return off_road | hit.any(1)

    def _update_task(self):
        task = self.task
        start_off = abs(self._start_off)
        straight = abs(self.heading) < D.HEADING_TOLERANCE
        to_line = self.stop_line_y - (self.y + D.CAR_LENGTH / 2)
        self.failed |= ((task == D.KEEP) & (start_off > D.KEEP_TOLERANCE)) | ((task == D.STOP) & (to_line < 0))
        passed_now = (self.y - D.CAR_LENGTH / 2) - (self.npc_y[:, 0] + D.CAR_LENGTH / 2) >= D.PASS_MARGIN
        self.passed |= (task == D.OVERTAKE) & passed_now
        keep = ~self.failed & (self.y >= D.KEEP_DISTANCE)
        change = (abs(self._lane_off) < D.LANE_TOLERANCE) & straight
        stop = ~self.failed & (self.v < D.STOP_SPEED) & (to_line <= D.STOP_ZONE) & (start_off < 1.0)
        overtake = self.passed & (start_off < D.LANE_TOLERANCE) & straight
        return self.ops.xp.stack([keep, change, change, stop, overtake], 1)[self._world, task]

    # ---- observations ----------------------------------------------------------------------------
    def _gaps(self):
        """Gaps (m, clipped to SENSE_RANGE) to the nearest cars ahead/behind in the lanes left of,
        at and right of the ego car, as (N, 3, 2) [lane, ahead/behind], and the speed of the car
        ahead in the ego lane (as DrivingEnv._gaps)."""
        xp, ops = self.ops.xp, self.ops
        lanes = self._current_lane()[:, None] + self._side  # (N, 3)
        rel = (self.npc_y - self.y[:, None])[:, None, None, :]  # (N, 1, 1, K)
        npc_lane = xp.floor(self.npc_x / D.LANE_WIDTH)[:, None, None, :]
        side = xp.where(self._ahead[None, None, :, None], rel >= 0, rel < 0)  # (N, 1, 2, K)
        mask = (npc_lane == lanes[:, :, None, None]) & side  # (N, 3, 2, K)
        d = xp.where(mask, abs(rel), float("inf"))
        gap = xp.where(mask.any(-1), ops.clip(xp.amin(d, -1) - D.CAR_LENGTH, 0.0, D.SENSE_RANGE), D.SENSE_RANGE)
        valid = (lanes >= 0) & (lanes < self.num_lanes)
        gap = xp.where(valid[:, :, None], gap, 0.0)
        v_ahead = self.npc_v[self._world, xp.argmin(d[:, 1, 0], -1)]
        return gap, v_ahead

    def _state(self):
        xp, ops = self.ops.xp, self.ops
        gaps, v_ahead = self._gaps()
        gap = gaps[:, 1, 0]
        closing = xp.where(gap < D.SENSE_RANGE, self.v - v_ahead, 0.0)
        half_road = self.num_lanes * D.LANE_WIDTH / 2
        raw = xp.stack([
            self._lane_off,
            self.heading,
            self.v,
            self.x - half_road,
            ops.clip(self.stop_line_y - self.y - D.CAR_LENGTH / 2, -D.SENSE_RANGE, D.SENSE_RANGE),
            gap,
            closing,
            gaps[:, 0, 0], gaps[:, 0, 1], gaps[:, 2, 0], gaps[:, 2, 1],
            ops.clip(self.npc_y[:, 0] - self.y, -D.SENSE_RANGE, D.SENSE_RANGE),
            self._start_off,
        ], 1)
        return xp.asarray(xp.concatenate([raw * self._state_scale, self._one_hot[self.task]], 1), dtype=ops.float32)

    def _paint(self, image, world, top, bottom, left, right, label: int):
        """Fill rectangles [top, bottom) x [left, right) of image ``world`` with colour ``label``.

        All arguments but ``image`` and the label are 1-D integer arrays, one entry per rectangle.
        Clipped to the image, every row of a rectangle is a span of ``width`` pixels that starts at
        pixel ``(world * H + row) * W + left`` of the flat buffer of all images; spans of one width
        are copied by one ``write_spans`` (rectangles of one call may overlap: either may win).
        """
        ops, size = self.ops, self.image_size
        top, bottom = ops.clip(top, 0, size), ops.clip(bottom, 0, size)
        left, right = ops.clip(left, 0, size), ops.clip(right, 0, size)
        height, width = bottom - top, right - left
        if world.shape[0] == 0 or int(height.max()) <= 0 or int(width.max()) <= 0:
            return
        rows = top[:, None] + self._arange_h[:int(height.max())]  # (M, tallest)
        inside = rows < bottom[:, None]
        starts = (world[:, None] * size + rows) * size + left[:, None]  # first pixel of each span
        buf = image.reshape(-1)
        narrowest, widest = int(width.min()), int(width.max())
        for w in range(max(narrowest, 1), widest + 1):  # usually all rectangles have one width
            chosen = inside if narrowest == widest else inside & (width == w)[:, None]
            ops.write_spans(buf, starts[chosen], self._span(label, w))

    def _span(self, label: int, width: int):
        """The bytes of ``width`` pixels of colour ``label`` (RGBRGB...), cached."""
        key = (label, width)
        if key not in self._spans:
            self._spans[key] = self.ops.xp.tile(self._palette[label], (width,))
        return self._spans[key]

    def _render(self):
        xp, ops = self.ops.xp, self.ops
        g, n, size = self._geom, self.num_envs, self.image_size
        rnd = lambda v: ops.to_int(xp.floor(v + 0.5))  # noqa: E731  (round half up, as DrivingEnv)
        image = xp.empty((n, size, size, 3), dtype=ops.uint8, device=ops.device)
        # road: one of the `period` pre-drawn scrolled views (RoadGeometry.strip_offset)
        c = ops.to_int(xp.floor(self.y * g.sy)) + D._round(g.ego_row)
        ops.take_rows(self._road_views, (-c) % g.period, out=image)
        # stop line: a band across the road
        rel = self.stop_line_y - self.y
        top = rnd(g.ego_row - (rel + D.STOP_LINE_WIDTH / 2) * g.sy)
        bottom = rnd(g.ego_row - (rel - D.STOP_LINE_WIDTH / 2) * g.sy)
        c0, c1 = g.road_cols
        (w,) = ops.nonzero((bottom > 0) & (top < size))
        self._paint(image, w, top[w], bottom[w], xp.full_like(w, c0), xp.full_like(w, c1), D.LABELS.index("stop_line"))
        # cars in the order DrivingEnv draws them: the other cars in view (bodies, then windscreens:
        # they never overlap each other), then the ego car on top (its windscreen shifted sideways
        # by its heading)
        rel = self.npc_y - self.y[:, None]
        w, k = ops.nonzero((rel < g.ahead) & (rel > -g.behind) & (self.npc_x > 0))
        cars = [(w, rel[w, k], self.npc_x[w, k], 0 * w, "car"),
                (self._world, 0 * self.y, self.x,
                 ops.clip(rnd(xp.sin(self.heading) * D.CAR_LENGTH / 2 * g.sx), -1, 1), "ego")]
        for world, rel, x, shift, name in cars:
            top = rnd(g.ego_row - (rel + D.CAR_LENGTH / 2) * g.sy)
            bottom = rnd(g.ego_row - (rel - D.CAR_LENGTH / 2) * g.sy)
            left = rnd((x - D.CAR_WIDTH / 2 + D.SHOULDER) * g.sx)
            right = rnd((x + D.CAR_WIDTH / 2 + D.SHOULDER) * g.sx)
            self._paint(image, world, top, bottom, left, right, D.LABELS.index(name))
            self._paint(image, world, top + 1, top + 1 + g.window_len, left + 1 + shift, right - 1 + shift,
                        D.LABELS.index(name + "_window"))
        return image

    def _observation(self):
        if self.render_images:
            image = self._render()
        else:
            image = self.ops.xp.zeros((self.num_envs, self.image_size, self.image_size, 3),
                                      dtype=self.ops.uint8, device=self.ops.device)
        return {"image": image, "instruction": self._instructions(), "state": self._state()}

    def _instructions(self):
        """The worlds' instructions: a tuple of strings, or with ``return_tensors="torch"`` an
        :class:`~vla_rl_lib.envs.text.IndexedText` over the task indices (no host copy)."""
        if self.return_tensors == "torch":
            return IndexedText(self.ops.to_torch(self.ops.copy(self.task)), D.INSTRUCTIONS)
        return tuple(map(D.INSTRUCTIONS.__getitem__, self.ops.to_numpy(self.task).tolist()))

    def _info(self, collision, success, terms):
        xp, f32 = self.ops.xp, self.ops.float32
        return {
            "success": self.ops.copy(success),
            "collision": self.ops.copy(collision),
            "lane_offset": xp.asarray(self._lane_off, dtype=f32, copy=True),
            "progress": xp.asarray(self.progress, dtype=f32, copy=True),  # not a view of the live state
            "reward_terms": {k: xp.asarray(v, dtype=f32) for k, v in terms.items()},
            "instruction": self._instructions(),
        }

    def _out(self, value):
        """Arrays -> what ``return_tensors`` asks for (recursively through dicts)."""
        if isinstance(value, dict):
            return {k: self._out(v) for k, v in value.items()}
        if isinstance(value, (np.ndarray, torch.Tensor)):
            return self.ops.to_numpy(value) if self.return_tensors == "numpy" else self.ops.to_torch(value)
        return value

    def privileged_state(self, i: int) -> dict:
        """World ``i``'s full state as :meth:`DrivingEnv.privileged_state` gives it (for experts)."""
        f = lambda t: float(t[i])  # noqa: E731
        arr = lambda t: np.array(self.ops.to_numpy(t[i]), dtype=np.float64)  # noqa: E731  (a copy)
        return {
            "x": f(self.x), "y": f(self.y), "v": f(self.v), "heading": f(self.heading),
            "task": int(self.task[i]), "start_lane": int(self.start_lane[i]), "num_lanes": self.num_lanes,
            "npc_x": arr(self.npc_x), "npc_y": arr(self.npc_y), "npc_v": arr(self.npc_v),
            "stop_line_y": f(self.stop_line_y), "passed": bool(self.passed[i]), "failed": bool(self.failed[i]),
            "steps": int(self.steps[i]), "progress": f(self.progress),
        }
