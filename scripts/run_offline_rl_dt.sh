#!/usr/bin/env bash
# Offline RL: dt (thin wrapper; every flag passes through).  Example:
#   ./scripts/run_offline_rl_dt.sh --dataset hopper-medium-v2 --output_dir ./output/dt
set -euo pipefail
exec "${PYTHON:-python}" -m vla_rl_lib train dt "$@"
