"""The GPU check: every trainer on the device, the simulator's scaling, PPO + VLA end to end, the
VLA recipe's success, and the offline updates eager vs compiled, in one command and one table.

    python benchmarks/gpu.py --out gpu_results                  # on a CUDA machine: <= ~6 minutes
    python benchmarks/gpu.py --smoke --out /tmp/gpu_smoke       # anywhere (CPU): tiny sizes, ~2 minutes

Sections (``--sections``, run in this order, each on its own: one that fails prints its error and
leaves a FAILED row, the others still run; ``--time_limit`` seconds in all, a section that would
start too late is skipped with a note):

* ``trainers``: IQL, CQL, TD3+BC, DT, BC (Hopper data, buffer on its default CPU device: the trainer
  moves the batches), VLA behaviour cloning (driving-expert-v1), PPO (CartPole), SAC (Pendulum),
  GRPO (CartPole), each on the device: train, evaluate, save, load, resume from the checkpoint,
  and load the checkpoint on the CPU; gradient (or env) steps per second of the training part.
* ``simulator``: ``BatchedDrivingEnv(backend="torch", return_tensors="torch")`` steps/s at 1k..65k
  worlds, with and without 64x64 images; the time to reset 65,536 worlds.
* ``ppo_vla``: PPO with a VLA policy (32x32 images) on the batched simulator at ``--ppo_envs``
  worlds, the whole loop timed (simulator, policy and update): env-steps/s. Target 500,000.
* ``offline``: IQL, CQL, TD3+BC, DT gradient steps/s, Hopper sizes (256x256 MLPs, batch 256; DT 3
  layers, 128 wide, context 20, batch 64), buffer on the device, eager and compiled
  (``compile=True``, mode ``--compile_mode``), compile time noted. d3rlpy rows (same sizes, same
  device) when d3rlpy is importable, skipped with a note otherwise. Targets: IQL >= 2,000
  steps/s; the others >= 10x d3rlpy.
* ``vla``: the VLA recipe on the device: expert demonstrations, behaviour cloning, then PPO on the
  batched simulator for ``--vla_budget`` seconds; success on held-out seeds per instruction.
  Target >= 90% overall and >= 80% per instruction within 5 minutes.

``--out DIR`` writes the table as ``gpu.json`` and ``gpu.md`` there as well.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vla_rl_lib.callbacks import Callback  # noqa: E402
from vla_rl_lib.config import OfflineRLConfig, RLConfig  # noqa: E402
from vla_rl_lib.data.buffer import OfflineReplayBuffer  # noqa: E402
from vla_rl_lib.data.datasets import load_dataset  # noqa: E402
from vla_rl_lib.trainer import get_trainer_class  # noqa: E402

SECTIONS = ("trainers", "simulator", "ppo_vla", "offline", "vla")
ROWS: list[dict] = []


def add(section: str, what: str, result: str, target: str = "", note: str = "", status: str = "ok") -> None:
    ROWS.append(dict(section=section, what=what, result=result, target=target, note=note, status=status))
    print(f"[{section}] {what}: {result} {('(target ' + target + ')') if target else ''} {note} {status}",
          flush=True)


class TimeBudget(Callback):
    """Stop training after ``seconds`` of wall-clock time."""

    def __init__(self, seconds: float):
        self.seconds, self.t0 = float(seconds), None

    def on_train_start(self, trainer):
        self.t0 = time.time()

    def on_step(self, trainer):
        return False if time.time() - self.t0 > self.seconds else None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fmt(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


# ---------------------------------------------------------------------------------------------------------
# trainers: train, evaluate, save, load, resume, GPU -> CPU checkpoint
# ---------------------------------------------------------------------------------------------------------
def trainer_cycle(section, name, make, train, evaluate, device, extra_note=""):
    """make(device_string, out) -> trainer; train(trainer) -> steps; evaluate(trainer) -> dict."""
    out = Path(tempfile.mkdtemp(prefix=f"gpu_{name}_"))
    trainer = make(device, out / "run")
    t = time.time()
    steps = train(trainer)
    synchronize(trainer.device)
    speed = steps / (time.time() - t)
    results = evaluate(trainer)
    path = trainer.save(out / "ckpt.pt")
    again = make(device, out / "again").load(path)
    same = all(torch.equal(p.detach().cpu(), q.detach().cpu())
               for p, q in zip(trainer.policy.parameters(), again.policy.parameters()))
    on_cpu = make("cpu", out / "cpu").load(path)  # a GPU checkpoint on a CPU trainer
    cpu_ok = all(torch.allclose(p.detach().cpu(), q.detach()) for p, q in zip(trainer.policy.parameters(),
                                                                            on_cpu.policy.parameters()))
    before = again.global_step
    train(again)  # resume: continues from the checkpoint's step
    resumed = again.global_step > before
    score = next((f"{k}={results[k]:.3g}" for k in ("success_rate", "mean_reward") if k in results), "")
    ok = same and cpu_ok and resumed
    add(section, f"{name} on {trainer.device}", f"{fmt(speed)} steps/s (train() incl. setup)",
        note=f"train/eval/save/load/resume {'ok' if ok else 'MISMATCH'}; GPU->CPU load {'ok' if cpu_ok else 'FAILED'}; "
             f"eval {score}{extra_note}", status="ok" if ok else "FAILED")


def section_trainers(args, device):
    n = 20 if args.smoke else 200
    hopper = load_dataset("hopper-medium-v0")
    cpu_buffer = OfflineReplayBuffer(11, 3).load_dataset(hopper)  # the spec's example: default (CPU) device

    for name in ("iql", "cql", "td3_bc", "dt", "bc"):
        kw = dict(context_length=20, n_layer=3, embed_dim=128, n_head=1) if name == "dt" else {}
        dev = "auto" if name in ("iql", "dt") else device  # both spellings: auto picks CUDA when present

        def make(d, out, name=name, kw=kw, dev=dev):
            cfg = OfflineRLConfig(device=dev if d != "cpu" else "cpu", num_epochs=1, steps_per_epoch=n,
                                  batch_size=64 if name == "dt" else 256, eval_freq=0, eval_episodes=0, save_freq=0,
                                  log_freq=max(n // 2, 1), output_dir=str(out), normalize_states=name != "dt")
            return get_trainer_class(name)(11, 3, cfg, **kw)

        def train(t, n=n):
            if t.global_step:  # resume: one more epoch
                t.config = t.config.replace(num_epochs=t.epoch + 1)
            before = t.global_step
            t.train(cpu_buffer)
            return t.global_step - before

        run(args, "trainers", name, lambda name=name, make=make, train=train: trainer_cycle(
            "trainers", name, make, train, lambda t: t.evaluate(num_episodes=2), device,
            extra_note=f"; config device={dev!r}"))

    def bc_section():
        from vla_rl_lib.vla.model import VLAConfig

        data = load_dataset("driving-expert-v1")
        buffer = OfflineReplayBuffer(data["observations"].shape[1], 2).load_dataset(data)
        size = int(data["images"].shape[1])

        def make(d, out):
            cfg = OfflineRLConfig(device=d, num_epochs=1, steps_per_epoch=n, batch_size=64, eval_freq=0,
                                  eval_episodes=0, save_freq=0, log_freq=max(n // 2, 1), output_dir=str(out))
            return get_trainer_class("vla_bc")(buffer.obs_dim, 2, cfg, model=VLAConfig(image_size=size, vision_channels=[8, 16, 16],
                                                                                   embed_dim=32, hidden_dim=64))

        def train(t):
            if t.global_step:
                t.config = t.config.replace(num_epochs=t.epoch + 1)
            before = t.global_step
            t.train(buffer)
            return t.global_step - before

        def evaluate(t):
            from vla_rl_lib.envs.driving import DrivingEnv

            return t.evaluate(num_episodes=2, env=DrivingEnv(image_size=size))

        trainer_cycle("trainers", "bc (VLA)", make, train, evaluate, device)

    run(args, "trainers", "vla_bc", bc_section)

    online = {
        "ppo": ("CartPole-v1", dict(num_envs=8, rollout_steps=64, batch_size=128, ppo_epochs=2), 2048 if args.smoke else 16384),
        "sac": ("Pendulum-v1", dict(learning_starts=100, batch_size=256), 200 if args.smoke else 400),
        "grpo": ("CartPole-v1", dict(group_size=4, num_groups=2, batch_size=64), 2),
    }
    for name, (env_id, kw, budget) in online.items():
        def make(d, out, name=name, env_id=env_id, kw=kw, budget=budget):
            total = dict(num_iterations=budget) if name == "grpo" else dict(total_timesteps=budget)
            cfg = RLConfig(algorithm=name, env=env_id, device=d, eval_freq=0, eval_episodes=0, save_freq=0,
                           log_freq=10**9, output_dir=str(out), **kw, **total)
            return get_trainer_class(name)(env=env_id, config=cfg)

        def train(t, name=name, budget=budget):
            before = t.global_step
            if t.global_step:
                more = dict(num_iterations=2 * budget) if name == "grpo" else dict(total_timesteps=2 * budget)
                t.config = t.config.replace(**more)
            t.train()
            return t.global_step - before

        run(args, "trainers", name, lambda name=name, make=make, train=train: trainer_cycle(
            "trainers", name, make, train, lambda t: t.evaluate(num_episodes=2), device))

    run(args, "trainers", "sb3", lambda: sb3_rows(args, device, online))


def sb3_rows(args, device, online):
    """Stable-Baselines3's PPO and SAC at the same budgets and sizes on the same device, when installed."""
    try:
        import stable_baselines3 as sb3
        from stable_baselines3.common.env_util import make_vec_env
    except ImportError:
        add("trainers", "Stable-Baselines3", "skipped", note="stable_baselines3 is not installed", status="skipped")
        return
    makers = {
        "ppo": lambda: sb3.PPO("MlpPolicy", make_vec_env("CartPole-v1", n_envs=8, seed=0), n_steps=64, batch_size=128,
                               n_epochs=2, device=str(device), seed=0),
        "sac": lambda: sb3.SAC("MlpPolicy", "Pendulum-v1", learning_starts=100, batch_size=256, device=str(device), seed=0),
    }
    for name, make in makers.items():
        budget = online[name][2]
        model = make()
        t = time.time()
        model.learn(budget)
        add("trainers", f"{name} Stable-Baselines3 {sb3.__version__} on {device}",
            f"{fmt(budget / (time.time() - t))} steps/s", note="same budget and sizes as the kit's row above")


