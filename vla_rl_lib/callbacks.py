"""Trainer callbacks, in the manner of Stable-Baselines3.

A callback overrides any of the hooks below. Any hook may return ``False`` to stop training
(or set ``trainer.stop_training = True``); returning ``None`` or ``True`` lets it go on.

* ``on_train_start(trainer)``
* ``on_step(trainer)``: after every update (offline: a gradient step; online: a collect/update cycle)
* ``on_log(trainer, metrics)``: every ``log_freq`` with the averaged metrics that were logged
* ``on_evaluation(trainer, results)``: after each evaluation with ``evaluate()``'s dict
* ``on_train_end(trainer)``

The live plot in ``widgets/`` and the progress bar here are callbacks.
"""
from __future__ import annotations

import time
from typing import Iterable, Optional


class Callback:
    """Base class: every hook does nothing."""

    def on_train_start(self, trainer) -> Optional[bool]:
        return None

    def on_step(self, trainer) -> Optional[bool]:
        return None

    def on_log(self, trainer, metrics: dict) -> Optional[bool]:
        return None

    def on_evaluation(self, trainer, results: dict) -> Optional[bool]:
        return None

    def on_train_end(self, trainer) -> Optional[bool]:
        return None


class CallbackList(Callback):
    """Calls several callbacks in order; training stops if any of them says so."""

    def __init__(self, callbacks: Iterable[Callback] = ()):
        self.callbacks = [c for c in callbacks if c is not None]

    def _call(self, hook: str, *args) -> bool:
        keep_going = True
        for cb in self.callbacks:
            if getattr(cb, hook)(*args) is False:
                keep_going = False
        return keep_going

    def on_train_start(self, trainer):
        return self._call("on_train_start", trainer)

    def on_step(self, trainer):
        return self._call("on_step", trainer)

    def on_log(self, trainer, metrics):
        return self._call("on_log", trainer, metrics)

    def on_evaluation(self, trainer, results):
        return self._call("on_evaluation", trainer, results)

    def on_train_end(self, trainer):
        return self._call("on_train_end", trainer)


class StopOnReward(Callback):
    """Stop when an evaluation's ``mean_reward`` reaches ``threshold`` (SB3's StopTrainingOnRewardThreshold)."""

    def __init__(self, threshold: float, key: str = "mean_reward"):
        self.threshold, self.key = threshold, key
        self.reached_at: Optional[int] = None

    def on_evaluation(self, trainer, results):
        if results.get(self.key, float("-inf")) >= self.threshold:
            self.reached_at = trainer.global_step
            return False
        return None


class StopAfterSteps(Callback):
    """Stop once ``trainer.global_step`` reaches ``steps`` (used to test interruption and resume)."""

    def __init__(self, steps: int):
        self.steps = steps

    def on_step(self, trainer):
        return False if trainer.global_step >= self.steps else None


class ProgressBar(Callback):
    """A tqdm progress bar showing steps/s and the latest reward."""

    def __init__(self, leave: bool = True):
        self.leave = leave
        self.bar = None
        self._last = 0
        self._postfix: dict = {}

    def on_train_start(self, trainer):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=trainer.total_steps, initial=trainer.global_step, unit="step",
                        desc=trainer.algorithm, leave=self.leave, dynamic_ncols=True)
        self._last = trainer.global_step

    def on_step(self, trainer):
        if self.bar is not None and trainer.global_step - self._last >= max(1, trainer.total_steps // 500):
            self.bar.update(trainer.global_step - self._last)
            self._last = trainer.global_step

    def _show(self, values: dict):
        for key in ("mean_reward", "eval/mean_reward", "eval/normalized_score"):
            if values.get(key) is not None:
                self._postfix[key.replace("eval/", "eval_")] = f"{values[key]:.3g}"
        if self.bar is not None and self._postfix:
            self.bar.set_postfix(self._postfix, refresh=False)

    def on_log(self, trainer, metrics):
        self._show(metrics)

    def on_evaluation(self, trainer, results):
        self._show({f"eval/{k}": v for k, v in results.items()})

    def on_train_end(self, trainer):
        if self.bar is not None:
            self.bar.update(trainer.global_step - self._last)
            self.bar.close()
            self.bar = None


class MetricsHistory(Callback):
    """Keeps every logged metrics dict and evaluation result in memory (for notebooks and tests)."""

    def __init__(self):
        self.logs: list[dict] = []
        self.evaluations: list[dict] = []
        self.start_time = time.time()

    def on_log(self, trainer, metrics):
        self.logs.append(dict(metrics))

    def on_evaluation(self, trainer, results):
        self.evaluations.append(dict(results, step=trainer.global_step))
