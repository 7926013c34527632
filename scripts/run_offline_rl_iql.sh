#!/usr/bin/env bash
# Offline RL: iql (thin wrapper; every flag passes through).  Example:
#   ./scripts/run_offline_rl_iql.sh --dataset hopper-medium-v2 --output_dir ./output/iql
set -euo pipefail
exec "${PYTHON:-python}" -m vla_rl_lib train iql "$@"
