"""OfflineReplayBuffer: d4rl.qlearning_dataset semantics, sampling, normalisation, episodes."""
import numpy as np
import pytest
import torch

from vla_rl_lib.data.buffer import OfflineReplayBuffer, returns_to_go
from vla_rl_lib.errors import DatasetError


def d4rl_rows(n=60, obs_dim=4, act_dim=2, seed=0, ends=(9, 24, 40), terminal_ends=(24,)):
    """A small D4RL-style dict: episodes end at rows ``ends``; those in terminal_ends are terminals,
    the others timeouts; the dataset's last episode is unfinished."""
    rng = np.random.default_rng(seed)
    terminals = np.zeros(n, bool)
    timeouts = np.zeros(n, bool)
    for e in ends:
        (terminals if e in terminal_ends else timeouts)[e] = True
    return {
        "observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": terminals,
        "timeouts": timeouts,
        "infos/qpos": rng.normal(size=(n, 3)).astype(np.float32),
        "metadata/name": np.bytes_(b"hopper-medium-v2"),
    }


def reference_qlearning(ds):
    """d4rl.qlearning_dataset, re-written as its loop: rows 0..N-2, skipping rows that end on a
    timeout (terminate_on_end=False), next obs from the following row, terminals from the data."""
    obs, nxt, act, rew, done = [], [], [], [], []
    n = ds["rewards"].shape[0]
    for i in range(n - 1):
        if ds["timeouts"][i]:
            continue
        obs.append(ds["observations"][i])
        nxt.append(ds["observations"][i + 1])
        act.append(ds["actions"][i])
        rew.append(ds["rewards"][i])
        done.append(bool(ds["terminals"][i]))
    return {"observations": np.array(obs), "next_observations": np.array(nxt), "actions": np.array(act),
            "rewards": np.array(rew), "dones": np.array(done, dtype=np.float32)}


def all_transitions(buf):
    return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in buf.get(torch.arange(len(buf))).items()}


def test_qlearning_semantics_match_d4rl():
    ds = d4rl_rows()
    buf = OfflineReplayBuffer(4, 2).load_dataset(ds)
    ref = reference_qlearning(ds)
    got = all_transitions(buf)
    # 60 rows - last row - 2 timeout rows
    assert len(buf) == len(ref["rewards"]) == 60 - 1 - 2
    for key in ("observations", "next_observations", "actions", "rewards", "dones"):
        np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
    # the terminal row is a transition with done = 1 and the next row as next obs
    assert got["dones"].sum() == 1


def test_explicit_next_observations_use_every_row():
    ds = d4rl_rows()
    ds["next_observations"] = ds["observations"] + 100.0
    buf = OfflineReplayBuffer(4, 2).load_dataset(ds)
    assert len(buf) == 60  # timeouts only mark episode ends
    got = all_transitions(buf)
    np.testing.assert_array_equal(got["next_observations"], ds["next_observations"])
    np.testing.assert_array_equal(got["dones"], ds["terminals"].astype(np.float32))


def test_transition_dict_without_timeouts():
    ds = d4rl_rows()
    ds["next_observations"] = ds["observations"][::-1].copy()
    del ds["timeouts"]
    buf = OfflineReplayBuffer(4, 2).load_dataset(ds)
    assert len(buf) == 60


def test_sample_shapes_dtypes_device_and_determinism():
    buf = OfflineReplayBuffer(4, 2).load_dataset(d4rl_rows())
    b1 = buf.sample(32, generator=torch.Generator().manual_seed(3))
    b2 = buf.sample(32, generator=torch.Generator().manual_seed(3))
    b3 = buf.sample(32, generator=torch.Generator().manual_seed(4))
    shapes = {"observations": (32, 4), "actions": (32, 2), "rewards": (32,), "next_observations": (32, 4),
              "dones": (32,)}
    for k, shape in shapes.items():
        assert b1[k].shape == shape and b1[k].dtype == torch.float32 and b1[k].device.type == "cpu"
        assert torch.equal(b1[k], b2[k])
    assert not torch.equal(b1["observations"], b3["observations"])
    # every sampled transition is one of the dataset's
    ref = reference_qlearning(d4rl_rows())
    pairs = {tuple(np.round(np.concatenate([o, a]), 5)) for o, a in zip(ref["observations"], ref["actions"])}
    for o, a in zip(b1["observations"].numpy(), b1["actions"].numpy()):
        assert tuple(np.round(np.concatenate([o, a]), 5)) in pairs


def test_input_dict_is_not_modified():
    ds = d4rl_rows()
    before = ds["observations"].copy()
    OfflineReplayBuffer(4, 2, normalize_states=True).load_dataset(ds)
    np.testing.assert_array_equal(ds["observations"], before)


