"""make_dataset: D4RL layout, determinism, MuJoCo infos, driving images, the SAC-based qualities."""
import h5py
import numpy as np
import pytest
import torch

from vla_rl_lib.data import generate
from vla_rl_lib.data.buffer import OfflineReplayBuffer
from vla_rl_lib.data.datasets import load_dataset
from vla_rl_lib.data.generate import SACRun, make_dataset
from vla_rl_lib.data.hdf5 import meta_value, read_hdf5
from vla_rl_lib.errors import ConfigError, UnknownEnvironmentError


def test_random_dataset_layout_and_determinism(tmp_path):
    a = read_hdf5(make_dataset("Pendulum-v1", "random", 450, output=tmp_path / "a.hdf5", seed=3, verbose=False))
    b = read_hdf5(make_dataset("Pendulum-v1", "random", 450, output=tmp_path / "b.hdf5", seed=3, verbose=False))
    c = read_hdf5(make_dataset("Pendulum-v1", "random", 450, output=tmp_path / "c.hdf5", seed=4, verbose=False))
    for k in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts"):
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert not np.array_equal(a["actions"], c["actions"])
    assert a["observations"].shape == (450, 3) and a["actions"].shape == (450, 1)
    # Pendulum episodes are cut at 200 steps; the unfinished last one is closed with a timeout
    assert np.flatnonzero(a["timeouts"]).tolist() == [199, 399, 449] and not a["terminals"].any()
    np.testing.assert_array_equal(a["next_observations"][:199], a["observations"][1:200])
    assert np.abs(a["actions"]).max() <= 2.0 and a["actions"].std() > 0.8  # uniform on [-2, 2]
    assert meta_value(a, "algorithm") == "random" and meta_value(a, "quality") == "random"
    assert meta_value(a, "env_id") == "Pendulum-v1" and meta_value(a, "seed") == 3 and meta_value(a, "size") == 450
    assert meta_value(a, "kit_version") and "make-dataset" in meta_value(a, "generation_command")


def test_mujoco_rows_carry_qpos_qvel_of_the_observed_state(tmp_path):
    d = read_hdf5(make_dataset("Hopper-v5", "random", 300, output=tmp_path / "h.hdf5", seed=0, verbose=False))
    assert d["infos/qpos"].shape == (300, 6) and d["infos/qvel"].shape == (300, 6)
    # Hopper's observation is qpos[1:] and clipped qvel of the state the action was taken in
    np.testing.assert_allclose(d["observations"][:, :5], d["infos/qpos"][:, 1:], atol=1e-5)
    np.testing.assert_allclose(d["observations"][:, 5:], np.clip(d["infos/qvel"], -10, 10), atol=1e-5)
    assert d["terminals"].any()  # random Hopper falls over
    assert meta_value(d, "name") == "hopper-random-v0"
    buf = OfflineReplayBuffer(11, 3).load_dataset(load_dataset(tmp_path / "h.hdf5"))
    assert len(buf) == 300 and buf.env_id == "Hopper-v5"


def test_driving_dataset_has_compressed_images_and_instructions(tmp_path):
    path = make_dataset("driving", "expert", 250, output=tmp_path / "d.hdf5", seed=0, verbose=False, image_size=32)
    with h5py.File(path) as f:
        assert f["images"].dtype == np.uint8 and f["images"].compression == "gzip"
        assert f["images"].shape == (250, 32, 32, 3)
        assert f["instructions"].dtype.kind == "S"
    ds = load_dataset(path)
    buf = OfflineReplayBuffer(ds["observations"].shape[1], 2).load_dataset(ds)
    batch = buf.sample(4, generator=torch.Generator().manual_seed(0))
    assert batch["images"].shape == (4, 32, 32, 3) and all(isinstance(s, str) for s in batch["instructions"])
    assert meta_value(ds, "quality") == "expert"


def test_bad_arguments(tmp_path):
    with pytest.raises(ConfigError, match="quality='great'"):
        make_dataset("Pendulum-v1", "great", 10, output=tmp_path / "x.hdf5")
    with pytest.raises(UnknownEnvironmentError, match="Pendulm-v1"):
        make_dataset("Pendulm-v1", "random", 10, output=tmp_path / "x.hdf5")
    with pytest.raises(ConfigError, match="size"):
        make_dataset("Pendulum-v1", "random", 1, output=tmp_path / "x.hdf5")


def fake_run(env_id="Pendulum-v1", seed=0):
    """A SAC run without training: snapshots are random tanh-Gaussian policies, made deterministic,
    whose 'evaluation' returns climb; the replay buffer is real rollouts."""
    from vla_rl_lib.nets import TanhGaussianPolicy

    torch.manual_seed(seed)
    run = SACRun(env_id, seed, 4000, config={"hidden_dim": 8})
    run.evaluations = [(1000, -1300.0), (2000, -1000.0), (3000, -500.0), (4000, -150.0)]
    for step, _ in run.evaluations:
        pol = TanhGaussianPolicy(3, 1, (8, 8), action_low=np.array([-2.0], np.float32),
                                 action_high=np.array([2.0], np.float32))
        run.snapshots[step] = {k: v.detach().numpy().copy() for k, v in pol.state_dict().items()}
    env = generate._make_gym_env(env_id)
    rows = generate.collect_episodes(env, generate.random_policy(env), 4000, seed)
    run.replay = {k: rows[k] for k in ("observations", "actions", "rewards", "next_observations", "terminals", "timeouts")}
    run.random_return, run.expert_return = -1200.0, -150.0
    run.config["expert_step"] = 4000
    return run


