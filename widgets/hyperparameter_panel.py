"""HyperparameterPanel: sliders and dropdowns generated from the config dataclasses, and a Run button.

Every control comes from ``field_info()`` of the trainer's config class (``OfflineRLConfig`` or
``RLConfig``) and of the algorithm's ``Hyperparameters`` dataclass: the help text is the tooltip,
``choices`` become dropdowns, booleans checkboxes, the ``ui`` hint ``(min, max, step[, "log"])``
a (log) slider, and bounded numbers bounded boxes. Values are validated by the same dataclasses
the command line uses, so an impossible value shows the library's own error message.

Run builds the trainer (loading the dataset for offline methods), trains it with a
:class:`~widgets.live_plot.LivePlot` embedded in the panel, evaluates it and shows the results.
"""
from __future__ import annotations

import html
import math
import time
from typing import Any, Optional

import ipywidgets as w

from vla_rl_lib.errors import VLARLError
from vla_rl_lib.trainer import OfflineTrainer, get_trainer_class
from widgets.live_plot import LivePlot

# config fields that a panel never shows: they are set by the panel itself or make no sense in one
_HIDDEN = {"output_dir", "algorithm", "device", "model_path", "objective_weights", "save_replay_buffer"}
# the knobs shown first (the rest go under "More settings")
_MAIN_CONFIG = {"num_epochs", "steps_per_epoch", "batch_size", "learning_rate", "hidden_dim", "discount_gamma",
                "tau", "total_timesteps", "rollout_steps", "num_envs", "ppo_epochs", "ppo_clip_range",
                "ppo_gae_lambda", "ppo_entropy_coef", "learning_starts", "buffer_size", "group_size",
                "num_groups", "num_iterations", "kl_coef", "clip_range", "eval_episodes", "seed", "dataset", "env"}
# RLConfig fields that only some online algorithms read: a PPO panel shows no SAC or GRPO knobs
_PPO = ("rollout_steps", "ppo_epochs", "ppo_clip_range", "ppo_gae_lambda", "ppo_value_coef", "ppo_entropy_coef",
        "ppo_clip_range_vf", "ppo_anneal_lr", "ppo_normalize_obs", "ppo_normalize_reward")
_SAC = ("buffer_size", "learning_starts", "tau", "alpha", "gradient_steps")
_GRPO = ("group_size", "num_groups", "num_iterations", "kl_coef", "clip_range", "grpo_epochs", "objective_weights",
         "grpo_reward", "grpo_advantage", "dynamic_sampling", "dynamic_sampling_rounds", "clip_range_high",
         "token_level_ratios", "grpo_loss_mean")
_READ_BY = {**{n: {"ppo"} for n in _PPO}, **{n: {"sac"} for n in _SAC}, **{n: {"grpo"} for n in _GRPO},
            "ppo_max_grad_norm": {"ppo", "grpo"}}
_STYLE = {"description_width": "150px"}
_LAYOUT = dict(width="440px")


def _is_bool(info: dict) -> bool:
    return "bool" in info["type"] and "int" not in info["type"] or isinstance(info["default"], bool)


def _is_int(info: dict) -> bool:
    t = info["type"]
    return "int" in t and "float" not in t


def make_control(info: dict, value: Any = None):
    """The ipywidget for one field described by ``field_info()`` (``None`` when it cannot be shown)."""
    name = info["name"]
    value = info["default"] if value is None else value
    common = dict(description=name, style=_STYLE, layout=w.Layout(**_LAYOUT), tooltip=info.get("help", ""))
    choices, low, high, ui = info.get("choices"), info.get("low"), info.get("high"), info.get("ui")
    if isinstance(info["default"], dict) or "dict" in info["type"]:
        return None
    if _is_bool(info):
        return w.Checkbox(value=bool(value), indent=False, **common)
    if choices and low is None and high is None:
        return w.Dropdown(options=list(choices), value=value, **common)
    if choices:  # e.g. SAC alpha: "auto" or a number
        return w.Combobox(value=str(value), options=[str(c) for c in choices], ensure_option=False, **common)
    if info.get("nullable") and ("str" in info["type"] or value is None and not ui):
        return w.Text(value="" if value is None else str(value), placeholder="(none)", **common)
    if "str" in info["type"] and not _is_int(info) and "float" not in info["type"]:
        return w.Text(value=str(value), **common)
    if ui:
        lo, hi, step = ui[0], ui[1], ui[2]
        log = len(ui) > 3 and ui[3] == "log"
        if log:
            v = float(value) if value is not None else float(lo)
            return w.FloatLogSlider(value=v, base=10, min=math.log10(lo), max=math.log10(hi),
                                    step=0.05, readout_format=".1e", **common)
        if _is_int(info):
            v = int(value) if value is not None else int(lo)
            return w.IntSlider(value=min(max(v, int(lo)), max(int(hi), v)), min=int(lo), max=max(int(hi), v),
                               step=int(step), **common)
        v = float(value) if value is not None else float(lo)
        decimals = max(0, -int(math.floor(math.log10(step)))) if step > 0 else 3
        return w.FloatSlider(value=v, min=min(float(lo), v), max=max(float(hi), v), step=step,
                             readout_format=f".{decimals}f", **common)
    if _is_int(info):
        lo = int(math.floor(low)) + (1 if info.get("low_open") else 0) if low is not None else -10**12
        hi = int(math.ceil(high)) - (1 if info.get("high_open") else 0) if high is not None else 10**12
        return w.BoundedIntText(value=int(value) if value is not None else lo, min=lo, max=hi, **common)
    lo = float(low) if low is not None else -1e12
    hi = float(high) if high is not None else 1e12
    if value is None:  # nullable number left empty
        return w.Text(value="", placeholder="(none)", **common)
    if low is not None and high is not None and not info.get("low_open") and not info.get("high_open"):
        return w.FloatSlider(value=float(value), min=lo, max=hi, step=(hi - lo) / 100, readout_format=".3f", **common)
    return w.BoundedFloatText(value=float(value), min=lo, max=hi, step=None, **common)


