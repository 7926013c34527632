"""D4RL-layout HDF5 read/write and bad input: each problem is one DatasetError naming key/shape/file."""
import h5py
import numpy as np
import pytest

from vla_rl_lib.data.buffer import OfflineReplayBuffer
from vla_rl_lib.data.datasets import load_dataset
from vla_rl_lib.data.hdf5 import read_hdf5, validate_dataset, write_hdf5
from vla_rl_lib.errors import DatasetError, DatasetNotFoundError


def rows(n=50, obs_dim=3, act_dim=2, seed=0):
    rng = np.random.default_rng(seed)
    timeouts = np.zeros(n, bool)
    timeouts[19] = timeouts[39] = True
    return {
        "observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
        "actions": rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": np.zeros(n, bool),
        "timeouts": timeouts,
    }


def test_roundtrip_keeps_arrays_groups_and_metadata(tmp_path):
    ds = rows()
    ds["infos/qpos"] = np.arange(100, dtype=np.float32).reshape(50, 2)
    ds["metadata/algorithm"] = "SAC"
    ds["metadata/policy/fc0/weight"] = np.ones((4, 3), np.float32)
    ds["metadata/seed"] = 7
    ds["instructions"] = ["keep the lane"] * 50
    path = write_hdf5(tmp_path / "x.hdf5", ds)
    back = read_hdf5(path)
    for k in ("observations", "actions", "rewards", "terminals", "timeouts", "infos/qpos", "metadata/policy/fc0/weight"):
        np.testing.assert_array_equal(back[k], np.asarray(ds[k]), err_msg=k)
    assert back["metadata/algorithm"] == b"SAC" and int(back["metadata/seed"]) == 7
    assert back["instructions"][0] == b"keep the lane"
    with h5py.File(path) as f:  # the D4RL layout: groups for infos/ and metadata/, compressed arrays
        assert isinstance(f["infos"], h5py.Group) and f["observations"].compression == "gzip"
    loaded = load_dataset(path)
    assert loaded["metadata/name"] == "x" and "metadata/env_id" in loaded


def test_missing_key(tmp_path):
    ds = rows()
    del ds["actions"]
    with pytest.raises(DatasetError, match=r"missing required key\(s\) \['actions'\]"):
        validate_dataset(ds)
    ds = rows()
    del ds["timeouts"]
    with pytest.raises(DatasetError, match="'timeouts'"):
        OfflineReplayBuffer(3, 2).load_dataset(ds)


def test_length_mismatch_names_both_keys():
    ds = rows()
    ds["rewards"] = ds["rewards"][:-1]
    with pytest.raises(DatasetError, match=r"'rewards' has 49 rows.*'observations' has 50"):
        OfflineReplayBuffer(3, 2).load_dataset(ds)
    ds = rows()
    ds["infos/qpos"] = np.zeros((10, 2))
    with pytest.raises(DatasetError, match=r"'infos/qpos' has 10 rows"):
        validate_dataset(ds)


@pytest.mark.parametrize("key,value,what", [("observations", np.nan, "NaN"), ("rewards", np.inf, "inf"),
                                            ("actions", -np.inf, "inf")])
def test_non_finite_values(key, value, what):
    ds = rows()
    ds[key] = ds[key].copy()
    ds[key][7] = value
    with pytest.raises(DatasetError, match=rf"'{key}'.*non-finite.*{what}.*row 7"):
        OfflineReplayBuffer(3, 2).load_dataset(ds)


def test_wrong_dtypes():
    ds = rows()
    ds["observations"] = ds["observations"].astype(str)
    with pytest.raises(DatasetError, match=r"'observations' has dtype <U"):
        validate_dataset(ds)
    ds = rows()
    ds["terminals"] = np.full(50, 0.5)
    with pytest.raises(DatasetError, match=r"'terminals' must hold only 0/1.*0.5"):
        validate_dataset(ds)
    ds = rows()
    ds["images"] = np.zeros((50, 8, 8, 3), np.float32)
    with pytest.raises(DatasetError, match=r"'images' has dtype float32.*uint8"):
        validate_dataset(ds)
    ds = rows()
    ds["images"] = np.zeros((50, 3, 8, 8), np.uint8)
    with pytest.raises(DatasetError, match=r"'images' has shape \(50, 3, 8, 8\)"):
        validate_dataset(ds)
    ds = rows()
    ds["actions"] = ds["actions"][:, 0]
    with pytest.raises(DatasetError, match=r"'actions' has shape \(50,\)"):
        validate_dataset(ds)
    # 0/1 integers are fine flags
    ds = rows()
    ds["terminals"] = np.zeros(50, np.int64)
    assert validate_dataset(ds)["terminals"].dtype == bool


def test_size_mismatch_with_trainer():
    with pytest.raises(DatasetError, match=r"'observations' has shape \(50, 3\).*obs_dim=11"):
        OfflineReplayBuffer(11, 3).load_dataset(rows())


def test_empty_dataset():
    with pytest.raises(DatasetError, match="empty"):
        validate_dataset({})
    ds = {k: v[:0] for k, v in rows().items()}
    with pytest.raises(DatasetError, match=r"empty.*\(0, 3\)"):
        OfflineReplayBuffer(3, 2).load_dataset(ds)
    one = {k: v[:1] for k, v in rows().items()}
    with pytest.raises(DatasetError, match="no usable transition"):
        OfflineReplayBuffer(3, 2).load_dataset(one)


def test_truncated_and_corrupted_files(tmp_path):
    path = write_hdf5(tmp_path / "good.hdf5", rows(n=5000))
    blob = path.read_bytes()
    truncated = tmp_path / "truncated.hdf5"
    truncated.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DatasetError, match="truncated.hdf5"):
        load_dataset(truncated)
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"this is not hdf5" * 100)
    with pytest.raises(DatasetError, match=r"garbage.h5.*not an HDF5"):
        read_hdf5(garbage)
    # a readable header but a damaged data chunk
    corrupt = tmp_path / "corrupt.hdf5"
    with h5py.File(path) as f:
        offset = f["observations"].id.get_chunk_info(0).byte_offset
    data = bytearray(blob)
    data[offset: offset + 64] = b"\xff" * 64
    corrupt.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"corrupt.hdf5"):
        read_hdf5(corrupt)
    with pytest.raises(DatasetNotFoundError, match="nope.hdf5"):
        load_dataset(tmp_path / "nope.hdf5")
