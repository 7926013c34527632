"""Dataset names, file locations, not-found errors, normalised scores, summaries."""
import numpy as np
import pytest

from vla_rl_lib.data.buffer import OfflineReplayBuffer
from vla_rl_lib.data.datasets import (D4RL_REF_SCORES, d4rl_file_name, env_id_for, has_reference, load_dataset,
                                      normalized_score, parse_name)
from vla_rl_lib.data.hdf5 import write_hdf5
from vla_rl_lib.data.summary import format_summary, summarize_dataset
from vla_rl_lib.errors import DatasetNotFoundError

ENVS = {"hopper": ("Hopper-v5", 11, 3), "halfcheetah": ("HalfCheetah-v5", 17, 6), "walker2d": ("Walker2d-v5", 17, 6)}
QUALITIES = ("random", "medium", "expert", "medium-replay", "medium-expert")


def d4rl_like(obs_dim, act_dim, n=300, seed=0):
    """What a D4RL v2 file holds (no next_observations, timeouts every 100 steps)."""
    rng = np.random.default_rng(seed)
    timeouts = np.zeros(n, bool)
    timeouts[99::100] = True
    return {"observations": rng.normal(size=(n, obs_dim)).astype(np.float32),
            "actions": rng.uniform(-1, 1, (n, act_dim)).astype(np.float32),
            "rewards": rng.normal(1, 0.1, n).astype(np.float32), "terminals": np.zeros(n, bool),
            "timeouts": timeouts, "infos/qpos": np.zeros((n, 6), np.float32),
            "metadata/algorithm": "SAC"}


def test_d4rl_file_names_are_d4rls():
    assert d4rl_file_name("hopper-medium-v2") == "hopper_medium-v2.hdf5"
    assert d4rl_file_name("hopper-medium-replay-v2") == "hopper_medium_replay-v2.hdf5"
    assert d4rl_file_name("halfcheetah-medium-expert-v2") == "halfcheetah_medium_expert-v2.hdf5"
    assert d4rl_file_name("walker2d-random-v2") == "walker2d_random-v2.hdf5"
    for env in ENVS:
        for q in QUALITIES:
            parsed = parse_name(f"{env}-{q}-v2")
            assert parsed.kind == "d4rl" and parsed.quality == q and parsed.env_id == ENVS[env][0]


def test_d4rl_names_read_from_d4rl_dataset_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    write_hdf5(tmp_path / "hopper_medium_replay-v2.hdf5", d4rl_like(11, 3))
    ds = load_dataset("hopper-medium-replay-v2")
    assert ds["metadata/name"] == "hopper-medium-replay-v2" and ds["metadata/env_id"] == "Hopper-v5"
    buf = OfflineReplayBuffer(11, 3).load_dataset(ds)
    assert len(buf) == 300 - 1 - 2 and buf.env_id == "Hopper-v5" and buf.dataset_name == "hopper-medium-replay-v2"
    # ~/.d4rl/datasets is the other place d4rl keeps them
    monkeypatch.delenv("D4RL_DATASET_DIR")
    home = tmp_path / "home" / ".d4rl" / "datasets"
    write_hdf5(home / "walker2d_expert-v2.hdf5", d4rl_like(17, 6))
    assert load_dataset("walker2d-expert-v2")["metadata/env_id"] == "Walker2d-v5"
    # the buffer takes a name too
    assert len(OfflineReplayBuffer(17, 6).load_dataset("walker2d-expert-v2")) == 297
    # a D4RL file by path keeps its D4RL name and task
    ds = load_dataset(home / "walker2d_expert-v2.hdf5")
    assert ds["metadata/name"] == "walker2d-expert-v2" and ds["metadata/env_id"] == "Walker2d-v5"


