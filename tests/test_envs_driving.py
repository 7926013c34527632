"""Tests of the language-conditioned driving simulator, its batched twin, expert and wrappers."""
from __future__ import annotations

import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

from vla_rl_lib.envs import ENV_ID, make_env, make_vector_env
from vla_rl_lib.envs.batched import BatchedDrivingEnv
from vla_rl_lib.envs.driving import (
    CAR_LENGTH, INSTRUCTIONS, REWARD_TERMS, STATE_DIM, DrivingEnv, compute_reward,
)
from vla_rl_lib.envs.expert import DrivingExpert, collect_dataset
from vla_rl_lib.envs.wrappers import DiscretizeActions, StateObservation, detokenize_actions, tokenize_actions
from vla_rl_lib.errors import ConfigError, IncompatibleError, MissingDependencyError, UnknownEnvironmentError


def run_expert(env, seed, instruction, expert=DrivingExpert()):
    obs, info = env.reset(seed=seed, options={"instruction": instruction})
    done = False
    while not done:
        obs, reward, terminated, truncated, info = env.step(expert.act(env))
        done = terminated or truncated
    return info


# ---- the gymnasium contract ----------------------------------------------------------------------
def test_gymnasium_env_checker_passes():
    from gymnasium.utils.env_checker import check_env

    env = DrivingEnv(render_mode="rgb_array")
    check_env(env, skip_render_check=False)
    obs, _ = env.reset(seed=0)
    assert env.observation_space.contains(obs)
    assert obs["image"].shape == (64, 64, 3) and obs["image"].dtype == np.uint8
    assert obs["state"].shape == (STATE_DIM,) and obs["instruction"] in INSTRUCTIONS
    assert env.render().shape == (256, 256, 3)


def test_registered_id_and_make_env():
    env = gym.make(ENV_ID, image_size=32)
    obs, _ = env.reset(seed=1)
    assert obs["image"].shape == (32, 32, 3)
    assert isinstance(make_env("driving"), DrivingEnv)
    assert isinstance(make_env(ENV_ID, difficulty="hard"), DrivingEnv)
    assert make_env("CartPole-v1").action_space.n == 2


def test_unknown_env_lists_close_matches():
    with pytest.raises(UnknownEnvironmentError, match="CartPole-v1"):
        make_env("CartPole-v2")
    with pytest.raises(UnknownEnvironmentError, match="driving"):
        make_env("drivng")


# ---- reproducibility and language ------------------------------------------------------------
def test_seeded_reset_reproduces_the_scenario_exactly():
    a, b = DrivingEnv(difficulty="medium"), DrivingEnv(difficulty="medium")
    oa, _ = a.reset(seed=123)
    b.reset(seed=7)
    ob, _ = b.reset(seed=123)
    assert oa["instruction"] == ob["instruction"]
    np.testing.assert_array_equal(oa["image"], ob["image"])
    np.testing.assert_array_equal(oa["state"], ob["state"])
    rng = np.random.default_rng(0)
    for _ in range(30):  # with action noise (medium) the steps must match too
        act = rng.uniform(-0.3, 0.3, 2).astype(np.float32)
        ra, rb = a.step(act), b.step(act)
        np.testing.assert_array_equal(ra[0]["image"], rb[0]["image"])
        assert ra[1] == rb[1] and ra[2:4] == rb[2:4]
    other, _ = b.reset(seed=124)
    assert not np.array_equal(other["state"], oa["state"]) or not np.array_equal(other["image"], oa["image"])


