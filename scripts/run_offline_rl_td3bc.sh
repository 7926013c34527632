#!/usr/bin/env bash
# Offline RL: td3_bc (thin wrapper; every flag passes through).  Example:
#   ./scripts/run_offline_rl_td3bc.sh --dataset hopper-medium-v2 --output_dir ./output/td3bc
set -euo pipefail
exec "${PYTHON:-python}" -m vla_rl_lib train td3_bc "$@"