def control_value(control, info: dict):
    """The field value a control holds ("" in a nullable text box is None)."""
    value = control.value
    if isinstance(control, (w.Text, w.Combobox)):
        text = value.strip()
        if text == "":
            return None
        if _is_int(info):
            try:
                return int(text)
            except ValueError:
                return text
        if "float" in info["type"]:
            try:
                return float(text)
            except ValueError:
                return text
        return text
    if isinstance(control, w.FloatLogSlider):
        return float(f"{value:.3g}")
    return value


class HyperparameterPanel(w.VBox):
    """Controls for ``algorithm`` (``"iql"``, ``"ppo"``, ...) and a Run button that trains and plots.

    ``dataset`` (offline) or ``env`` (online) picks the data; ``overrides`` set starting values of
    config fields, ``hparams`` of algorithm fields (e.g. ``{"expectile": 0.9}``). ``output_dir``
    is the folder of the runs (``<output_dir>/run_<n>``, the next ``n`` whose folder holds no run).
    """

    def __init__(self, algorithm: str, dataset: Optional[str] = None, env: Optional[str] = None,
                 overrides: Optional[dict] = None, hparams: Optional[dict] = None,
                 output_dir: str = "runs/panel", min_interval: float = 2.0, eval_episodes: Optional[int] = None):
        self.trainer_class = get_trainer_class(algorithm)
        self.algorithm = self.trainer_class.algorithm
        self.config_class = self.trainer_class.config_class
        self.offline = issubclass(self.trainer_class, OfflineTrainer)
        self.output_dir = output_dir
        self.min_interval = min_interval
        overrides = dict(overrides or {})
        if dataset is not None:
            overrides["dataset"] = dataset
        if env is not None:
            overrides["env"] = env
        if eval_episodes is not None:
            overrides["eval_episodes"] = eval_episodes
        self.config_info = {i["name"]: i for i in self.config_class.field_info() if i["name"] not in _HIDDEN
                            and (self.offline or self.algorithm in _READ_BY.get(i["name"], {self.algorithm}))}
        hp_cls = self.trainer_class.Hyperparameters
        self.hparam_info = {i["name"]: i for i in hp_cls.field_info()} if hp_cls is not None else {}
        bad = sorted(set(overrides) - set(self.config_info)) + sorted(set(hparams or {}) - set(self.hparam_info))
        if bad:
            from vla_rl_lib.errors import ConfigError

            raise ConfigError(f"the {self.algorithm} panel has no setting(s) {', '.join(bad)}")
        self.controls: dict[str, w.Widget] = {}
        self.hparam_controls: dict[str, w.Widget] = {}
        for name, info in self.hparam_info.items():
            c = make_control(info, (hparams or {}).get(name))
            if c is not None:
                self.hparam_controls[name] = c
        for name, info in self.config_info.items():
            c = make_control(info, overrides.get(name))
            if c is not None:
                self.controls[name] = c
        main = [c for n, c in self.controls.items() if n in _MAIN_CONFIG]
        more = [c for n, c in self.controls.items() if n not in _MAIN_CONFIG]
        sections = []
        titles = []
        if self.hparam_controls:
            sections.append(w.VBox(list(self.hparam_controls.values())))
            titles.append(f"{self.algorithm.upper()} hyperparameters")
        sections.append(w.VBox(main))
        titles.append(f"{self.config_class.__name__}")
        sections.append(w.VBox(more))
        titles.append("More settings")
        self.accordion = w.Accordion(children=sections, titles=tuple(titles), selected_index=0)
        self.run_button = w.Button(description="Run", button_style="success", icon="play",
                                   tooltip="build the trainer with these values, train, plot and evaluate")
        self.status = w.HTML()
        self.results = w.HTML()
        self.plot_box = w.VBox()
        self.run_button.on_click(self._on_run)
        self.trainer = None
        self.live_plot: Optional[LivePlot] = None
        self.result: Optional[dict] = None
        self.error: Optional[str] = None
        self.runs = 0
        self._buffers: dict[str, Any] = {}
        super().__init__(children=[w.HTML(f"<h3>{self.trainer_class.__name__}</h3>"), self.accordion,
                                   w.HBox([self.run_button, self.status]), self.plot_box, self.results])

    # -- values ----------------------------------------------------------------------------------
    def values(self) -> tuple[dict, dict]:
        """(config values, algorithm hyperparameters) as the controls hold them now."""
        config = {n: control_value(c, self.config_info[n]) for n, c in self.controls.items()}
        hparams = {n: control_value(c, self.hparam_info[n]) for n, c in self.hparam_controls.items()}
        return config, hparams

    def set(self, **values) -> "HyperparameterPanel":
        """Set controls by field name (config or algorithm), e.g. ``panel.set(expectile=0.9, num_epochs=2)``."""
        for name, value in values.items():
            control = self.controls.get(name) or self.hparam_controls.get(name)
            if control is None:
                from vla_rl_lib.errors import ConfigError

                raise ConfigError(f"the {self.algorithm} panel has no setting {name!r}")
            if isinstance(control, (w.Text, w.Combobox)):
                value = "" if value is None else str(value)
            elif isinstance(control, (w.IntSlider, w.FloatSlider, w.FloatLogSlider)):
                if value > control.max:
                    control.max = value
                if value < control.min:
                    control.min = value
            control.value = value
        return self

    def build_config(self):
        """Validated config and hyperparameter objects (raises the library's ConfigError)."""
        config_values, hparams = self.values()
        from vla_rl_lib.checkpoint import existing_run

        self.runs += 1
        while existing_run(f"{self.output_dir}/run_{self.runs}") is not None:  # never replace an earlier run
            self.runs += 1
        config_values["output_dir"] = f"{self.output_dir}/run_{self.runs}"
        config = self.config_class.from_dict(config_values)
        hp = self.trainer_class.Hyperparameters.from_dict(hparams) if self.trainer_class.Hyperparameters else None
        return config, hp

    def _buffer(self, name: str, config):
        key = (name, bool(config.normalize_states))
        if key not in self._buffers:
            from vla_rl_lib.data import OfflineReplayBuffer, load_dataset

            data = load_dataset(name)
            obs_dim = int(data["observations"].reshape(len(data["observations"]), -1).shape[1])
            act_dim = int(data["actions"].reshape(len(data["actions"]), -1).shape[1])
            buf = OfflineReplayBuffer(obs_dim, act_dim, normalize_states=config.normalize_states)
            self._buffers[key] = buf.load_dataset(data)
        return self._buffers[key]

    def build_trainer(self):
        config, hp = self.build_config()
        self.live_plot = LivePlot(min_interval=self.min_interval, display=False)
        kwargs = hp.to_dict() if hp is not None else {}
        if self.offline:
            if not config.dataset:
                from vla_rl_lib.errors import ConfigError

                raise ConfigError("set a dataset (e.g. pendulum-medium-v0) for an offline method")
            buffer = self._buffer(config.dataset, config)
            trainer = self.trainer_class(buffer.obs_dim, buffer.action_dim, config=config,
                                         callbacks=[self.live_plot], **kwargs)
            trainer.buffer_for_panel = buffer
        else:
            trainer = self.trainer_class(env=config.env, config=config, callbacks=[self.live_plot], **kwargs)
        return trainer

    # -- running ---------------------------------------------------------------------------------
    def run(self) -> Optional[dict]:
        """Build, train, evaluate; returns the evaluation (or None and shows the error)."""
        self.error, self.result = None, None
        self.run_button.disabled = True
        self.status.value = "building..."
        t0 = time.time()
        try:
            trainer = self.build_trainer()
            self.trainer = trainer
            self.plot_box.children = [self.live_plot.widget]
            self.status.value = "training..."
            if self.offline:
                trainer.train(trainer.buffer_for_panel)
            else:
                trainer.train()
            self.status.value = "evaluating..."
            last = trainer.last_evaluation
            if last is not None and last.get("step") == trainer.global_step:
                self.result = {k: v for k, v in last.items() if k != "step"}
            else:
                self.result = trainer.evaluate(num_episodes=trainer.config.eval_episodes or 3)
            self.live_plot.refresh(force=True)
            self._show_results(self.result, time.time() - t0)
            self.status.value = f"done in {time.time() - t0:.1f} s; run directory {html.escape(str(trainer.run_dir))}"
        except (VLARLError, ValueError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self.status.value = f"<span style='color:#b00'>{html.escape(self.error)}</span>"
        finally:
            self.run_button.disabled = False
        return self.result

    def _on_run(self, _button) -> None:
        self.run()

    def _show_results(self, result: dict, seconds: float) -> None:
        rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4g}</td></tr>" for k, v in result.items()
                       if isinstance(v, (int, float)))
        self.results.value = f"<table><tr><th>evaluation</th><th></th></tr>{rows}</table>"
