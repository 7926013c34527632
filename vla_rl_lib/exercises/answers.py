"""The grader's wire format: test inputs to the grading worker, the student's answers back.

Plain JSON: arrays travel as dtype, shape and base64 bytes, never as pickles, so reading what a
submission's process wrote cannot run its code. :func:`unpack` accepts numeric dtypes only, checks
every size, and refuses anything else; a malformed file simply scores nothing.
"""
from __future__ import annotations

import base64
import json
from typing import Any

import numpy as np
import torch

#: the dtypes an answer may have (object, string and void arrays are refused)
DTYPES = {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32",
          "float64", "complex64", "complex128"}
MAX_BYTES = 64 * 2**20  # answers larger than this are not read


class Unconvertible:
    """An answer of a type that is not an array, tensor or number (shown by its type's name)."""

    def __init__(self, type_name: str):
        self.type_name = str(type_name)[:80]

    def __repr__(self) -> str:
        return f"<{self.type_name}>"


def _array(arr: np.ndarray, kind: str) -> dict:
    arr = np.array(arr, order="C", copy=True)  # (ascontiguousarray would make a 0-d array 1-d)
    return {"t": kind, "dtype": arr.dtype.name, "shape": list(arr.shape), "data": base64.b64encode(arr.tobytes()).decode()}


def pack(value: Any) -> Any:
    """A JSON-able form of inputs and answers: tensors, arrays, numbers, strings, tuples, lists, dicts."""
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype == torch.bfloat16:
            value = value.float()
        return _array(value.numpy(), "torch")
    if isinstance(value, (np.ndarray, np.generic)):
        arr = np.asarray(value)
        return _array(arr, "numpy") if arr.dtype.name in DTYPES else {"t": "other", "type": type(value).__name__}
    if value is None or isinstance(value, (bool, int, float, str)):
        return {"t": "py", "v": value}
    if isinstance(value, (tuple, list)):
        return {"t": type(value).__name__, "items": [pack(v) for v in value]}
    if isinstance(value, dict):
        return {"t": "dict", "items": {str(k): pack(v) for k, v in value.items()}}
    return {"t": "other", "type": type(value).__name__}


def unpack(obj: Any) -> Any:
    """The inverse of :func:`pack`; raises ``ValueError`` on anything :func:`pack` cannot have written."""
    if not isinstance(obj, dict) or not isinstance(obj.get("t"), str):
        raise ValueError("not a packed value")
    kind = obj["t"]
    if kind in ("torch", "numpy"):
        dtype, shape = obj.get("dtype"), obj.get("shape")
        if dtype not in DTYPES or not isinstance(shape, list) or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise ValueError("bad array header")
        raw = base64.b64decode(str(obj.get("data", "")), validate=True)
        if len(raw) != int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize:
            raise ValueError("array size does not match its shape")
        arr = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
        return torch.from_numpy(arr) if kind == "torch" else arr
    if kind == "py":
        value = obj.get("v")
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise ValueError("bad scalar")
        return value
    if kind in ("tuple", "list"):
        items = obj.get("items")
        if not isinstance(items, list):
            raise ValueError("bad sequence")
        out = [unpack(v) for v in items]
        return tuple(out) if kind == "tuple" else out
    if kind == "dict":
        items = obj.get("items")
        if not isinstance(items, dict):
            raise ValueError("bad mapping")
        return {str(k): unpack(v) for k, v in items.items()}
    if kind == "other":
        return Unconvertible(obj.get("type", "object"))
    raise ValueError(f"unknown kind {kind!r}")


def parse(data: bytes, overflow: bool = False) -> Any:
    """The JSON a sandboxed process sent back; raises ``ValueError`` when it is unusable."""
    if overflow or len(data) > MAX_BYTES:
        raise ValueError(f"the answers are larger than {MAX_BYTES // 2**20} MiB")
    if not data:
        raise ValueError("no answers were sent")
    try:
        return json.loads(data.decode())
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"the answers are not valid JSON ({type(exc).__name__})") from None
