"""Benchmark: a D4RL-sized dataset (1M transitions, Hopper dimensions 11/3) from file to buffer.

Prints, for the kit (``load_dataset`` + ``OfflineReplayBuffer.load_dataset``) and for the peer
(plain h5py reading every array into numpy, what d4rl's ``get_dataset()`` does before any
conversion):

* seconds from the HDF5 file to a usable buffer / to numpy arrays;
* bytes the buffer holds against the raw array bytes (observations, actions, rewards, terminals,
  timeouts as stored), and the process's peak resident memory;
* sampling speed of 256-transition batches (kit buffer vs. numpy fancy indexing + torch.from_numpy).

Run: ``python benchmarks/dataset_load.py [--rows 1000000] [--compression gzip|none] [--next-obs]``
(one thread; the file is written to a temporary folder first and is not part of the timing).
"""
from __future__ import annotations

import argparse
import os
import resource
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
    import h5py

    start = time.perf_counter()
    with h5py.File(path, "r") as f:
        out = {k: f[k][()] for k in ("observations", "actions", "rewards", "terminals", "timeouts")}
        if "next_observations" in f:
            out["next_observations"] = f["next_observations"][()]
    return time.perf_counter() - start, out


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
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    compression = None if args.compression == "none" else "gzip"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hopper_bench-v2.hdf5"
        info = make_file(path, args.rows, compression, args.next_obs)
        size_mb = path.stat().st_size / 1e6
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t_peer, arrays = peer_h5py(path)
        t_kit, t_read, buf = kit_load(path)
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        kit_bps, peer_bps = sampling(buf, arrays)
    raw = info["raw_bytes"]
    held = buf.nbytes()
    print(f"dataset: {args.rows} rows, Hopper dims (11, 3), file {size_mb:.1f} MB ({args.compression}"
          f"{', with next_observations' if args.next_obs else ''}); torch threads 1")
    print(f"load  kit   file -> OfflineReplayBuffer: {t_kit:6.2f} s  (of which reading the HDF5 file {t_read:.2f} s); "
          f"{len(buf)} transitions")
    print(f"load  peer  h5py -> numpy arrays:        {t_peer:6.2f} s")
    print(f"memory      buffer holds {held / 1e6:.1f} MB = {held / raw:.2f} x the raw arrays ({raw / 1e6:.1f} MB); "
          f"peak RSS {rss1:.0f} MB (before loading {rss0:.0f} MB)")
    print(f"sample      kit {kit_bps:8.0f} batches/s of 256   peer numpy+from_numpy {peer_bps:8.0f} batches/s")
    ok = t_kit < 10.0 and held <= 2 * raw
    print(f"targets     load < 10 s: {'yes' if t_kit < 10 else 'NO'};  buffer <= 2 x raw: {'yes' if held <= 2 * raw else 'NO'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
