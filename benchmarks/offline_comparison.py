"""BC, %BC, IQL, CQL, TD3+BC and DT on an expert, a mixed and a stitching dataset, over seeds.

    python benchmarks/offline_comparison.py --out vla_rl_lib/measured_comparison.json

writes every run (method, dataset, seed, steps, mean return, success rate, seconds) and the command
to the JSON file that ``vla_rl_lib.chooser`` reads to set its decision tree beside measurement, and
prints the table. Settings: 64-unit networks, batch 256, 3000 gradient steps for the MLP methods
and 1000 for the (small) Decision Transformer, 10 evaluation episodes (seeds 10000 + seed).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vla_rl_lib.comparison import COMPARISON_DATASETS, METHODS, compare_methods, summarize  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="vla_rl_lib/measured_comparison.json")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--dt_steps", type=int, default=1000)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--datasets", default=",".join(COMPARISON_DATASETS.values()))
    a = p.parse_args(argv)
    start = time.time()
    rows = compare_methods(a.methods.split(","), a.datasets.split(","), [int(s) for s in a.seeds.split(",")],
                           {"*": a.steps, "dt": a.dt_steps}, hidden_dim=64, progress=True)
    result = {"command": "python benchmarks/offline_comparison.py " + " ".join(argv or sys.argv[1:]),
              "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores (shared)",
              "seconds": round(time.time() - start, 1), "rows": rows}
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    for dataset, methods in summarize(rows, "mean_reward").items():
        print(dataset, {m: f"{v[0]:.1f} ± {v[1]:.1f}" for m, v in methods.items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