def test_missing_d4rl_dataset_says_where_how_and_stand_in(tmp_path, monkeypatch):
    monkeypatch.setenv("D4RL_DATASET_DIR", str(tmp_path / "d4rl"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("halfcheetah-medium-expert-v2")
    msg = str(info.value)
    assert str(tmp_path / "d4rl" / "halfcheetah_medium_expert-v2.hdf5") in msg
    assert ".d4rl/datasets/halfcheetah_medium_expert-v2.hdf5" in msg
    assert "rail.eecs.berkeley.edu" in msg and "halfcheetah_medium_expert-v2.hdf5" in msg
    assert "vla-rl make-dataset --env HalfCheetah-v5 --quality medium-expert" in msg
    assert "halfcheetah-medium-expert-v0" in msg and "NOT the D4RL data" in msg


def test_missing_kit_dataset_and_unknown_name(tmp_path, monkeypatch):
    monkeypatch.setenv("VLA_RL_DATASET_DIR", str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match=r"walker2d-expert-v0.*vla-rl make-dataset --env Walker2d-v5 "
                                                    r"--quality expert"):
        load_dataset("walker2d-expert-v0")
    with pytest.raises(DatasetNotFoundError, match="unknown dataset 'hopper-mediocre-v2'"):
        load_dataset("hopper-mediocre-v2")


def test_kit_names_found_in_the_kit_dataset_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("VLA_RL_DATASET_DIR", str(tmp_path))
    data = d4rl_like(3, 1)
    data["metadata/env_id"] = "Pendulum-v1"
    write_hdf5(tmp_path / "pendulum-random-v0.hdf5", data)
    ds = load_dataset("pendulum-random-v0")
    assert ds["metadata/name"] == "pendulum-random-v0" and ds["metadata/env_id"] == "Pendulum-v1"


def test_normalized_scores():
    for env, (low, high) in D4RL_REF_SCORES.items():
        assert normalized_score(f"{env}-medium-v2", low) == pytest.approx(0.0)
        assert normalized_score(f"{env}-medium-v2", high) == pytest.approx(100.0)
    assert normalized_score("hopper-medium-v2", 1000.0) == pytest.approx(100 * (1000 + 20.272305) / (3234.3 + 20.272305))
    assert normalized_score("Hopper-v5", 3234.3) == pytest.approx(100.0)
    assert normalized_score("HalfCheetah-v4", -280.178953) == pytest.approx(0.0)
    assert normalized_score("hopper-medium-v0", 3234.3) == pytest.approx(100.0)  # the kit's Hopper data: D4RL refs
    scores = normalized_score("walker2d-expert-v2", [1.629008, 4592.3])
    np.testing.assert_allclose(scores, [0.0, 100.0])
    assert normalized_score("CartPole-v1", 500.0) is None and not has_reference("CartPole-v1")
    assert has_reference("walker2d-random-v2") and has_reference("Walker2d-v5")
    assert env_id_for("halfcheetah-medium-replay-v2") == "HalfCheetah-v5"


def test_kit_reference_scores_are_recorded():
    for name in ("Pendulum-v1", "pendulum-medium-v0", "driving", "driving-expert-v1"):
        assert has_reference(name), name
    assert normalized_score("Pendulum-v1", -100.0) > normalized_score("Pendulum-v1", -1000.0)


def test_summary_of_dict_and_buffer():
    data = d4rl_like(4, 2)
    data["actions"][:, 1] *= 0.5
    data["metadata/name"] = "hopper-medium-v2"
    s = summarize_dataset(data)
    assert s["n_rows"] == 300 and s["n_transitions"] == 297 and s["n_episodes"] == 3
    np.testing.assert_allclose(s["episode_returns"], [data["rewards"][i:i + 100].sum() for i in (0, 100, 200)],
                               rtol=1e-5)
    assert s["length_mean"] == 100 and s["quality"] == "medium"
    np.testing.assert_allclose(s["action_max"], data["actions"].max(0), rtol=1e-6)
    assert s["action_max"][1] <= 0.5
    assert s["normalized_return_mean"] == pytest.approx(normalized_score("hopper", s["return_mean"]))
    b = summarize_dataset(OfflineReplayBuffer(4, 2).load_dataset(data))
    assert b["n_transitions"] == 297 and b["return_mean"] == pytest.approx(s["return_mean"], rel=1e-6)
    assert "3 episodes" in format_summary(s)


def test_plot_summary_draws_both_histograms():
    import matplotlib

    matplotlib.use("Agg")
    from vla_rl_lib.data.summary import plot_summary

    fig = plot_summary(summarize_dataset(d4rl_like(4, 2)))
    assert len(fig.axes) == 2 and fig.axes[0].get_xlabel() == "episode return"
    assert sum(p.get_height() for p in fig.axes[0].patches) == 3  # three episodes in the histogram


def test_own_dataset_under_a_kit_name_comes_before_the_shipped_one(tmp_path, monkeypatch):
    monkeypatch.setenv("VLA_RL_DATASET_DIR", str(tmp_path))
    write_hdf5(tmp_path / "hopper-medium-v0.hdf5", d4rl_like(11, 3))
    assert load_dataset("hopper-medium-v0")["observations"].shape == (300, 11)
    monkeypatch.setenv("VLA_RL_DATASET_DIR", str(tmp_path / "empty"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert load_dataset("hopper-medium-v0")["observations"].shape == (100_000, 11)  # the shipped file
