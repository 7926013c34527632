"""Opt-in compiled updates: one ``torch.compile`` of a trainer's whole gradient step.

Small reinforcement-learning networks are bound by kernel launches, not arithmetic: an IQL step
on 256x256 MLPs is a few hundred tiny kernels, and the GPU waits for Python between them.
Compiling the *whole* update (forward passes, losses, backward passes, optimiser steps, target
updates) lets inductor fuse the element-wise work into a few kernels and, with CUDA graphs,
replay the step with one launch.

Switch it on with ``OfflineRLConfig(compile=True)`` (IQL, CQL, TD3+BC, the Decision Transformer,
behaviour cloning) or ``RLConfig(compile=True)`` (SAC's update); on the command line
``--compile [--compile_mode ...]``. ``compile_mode``:

* ``"auto"``: ``"reduce-overhead"`` (inductor kernels replayed as CUDA graphs) on CUDA,
  ``"default"`` elsewhere;
* any mode of ``torch.compile``: ``"default"``, ``"reduce-overhead"``,
  ``"max-autotune-no-cudagraphs"``, ``"max-autotune"``.

The algorithm files do not change: :func:`compiled_update` wraps their ``update(batch)``. What
makes an update compile well is done here once:

* learning rates become 0-dim tensors (:func:`prepare_optimizers`), so a learning-rate schedule
  updates them in place instead of changing a Python float the compiled graph would specialise on
  (which would recompile it every step), and ``zero_grad`` becomes traceable Python;
* each call starts a new CUDA-graph step (``torch.compiler.cudagraph_mark_step_begin``): the
  metrics one update returns are read (summed) by the trainer before the next one overwrites them.

The first calls are slow (compilation: seconds on a GPU, tens of seconds on a CPU); what pays is
a long run. Compiled and eager updates compute the same losses (tests/test_compile.py), up to
float rounding and, for the algorithms that sample noise inside the update (SAC, CQL, TD3+BC),
the random stream: inductor draws its own random numbers unless
``torch._inductor.config.fallback_random`` is set.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch
import torch._functorch.config as functorch_config

def resolve_mode(mode: str, device: torch.device) -> str:
    """The ``torch.compile`` mode for ``mode`` on ``device`` (``"auto"``: CUDA graphs on CUDA)."""
    if mode == "auto":
        return "reduce-overhead" if torch.device(device).type == "cuda" else "default"
    return mode


def _zero_grad(optimizer: torch.optim.Optimizer, set_to_none: bool = True) -> None:
    """``optimizer.zero_grad(set_to_none=True)`` in plain Python that torch.compile traces (the
    library's own ``zero_grad`` is marked untraceable and would split the compiled update)."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = None


def prepare_optimizers(*optimizers: torch.optim.Optimizer) -> None:
    """Make optimisers compile well: every learning rate a 0-dim float32 tensor on its parameters'
    device (schedulers then update it in place; a compiled step reads it without recompiling), and
    a traceable ``zero_grad``."""
    for opt in optimizers:
        opt.zero_grad = functools.partial(_zero_grad, opt)
        for group in opt.param_groups:
            if not isinstance(group["lr"], torch.Tensor):
                device = group["params"][0].device if group["params"] else "cpu"
                group["lr"] = torch.tensor(float(group["lr"]), dtype=torch.float32, device=device)


def compiled_update(update: Callable, device, mode: str = "auto", retain_graphs: bool = False) -> Callable:
    """``update`` (a trainer's bound ``update(batch) -> metrics``) compiled as one function.

    ``retain_graphs``: for updates whose backward passes share forward work (see :class:`_retained_graphs`)."""
    compiled = torch.compile(update, mode=resolve_mode(mode, device), dynamic=False)
    cuda_graphs = "reduce-overhead" in resolve_mode(mode, device) or resolve_mode(mode, device) == "max-autotune"

    @functools.wraps(update)
    def step(batch: dict) -> dict:
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        if not retain_graphs:
            return compiled(batch)
        with _retained_graphs(), functorch_config.patch(donated_buffer=False):  # (donated buffers forbid retain_graph)
            return compiled(batch)

    return step


_backward = torch.Tensor.backward


def _backward_retaining(self, gradient=None, retain_graph=None, create_graph=False, inputs=None):
    return _backward(self, gradient, True if retain_graph is None else retain_graph, create_graph, inputs)


class _retained_graphs:
    """``loss.backward()`` keeps the graph inside a compiled update. Compilation merges the
    forward work between two backward calls into one autograd node: in SAC and CQL the critic's
    (or temperature's) loss and the actor's loss are computed next to the one sampled action, so
    the first ``backward`` would free what the actor's ``backward`` still needs (eager torch keeps
    them in separate graphs). Keeping the graph changes no gradient: the second pass adds only
    zeros to what the first one's optimiser has already stepped. A trainer asks for it with
    ``compile_retains_graphs = True``."""

    def __enter__(self):
        torch.Tensor.backward = _backward_retaining

    def __exit__(self, *exc):
        torch.Tensor.backward = _backward


def optimizers_of(trainer) -> list:
    """Every optimiser held by a trainer (found by type, as checkpoints find them)."""
    return [v for v in vars(trainer).values() if isinstance(v, torch.optim.Optimizer)]


def compile_trainer_update(trainer) -> Callable:
    """The update function a trainer's loop calls: ``trainer.update`` as it is, or compiled when
    ``trainer.config.compile`` is set (learning rates turned into tensors first)."""
    cfg = trainer.config
    if not getattr(cfg, "compile", False):
        return trainer.update
    prepare_optimizers(*optimizers_of(trainer))
    return compiled_update(trainer.update, trainer.device, getattr(cfg, "compile_mode", "auto"),
                           retain_graphs=bool(getattr(trainer, "compile_retains_graphs", False)))
