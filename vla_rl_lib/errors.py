"""The kit's exceptions.

Every error a user can cause is one of these: its message says what was wrong and what to do.
The command line prints the message as one line and exits non-zero, without a traceback.
"""
from __future__ import annotations

import importlib
from types import ModuleType


class VLARLError(Exception):
    """Base class of every error the kit raises on purpose."""


class ConfigError(VLARLError, ValueError):
    """An invalid configuration value (names the field, the value and the allowed range)."""


class DatasetError(VLARLError, ValueError):
    """A dataset that cannot be used as given (names the key, shape or file)."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A named dataset that is not on this machine (says where it was looked for and how to get it)."""


class UnknownEnvironmentError(VLARLError, ValueError):
    """An environment id that neither gymnasium nor the kit knows."""


class IncompatibleError(VLARLError, ValueError):
    """Parts that do not fit together: an action space a method cannot handle, mismatched sizes."""


class CheckpointError(VLARLError, ValueError):
    """A file that is not a checkpoint of this kit, or one that does not match the trainer."""


class TrainingDivergedError(VLARLError, RuntimeError):
    """A non-finite loss: names the metric and the step; the last good checkpoint is kept."""


class MissingDependencyError(VLARLError, ImportError):
    """An optional package that a requested feature needs is not installed."""


def optional_import(module: str, extra: str, feature: str) -> ModuleType:
    """Import ``module`` or raise one clear error naming the pip extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError(
            f"{feature} needs the optional package '{module}', which is not installed: "
            f"pip install 'vla-rl-kit[{extra}]' (or pip install {module})"
        ) from exc