# ---------------------------------------------------------------------------------------------------------
# the simulator
# ---------------------------------------------------------------------------------------------------------
def section_simulator(args, device):
    from vla_rl_lib.envs.batched import BatchedDrivingEnv

    sizes = [64, 256] if args.smoke else [1024, 4096, 16384, 65536]
    for images in (False, True):
        for n in sizes:
            def one(n=n, images=images):
                env = BatchedDrivingEnv(n, device=str(device), backend="torch", return_tensors="torch",
                                        render_images=images)
                env.reset(seed=0)
                gen = torch.Generator(device=device).manual_seed(0)
                actions = [torch.rand(n, 2, device=device, generator=gen) * 2 - 1 for _ in range(8)]
                for k in range(5):
                    env.step(actions[k % 8])
                synchronize(device)
                steps, t = 0, time.time()
                while time.time() - t < (0.3 if args.smoke else 1.0):
                    env.step(actions[steps % 8])
                    steps += 1
                synchronize(device)
                add("simulator", f"{n:,} envs, {'64x64 images' if images else 'no images'}",
                    f"{fmt(n * steps / (time.time() - t))} steps/s", note=f"{steps} batched steps")

            run(args, "simulator", f"{n} envs", one)

    def reset_time():
        n = sizes[-1]
        env = BatchedDrivingEnv(n, device=str(device), backend="torch", return_tensors="torch", render_images=False)
        env.reset(seed=0)
        synchronize(device)
        t = time.time()
        env.reset(seed=1)
        synchronize(device)
        add("simulator", f"reset {n:,} worlds (batched sampler, on device)", f"{1000 * (time.time() - t):.1f} ms")

    run(args, "simulator", "reset", reset_time)


