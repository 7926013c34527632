"""Run logging: ``metrics.csv`` and TensorBoard always, Weights & Biases on request.

Every logged record is one flat dict ``{"step": int, "time": float, name: float, ...}``. Training
metrics use the specification's names (``v_loss``, ``q_loss``, ``policy_loss``,
``mean_advantage``, ``value_loss``, ``entropy``, ``mean_reward``...); evaluation results are logged
with the prefix ``eval/``.
"""
from __future__ import annotations

import csv
import math
import os
import time
from pathlib import Path
from typing import Optional

from vla_rl_lib.errors import optional_import


class RunLogger:
    """Writes metrics to ``run_dir/metrics.csv``, TensorBoard events in ``run_dir/tb``, and W&B."""

    def __init__(self, run_dir: str | Path, use_wandb: bool = False, wandb_project: str = "vla-rl-kit",
                 run_name: Optional[str] = None, config: Optional[dict] = None, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.run_dir / "metrics.csv"
        self.fields: list[str] = []
        if self.csv_path.exists():  # resuming: keep what was written
            with open(self.csv_path, newline="") as fh:
                header = next(csv.reader(fh), None)
            self.fields = list(header or [])
        self.start = time.time()
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(self.run_dir / "tb"))
            except ImportError:  # pragma: no cover - tensorboard is a core dependency
                self.tb = None
        self.wandb = None
        if use_wandb:
            wandb = optional_import("wandb", "wandb", "Logging to Weights & Biases (--use-wandb)")
            mode = os.environ.get("WANDB_MODE") or ("online" if os.environ.get("WANDB_API_KEY") else "offline")
            self.wandb = wandb.init(project=wandb_project, name=run_name, config=config or {},
                                    dir=str(self.run_dir), mode=mode, reinit=True)

    def log(self, metrics: dict, step: int) -> dict:
        record = {"step": int(step), "time": round(time.time() - self.start, 3)}
        for key, value in metrics.items():
            if value is None:
                continue
            record[key] = float(value)
        self._write_csv(record)
        if self.tb is not None:
            for key, value in record.items():
                if key not in ("step", "time") and math.isfinite(value):
                    self.tb.add_scalar(key, value, step)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in record.items() if k != "step"}, step=step)
        return record

    def _write_csv(self, record: dict) -> None:
        new = [k for k in record if k not in self.fields]
        if new:
            rows = []
            if self.csv_path.exists() and self.fields:
                with open(self.csv_path, newline="") as fh:
                    rows = list(csv.DictReader(fh))
            self.fields += new
            tmp = self.csv_path.with_suffix(".csv.tmp")
            with open(tmp, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=self.fields)
                writer.writeheader()
                writer.writerows(rows)
            os.replace(tmp, self.csv_path)
        with open(self.csv_path, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=self.fields).writerow(record)

    def flush(self) -> None:
        if self.tb is not None:
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Read ``metrics.csv`` of a run directory back as a list of dicts of floats."""
    path = Path(run_dir) / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(fh)]
