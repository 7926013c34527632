"""Shared test settings.

The networks in the tests are small: one torch thread trains them fastest, and it keeps the suite
from fighting itself on a 2-core machine (notebook kernels and subprocesses set their own).
"""
import torch

torch.set_num_threads(1)


import contextlib

import pytest


class HostCopyError(AssertionError):
    """A tensor was turned into numpy where the code must stay on the device."""


@contextlib.contextmanager
def forbid_host_copies(numpy_method: bool = True):
    """Inside the block, ``np.asarray(tensor)`` (``Tensor.__array__``) and, unless
    ``numpy_method=False``, ``tensor.numpy()`` raise :class:`HostCopyError`. On a CPU they would
    silently work; on a GPU they crash (``np.asarray`` of a CUDA tensor) or stall the device, so
    CPU CI catches the device bugs this way. ``.item()``/``float()``/``.tolist()`` (logging
    scalars) stay allowed."""
    def refuse(self, *args, **kwargs):
        raise HostCopyError("a tensor went through numpy inside a device path")

    names = ("__array__", "numpy") if numpy_method else ("__array__",)
    saved = {name: torch.Tensor.__dict__.get(name) for name in names}
    for name in names:
        setattr(torch.Tensor, name, refuse)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, value)


@pytest.fixture
def no_host_copies():
    """The :func:`forbid_host_copies` context manager (use it around the code under test)."""
    return forbid_host_copies