# ---------------------------------------------------------------------------------------------------------
# PPO + VLA end to end
# ---------------------------------------------------------------------------------------------------------
def vla_model_config(log_std: float = -1.0):
    from vla_rl_lib.vla.bc import PROPRIO_INDICES
    from vla_rl_lib.vla.model import VLAConfig

    return VLAConfig(image_size=32, vision_channels=[8, 16, 16], embed_dim=32, hidden_dim=64,
                     state_indices=list(PROPRIO_INDICES), log_std_init=log_std)


def ppo_config(args, n: int, out: str, **kw) -> RLConfig:
    rollout = 16
    return RLConfig(env="driving", device=str(args.device), num_envs=n, rollout_steps=rollout,
                    batch_size=max(n * rollout // 4, 64), ppo_epochs=args.ppo_epochs, learning_rate=3e-4,
                    ppo_entropy_coef=0.0, ppo_normalize_reward=True, eval_episodes=0, eval_freq=0, save_freq=0,
                    log_freq=10**12, output_dir=out, **kw)


def section_ppo_vla(args, device):
    for n in args.ppo_envs_list:
        run(args, "ppo_vla", f"{n} envs", lambda n=n: ppo_vla_speed(args, device, n))


def ppo_vla_speed(args, device, n: int):
    from vla_rl_lib.envs.batched import BatchedDrivingEnv
    from vla_rl_lib.online.ppo import PPOTrainer
    from vla_rl_lib.vla.model import VLAModel
    from vla_rl_lib.vla.policy import VLAPolicy

    envs = BatchedDrivingEnv(n, image_size=32, device=str(device), backend="torch", return_tensors="torch")
    model = VLAModel(vla_model_config())
    params = sum(p.numel() for p in model.parameters())
    trainer = PPOTrainer(envs, config=ppo_config(args, n, tempfile.mkdtemp(prefix="gpu_ppo_")), policy=VLAPolicy(model))
    trainer.collect(), trainer.learn()  # warm-up
    synchronize(device)
    collect_s = learn_s = 0.0
    steps, t0 = 0, time.time()
    iters = 0
    while time.time() - t0 < (1 if args.smoke else 8) or iters < 2:
        t = time.time()
        steps += trainer.collect()
        synchronize(device)
        collect_s += time.time() - t
        t = time.time()
        trainer.learn()
        synchronize(device)
        learn_s += time.time() - t
        iters += 1
    total = time.time() - t0
    add("ppo_vla", f"PPO + VLA ({params:,} params, 32x32 images), {n:,} envs, rollout 16, {args.ppo_epochs} epochs",
        f"{fmt(steps / total)} env-steps/s", target="500,000",
        note=f"collect {fmt(steps / collect_s)}/s, update {fmt(steps / learn_s)}/s, {iters} iterations")


# ---------------------------------------------------------------------------------------------------------
# offline updates: eager vs compiled, and d3rlpy
# ---------------------------------------------------------------------------------------------------------
def offline_trainer(name, device, compile_mode=None, hidden=256):
    kw = dict(context_length=20, n_layer=3, embed_dim=128, n_head=1) if name == "dt" else {}
    cfg = OfflineRLConfig(device=str(device), batch_size=64 if name == "dt" else 256, hidden_dim=hidden,
                          num_epochs=1, steps_per_epoch=10**6, eval_episodes=0, save_freq=0,
                          compile=compile_mode is not None, compile_mode=compile_mode or "auto",
                          output_dir=tempfile.mkdtemp(prefix=f"gpu_{name}_"))
    return get_trainer_class(name)(11, 3, cfg, **kw)


def updates_per_second(trainer, buffer, seconds: float, warmup: int):
    """(steps/s, warm-up seconds) of the trainer's update on batches sampled from ``buffer``."""
    trainer.attach_buffer(buffer)
    buffer = trainer.buffer  # (the DT samples windows of episodes from its own sampler)
    update = trainer.update_function()
    cfg, gen, dev = trainer.config, trainer.sample_generator, trainer.device
    t = time.time()
    for _ in range(warmup):
        metrics = update(buffer.sample(cfg.batch_size, generator=gen))
        trainer._accumulate(metrics)
    synchronize(dev)
    warm = time.time() - t
    steps, t = 0, time.time()
    while time.time() - t < seconds:
        for _ in range(20):
            trainer._accumulate(update(buffer.sample(cfg.batch_size, generator=gen)))
        steps += 20
    synchronize(dev)
    trainer._flush_metrics()  # raises if a loss went non-finite
    return steps / (time.time() - t), warm


def d3rlpy_steps_per_second(name, data, device, seconds):
    import d3rlpy

    dev = f"cuda:{device.index or 0}" if device.type == "cuda" else "cpu:0"
    enc = d3rlpy.models.VectorEncoderFactory([256, 256])
    algos = {"iql": lambda: d3rlpy.algos.IQLConfig(batch_size=256, actor_encoder_factory=enc,
                                                   critic_encoder_factory=enc, value_encoder_factory=enc),
             "cql": lambda: d3rlpy.algos.CQLConfig(batch_size=256, actor_encoder_factory=enc, critic_encoder_factory=enc),
             "td3_bc": lambda: d3rlpy.algos.TD3PlusBCConfig(batch_size=256, actor_encoder_factory=enc,
                                                            critic_encoder_factory=enc),
             "dt": lambda: d3rlpy.algos.DecisionTransformerConfig(batch_size=64, context_size=20, num_layers=3,
                                                                  num_heads=1, encoder_factory=d3rlpy.models.VectorEncoderFactory([128]))}
    terminals = np.asarray(data["terminals"], dtype=bool)  # d3rlpy: a step ends by termination or by time, never both
    dataset = d3rlpy.dataset.MDPDataset(data["observations"], data["actions"], data["rewards"],
                                        terminals.astype(np.float32),
                                        timeouts=(np.asarray(data["timeouts"], dtype=bool) & ~terminals).astype(np.float32))
    algo = algos[name]().create(device=dev)
    n = 200
    t = time.time()
    algo.fit(dataset, n_steps=n, n_steps_per_epoch=n, show_progress=False, save_interval=10**9,
             logger_adapter=d3rlpy.logging.NoopAdapterFactory())
    warm = time.time() - t
    n = max(int(n * seconds / max(warm, 1e-3)), 100)
    t = time.time()
    algo.fit(dataset, n_steps=n, n_steps_per_epoch=n, show_progress=False, save_interval=10**9,
             logger_adapter=d3rlpy.logging.NoopAdapterFactory())
    return n / (time.time() - t)


def section_offline(args, device):
    data = load_dataset("hopper-medium-v0")
    buffer = OfflineReplayBuffer(11, 3, device=str(device)).load_dataset(data)
    seconds = 1.0 if args.smoke else 4.0
    try:
        import d3rlpy  # noqa: F401
        have_d3rlpy = True
    except ImportError:
        have_d3rlpy = False
        add("offline", "d3rlpy", "skipped", note="d3rlpy is not installed (pip install d3rlpy to compare)",
            status="skipped")
    compile_algos = [a for a in args.compile_algos.split(",") if a]
    for name in ("iql", "cql", "td3_bc", "dt"):
        peer = {}

        def eager(name=name):
            speed, _ = updates_per_second(offline_trainer(name, device), buffer, seconds, warmup=20)
            peer["eager"] = speed
            target = "2,000" if name == "iql" else ""
            add("offline", f"{name} eager, {'batch 64, 3x128 transformer' if name == 'dt' else 'batch 256, 256x256'}",
                f"{fmt(speed)} steps/s", target=target)

        run(args, "offline", f"{name} eager", eager)

        if have_d3rlpy:
            def d3(name=name):
                speed = d3rlpy_steps_per_second(name, data, device, seconds)
                peer["d3rlpy"] = speed
                add("offline", f"{name} d3rlpy {__import__('d3rlpy').__version__}", f"{fmt(speed)} steps/s")

            run(args, "offline", f"{name} d3rlpy", d3)

        if name in compile_algos:
            def compiled(name=name):
                speed, warm = compiled_in_subprocess(args, name, seconds)
                vs = f"{speed / peer['eager']:.1f}x eager" if peer.get("eager") else ""
                if peer.get("d3rlpy"):
                    vs += f", {speed / peer['d3rlpy']:.1f}x d3rlpy"
                target = "2,000" if name == "iql" else ("10x d3rlpy" if peer.get("d3rlpy") else "")
                add("offline", f"{name} compiled ({args.compile_mode})", f"{fmt(speed)} steps/s", target=target,
                    note=f"{vs}; compile + {args.compile_warmup} warm-up steps {warm:.0f}s")

            # (compiling takes tens of seconds: keep enough time for the VLA recipe after it)
            run(args, "offline", f"{name} compiled", compiled, reserve=args.vla_reserve if "vla" in args.sections else 0)


def compiled_in_subprocess(args, name: str, seconds: float):
    """(steps/s, warm-up s) of the compiled update, measured in a child process with a timeout: a
    compiler failure that breaks the CUDA context, or a compilation that runs too long, cannot take
    the other sections down with it."""
    import subprocess

    limit = max(args.deadline - (args.vla_reserve if "vla" in args.sections else 0) - time.time(), 30.0)
    cmd = [sys.executable, __file__, "--device", str(args.device), "--compiled_row", name,
           "--compile_mode", args.compile_mode, "--compile_warmup", str(args.compile_warmup),
           "--row_seconds", str(seconds)] + (["--smoke"] if args.smoke else [])
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=limit)
    except subprocess.TimeoutExpired:
        raise TimeoutError(f"compiling and timing {name} took over {limit:.0f} s (the time left)") from None
    lines = [line for line in done.stdout.splitlines() if line.startswith("COMPILED_ROW ")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"child exited {done.returncode}: {' / '.join(tail)[:400]}")
    result = json.loads(lines[-1][len("COMPILED_ROW "):])
    return result["speed"], result["warm"]


