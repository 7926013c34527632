"""How fast is the driving simulator? Steps per second, next to gymnasium peers measured in the same run.

    python benchmarks/driving_speed.py                 # CPU, one torch thread
    python benchmarks/driving_speed.py --device cuda   # batched env on a GPU as well

Prints, for each setting, steps per second of wall-clock time and steps per second of this
process's CPU time (``time.process_time``), each the best of ``--repeat`` runs of ``--seconds``
CPU seconds. On a machine shared with other jobs the wall-clock
figure drops with the load while the CPU-time figure stays close to what one free core gives.

Rows:
* ``DrivingEnv`` (one env, 64x64 image rendered every step) and, as peers, gymnasium's CartPole-v1
  with and without its ``rgb_array`` rendering (pygame, 600x400) every step;
* ``BatchedDrivingEnv`` at 1, 16, 64, 256 envs, with and without images, against
  ``SyncVectorEnv`` of ``DrivingEnv`` (gymnasium's own way of stepping many envs) at 16 and 64;
  on the CPU it runs its numpy backend (the default there) and, at 64 and 256 envs, its torch
  backend (the code path a GPU runs) for comparison.

The last line checks the VLA issue's target: >= 50,000 env-steps/s at 64 envs with images.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from vla_rl_lib.envs.batched import BatchedDrivingEnv  # noqa: E402
from vla_rl_lib.envs.driving import DrivingEnv  # noqa: E402


REPEAT = 3


def measure(step, steps_per_call: int, seconds: float):
    """(wall steps/s, CPU steps/s) of calling ``step`` for about ``seconds`` of CPU time; the best
    of ``REPEAT`` such runs (as ``timeit`` does), which filters out moments when others took the core."""
    for _ in range(3):
        step()
    best_wall = best_cpu = 0.0
    for _ in range(REPEAT):
        calls, cpu0, wall0 = 0, time.process_time(), time.perf_counter()
        while time.process_time() - cpu0 < seconds:
            step()
            calls += 1
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        best_wall = max(best_wall, steps_per_call * calls / wall)
        best_cpu = max(best_cpu, steps_per_call * calls / cpu)
    return best_wall, best_cpu


def single_stepper(env, render: bool = False):
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    box = env.action_space

    def step():
        action = (rng.uniform(-0.2, 0.2, box.shape).astype(np.float32) + np.float32(0.2)
                  if isinstance(box, gym.spaces.Box) else int(rng.integers(box.n)))
        _, _, terminated, truncated, _ = env.step(action)
        if render:
            env.render()
        if terminated or truncated:
            env.reset()
    return step


def vector_stepper(envs, n):
    envs.reset(seed=0)
    actions = np.zeros((n, 2), np.float32)
    actions[:, 1] = 0.2

    def step():
        envs.step(actions)
    return step


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="CPU seconds per measurement")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per row; the best is kept")
    parser.add_argument("--device", default="cpu", help="device of the batched env (cpu or cuda)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 = one core)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    global REPEAT
    REPEAT = max(1, args.repeat)
    rows = []

    def row(name, n, result):
        wall, cpu = result
        rows.append((name, n, wall, cpu))
        print(f"{name:52s} {n:>5d} {wall:>14,.0f} {cpu:>14,.0f}", flush=True)

    print(f"torch {torch.__version__}, {args.threads} torch thread(s), load average "
          f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'setting':52s} {'envs':>5s} {'wall steps/s':>14s} {'CPU steps/s':>14s}")
    row("DrivingEnv, 64x64 image every step", 1, measure(single_stepper(DrivingEnv()), 1, args.seconds))
    row("peer: CartPole-v1, no rendering", 1, measure(single_stepper(gym.make("CartPole-v1")), 1, args.seconds))
    row("peer: CartPole-v1, rgb_array render every step", 1,
        measure(single_stepper(gym.make("CartPole-v1", render_mode="rgb_array"), render=True), 1, args.seconds))
    for n in (16, 64):
        sync = gym.vector.SyncVectorEnv([lambda: DrivingEnv() for _ in range(n)])
        row("peer: SyncVectorEnv(DrivingEnv), images", n, measure(vector_stepper(sync, n), n, args.seconds))
    settings = [("cpu", "numpy", n) for n in (1, 16, 64, 256)] + [("cpu", "torch", n) for n in (64, 256)]
    if args.device != "cpu":
        settings += [(args.device, "torch", n) for n in (1, 16, 64, 256, 4096)]
    for device, backend, n in settings:
        for images in (True, False):
            envs = BatchedDrivingEnv(n, device=device, backend=backend, render_images=images,
                                     return_tensors="torch" if device != "cpu" else "numpy")
            name = f"BatchedDrivingEnv[{device}, {backend}], {'images' if images else 'no images'}"
            if device != "cpu":
                def step(envs=envs, actions=torch.zeros(n, 2, device=device)):
                    envs.step(actions)
                envs.reset(seed=0)
                step()
                torch.cuda.synchronize()
                row(name, n, measure(lambda: (step(), torch.cuda.synchronize()), n, args.seconds))
            else:
                row(name, n, measure(vector_stepper(envs, n), n, args.seconds))
    target = [cpu for name, n, _, cpu in rows if name == "BatchedDrivingEnv[cpu, numpy], images" and n == 64]
    print(f"target >= 50,000 env-steps/s at 64 envs with images (CPU time): {target[0]:,.0f} -> "
          f"{'met' if target[0] >= 50_000 else 'NOT met'}")
    return rows


if __name__ == "__main__":
    main()
