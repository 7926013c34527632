"""The kit's shipped ``pendulum-medium-v0`` for the offline learning tests (IQL, CQL): data, buffer, config."""
from __future__ import annotations

import functools

from vla_rl_lib.config import OfflineRLConfig
from vla_rl_lib.data import load_dataset
from vla_rl_lib.data.buffer import OfflineReplayBuffer

DATASET = "pendulum-medium-v0"


@functools.lru_cache(maxsize=None)
def data():
    return load_dataset(DATASET)


def buffer(**kw) -> OfflineReplayBuffer:
    return OfflineReplayBuffer(3, 1, **kw).load_dataset(data())


def config(tmp_path, steps, **kw) -> OfflineRLConfig:
    base = dict(num_epochs=1, steps_per_epoch=steps, eval_episodes=0, save_freq=0, log_freq=max(steps // 4, 1),
                device="cpu", normalize_states=True, output_dir=str(tmp_path / "run"), seed=0)
    base.update(kw)
    return OfflineRLConfig(**base)
