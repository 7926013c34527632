"""Instructions of a batch of worlds kept as indices into a fixed vocabulary.

:class:`IndexedText` is a sequence of strings (``len``, indexing, iteration, ``==`` with a tuple
or list of strings) whose content is ``ids``: an integer array or tensor of indices into
``vocabulary``. The batched simulator returns its instructions this way when it returns torch
tensors, so a rollout on a GPU never turns 65,536 instructions into Python strings: the rollout
helpers index, slice and concatenate ``ids`` on the device, and ``VLAPolicy`` looks the token ids
of the few vocabulary entries up with one gather. Reading an entry as a string (``text[i]``,
``list(text)``) copies ``ids`` to the host.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


class IndexedText(Sequence):
    """``vocabulary[ids[i]]`` for each ``i`` (see the module docstring)."""

    __slots__ = ("ids", "vocabulary")

    def __init__(self, ids, vocabulary: Sequence[str]):
        self.ids = ids
        self.vocabulary = tuple(vocabulary)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def _host_ids(self) -> list:
        ids = self.ids.cpu() if isinstance(self.ids, torch.Tensor) else np.asarray(self.ids)
        return ids.tolist()

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return self.vocabulary[int(self.ids[index])]
        if isinstance(index, (list, tuple)):
            index = torch.as_tensor(index) if isinstance(self.ids, torch.Tensor) else np.asarray(index)
        if isinstance(self.ids, torch.Tensor) and isinstance(index, torch.Tensor):
            index = index.to(self.ids.device)
        return IndexedText(self.ids[index], self.vocabulary)

    def __iter__(self):
        return iter([self.vocabulary[i] for i in self._host_ids()])

    def __eq__(self, other) -> bool:
        if isinstance(other, IndexedText):
            return self.vocabulary == other.vocabulary and list(self._host_ids()) == list(other._host_ids())
        if isinstance(other, (list, tuple)):
            return list(self) == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"IndexedText({len(self)} instructions over {len(self.vocabulary)} texts)"

    def to(self, device) -> "IndexedText":
        ids = self.ids.to(device) if isinstance(self.ids, torch.Tensor) else torch.as_tensor(self.ids, device=device)
        return IndexedText(ids, self.vocabulary)

    @staticmethod
    def concat(parts: Sequence["IndexedText"]) -> "IndexedText":
        first = parts[0]
        if isinstance(first.ids, torch.Tensor):
            return IndexedText(torch.cat([p.ids for p in parts]), first.vocabulary)
        return IndexedText(np.concatenate([np.asarray(p.ids) for p in parts]), first.vocabulary)