def compiled_row_child(args, device) -> int:
    """The child of :func:`compiled_in_subprocess`: time one compiled update, print it as JSON."""
    data = load_dataset("hopper-medium-v0")
    buffer = OfflineReplayBuffer(11, 3, device=str(device)).load_dataset(data)
    speed, warm = updates_per_second(offline_trainer(args.compiled_row, device, args.compile_mode), buffer,
                                     args.row_seconds, warmup=args.compile_warmup)
    print("COMPILED_ROW " + json.dumps({"speed": speed, "warm": warm}), flush=True)
    return 0


# ---------------------------------------------------------------------------------------------------------
# the VLA recipe: BC then PPO
# ---------------------------------------------------------------------------------------------------------
def section_vla(args, device):
    from vla_rl_lib.envs.batched import BatchedDrivingEnv
    from vla_rl_lib.envs.driving import INSTRUCTIONS, STATE_DIM
    from vla_rl_lib.envs.expert import collect_dataset
    from vla_rl_lib.vla.bc import BCTrainer
    from vla_rl_lib.vla.pipeline import evaluate_success, ppo_from_model

    t_all = time.time()
    out = Path(tempfile.mkdtemp(prefix="gpu_vla_"))
    t = time.time()
    demos = collect_dataset(600 if args.smoke else args.demo_size, seed=0, image_size=32)
    collect_s = time.time() - t
    buffer = OfflineReplayBuffer(STATE_DIM, 2).load_dataset(demos)
    bc_cfg = OfflineRLConfig(device=str(device), num_epochs=1, steps_per_epoch=30 if args.smoke else args.bc_steps,
                             batch_size=128, learning_rate=1e-3, eval_freq=0, eval_episodes=0, save_freq=0,
                             log_freq=100, output_dir=str(out / "bc"))
    t = time.time()
    bc = BCTrainer(STATE_DIM, 2, bc_cfg, model=vla_model_config())
    bc.train(buffer)
    bc_s = time.time() - t
    episodes = 2 if args.smoke else args.episodes
    before = evaluate_success(bc.policy, max(episodes // 2, 1), seed=1_000_000, image_size=32)

    n = args.ppo_envs_list[0]
    envs = BatchedDrivingEnv(n, image_size=32, device=str(device), backend="torch", return_tensors="torch")
    cfg = ppo_config(args, n, str(out / "ppo"), total_timesteps=10**12)
    ppo = ppo_from_model(bc.best_model_path, env=envs, config=cfg)
    budget = max(min(args.vla_budget, args.deadline - time.time() - 50), 10.0)
    t = time.time()
    ppo.train(callbacks=[TimeBudget(budget)])
    ppo_s = time.time() - t
    after = evaluate_success(ppo.policy, episodes, seed=1_000_000, image_size=32)
    total = time.time() - t_all
    short = {"keep the lane": "keep", "change to the left lane": "left", "change to the right lane": "right",
             "stop at the line": "stop", "overtake the car ahead": "overtake"}
    per = ", ".join(f"{short[i]} {100 * after['per_instruction'][i]:.0f}" for i in INSTRUCTIONS)
    worst = min(after["per_instruction"].values())
    add("vla", f"BC ({bc_s:.0f}s) then PPO ({ppo_s:.0f}s, {ppo.global_step:,} env steps, {n:,} envs)",
        f"success {100 * before['success_rate']:.0f}% -> {100 * after['success_rate']:.0f}%",
        target=">= 90%, each >= 80%, <= 300 s",
        note=f"per instruction: {per}; collisions {100 * before['collision_rate']:.0f}% -> "
             f"{100 * after['collision_rate']:.0f}%; {episodes} held-out episodes per instruction "
             f"({max(episodes // 2, 1)} for BC); "
             f"demos {collect_s:.0f}s; total {total:.0f}s",
        status="ok" if after["success_rate"] >= 0.9 and worst >= 0.8 and bc_s + ppo_s <= 300 else "below target")


# ---------------------------------------------------------------------------------------------------------
def run(args, section, what, fn, reserve: float = 0.0) -> None:
    """Run one measurement; a failure becomes a FAILED row, a late start (less than ``reserve``
    seconds before the deadline) a skipped one."""
    if time.time() > args.deadline - reserve:
        add(section, what, "skipped", note="--time_limit reached" + (" (time kept for the later sections)"
                                                                     if reserve else ""), status="skipped")
        return
    try:
        fn()
    except Exception as exc:  # keep going: every other measurement still runs
        traceback.print_exc()
        add(section, what, "FAILED", note=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}",
            status="FAILED")


def table() -> str:
    head = ["section", "what", "result", "target", "status", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in ROWS:
        lines.append("| " + " | ".join(str(r[k]).replace("|", "/") for k in head) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default=None, help="default: cuda when present, else cpu")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, for a CPU (about 2 minutes)")
    p.add_argument("--sections", default=",".join(SECTIONS))
    p.add_argument("--time_limit", type=float, default=345.0, help="seconds for all sections together")
    p.add_argument("--ppo_envs", default="8192,32768", help="worlds of the PPO + VLA runs (comma list; the VLA "
                   "recipe uses the first)")
    p.add_argument("--ppo_epochs", type=int, default=4)
    p.add_argument("--compile_mode", default="auto", help="torch.compile mode of the compiled rows")
    p.add_argument("--compile_algos", default="iql", help="which offline methods (of iql,cql,td3_bc,dt) get a "
                   "compiled row (each compiles for tens of seconds)")
    p.add_argument("--compile_warmup", type=int, default=30, help="update calls before timing a compiled update")
    p.add_argument("--vla_budget", type=float, default=120.0, help="seconds of PPO in the VLA recipe (at most what "
                   "--time_limit leaves, less 50 s for the evaluation)")
    p.add_argument("--vla_reserve", type=float, default=150.0,
                   help="seconds before --time_limit after which no compiled row starts (kept for the VLA recipe)")
    p.add_argument("--demo_size", type=int, default=5000)
    p.add_argument("--bc_steps", type=int, default=1500)
    p.add_argument("--episodes", type=int, default=20, help="held-out episodes per instruction")
    p.add_argument("--out", default=None, help="folder for gpu.json and gpu.md")
    p.add_argument("--compiled_row", default=None, help=argparse.SUPPRESS)  # (internal: one compiled row)
    p.add_argument("--row_seconds", type=float, default=4.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.compiled_row:
        if args.smoke:
            torch.set_num_threads(1)
        return compiled_row_child(args, torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu")))
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    args.ppo_envs_list = [int(x) for x in str(args.ppo_envs).split(",") if x]
    if args.smoke:
        args.ppo_envs_list = [64]
        args.compile_algos = "td3_bc" if args.compile_algos == p.get_default("compile_algos") else args.compile_algos
        args.compile_warmup = min(args.compile_warmup, 5)
        args.vla_budget = min(args.vla_budget, 10.0)
        args.vla_reserve = min(args.vla_reserve, 20.0)
    device = torch.device(args.device)
    if args.smoke:
        torch.set_num_threads(1)
    t0 = time.time()
    args.deadline = t0 + args.time_limit
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    print(f"device {device} ({gpu}), torch {torch.__version__}, sections {args.sections}", flush=True)
    functions = {"trainers": section_trainers, "simulator": section_simulator, "ppo_vla": section_ppo_vla,
                 "offline": section_offline, "vla": section_vla}
    for name in args.sections.split(","):
        if name not in functions:
            add(name, "unknown section", "FAILED", note=f"choose from {', '.join(SECTIONS)}", status="FAILED")
            continue
        run(args, name, "section", lambda name=name: functions[name](args, device))
    elapsed = time.time() - t0
    md = (f"GPU check on {gpu}, torch {torch.__version__}, {elapsed:.0f} s: "
          f"`python benchmarks/gpu.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n\n" + table())
    print("\n" + md, flush=True)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "gpu.json").write_text(json.dumps({"device": gpu, "torch": torch.__version__, "seconds": elapsed,
                                                   "rows": ROWS}, indent=2))
        (out / "gpu.md").write_text(md + "\n")
    failed = [r for r in ROWS if r["status"] == "FAILED"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