def test_same_scene_different_instruction_needs_different_actions():
    env, expert = DrivingEnv(), DrivingExpert()
    xs = {ins: [] for ins in ("change to the left lane", "change to the right lane", "keep the lane")}
    for seed in range(10):
        images = []
        for ins in xs:
            obs, _ = env.reset(seed=seed, options={"instruction": ins})
            images.append(obs["image"])
            for _ in range(20):
                obs, *_ = env.step(expert.act(env))
            xs[ins].append(env.x)
        # identical picture at the start, whatever the instruction ...
        np.testing.assert_array_equal(images[0], images[1])
        np.testing.assert_array_equal(images[0], images[2])
    # ... but the right behaviour differs: left moves to smaller x, right to larger, keep stays
    start = 6.0
    assert np.mean(xs["change to the left lane"]) < start - 2.0
    assert np.mean(xs["change to the right lane"]) > start + 2.0
    assert np.abs(np.array(xs["keep the lane"]) - start).max() < 0.3


@pytest.mark.parametrize("difficulty,threshold,episodes", [("easy", 0.95, 40), ("medium", 0.90, 30)])
def test_expert_solves_every_instruction(difficulty, threshold, episodes):
    env = DrivingEnv(difficulty=difficulty)
    for ins in INSTRUCTIONS:
        wins = sum(run_expert(env, 1000 + s, ins)["success"] for s in range(episodes))
        assert wins / episodes >= threshold, (difficulty, ins, wins)


def test_doing_nothing_does_not_solve_instructions():
    """Success must need the right behaviour: coasting straight fails the lane changes and overtaking."""
    env = DrivingEnv()
    for ins in ("change to the left lane", "change to the right lane", "overtake the car ahead", "stop at the line"):
        wins = 0
        for s in range(5):
            env.reset(seed=s, options={"instruction": ins})
            done = False
            while not done:
                _, _, te, tr, info = env.step(np.array([0.0, 0.2], np.float32))
                done = te or tr
            wins += info["success"]
        assert wins == 0, ins


# ---- reward ------------------------------------------------------------------------------------------
def test_collision_gives_minus_100_and_terminates():
    env = DrivingEnv()
    env.reset(seed=0, options={"instruction": "keep the lane"})
    for _ in range(200):  # full throttle into the slow lead car
        obs, reward, terminated, truncated, info = env.step(np.array([0.0, 1.0], np.float32))
        if terminated or truncated:
            break
    assert terminated and not truncated and info["collision"] and not info["success"]
    assert info["reward_terms"]["safety"] == -100.0 and reward < -99.0
    # off the road into the barrier counts as a collision too
    env.reset(seed=0)
    for _ in range(100):
        *_, terminated, truncated, info = env.step(np.array([-1.0, 0.5], np.float32))
        if terminated:
            break
    assert terminated and info["collision"]


def test_reward_terms_sum_to_reward_and_follow_the_spec():
    env = DrivingEnv(difficulty="medium")
    env.reset(seed=3)
    rng = np.random.default_rng(3)
    prev = np.zeros(2)
    for _ in range(150):
        a = rng.uniform(-1, 1, 2).astype(np.float32) * np.array([0.2, 1.0], np.float32)
        _, reward, te, tr, info = env.step(a)
        terms = info["reward_terms"]
        assert set(terms) == set(REWARD_TERMS)
        assert reward == pytest.approx(sum(terms.values()), abs=1e-9)
        assert terms["comfort"] == pytest.approx(-0.1 * np.abs(a.astype(np.float64) - prev).sum(), abs=1e-6)
        assert terms["lane"] == pytest.approx(-0.5 * abs(info["lane_offset"]), abs=1e-9)
        prev = a.astype(np.float64)
        if te or tr:
            env.reset()
            prev = np.zeros(2)
    assert compute_reward(collision=True, success=False, progress_delta=1.0, lane_offset=2.0,
                          action=np.zeros(2), prev_action=np.ones(2)) == pytest.approx(
        {"safety": -100.0, "progress": 0.1, "comfort": -0.2, "lane": -1.0, "success": 0.0})


