"""The kit's main job: execute ``notebooks/00_quickstart.ipynb`` with papermill.

``vla-rl quickstart`` runs the quickstart notebook (a real PPO run on CartPole-v1 and a real IQL
run on the shipped ``maze-stitch-v0`` dataset against behaviour cloning at the same budget, each with a
live reward plot and a rollout video)
into a run directory and prints where the executed notebook, plots and videos are and how to open
them in JupyterLab.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from vla_rl_lib.errors import ConfigError

NOTEBOOK = "00_quickstart.ipynb"


def find_notebook(notebook: Optional[str | Path] = None) -> Path:
    """The quickstart notebook: ``notebook`` if given, else ``./notebooks/`` or the kit's checkout."""
    if notebook is not None:
        candidates = [Path(notebook)]
    else:
        candidates = [Path("notebooks") / NOTEBOOK, Path(__file__).resolve().parents[1] / "notebooks" / NOTEBOOK]
    for path in candidates:
        if path.is_file():
            return path
    raise ConfigError(f"the quickstart notebook was not found (looked at {', '.join(map(str, candidates))}); "
                      "run from the root of the vla-rl-kit repository or pass --notebook PATH")


def quickstart(output_dir: str | Path = "runs/quickstart", smoke: bool = False,
               notebook: Optional[str | Path] = None) -> Path:
    """Execute the quickstart notebook into ``output_dir``; return the executed notebook's path."""
    from vla_rl_lib.notebook import describe_run, run_notebook

    path = find_notebook(notebook)
    print(f"running {path} with papermill into {output_dir} (smoke={smoke}) ...", flush=True)
    executed = run_notebook(path, {"smoke": bool(smoke)}, output_dir, progress_bar=True)
    print(describe_run(executed))
    return executed
