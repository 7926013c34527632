"""The widgets, driven programmatically: construct, set values, press buttons, check state."""
from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ipywidgets")

import ipywidgets as w  # noqa: E402

from vla_rl_lib.callbacks import Callback  # noqa: E402
from vla_rl_lib.chooser import explain, recommend_method, tree_quality  # noqa: E402
from vla_rl_lib.errors import ConfigError  # noqa: E402


PNG = b"\x89PNG\r\n\x1a\n"


def is_png(value) -> bool:
    return bytes(value).startswith(PNG)


@pytest.fixture(scope="module")
def pendulum_random(tmp_path_factory):
    from vla_rl_lib.data import make_dataset

    path = tmp_path_factory.mktemp("data") / "pendulum-random-v0.hdf5"
    return str(make_dataset("Pendulum-v1", "random", size=1200, output=path, seed=0, verbose=False))


# -- the decision tree (library side) ------------------------------------------------------------
def test_recommend_method_walks_the_specification_tree():
    assert recommend_method(True, goal="simple") == "ppo"
    assert recommend_method(True, goal="sample_efficient") == "sac"
    assert recommend_method(True, goal="multi-objective") == "grpo"
    assert recommend_method(False, dataset_quality="expert") == "iql"
    assert recommend_method(False, dataset_quality="mixed") == "td3_bc"
    assert recommend_method(False, dataset_quality="diverse") == "dt"
    assert "cql" in explain(False, dataset_quality="expert").alternatives
    assert recommend_method(True, goal="sample_efficient", discrete_actions=True) == "ppo"
    assert tree_quality("medium-replay") == "diverse" and tree_quality("expert") == "expert"
    with pytest.raises(ConfigError, match="dataset_quality"):
        recommend_method(False)
    with pytest.raises(ConfigError, match="goal"):
        recommend_method(True, goal="fastest")


# -- LivePlot ----------------------------------------------------------------------------------
class _FakeTrainer:
    algorithm = "ppo"
    env_id = "CartPole-v1"
    dataset_name = None
    global_step = 0


def test_live_plot_is_a_callback_that_throttles_redraws(tmp_path):
    from widgets import LivePlot

    plot = LivePlot(min_interval=3600, display=False)
    assert isinstance(plot, Callback)
    image = plot.widget
    t = _FakeTrainer()
    plot.on_train_start(t)
    first = plot.redraws
    for step in range(1, 50):
        t.global_step = step * 100
        plot.on_log(t, {"step": t.global_step, "mean_reward": float(step), "policy_loss": 0.01, "value_loss": 0.5,
                        "entropy": 0.6, "steps_per_second": 1000.0})
    assert plot.redraws == first  # throttled: no redraw within min_interval
    plot.on_evaluation(t, {"mean_reward": 42.0, "std_reward": 1.0, "episodes": 3})
    plot.on_train_end(t)
    assert plot.redraws == first + 1  # the final redraw is forced
    assert is_png(image.value)
    assert plot.metric_keys()[:3] == ["policy_loss", "value_loss", "entropy"]  # the spec's metrics first
    steps, values = plot.series("mean_reward")
    assert len(steps) == 49 and values[-1] == 49.0
    assert plot.series("eval/mean_reward")[1] == [42.0]
    out = plot.save(tmp_path / "plot.png")
    assert is_png(out.read_bytes())


def test_live_plot_redraws_when_interval_is_zero_and_overhead_unbounded():
    from widgets import LivePlot

    plot = LivePlot(min_interval=0.0, display=False, max_overhead=None)
    plot.widget  # noqa: B018 - creating the Image widget makes it draw
    t = _FakeTrainer()
    plot.on_train_start(t)
    for step in range(5):
        plot.on_log(t, {"step": step, "mean_reward": step})
    assert plot.redraws == 6


# -- RolloutPlayer -----------------------------------------------------------------------------
class _Constant:
    def predict(self, obs, deterministic=True):
        return np.array([0.5], dtype=np.float32)