def test_success_bonus_and_custom_reward_fn():
    calls = []

    def my_reward(**kw):
        calls.append(kw)
        return {"only_progress": kw["progress_delta"]}

    env = DrivingEnv(reward_fn=my_reward, instruction="change to the left lane")
    env.reset(seed=2)
    info = None
    expert = DrivingExpert()
    done = False
    while not done:
        _, r, te, tr, info = env.step(expert.act(env))
        done = te or tr
        assert r == pytest.approx(calls[-1]["progress_delta"])
    assert info["success"] and set(info["reward_terms"]) == {"only_progress"}
    env = DrivingEnv(instruction="change to the left lane")
    assert run_expert(env, 2, "change to the left lane")["reward_terms"]["success"] == 10.0


def test_stop_task_fails_when_the_line_is_crossed():
    env = DrivingEnv(instruction="stop at the line", difficulty="easy")
    env.reset(seed=4)
    env.npc_y[:] = 500.0  # clear road
    crossed = False
    for _ in range(200):
        *_, te, tr, info = env.step(np.array([0.0, 0.5], np.float32))
        crossed |= env.y + CAR_LENGTH / 2 > env.stop_line_y
        if crossed:
            break
    for _ in range(30):  # brake to a stop after the line: too late
        *_, te, tr, info = env.step(np.array([0.0, -1.0], np.float32))
    assert crossed and env.failed and not info["success"]


# ---- difficulty ----------------------------------------------------------------------------------------
def test_set_difficulty_changes_traffic_and_validates():
    env = DrivingEnv()

    def traffic(name):
        env.set_difficulty(name)
        counts, speeds = [], []
        for s in range(20):
            env.reset(seed=s)
            on_road = env.npc_x > 0
            counts.append(on_road.sum())
            speeds.append(env.npc_v[on_road][1:].max() - env.npc_v[on_road][1:].min())
        return np.mean(counts), np.mean(speeds)

    easy, hard = traffic("easy"), traffic("hard")
    assert hard[0] >= easy[0] + 3  # many more cars
    assert env.noise > 0 and DrivingEnv(difficulty="easy").difficulty.action_noise == 0
    with pytest.raises(ConfigError, match="easy, medium, hard"):
        env.set_difficulty("insane")
    with pytest.raises(ConfigError, match="easy, medium, hard"):
        DrivingEnv(difficulty="expert")


# ---- bad input ------------------------------------------------------------------------------------------
def test_bad_inputs_raise_one_clear_error():
    with pytest.raises(ConfigError, match="keep the lane"):
        DrivingEnv(instruction="fly to the moon")
    env = DrivingEnv()
    with pytest.raises(ConfigError, match="change to the left lane"):
        env.reset(options={"instruction": "turn around"})
    with pytest.raises(ConfigError, match="not understood"):
        env.reset(options={"weather": "rain"})
    env.reset(seed=0)
    with pytest.raises(IncompatibleError, match=r"shape \(2,\)"):
        env.step(np.zeros(3))
    with pytest.raises(IncompatibleError, match="finite"):
        env.step(np.array([np.nan, 0.0]))
    with pytest.raises(ConfigError):
        DrivingEnv(num_lanes=2)
    b = BatchedDrivingEnv(4)
    b.reset(seed=0)
    with pytest.raises(IncompatibleError, match=r"\(4, 2\)"):
        b.step(np.zeros((3, 2)))
    with pytest.raises(ConfigError, match="easy, medium, hard"):
        b.set_difficulty("nightmare")


