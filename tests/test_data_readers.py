"""RoboMimic, V-D4RL and Minari readers, each on data written in exactly that layout."""
import json

import h5py
import numpy as np
import pytest
import torch

from vla_rl_lib.data.buffer import OfflineReplayBuffer
from vla_rl_lib.data.datasets import load_dataset
from vla_rl_lib.data.readers import read_robomimic, read_vd4rl
from vla_rl_lib.errors import DatasetError, DatasetNotFoundError


def write_robomimic(path, lengths=(7, 5, 9), with_next_obs=True):
    """RoboMimic's layout: data/demo_N/{obs/*, next_obs/*, actions, rewards, dones, states}."""
    rng = np.random.default_rng(0)
    demos = {}
    with h5py.File(path, "w") as f:
        data = f.create_group("data")
        data.attrs["env_args"] = json.dumps({"env_name": "Lift", "type": 1, "env_kwargs": {}})
        total = 0
        for i, t in enumerate(lengths):
            g = data.create_group(f"demo_{i}")
            g.attrs["num_samples"] = t
            d = {
                "robot0_eef_pos": rng.normal(size=(t + 1, 3)).astype(np.float64),
                "object": rng.normal(size=(t + 1, 10)).astype(np.float64),
                "agentview_image": rng.integers(0, 255, size=(t + 1, 84, 84, 3), dtype=np.uint8),
            }
            for k, v in d.items():
                g.create_dataset(f"obs/{k}", data=v[:-1])
                if with_next_obs:
                    g.create_dataset(f"next_obs/{k}", data=v[1:])
            g.create_dataset("actions", data=rng.uniform(-1, 1, size=(t, 7)))
            rewards = np.zeros(t)
            dones = np.zeros(t, dtype=np.int64)
            if i != 1:  # demo_1 ends without success
                rewards[-1] = 1.0
                dones[-1] = 1
            g.create_dataset("rewards", data=rewards)
            g.create_dataset("dones", data=dones)
            g.create_dataset("states", data=rng.normal(size=(t, 32)))
            demos[i] = d
            total += t
        data.attrs["total"] = total
        f.create_dataset("mask/train", data=np.array([b"demo_0", b"demo_2"]))
    return demos


def test_robomimic_reader(tmp_path):
    path = tmp_path / "lift_ph.hdf5"
    demos = write_robomimic(path)
    ds = read_robomimic(path)
    assert ds["observations"].shape == (21, 13)  # object (10) + robot0_eef_pos (3), sorted keys
    assert ds["images"].shape == (21, 84, 84, 3) and ds["images"].dtype == np.uint8
    np.testing.assert_allclose(ds["observations"][:7, :10], demos[0]["object"][:-1], rtol=1e-6)
    np.testing.assert_allclose(ds["next_observations"][7:12, 10:], demos[1]["robot0_eef_pos"][1:], rtol=1e-6)
    np.testing.assert_array_equal(ds["next_images"][12:], demos[2]["agentview_image"][1:])
    assert ds["terminals"].sum() == 2 and ds["terminals"][6] and ds["terminals"][20]
    assert ds["timeouts"][11] and ds["timeouts"].sum() == 1  # the unsuccessful demo's end
    assert ds["metadata/env_id"] == "Lift"
    buf = OfflineReplayBuffer(13, 7).load_dataset(load_dataset(path))  # detected from the layout
    assert len(buf) == 21
    batch = buf.sample(8, generator=torch.Generator().manual_seed(0))
    assert batch["images"].shape == (8, 84, 84, 3)
    assert [len(e["rewards"]) for e in buf.episodes()] == [7, 5, 9]
    # the filter key and explicit obs keys
    train = read_robomimic(path, obs_keys=["robot0_eef_pos"], filter_key="train")
    assert train["observations"].shape == (16, 3)
    # without next_obs, the next observation is the following step (the last one repeats)
    write_robomimic(tmp_path / "no_next.hdf5", with_next_obs=False)
    nn = read_robomimic(tmp_path / "no_next.hdf5")
    np.testing.assert_array_equal(nn["next_observations"][:6], nn["observations"][1:7])
    with pytest.raises(DatasetError, match="mask/valid"):
        read_robomimic(path, filter_key="valid")


def test_robomimic_missing_key(tmp_path):
    path = tmp_path / "bad.hdf5"
    write_robomimic(path)
    with h5py.File(path, "a") as f:
        del f["data/demo_1/rewards"]
    with pytest.raises(DatasetError, match=r"demo_1.*'rewards'"):
        read_robomimic(path)


def vd4rl_episode(rng, t=10, terminal=False):
    """One DreamerV2-format episode as V-D4RL ships them: step 0 is the reset (zero action, no reward)."""
    ep = {
        "image": rng.integers(0, 255, size=(t + 1, 84, 84, 3), dtype=np.uint8),
        "action": np.concatenate([np.zeros((1, 6)), rng.uniform(-1, 1, size=(t, 6))]).astype(np.float32),
        "reward": np.concatenate([[0.0], rng.uniform(0, 1, size=t)]).astype(np.float32),
        "discount": np.ones(t + 1, np.float32),
        "is_first": np.eye(1, t + 1, 0, dtype=bool)[0],
        "is_last": np.eye(1, t + 1, t, dtype=bool)[0],
        "is_terminal": np.zeros(t + 1, bool),
    }
    if terminal:
        ep["discount"][-1] = 0.0
        ep["is_terminal"][-1] = True
    return ep