def test_sac_qualities_plumbing(tmp_path, monkeypatch):
    run = fake_run()
    monkeypatch.setattr(generate, "train_sac_run", lambda *a, **k: run)
    # medium: the first snapshot at least a third of the way from random (-1200) to expert (-150): -850
    assert run.medium_step(1 / 3) == (3000, -500.0, pytest.approx(-850.0))
    med = read_hdf5(make_dataset("Pendulum-v1", "medium", 400, output=tmp_path / "m.hdf5", verbose=False))
    assert meta_value(med, "policy_step") == 3000 and meta_value(med, "medium_step") == 3000
    assert meta_value(med, "algorithm").startswith("SAC")
    for k, v in run.snapshots[3000].items():  # the generating policy's parameters are in the file
        np.testing.assert_array_equal(med["metadata/policy/" + k.replace(".", "/")], v)
    exp = read_hdf5(make_dataset("Pendulum-v1", "expert", 400, output=tmp_path / "e.hdf5", verbose=False))
    assert meta_value(exp, "policy_step") == 4000
    assert not np.array_equal(exp["actions"], med["actions"])
    # medium-replay: the replay buffer up to the medium snapshot (the most recent `size` rows of it)
    rep = read_hdf5(make_dataset("Pendulum-v1", "medium-replay", 1000, output=tmp_path / "r.hdf5", verbose=False))
    np.testing.assert_array_equal(rep["observations"], run.replay["observations"][2000:3000])
    assert rep["timeouts"][-1] or rep["terminals"][-1]
    # medium-expert: medium rows then expert rows
    me = read_hdf5(make_dataset("Pendulum-v1", "medium-expert", 800, output=tmp_path / "me.hdf5", verbose=False))
    np.testing.assert_array_equal(me["actions"][:400], med["actions"])
    assert me["actions"].shape == (800, 1)
    # the same seed gives the same file contents
    again = read_hdf5(make_dataset("Pendulum-v1", "medium", 400, output=tmp_path / "m2.hdf5", verbose=False))
    np.testing.assert_array_equal(again["actions"], med["actions"])


def test_sac_run_cache_roundtrip(tmp_path):
    run = fake_run()
    generate._save_run(run, tmp_path / "run.h5")
    back = generate._load_run(tmp_path / "run.h5")
    assert back.evaluations == run.evaluations and back.expert_return == run.expert_return
    for step in run.snapshots:
        for k, v in run.snapshots[step].items():
            np.testing.assert_array_equal(back.snapshots[step][k], v)
    np.testing.assert_array_equal(back.replay["rewards"], run.replay["rewards"])


@pytest.mark.slow
def test_real_sac_medium_and_expert_on_pendulum(tmp_path):
    """The kit's SAC on Pendulum: expert data scores far above medium, medium above random."""
    kw = dict(sac_steps=5000, eval_freq=500, eval_episodes=2, learning_starts=1000, cache_dir=tmp_path / "cache",
              verbose=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small networks: one thread is faster, and much faster on a busy machine
    try:
        rnd = read_hdf5(make_dataset("Pendulum-v1", "random", 2000, output=tmp_path / "r.hdf5", seed=0, verbose=False))
        med = read_hdf5(make_dataset("Pendulum-v1", "medium", 2000, output=tmp_path / "m.hdf5", seed=0, **kw))
        exp = read_hdf5(make_dataset("Pendulum-v1", "expert", 2000, output=tmp_path / "e.hdf5", seed=0, **kw))
    finally:
        torch.set_num_threads(threads)
    r = [generate.episode_returns(d).mean() for d in (rnd, med, exp)]
    assert r[2] > -400 and r[2] > r[1] + 100 and r[1] > r[0] + 100, r
    assert meta_value(exp, "expert_eval_return") > -400
    assert meta_value(med, "medium_eval_return") >= meta_value(med, "medium_target_return")


def test_d4rl_v2_style_file_without_next_observations_and_infos(tmp_path):
    path = make_dataset("Hopper-v5", "random", 400, output=tmp_path / "h.hdf5", seed=1, verbose=False,
                        next_observations=False, infos=False)
    d = read_hdf5(path)
    assert not any(k == "next_observations" or k.startswith("infos/") for k in d)
    assert "next_observations=False" in meta_value(d, "generation_command")
    buf = OfflineReplayBuffer(11, 3).load_dataset(load_dataset(path))
    # d4rl semantics: the last row and the rows ending on a timeout are not transitions
    assert len(buf) == 400 - 1 - int(d["timeouts"][:-1].sum())