# ---- the batched simulator ----------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["numpy", "torch"])   # torch: the CUDA code path, run on the CPU
@pytest.mark.parametrize("difficulty", ["easy", "hard"])
def test_batched_agrees_with_single_envs(difficulty, backend):
    n = 6
    # the per-world sampler draws DrivingEnv's scenarios (the torch backend's default, the on-device
    # sampler, draws its own: tests/test_device.py)
    batched = BatchedDrivingEnv(n, difficulty=difficulty, backend=backend, sampler="per_world")
    single = gym.vector.SyncVectorEnv([lambda: DrivingEnv(difficulty=difficulty) for _ in range(n)])
    ob, _ = batched.reset(seed=21)
    os_, _ = single.reset(seed=21)
    np.testing.assert_array_equal(ob["image"], os_["image"])
    expert, rng = DrivingExpert(), np.random.default_rng(1)
    ended = 0
    for t in range(160):
        acts = np.stack([expert.act(e) for e in single.envs]) + rng.normal(0, 0.3, (n, 2))
        acts = np.clip(acts, -1, 1).astype(np.float32)
        ob, rb, tb, trb, ib = batched.step(acts)
        os_, rs, ts, trs, is_ = single.step(acts)
        np.testing.assert_allclose(ob["state"], os_["state"], atol=1e-5)
        np.testing.assert_allclose(rb, rs, atol=1e-4)
        np.testing.assert_array_equal(tb, ts)
        np.testing.assert_array_equal(trb, trs)
        assert ob["instruction"] == tuple(os_["instruction"])
        assert (ob["image"] != os_["image"]).any(-1).mean() < 1e-3  # same picture (up to rounding)
        for k in REWARD_TERMS:
            np.testing.assert_allclose(ib["reward_terms"][k], is_["reward_terms"][k], atol=1e-4)
        ended += int((tb | trb).sum())
    assert ended >= n  # autoreset was exercised


def test_vector_env_shapes_and_autoreset_modes():
    envs = make_vector_env("driving", num_envs=4, seed=0, batched=True)
    assert isinstance(envs, gym.vector.VectorEnv) and envs.num_envs == 4
    obs, info = envs.reset()
    assert obs["image"].shape == (4, 64, 64, 3) and obs["image"].dtype == np.uint8
    assert obs["state"].shape == (4, STATE_DIM) and obs["state"].dtype == np.float32
    assert isinstance(obs["instruction"], tuple) and len(obs["instruction"]) == 4
    obs, r, te, tr, info = envs.step(envs.action_space.sample())
    assert r.shape == (4,) and te.dtype == bool and info["success"].shape == (4,)
    assert set(info["reward_terms"]) == set(REWARD_TERMS)

    sync = make_vector_env("driving", num_envs=2, seed=0, image_size=32)
    assert sync.reset()[0]["image"].shape == (2, 32, 32, 3)
    cart = make_vector_env("CartPole-v1", num_envs=3, seed=0)
    assert cart.reset()[0].shape == (3, 4)
    with pytest.raises(ConfigError, match="only available for the driving"):
        make_vector_env("CartPole-v1", num_envs=2, batched=True)
    with pytest.raises(UnknownEnvironmentError):
        make_vector_env("NoSuchEnv-v0", num_envs=2)

    # NEXT_STEP: the step after an episode ends only resets (reward 0, not done)
    env = BatchedDrivingEnv(3, instruction="change to the left lane", return_tensors="torch")
    env.reset(seed=5)
    expert = DrivingExpert()
    for _ in range(200):
        acts = np.stack([expert.act(env.privileged_state(i)) for i in range(3)])
        obs, r, te, tr, info = env.step(acts)
        if bool(te.any()):
            break
    assert isinstance(r, torch.Tensor) and bool(info["success"][te].all())
    done = te.clone()
    obs, r, te, tr, info = env.step(np.zeros((3, 2), np.float32))
    assert bool((r[done] == 0).all()) and not bool(te[done].any())
    assert all(env.privileged_state(i)["steps"] == 0 for i in done.nonzero().flatten().tolist())

    # SAME_STEP: reset at once, last observation in info["final_obs"]
    env = BatchedDrivingEnv(2, instruction="keep the lane", autoreset_mode="same_step")
    env.reset(seed=0)
    for _ in range(200):
        obs, r, te, tr, info = env.step(np.tile(np.array([0.0, 1.0], np.float32), (2, 1)))  # crash
        if te.any():
            break
    assert te.any() and "final_obs" in info and info["_final_obs"].any()
    assert (info["reward_terms"]["safety"][te] == -100).all()
    assert all(env.privileged_state(i)["steps"] == 0 for i in np.flatnonzero(te))