def test_vd4rl_npz_reader(tmp_path):
    rng = np.random.default_rng(1)
    eps = [vd4rl_episode(rng, 10), vd4rl_episode(rng, 6, terminal=True), vd4rl_episode(rng, 8)]
    d = tmp_path / "walker_walk" / "medium" / "84px"
    d.mkdir(parents=True)
    for i, ep in enumerate(eps):
        np.savez(d / f"20220101T0000{i:02d}-{i:032x}-{len(ep['reward']) - 1}.npz", **ep)
    ds = read_vd4rl(d)
    assert ds["images"].shape == (24, 84, 84, 3) and ds["observations"].shape == (24, 0)
    np.testing.assert_array_equal(ds["images"][:10], eps[0]["image"][:-1])
    np.testing.assert_array_equal(ds["next_images"][:10], eps[0]["image"][1:])
    np.testing.assert_array_equal(ds["actions"][:10], eps[0]["action"][1:])
    np.testing.assert_array_equal(ds["rewards"][10:16], eps[1]["reward"][1:])
    assert ds["terminals"][15] and ds["terminals"].sum() == 1
    assert ds["timeouts"][9] and ds["timeouts"][23] and ds["timeouts"].sum() == 2
    buf = OfflineReplayBuffer(0, 6).load_dataset(load_dataset(d))
    assert len(buf) == 24
    batch = buf.sample(5, generator=torch.Generator().manual_seed(0))
    assert batch["images"].shape == (5, 84, 84, 3) and batch["next_images"].dtype == torch.uint8
    assert sum(e["rewards"].sum() for e in buf.episodes()) == pytest.approx(sum(e["reward"].sum() for e in eps))
    (d / "broken-000-5.npz").write_bytes(b"PK\x03\x04 broken zip")
    with pytest.raises(DatasetError, match="broken-000-5.npz"):
        read_vd4rl(d)


def test_vd4rl_hdf5_shard_reader(tmp_path):
    """DrQ+BC's shards: observation (N, 3, 84, 84), step_type 0 first / 1 mid / 2 last."""
    rng = np.random.default_rng(2)
    eps = [vd4rl_episode(rng, 5), vd4rl_episode(rng, 4, terminal=True)]
    with h5py.File(tmp_path / "shard_0.hdf5", "w") as f:
        f["observation"] = np.concatenate([e["image"].transpose(0, 3, 1, 2) for e in eps])
        f["action"] = np.concatenate([e["action"] for e in eps])
        f["reward"] = np.concatenate([e["reward"] for e in eps])
        f["discount"] = np.concatenate([e["discount"] for e in eps])
        f["step_type"] = np.concatenate([[0] + [1] * (len(e["reward"]) - 2) + [2] for e in eps])
    ds = load_dataset(tmp_path / "shard_0.hdf5")
    assert ds["images"].shape == (9, 84, 84, 3)
    np.testing.assert_array_equal(ds["images"][5:], eps[1]["image"][:-1])
    assert ds["terminals"][8] and ds["timeouts"][4]


def test_vd4rl_missing_folder(tmp_path):
    with pytest.raises(DatasetNotFoundError):
        read_vd4rl(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no .npz"):
        read_vd4rl(tmp_path / "empty")


def test_minari_local_dataset(tmp_path, monkeypatch):
    minari = pytest.importorskip("minari")
    import gymnasium as gym
    from minari.data_collector import EpisodeBuffer

    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    rng = np.random.default_rng(0)
    episodes = []
    for i in range(3):
        t = 50
        episodes.append(EpisodeBuffer(
            id=i, observations=rng.normal(size=(t + 1, 3)).astype(np.float32),
            actions=rng.uniform(-2, 2, size=(t, 1)).astype(np.float32), rewards=list(rng.normal(size=t)),
            terminations=[False] * t, truncations=[False] * (t - 1) + [True], infos={}))
    with pytest.warns(UserWarning):
        minari.create_dataset_from_buffers("kit/pendulum/random-v0", episodes, env=gym.make("Pendulum-v1"),
                                           algorithm_name="random")
    ds = load_dataset("kit/pendulum/random-v0")
    assert ds["observations"].shape == (150, 3) and ds["actions"].shape == (150, 1)
    assert ds["timeouts"].sum() == 3 and ds["metadata/env_id"] == "Pendulum-v1"
    np.testing.assert_array_equal(ds["observations"][:50], episodes[0].observations[:-1])
    np.testing.assert_array_equal(ds["next_observations"][:50], episodes[0].observations[1:])
    buf = OfflineReplayBuffer(3, 1).load_dataset(ds)
    assert len(buf) == 150 and buf.env_id == "Pendulum-v1"
    with pytest.raises(DatasetNotFoundError, match="minari download kit/pendulum/expert-v0"):
        load_dataset("kit/pendulum/expert-v0")
