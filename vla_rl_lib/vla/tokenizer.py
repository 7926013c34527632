"""The kit's instruction tokenizer: word level, deterministic, with its vocabulary built in.

A VLA turns an instruction such as ``"change to the left lane"`` into token ids before its
language encoder reads them. Large VLAs use the tokenizer of their language model (OpenVLA uses
Llama 2's); the kit's small model needs far less, and its tokenizer needs no file and no download:

* text is lower-cased, punctuation becomes spaces, and it is split on whitespace;
* each word maps to its index in :data:`VOCAB` (a fixed list: the driving simulator's words plus
  common driving and manipulation words), an unknown word to ``[UNK]``;
* the sequence is ``[CLS] w1 w2 ... [SEP]`` padded with ``[PAD]`` (id 0) to ``max_length``; the
  attention mask is 1 on real tokens.

The same text always gives the same ids, on every machine. An empty instruction raises
:class:`~vla_rl_lib.errors.ConfigError`; one longer than ``max_length`` tokens raises
:class:`~vla_rl_lib.errors.IncompatibleError` (nothing is silently cut off).
"""
from __future__ import annotations

import re
from typing import Iterable, Sequence

import torch

from vla_rl_lib.errors import ConfigError, IncompatibleError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
PAD_ID, UNK_ID, CLS_ID, SEP_ID = range(4)

_WORDS = """
a an the to of in on at and or then not no do don't is be it its this that your you please
keep stay hold follow remain lane lanes road line lines car cars vehicle vehicles truck ahead behind
front back left right middle center centre change move switch merge turn go drive driving steer
stop halt brake slow slower down speed up faster accelerate overtake pass passing safely safe
carefully straight forward backward reverse park parking wait until before after next other current
same first second third one two three exit junction intersection traffic light sign red green yellow
pick place push pull open close grasp lift put object block cube cup bowl drawer door table top bottom
"""

#: The built-in vocabulary: special tokens first, then words (ids are positions in this tuple).
VOCAB: tuple[str, ...] = SPECIAL_TOKENS + tuple(dict.fromkeys(_WORDS.split()))
_INDEX = {w: i for i, w in enumerate(VOCAB)}
_SPLIT = re.compile(r"[^a-z0-9']+")


class InstructionTokenizer:
    """Word-level tokenizer with the built-in :data:`VOCAB`.

    Args:
        max_length: length of every id sequence, ``[CLS]`` and ``[SEP]`` included.
    """

    def __init__(self, max_length: int = 16):
        if int(max_length) < 3:
            raise ConfigError(f"max_length={max_length!r} is too small: the tokenizer needs >= 3 "
                              "(one word plus [CLS] and [SEP])")
        self.max_length = int(max_length)

    @property
    def vocab_size(self) -> int:
        return len(VOCAB)

    @staticmethod
    def words(text: str) -> list[str]:
        """Lower-cased words of ``text`` (punctuation is a separator)."""
        return [w for w in _SPLIT.split(str(text).lower()) if w]

    def encode(self, text: str) -> list[int]:
        """``[CLS] words [SEP]`` ids, without padding."""
        if not isinstance(text, str):
            raise ConfigError(f"an instruction must be a string, got {type(text).__name__} ({text!r})")
        words = self.words(text)
        if not words:
            raise ConfigError(f"the instruction {text!r} is empty: give the policy a task in words, "
                              "e.g. 'keep the lane'")
        if len(words) + 2 > self.max_length:
            raise IncompatibleError(
                f"the instruction {text[:80]!r} has {len(words)} words but the model reads at most "
                f"{self.max_length - 2} (max_length={self.max_length} with [CLS]/[SEP]); shorten it or "
                "build the model with a larger VLAConfig.max_text_length")
        return [CLS_ID] + [_INDEX.get(w, UNK_ID) for w in words] + [SEP_ID]

    def __call__(self, texts: str | Sequence[str]) -> dict[str, torch.Tensor]:
        """Tokenise one text or a batch: ``{"input_ids": (B, L) long, "attention_mask": (B, L) long}``."""
        if isinstance(texts, (str, bytes)):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise ConfigError("no instruction given: pass a string or a non-empty list of strings")
        ids = torch.zeros(len(texts), self.max_length, dtype=torch.long)
        for i, text in enumerate(texts):
            seq = self.encode(_as_text(text))
            ids[i, :len(seq)] = torch.tensor(seq)
        return {"input_ids": ids, "attention_mask": (ids != PAD_ID).long()}

    def decode(self, ids: Iterable[int]) -> str:
        """The words of an id sequence (special tokens dropped; unknown words come back as ``[UNK]``)."""
        words = []
        for i in (int(t) for t in ids):
            if i in (PAD_ID, CLS_ID, SEP_ID):
                continue
            words.append(VOCAB[i] if 0 <= i < len(VOCAB) else "[UNK]")
        return " ".join(words)


def _as_text(text) -> str:
    """Accept ``bytes`` (HDF5 datasets store instructions as bytes) as well as ``str``."""
    if isinstance(text, bytes):
        return text.decode("utf-8")
    return text
