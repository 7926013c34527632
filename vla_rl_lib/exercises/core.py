"""The checking machinery of the course exercises.

An :class:`Exercise` names a reference function from the library, a set of named input cases
(random ones and edge cases) and the typical wrong answers students write, each with a hint.
``check(student_fn)`` runs the student's function on every case and compares it with the
reference, values and, for losses, gradients. The first mismatch is reported exactly: which case,
expected against got, and, when the answer matches a known mistake, what that mistake is.

Every check is also recorded: in :data:`RESULTS` for the notebook, and as one JSON line in the file
named by ``$VLA_RL_GRADING_RESULTS`` when the grader runs the notebook.
"""
from __future__ import annotations

import contextlib
import json
import os
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch

RESULTS: dict[str, "CheckResult"] = {}
RESULTS_ENV = "VLA_RL_GRADING_RESULTS"


@dataclass
class Case:
    """One input to try: ``inputs`` are keyword arguments (tensors are cloned for each call)."""

    name: str
    inputs: dict


@dataclass
class Mistake:
    """A typical wrong answer: if the student's output equals ``fn``'s, show ``hint``."""

    name: str
    fn: Callable
    hint: str


@dataclass
class CheckResult:
    exercise: str
    passed: bool
    message: str
    cases_passed: int = 0
    cases_total: int = 0
    mistake: Optional[str] = None

    def __bool__(self) -> bool:
        return self.passed

    def __str__(self) -> str:
        return self.message

    def _repr_html_(self) -> str:
        colour = "#1a7f37" if self.passed else "#cf222e"
        text = self.message.replace("&", "&amp;").replace("<", "&lt;").replace("\n", "<br>")
        return f'<div style="border-left:4px solid {colour};padding:4px 8px;font-family:monospace">{text}</div>'


@dataclass
class Exercise:
    name: str
    reference: Callable
    cases: Callable[[], list[Case]]
    mistakes: list[Mistake] = field(default_factory=list)
    grad_inputs: tuple[str, ...] = ()   # inputs whose gradients must match the reference's too
    rtol: float = 1e-4
    atol: float = 1e-5
    description: str = ""


def _clone(value: Any, requires_grad: bool = False) -> Any:
    if isinstance(value, torch.Tensor):
        out = value.detach().clone()
        if requires_grad and out.is_floating_point():
            out.requires_grad_(True)
        return out
    if isinstance(value, np.ndarray):
        return value.copy()
    return value


def _as_tuple(value: Any) -> tuple:
    return tuple(value) if isinstance(value, (tuple, list)) else (value,)