# ---- actions as tokens ---------------------------------------------------------------------------------
def test_action_tokens_round_trip_and_discretize_wrapper():
    a = np.random.default_rng(0).uniform(-1, 1, (1000, 2))
    tokens = tokenize_actions(a, bins=256)
    assert tokens.min() >= 0 and tokens.max() <= 255 and tokens.dtype == np.int64
    assert np.abs(detokenize_actions(tokens, 256) - a).max() <= 1 / 256 + 1e-6
    assert tokenize_actions(np.array([-1.0, 1.0]), 256).tolist() == [0, 255]
    t = torch.as_tensor(a, dtype=torch.float32)
    assert torch.equal(tokenize_actions(t), torch.as_tensor(tokens))
    assert torch.allclose(detokenize_actions(tokenize_actions(t)), t, atol=1 / 256 + 1e-6)
    with pytest.raises(IncompatibleError):
        detokenize_actions(np.array([256]), 256)

    env = DiscretizeActions(DrivingEnv(), bins=256)
    assert env.action_space == gym.spaces.MultiDiscrete([256, 256])
    env.reset(seed=0)
    _, _, _, _, info = env.step(np.array([128, 255]))
    assert env.unwrapped.prev_action == pytest.approx([1 / 256, 1 - 1 / 256])
    with pytest.raises(IncompatibleError):
        env.step(np.array([1, 2, 3]))
    flat = StateObservation(DrivingEnv())
    assert flat.reset(seed=0)[0].shape == (STATE_DIM,)


# ---- datasets ----------------------------------------------------------------------------------------------
def test_collect_dataset_layout_and_quality():
    d = collect_dataset(600, seed=0, quality="expert", image_size=32)
    n = 600
    assert d["observations"].shape == (n, STATE_DIM) and d["observations"].dtype == np.float32
    assert d["actions"].shape == (n, 2) and d["rewards"].shape == (n,)
    assert d["images"].shape == (n, 32, 32, 3) and d["images"].dtype == np.uint8
    assert d["terminals"].dtype == bool and d["timeouts"].dtype == bool and d["timeouts"][-1]
    assert d["instructions"].dtype.kind == "S" and d["instructions"][0].decode() in INSTRUCTIONS
    assert d["metadata/env_id"] == ENV_ID and d["metadata/quality"] == "expert"
    # next_observations continue observations inside an episode
    cont = ~(d["terminals"] | d["timeouts"])[:-1]
    np.testing.assert_array_equal(d["next_observations"][:-1][cont], d["observations"][1:][cont])
    assert d["metadata/success_rate"] >= 0.9
    assert d["infos/success"].sum() == d["terminals"].sum() - d["infos/collision"].sum()
    rnd = collect_dataset(600, seed=0, quality="random", image_size=32)
    assert rnd["metadata/success_rate"] < 0.3
    assert rnd["rewards"].mean() < d["rewards"].mean()
    again = collect_dataset(600, seed=0, quality="expert", image_size=32)
    np.testing.assert_array_equal(again["actions"], d["actions"])
    with pytest.raises(ConfigError, match="expert, medium, random"):
        collect_dataset(10, quality="perfect")


# ---- CARLA ------------------------------------------------------------------------------------------------
def test_carla_without_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "carla", None)  # makes `import carla` fail
    from vla_rl_lib.envs.carla_adapter import CarlaDrivingEnv

    with pytest.raises(MissingDependencyError, match="carla"):
        CarlaDrivingEnv(port=1)


def test_carla_unreachable_server_names_host_and_port():
    pytest.importorskip("carla")
    import socket

    from vla_rl_lib.envs.carla_adapter import CarlaConnectionError, CarlaDrivingEnv

    with socket.socket() as s:  # a local port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(CarlaConnectionError, match=f"127.0.0.1:{port}"):
        CarlaDrivingEnv(host="127.0.0.1", port=port, timeout=0.5)
