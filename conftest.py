"""Repository-wide pytest settings.

``pytest --nbval-lax notebooks/`` executes the notebooks as they are committed: their ``smoke``
parameter follows ``VLA_RL_SMOKE``, set here so that nbval runs them at smoke size (each in well
under a minute). The kernels inherit it.
"""
import os


def pytest_configure(config):
    if getattr(config.option, "nbval_lax", False) or getattr(config.option, "nbval", False):
        os.environ.setdefault("VLA_RL_SMOKE", "1")