def _to_numpy(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _fmt(value: Any) -> str:
    arr = _to_numpy(value)
    if arr.dtype == object:
        return repr(value)[:200]
    with np.printoptions(precision=4, suppress=True, threshold=12, edgeitems=3):
        text = np.array2string(arr) if arr.ndim else f"{arr.item():.6g}" if arr.dtype.kind == "f" else str(arr.item())
    shape = f" (shape {tuple(arr.shape)})" if arr.ndim else ""
    return text.replace("\n", " ") + shape


def _same(a: Any, b: Any, rtol: float, atol: float) -> tuple[bool, str]:
    """Compare outputs; return (equal, reason if not)."""
    a_t, b_t = _as_tuple(a), _as_tuple(b)
    if len(a_t) != len(b_t):
        return False, f"returned {len(b_t)} value(s), expected {len(a_t)}"
    for x, y in zip(a_t, b_t):
        if y is None:
            return False, "returned None (did you forget `return`?)"
        try:
            xa, ya = _to_numpy(x), _to_numpy(y)
        except Exception:  # noqa: BLE001 - any unconvertible answer is simply wrong
            return False, f"returned a {type(y).__name__}, expected an array/tensor"
        if xa.shape != ya.shape:
            return False, f"has shape {tuple(ya.shape)}, expected {tuple(xa.shape)}"
        if xa.dtype.kind in "iub" and ya.dtype.kind not in "iub":
            return False, f"has dtype {ya.dtype}, expected integers ({xa.dtype})"
        if not np.allclose(xa.astype(np.float64), ya.astype(np.float64), rtol=rtol, atol=atol, equal_nan=True):
            return False, "has the wrong values"
    return True, ""


def _call(fn: Callable, case: Case, grad_inputs: tuple[str, ...]):
    inputs = {k: _clone(v, k in grad_inputs) for k, v in case.inputs.items()}
    out = fn(**inputs)
    grads = {}
    if grad_inputs:
        first = _as_tuple(out)[0]
        if isinstance(first, torch.Tensor) and first.requires_grad:
            first.sum().backward()
        for k in grad_inputs:
            g = inputs[k].grad
            grads[k] = torch.zeros_like(inputs[k]) if g is None else g
    return out, grads


def check(student_fn: Callable, exercise: Exercise, verbose: bool = True) -> CheckResult:
    """Compare ``student_fn`` with the exercise's reference on every case; print and return the result."""
    name = exercise.name
    cases = exercise.cases()
    passed = 0
    result: Optional[CheckResult] = None
    for case in cases:
        expected, expected_grads = _call(exercise.reference, case, exercise.grad_inputs)
        try:
            got, got_grads = _call(student_fn, case, exercise.grad_inputs)
        except NotImplementedError:
            result = CheckResult(name, False, f"✗ {name}: not implemented yet — replace the "
                                 "`raise NotImplementedError` with your code.", passed, len(cases), "blank")
            break
        except Exception as exc:  # noqa: BLE001 - report whatever the student's code raised
            where = traceback.extract_tb(exc.__traceback__)[-1]
            result = CheckResult(name, False, f"✗ {name}: case '{case.name}' raised {type(exc).__name__}: {exc} "
                                 f"(line {where.lineno}: {where.line})", passed, len(cases), "exception")
            break
        ok, reason = _same(expected, got, exercise.rtol, exercise.atol)
        if ok and exercise.grad_inputs:
            for k in exercise.grad_inputs:
                ok, why = _same(expected_grads[k], got_grads[k], exercise.rtol, exercise.atol)
                if not ok:
                    reason = (f"gives the right value but the wrong gradient with respect to `{k}` "
                              f"(expected {_fmt(expected_grads[k])}, got {_fmt(got_grads[k])}): "
                              "check which terms must not carry gradient (.detach())")
                    break
        if not ok:
            mistake = _diagnose(exercise, case, got, got_grads)
            hint = f"\n  Hint: {mistake.hint}" if mistake else ""
            detail = (f"\n  expected: {_fmt(_as_tuple(expected)[0])}\n  got:      {_fmt(_as_tuple(got)[0])}"
                      if "gradient" not in reason and "returned" not in reason else "")
            inputs = ", ".join(f"{k}={_fmt(v)}" for k, v in case.inputs.items())
            result = CheckResult(name, False, f"✗ {name}: case '{case.name}': your answer {reason}.{detail}"
                                 f"\n  inputs: {inputs}{hint}", passed, len(cases),
                                 mistake.name if mistake else "wrong")
            break
        passed += 1
    if result is None:
        result = CheckResult(name, True, f"✓ {name}: all {len(cases)} cases pass (random and edge cases). Well done!",
                             passed, len(cases))
    _record(result)
    if verbose:
        print(result.message)
    return result


def _diagnose(exercise: Exercise, case: Case, got: Any, got_grads: dict) -> Optional[Mistake]:
    for mistake in exercise.mistakes:
        try:
            wrong, wrong_grads = _call(mistake.fn, case, exercise.grad_inputs)
        except Exception:  # noqa: BLE001
            continue
        same, _ = _same(wrong, got, exercise.rtol, exercise.atol)
        if same and all(_same(wrong_grads[k], got_grads.get(k), exercise.rtol, exercise.atol)[0]
                        for k in exercise.grad_inputs if k in got_grads):
            return mistake
    return None


def _record(result: CheckResult) -> None:
    RESULTS[result.exercise] = result
    path = os.environ.get(RESULTS_ENV)
    if path:
        with open(path, "a") as fh:
            fh.write(json.dumps({"exercise": result.exercise, "passed": result.passed, "message": result.message,
                                 "mistake": result.mistake, "time": time.time()}) + "\n")


@contextlib.contextmanager
def patched(module, name: str, fn: Callable):
    """Use a student's function inside the library for a training run, then restore the original."""
    original = getattr(module, name)
    setattr(module, name, fn)
    try:
        yield fn
    finally:
        setattr(module, name, original)


def random_tensor(*shape, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale
