"""Benchmark: a D4RL-sized dataset (1M transitions, Hopper dimensions 11/3) from file to buffer.

Prints, for the kit (``load_dataset`` + ``OfflineReplayBuffer.load_dataset``) and for the peer
(plain h5py reading every array into numpy, what d4rl's ``get_dataset()`` does before any
conversion):

* seconds from the HDF5 file to a usable buffer / to numpy arrays;
* bytes the buffer holds against the raw array bytes (observations, actions, rewards, terminals,
  timeouts as stored), and the process's peak resident memory;
* sampling speed of 256-transition batches (kit buffer vs. numpy fancy indexing + torch.from_numpy).

Run: ``python benchmarks/dataset_load.py [--rows 1000000] [--compression gzip|none] [--next-obs] [--with-loop]``
(one thread; the file is written to a temporary folder first and is not part of the timing).
"""
from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def make_file(path: Path, rows: int, compression: str | None, next_obs: bool) -> dict:
    from vla_rl_lib.data.hdf5 import write_hdf5

    rng = np.random.default_rng(0)
    timeouts = np.zeros(rows, bool)
    timeouts[999::1000] = True
    terminals = rng.random(rows) < 0.002
    terminals &= ~timeouts
    data = {
        "observations": rng.normal(size=(rows, 11)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(rows, 3)).astype(np.float32),
        "rewards": rng.normal(3, 1, size=rows).astype(np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
        "infos/qpos": rng.normal(size=(rows, 6)).astype(np.float32),
        "infos/qvel": rng.normal(size=(rows, 6)).astype(np.float32),
        "metadata/algorithm": "benchmark",
    }
    if next_obs:
        data["next_observations"] = np.roll(data["observations"], -1, axis=0)
    write_hdf5(path, data, compression=compression)
    raw = sum(data[k].nbytes for k in ("observations", "actions", "rewards", "terminals", "timeouts"))
    if next_obs:
        raw += data["next_observations"].nbytes
    return {"raw_bytes": raw}


def peer_h5py(path: Path) -> tuple[float, dict]:
    """What d4rl's get_dataset() does: read every dataset of the file into numpy."""
    import h5py

    start = time.perf_counter()
    with h5py.File(path, "r") as f:
        names = []
        f.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
        out = {k: f[k][()] for k in names}
    return time.perf_counter() - start, out


def peer_qlearning_loop(data: dict) -> float:
    """d4rl.qlearning_dataset's per-row Python loop (re-written here), the usual next step."""
    start = time.perf_counter()
    obs, nxt, act, rew, done = [], [], [], [], []
    n = data["rewards"].shape[0]
    for i in range(n - 1):
        if data["timeouts"][i]:
            continue
        obs.append(data["observations"][i])
        nxt.append(data["observations"][i + 1])
        act.append(data["actions"][i])
        rew.append(data["rewards"][i])
        done.append(bool(data["terminals"][i]))
    np.array(obs), np.array(nxt), np.array(act), np.array(rew), np.array(done)
    return time.perf_counter() - start


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def kit_load(path: Path):
    from vla_rl_lib.data.buffer import OfflineReplayBuffer
    from vla_rl_lib.data.datasets import load_dataset

    start = time.perf_counter()
    data = load_dataset(path)
    t_read = time.perf_counter() - start
    buf = OfflineReplayBuffer(11, 3).load_dataset(data)
    del data
    return time.perf_counter() - start, t_read, buf


def sampling(buf, arrays: dict, batches: int = 2000) -> tuple[float, float]:
    g = torch.Generator().manual_seed(0)
    buf.sample(256, generator=g)
    start = time.perf_counter()
    for _ in range(batches):
        buf.sample(256, generator=g)
    kit = batches / (time.perf_counter() - start)
    rng = np.random.default_rng(0)
    obs, act, rew, term = arrays["observations"], arrays["actions"], arrays["rewards"], arrays["terminals"]
    n = len(rew) - 1
    start = time.perf_counter()
    for _ in range(batches):
        i = rng.integers(0, n, 256)
        {"observations": torch.from_numpy(obs[i]), "actions": torch.from_numpy(act[i]),
         "rewards": torch.from_numpy(rew[i]), "next_observations": torch.from_numpy(obs[i + 1]),
         "dones": torch.from_numpy(term[i].astype(np.float32))}
    peer = batches / (time.perf_counter() - start)
    return kit, peer


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--compression", choices=("gzip", "none"), default="gzip")
    parser.add_argument("--next-obs", action="store_true", help="the file carries next_observations")
    parser.add_argument("--with-loop", action="store_true", help="also time d4rl.qlearning_dataset's Python loop")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    compression = None if args.compression == "none" else "gzip"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hopper_bench-v2.hdf5"
        info = make_file(path, args.rows, compression, args.next_obs)
        size_mb = path.stat().st_size / 1e6
        gc.collect()
        rss0 = rss_mb()
        t_kit, t_read, buf = kit_load(path)
        gc.collect()
        rss1 = rss_mb()
        t_peer, arrays = peer_h5py(path)
        t_loop = peer_qlearning_loop(arrays) if args.with_loop else None
        kit_bps, peer_bps = sampling(buf, arrays)
    raw = info["raw_bytes"]
    held = buf.nbytes()
    print(f"dataset: {args.rows} rows, Hopper dims (11, 3), file {size_mb:.1f} MB ({args.compression}"
          f"{', with next_observations' if args.next_obs else ''}, plus infos/qpos, infos/qvel); torch threads 1")
    print(f"load  kit   file -> OfflineReplayBuffer: {t_kit:6.2f} s  (of which load_dataset reading the file {t_read:.2f} s); "
          f"{len(buf)} transitions")
    print(f"load  peer  h5py, every key -> numpy (d4rl get_dataset): {t_peer:6.2f} s"
          + (f";  + d4rl.qlearning_dataset loop: {t_loop:.2f} s" if t_loop is not None else ""))
    print(f"memory      buffer holds {held / 1e6:.1f} MB = {held / raw:.2f} x the raw arrays ({raw / 1e6:.1f} MB); "
          f"process RSS grew by {rss1 - rss0:.0f} MB for the loaded buffer")
    print(f"sample      kit {kit_bps:8.0f} batches/s of 256   peer numpy+from_numpy {peer_bps:8.0f} batches/s")
    ok = t_kit < 10.0 and held <= 2 * raw
    print(f"targets     load < 10 s: {'yes' if t_kit < 10 else 'NO'};  buffer <= 2 x raw: {'yes' if held <= 2 * raw else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
