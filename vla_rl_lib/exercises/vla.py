"""VLA exercises: action tokenisation and de-tokenisation with 256 bins (as OpenVLA / RT-2 do)."""
from __future__ import annotations

import numpy as np

from vla_rl_lib.exercises.core import Case, Exercise, Mistake, check, random_generator


def _tok_ref(actions, bins=256):
    from vla_rl_lib.envs.wrappers import tokenize_actions

    return tokenize_actions(actions, bins)


def _detok_ref(tokens, bins=256):
    from vla_rl_lib.envs.wrappers import detokenize_actions

    return detokenize_actions(tokens, bins)


TOKENIZE = Exercise(
    name="tokenize_actions",
    reference=_tok_ref,
    cases=lambda: [
        Case("random actions", dict(actions=random_generator(100).uniform(-1, 1, size=(16, 2)))),
        Case("the bounds -1 and +1", dict(actions=np.array([[-1.0, 1.0], [0.0, 0.999]]))),
        Case("outside the range is clipped", dict(actions=np.array([[-3.0, 2.5]]))),
        Case("8 bins", dict(actions=np.linspace(-1, 1, 9)[:, None], bins=8)),
    ],
    mistakes=[
        Mistake("round", lambda actions, bins=256: np.clip(np.round((np.clip(actions, -1, 1) + 1) / 2 * (bins - 1)), 0, bins - 1).astype(np.int64),
                "bins are equal-width intervals of [-1, 1]: token = floor((a + 1) / 2 * bins), clipped to [0, bins - 1]."),
        Mistake("no clip at +1", lambda actions, bins=256: np.floor((np.clip(actions, -1, 1) + 1) / 2 * bins).astype(np.int64),
                "a = +1 falls exactly on the upper edge and gives token `bins`: clip tokens to [0, bins - 1]."),
        Mistake("floats", lambda actions, bins=256: np.clip(np.floor((np.clip(actions, -1, 1) + 1) / 2 * bins), 0, bins - 1),
                "return integer tokens (np.int64)."),
    ],
)

DETOKENIZE = Exercise(
    name="detokenize_actions",
    reference=_detok_ref,
    cases=lambda: [
        Case("random tokens", dict(tokens=random_generator(101).integers(0, 256, size=(16, 2)))),
        Case("first and last bins", dict(tokens=np.array([[0, 255]]))),
        Case("8 bins", dict(tokens=np.arange(8)[:, None], bins=8)),
    ],
    mistakes=[
        Mistake("bin edge", lambda tokens, bins=256: (-1.0 + 2.0 * np.asarray(tokens) / bins).astype(np.float32),
                "return the CENTRE of each bin, -1 + (2 * token + 1) / bins, not its lower edge."),
        Mistake("bins-1 scaling", lambda tokens, bins=256: (-1.0 + 2.0 * np.asarray(tokens) / (bins - 1)).astype(np.float32),
                "divide by `bins` (equal-width bins, value at the centre), not bins - 1."),
    ],
)


def check_tokenize_actions(fn, verbose: bool = True):
    """Check ``tokenize_actions(actions in [-1, 1], bins=256) -> int64 tokens``."""
    return check(fn, TOKENIZE, verbose)


def check_detokenize_actions(fn, verbose: bool = True):
    """Check ``detokenize_actions(tokens, bins=256) -> float actions at the bin centres``."""
    return check(fn, DETOKENIZE, verbose)