def test_state_normalisation_as_corl():
    ds = d4rl_rows()
    ds["observations"] = ds["observations"] * np.array([1, 10, 100, 0.1], np.float32) + 5
    buf = OfflineReplayBuffer(4, 2, normalize_states=True).load_dataset(ds)
    ref = reference_qlearning(ds)
    mean = ref["observations"].mean(0)
    std = ref["observations"].std(0) + 1e-3
    np.testing.assert_allclose(buf.obs_mean, mean, rtol=1e-5)
    np.testing.assert_allclose(buf.obs_std, std, rtol=1e-5)
    assert buf.obs_mean.dtype == np.float32 and buf.obs_std.dtype == np.float32
    got = all_transitions(buf)
    np.testing.assert_allclose(got["observations"], (ref["observations"] - mean) / std, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got["next_observations"], (ref["next_observations"] - mean) / std, rtol=1e-4, atol=1e-5)
    assert np.abs(got["observations"].mean(0)).max() < 1e-4
    # env observations are normalised the same way
    np.testing.assert_allclose(buf.normalize_observations(ref["observations"][:3]), got["observations"][:3], atol=1e-5)
    # the state round-trips into a fresh buffer (a checkpoint restore)
    state = buf.normalization_state()
    assert isinstance(state["obs_mean"], list)
    other = OfflineReplayBuffer(4, 2).load_normalization_state(state)
    np.testing.assert_array_equal(other.obs_mean, buf.obs_mean)
    np.testing.assert_array_equal(other.obs_std, buf.obs_std)
    # restoring other statistics into a loaded buffer re-normalises the stored data
    raw = OfflineReplayBuffer(4, 2).load_dataset(ds)
    raw.load_normalization_state(state)
    np.testing.assert_allclose(all_transitions(raw)["observations"], got["observations"], atol=1e-4)
    with pytest.raises(DatasetError, match="obs_dim=4"):
        OfflineReplayBuffer(4, 2).load_normalization_state({"obs_mean": [0.0] * 3, "obs_std": [1.0] * 3})


def test_reward_normalisation_as_corl():
    ds = d4rl_rows()
    buf = OfflineReplayBuffer(4, 2, normalize_rewards=True).load_dataset(ds)
    bounds = [(0, 10), (10, 25), (25, 41), (41, 60)]
    rets = [ds["rewards"][s:e].sum() for s, e in bounds]
    scale = 1000.0 / (max(rets) - min(rets))
    assert buf.reward_scale == pytest.approx(scale, rel=1e-5)
    got = all_transitions(buf)
    np.testing.assert_allclose(got["rewards"], reference_qlearning(ds)["rewards"] * scale, rtol=1e-5)
    # episodes keep the data's rewards
    np.testing.assert_array_equal(buf.episodes()[0]["rewards"], ds["rewards"][:10])


def test_episodes_and_returns_to_go():
    ds = d4rl_rows()
    buf = OfflineReplayBuffer(4, 2).load_dataset(ds)
    eps = buf.episodes()
    assert [len(e["rewards"]) for e in eps] == [10, 15, 16, 19]
    for e, (s, end) in zip(eps, [(0, 10), (10, 25), (25, 41), (41, 60)]):
        r = ds["rewards"][s:end]
        np.testing.assert_allclose(e["returns_to_go"], [r[t:].sum() for t in range(len(r))], rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(e["timesteps"], np.arange(end - s))
        np.testing.assert_array_equal(e["observations"], ds["observations"][s:end])
        np.testing.assert_array_equal(e["actions"], ds["actions"][s:end])
    assert eps[1]["terminals"][-1] and not eps[0]["terminals"].any()
    np.testing.assert_allclose(returns_to_go(np.array([1.0, 2.0, 3.0], np.float32)), [6, 5, 3])


def test_env_id_and_name_from_metadata_or_name():
    buf = OfflineReplayBuffer(4, 2).load_dataset(d4rl_rows())
    assert buf.dataset_name == "hopper-medium-v2"
    assert buf.env_id == "Hopper-v5"
    ds = d4rl_rows()
    ds["metadata/env_id"] = "Pendulum-v1"
    assert OfflineReplayBuffer(4, 2).load_dataset(ds).env_id == "Pendulum-v1"


def test_dimension_mismatch_names_key_and_shapes():
    ds = d4rl_rows()
    with pytest.raises(DatasetError, match=r"'observations'.*\(60, 4\).*obs_dim=11"):
        OfflineReplayBuffer(11, 2).load_dataset(ds)
    with pytest.raises(DatasetError, match=r"'actions'.*\(60, 2\).*action_dim=3"):
        OfflineReplayBuffer(4, 3).load_dataset(ds)


def test_images_and_instructions_are_sampled():
    ds = d4rl_rows(n=30, ends=(9, 19), terminal_ends=())
    rng = np.random.default_rng(0)
    ds["images"] = rng.integers(0, 255, size=(30, 8, 8, 3), dtype=np.uint8)
    ds["instructions"] = np.array([f"go {i}".encode() for i in range(30)], dtype="S8")
    buf = OfflineReplayBuffer(4, 2).load_dataset(ds)
    batch = buf.sample(16, generator=torch.Generator().manual_seed(0))
    assert batch["images"].dtype == torch.uint8 and batch["images"].shape == (16, 8, 8, 3)
    for o, img, nimg, text in zip(batch["observations"], batch["images"], batch["next_images"], batch["instructions"]):
        row = int(text.split()[1])
        np.testing.assert_array_equal(o.numpy(), ds["observations"][row])
        np.testing.assert_array_equal(img.numpy(), ds["images"][row])
        np.testing.assert_array_equal(nimg.numpy(), ds["images"][row + 1])
    assert buf.episodes()[0]["instructions"][:2] == ["go 0", "go 1"]


def test_buffer_stores_rows_once():
    ds = d4rl_rows(n=10_000, obs_dim=11, act_dim=3, ends=tuple(range(999, 10_000, 1000)), terminal_ends=())
    raw = sum(ds[k].nbytes for k in ("observations", "actions", "rewards", "terminals", "timeouts"))
    buf = OfflineReplayBuffer(11, 3).load_dataset(ds)
    assert buf.nbytes() <= 1.3 * raw


def test_empty_buffer_and_bad_batch():
    buf = OfflineReplayBuffer(4, 2)
    with pytest.raises(DatasetError, match="load_dataset"):
        buf.sample(4)
    buf.load_dataset(d4rl_rows())
    with pytest.raises(DatasetError, match="batch_size"):
        buf.sample(0)
