"""The checking machinery of the course exercises.

An :class:`Exercise` names a reference function from the library, a set of named input cases
(random ones and edge cases) and the typical wrong answers students write, each with a hint.
``check(student_fn)`` runs the student's function on every case and compares it with the
reference, values and, for losses, gradients. The first mismatch is reported exactly: which case,
expected against got, and, when the answer matches a known mistake, what that mistake is.

Every check is recorded in :data:`RESULTS` for the notebook. The grader does not read it (nor
anything else a notebook prints or writes): it calls the student's functions on inputs drawn at
grading time (:func:`drawn_with`) and judges their answers in its own process with :func:`judge`.
"""
from __future__ import annotations

import contextlib
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np
import torch

RESULTS: dict[str, "CheckResult"] = {}
#: every exercise by name (filled as the exercise modules define them; the grader looks them up here)
EXERCISES: dict[str, "Exercise"] = {}
_SALT = [0]  # added to every seed of a random case: 0 in notebooks, drawn at random by the grader


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

    def __post_init__(self) -> None:
        EXERCISES[self.name] = self


class AnswerError(Exception):
    """A student's function failed on a case in the grading worker (the text says how)."""


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
        if ya.dtype.kind not in "biufc":  # objects, strings, ...
            return False, f"returned a {getattr(y, 'type_name', type(y).__name__)}, expected an array/tensor"
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
    result = judge(exercise, exercise.cases(), lambda i, case: _call(student_fn, case, exercise.grad_inputs))
    RESULTS[result.exercise] = result
    if verbose:
        print(result.message)
    return result


def describe_exception(exc: BaseException) -> str:
    """``raised TypeError: ... (line N: source)``: how a student's function failed, in one line."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (line {frames[-1].lineno}: {frames[-1].line})" if frames else ""
    return f"raised {type(exc).__name__}: {exc}{where}"


def judge(exercise: Exercise, cases: list[Case], answer: Callable[[int, Case], tuple]) -> CheckResult:
    """Compare ``answer(i, case) -> (outputs, gradients)`` with the reference on every case.

    ``answer`` runs the student's function (in the notebook) or returns what the grading worker
    reported (in the grader, raising :class:`AnswerError` for a recorded failure); the reference
    always runs here, in the caller's process.
    """
    name = exercise.name
    passed = 0
    for i, case in enumerate(cases):
        expected, expected_grads = _call(exercise.reference, case, exercise.grad_inputs)
        try:
            got, got_grads = answer(i, case)
        except NotImplementedError:
            return CheckResult(name, False, f"✗ {name}: not implemented yet — replace the "
                               "`raise NotImplementedError` with your code.", passed, len(cases), "blank")
        except Exception as exc:  # noqa: BLE001 - report whatever the student's code raised
            text = str(exc) if isinstance(exc, AnswerError) else describe_exception(exc)
            return CheckResult(name, False, f"✗ {name}: case '{case.name}' {text}", passed, len(cases), "exception")
        ok, reason = _same(expected, got, exercise.rtol, exercise.atol)
        if ok and exercise.grad_inputs:
            for k in exercise.grad_inputs:
                ok, why = _same(expected_grads[k], got_grads.get(k), exercise.rtol, exercise.atol)
                if not ok:
                    reason = (f"gives the right value but the wrong gradient with respect to `{k}` "
                              f"(expected {_fmt(expected_grads[k])}, got {_fmt(got_grads.get(k))}): "
                              "check which terms must not carry gradient (.detach())")
                    break
        if not ok:
            mistake = _diagnose(exercise, case, got, got_grads)
            hint = f"\n  Hint: {mistake.hint}" if mistake else ""
            detail = (f"\n  expected: {_fmt(_as_tuple(expected)[0])}\n  got:      {_fmt(_as_tuple(got)[0])}"
                      if "gradient" not in reason and "returned" not in reason else "")
            inputs = ", ".join(f"{k}={_fmt(v)}" for k, v in case.inputs.items())
            return CheckResult(name, False, f"✗ {name}: case '{case.name}': your answer {reason}.{detail}"
                               f"\n  inputs: {inputs}{hint}", passed, len(cases), mistake.name if mistake else "wrong")
        passed += 1
    return CheckResult(name, True, f"✓ {name}: all {len(cases)} cases pass (random and edge cases). Well done!",
                       passed, len(cases))


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


@contextlib.contextmanager
def patched(module, name: str, fn: Callable):
    """Use a student's function inside the library for a training run, then restore the original."""
    original = getattr(module, name)
    setattr(module, name, fn)
    try:
        yield fn
    finally:
        setattr(module, name, original)


@contextlib.contextmanager
def drawn_with(salt: int):
    """Draw every random case with its seeds shifted by ``salt`` (the grader's secret, drawn at grading time)."""
    previous, _SALT[0] = _SALT[0], int(salt)
    try:
        yield
    finally:
        _SALT[0] = previous


def random_tensor(*shape, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed + _SALT[0])
    return torch.randn(*shape, generator=g, dtype=torch.float64) * scale


def random_generator(seed: int) -> np.random.Generator:
    """numpy's generator for a random case (shifted by the grader's salt like :func:`random_tensor`)."""
    return np.random.default_rng(seed + _SALT[0])