def test_rollout_player_slider_shows_frame_and_action(tmp_path):
    from widgets import RolloutPlayer

    player = RolloutPlayer(_Constant(), "Pendulum-v1", max_steps=12, video_path=tmp_path / "r.mp4")
    assert player.video_path.is_file() and player.video_path.stat().st_size > 1000
    assert "<video" in player.video.value
    assert player.slider.max == 12  # reset frame + 12 steps
    first = player.image.value
    assert is_png(first)
    player.slider.value = 5
    assert "step 5" in player.info.value and "+0.500" in player.info.value
    assert player.image.value != first
    player.slider.value = 12
    assert "episode over" in player.info.value


def test_rollout_player_shows_driving_instruction():
    from widgets import RolloutPlayer

    frames = [np.zeros((8, 8, 3), np.uint8), np.ones((8, 8, 3), np.uint8) * 200]
    trace = {"actions": [[0.1, -0.2]], "rewards": [1.0], "instruction": "turn left at the intersection"}
    player = RolloutPlayer.from_frames(frames, trace, show_video=False)
    assert "turn left at the intersection" in player.info.value
    assert "-0.200" in player.info.value


# -- HyperparameterPanel -----------------------------------------------------------------------
def test_panel_controls_come_from_the_dataclasses():
    from widgets import HyperparameterPanel

    panel = HyperparameterPanel("td3_bc", dataset="pendulum-random-v0")
    assert "alpha" in panel.hparam_controls
    assert isinstance(panel.controls["learning_rate"], w.FloatLogSlider)  # the ui hint says log
    assert isinstance(panel.controls["normalize_states"], w.Checkbox)
    assert panel.controls["discount_gamma"].min == pytest.approx(0.8)
    panel.set(alpha=1.0, num_epochs=3)
    config, hparams = panel.values()
    assert hparams["alpha"] == 1.0 and config["num_epochs"] == 3 and config["dataset"] == "pendulum-random-v0"
    ppo = HyperparameterPanel("ppo", env="CartPole-v1")
    assert isinstance(ppo.controls["ppo_clip_range"], w.FloatSlider)
    assert ppo.controls["ppo_clip_range"].max == pytest.approx(0.5)
    # each online panel shows its own knobs, not the other algorithms'
    assert not {"buffer_size", "learning_starts", "group_size", "kl_coef"} & set(ppo.controls)
    sac = HyperparameterPanel("sac", env="Pendulum-v1")
    assert {"buffer_size", "learning_starts", "tau"} <= set(sac.controls)
    assert not {"ppo_epochs", "rollout_steps", "ppo_max_grad_norm", "group_size"} & set(sac.controls)
    grpo = HyperparameterPanel("grpo", env="CartPole-v1")
    assert {"group_size", "kl_coef", "ppo_max_grad_norm"} <= set(grpo.controls)
    assert not {"ppo_epochs", "buffer_size"} & set(grpo.controls)
    with pytest.raises(ConfigError):
        ppo.set(not_a_field=1)
    with pytest.raises(ConfigError):
        HyperparameterPanel("ppo", hparams={"not_a_field": 1})


@pytest.mark.slow
def test_panel_run_button_trains_and_plots(pendulum_random, tmp_path):
    from widgets import HyperparameterPanel

    panel = HyperparameterPanel("td3_bc", dataset=pendulum_random, output_dir=str(tmp_path), eval_episodes=1,
                                min_interval=0.0)
    panel.set(num_epochs=2, steps_per_epoch=20, batch_size=32, hidden_dim=32, eval_freq=0, save_freq=0)
    panel.controls["log_freq"].value = 10
    panel.run_button.click()
    assert panel.error is None, panel.error
    assert panel.trainer.global_step == 40
    assert np.isfinite(panel.result["mean_reward"])
    assert is_png(panel.live_plot.widget.value)
    assert len(panel.live_plot.logs) >= 4 and "q_loss" in panel.live_plot.metric_keys()
    assert "mean_reward" in panel.results.value
    assert (tmp_path / "run_1" / "metrics.csv").is_file()


def test_panel_shows_the_library_error_for_a_bad_value(tmp_path):
    from widgets import HyperparameterPanel

    panel = HyperparameterPanel("td3_bc", dataset="no-such-dataset-v0", output_dir=str(tmp_path))
    panel.run_button.click()
    assert panel.result is None
    assert "no-such-dataset-v0" in panel.error
    assert "no-such-dataset-v0" in panel.status.value
    assert not panel.run_button.disabled


# -- MethodChooser -----------------------------------------------------------------------------
def test_method_chooser_follows_the_answers():
    from widgets import MethodChooser

    chooser = MethodChooser()
    assert chooser.recommendation.method == "ppo"
    chooser.goal.value = "sample_efficient"
    assert chooser.recommendation.method == "sac" and "SAC" in chooser.output.value
    chooser.env_access.value = False
    assert chooser.online_box.layout.display == "none"
    chooser.quality.value = "diverse"
    assert chooser.recommendation.method == "dt"
    chooser.quality.value = "mixed"
    chooser.recommend_button.click()
    assert chooser.recommendation.method == "td3_bc"
    assert "04_td3_bc.ipynb" in chooser.output.value
    chooser.try_button.click()
    assert chooser.panel.algorithm == "td3_bc" and chooser.panel.controls["dataset"].value == "pendulum-medium-v0"
    assert chooser.panel_box.children == (chooser.panel,)


def test_method_chooser_shows_notebook_parameters(tmp_path):
    import nbformat

    from widgets import MethodChooser

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell("smoke = False\nalpha = 2.5\noutput_dir = 'runs/x'")
    cell.metadata["tags"] = ["parameters"]
    nb.cells.append(cell)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "04_td3_bc.ipynb")
    chooser = MethodChooser(notebook_dir=tmp_path)
    chooser.env_access.value = False
    chooser.quality.value = "mixed"
    chooser.open_button.click()
    assert chooser.notebook_parameters == {"smoke": "False", "alpha": "2.5", "output_dir": "'runs/x'"}
    assert "vla-rl run-notebook notebooks/04_td3_bc.ipynb" in chooser.parameters.value


# -- DatasetExplorer ---------------------------------------------------------------------------
def test_dataset_explorer_summarises_a_dataset(pendulum_random):
    from widgets import DatasetExplorer

    explorer = DatasetExplorer(pendulum_random)
    s = explorer.summary
    assert s is not None and s["n_episodes"] == 6  # 1200 rows of 200-step Pendulum episodes
    assert explorer.quality == "random" and explorer.recommended == "dt"
    assert is_png(explorer.image.value)
    assert "random" in explorer.label.value and "DT" in explorer.label.value
    assert np.all(s["action_min"] >= -2.0) and np.all(s["action_max"] <= 2.0)
    explorer.dropdown.value = "nope-random-v0"
    explorer.load_button.click()
    assert explorer.summary is None and "nope-random-v0" in explorer.error


def test_live_plot_waits_longer_when_drawing_is_slow():
    from widgets import LivePlot

    plot = LivePlot(min_interval=0.0, display=False, max_overhead=0.01)  # drawing may take 1% of the time
    plot.widget  # noqa: B018
    t = _FakeTrainer()
    plot.on_train_start(t)  # one forced draw (tens of milliseconds at least) -> the next waits ~99x that
    for step in range(5):
        plot.on_log(t, {"step": step, "mean_reward": step})
    assert plot.redraws == 1


@pytest.mark.slow
def test_panel_runs_an_online_method(tmp_path):
    from widgets import HyperparameterPanel

    panel = HyperparameterPanel("ppo", env="CartPole-v1", output_dir=str(tmp_path), eval_episodes=1)
    panel.set(total_timesteps=512, rollout_steps=64, num_envs=2, log_freq=128, eval_freq=0, save_freq=0)
    panel.run_button.click()
    assert panel.error is None, panel.error
    assert panel.trainer.global_step >= 512
    assert panel.result["mean_reward"] >= 1.0  # a CartPole episode lasts at least one step
    assert "value_loss" in panel.live_plot.metric_keys()
    assert is_png(panel.live_plot.widget.value)
