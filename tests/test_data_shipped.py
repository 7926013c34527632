"""The datasets that ship with the package: checksums, loading by name, and that their quality is real."""
import json

import numpy as np
import pytest

from vla_rl_lib.data.buffer import OfflineReplayBuffer
from vla_rl_lib.data.datasets import MANIFEST, SHIPPED_DIR, load_dataset, normalized_score
from vla_rl_lib.data.generate import SHIPPED, sha256_of
from vla_rl_lib.data.hdf5 import meta_value
from vla_rl_lib.data.summary import summarize_dataset

MANIFEST_DATA = json.loads(MANIFEST.read_text())
NAMES = sorted(SHIPPED)
DIMS = {"pendulum-medium-v0": (3, 1), "pendulum-medium-replay-v0": (3, 1), "pendulum-medium-expert-v0": (3, 1), "pendulum-expert-v0": (3, 1),
        "hopper-medium-v0": (11, 3), "hopper-medium-replay-v0": (11, 3), "hopper-medium-expert-v0": (11, 3),
        "driving-expert-v1": (18, 2), "maze-stitch-v0": (4, 2), "maze-mixed-v0": (4, 2), "driving-mixed-v1": (18, 2),
        "maze-stitch-dense-v0": (4, 2)}


def test_every_shipped_dataset_is_in_the_manifest():
    assert set(NAMES) <= set(MANIFEST_DATA["datasets"])
    assert {"pendulum-medium-v0", "hopper-medium-v0", "driving-expert-v1"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_checksum_and_size(name):
    entry = MANIFEST_DATA["datasets"][name]
    path = SHIPPED_DIR / entry["file"]
    assert path.is_file(), f"{path} is missing; regenerate with: {entry['command']}"
    assert path.stat().st_size == entry["bytes"]
    assert sha256_of(path) == entry["sha256"], f"{path} does not match its checksum; regenerate: {entry['command']}"
    assert entry["bytes"] < 12_000_000  # a few MB each


@pytest.mark.parametrize("name", NAMES)
def test_loads_by_name_into_the_buffer(name):
    entry = MANIFEST_DATA["datasets"][name]
    data = load_dataset(name, data_dir=SHIPPED_DIR)  # the shipped file even if you made a bigger one
    obs_dim, act_dim = DIMS[name]
    buf = OfflineReplayBuffer(obs_dim, act_dim).load_dataset(data)
    assert len(buf) == entry["transitions"] and data["actions"].shape[0] == SHIPPED[name]["size"]
    assert buf.dataset_name == name and buf.env_id == entry["env_id"]
    assert meta_value(data, "quality") == SHIPPED[name]["quality"] == name.split("-", 1)[1].rsplit("-", 1)[0]
    s = summarize_dataset(data)
    assert s["n_episodes"] == entry["episodes"]
    assert s["return_mean"] == pytest.approx(entry["return_mean"], rel=1e-6)


@pytest.mark.parametrize("name", ["pendulum-medium-v0", "hopper-medium-v0"])
def test_medium_is_between_random_and_expert(name):
    """A 'medium' dataset's returns lie well between the random policy's and the expert's
    (measured during generation and stored in the file)."""
    data = load_dataset(name, data_dir=SHIPPED_DIR)
    r_random, r_expert = meta_value(data, "random_return"), meta_value(data, "expert_eval_return")
    frac = (summarize_dataset(data)["return_mean"] - r_random) / (r_expert - r_random)
    assert 0.15 < frac < 0.85, (r_random, r_expert, frac)
    assert meta_value(data, "medium_eval_return") >= meta_value(data, "medium_target_return")
    assert meta_value(data, "algorithm").startswith("SAC") and meta_value(data, "sac_steps") > 0
    assert any(k.startswith("metadata/policy/") for k in data)


def test_mixed_pendulum_datasets_are_mixed():
    """medium-replay: the SAC replay buffer up to the medium snapshot (below medium on average, with
    episodes from random-like to medium); medium-expert: half medium, half expert episodes."""
    replay = load_dataset("pendulum-medium-replay-v0", data_dir=SHIPPED_DIR)
    r_random, r_medium = meta_value(replay, "random_return"), meta_value(replay, "medium_eval_return")
    s = summarize_dataset(replay)
    assert s["return_mean"] < r_medium and s["return_min"] < r_random < r_medium < s["return_max"]
    assert meta_value(replay, "policy_step") == s["n_transitions"]  # every step SAC took until the snapshot
    mixed = load_dataset("pendulum-medium-expert-v0", data_dir=SHIPPED_DIR)
    from vla_rl_lib.data.generate import episode_returns

    returns = episode_returns(mixed)
    half = len(returns) // 2
    assert returns[half:].mean() - returns[:half].mean() > 400  # the expert half is far better
    assert meta_value(mixed, "medium_rows") == len(mixed["rewards"]) // 2


def test_mixed_hopper_datasets_are_mixed():
    """Hopper's medium-replay (the SAC replay until the medium snapshot) and medium-expert (medium rows, then expert rows)."""
    from vla_rl_lib.data.generate import episode_returns

    replay = load_dataset("hopper-medium-replay-v0", data_dir=SHIPPED_DIR)
    assert len(replay["rewards"]) == meta_value(replay, "policy_step")
    assert summarize_dataset(replay)["return_mean"] < meta_value(replay, "medium_eval_return")
    mixed = load_dataset("hopper-medium-expert-v0", data_dir=SHIPPED_DIR)
    half = meta_value(mixed, "medium_rows")
    from vla_rl_lib.data.buffer import episode_bounds

    bounds = episode_bounds(mixed["terminals"], mixed["timeouts"])
    returns = episode_returns(mixed)
    medium = [r for (s, _), r in zip(bounds, returns) if s < half]
    expert = [r for (s, _), r in zip(bounds, returns) if s >= half]
    assert np.mean(expert) > np.mean(medium) + 100


def test_driving_expert_has_images_instructions_and_beats_random():
    data = load_dataset("driving-expert-v1", data_dir=SHIPPED_DIR)
    assert data["images"].shape[1:] == (64, 64, 3) and data["images"].dtype == np.uint8
    assert len(set(data["instructions"].tolist())) == 5
    ret = summarize_dataset(data)["return_mean"]
    assert normalized_score("driving-expert-v1", ret) > 50
