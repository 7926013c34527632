#!/usr/bin/env bash
# Offline RL: cql (thin wrapper; every flag passes through).  Example:
#   ./scripts/run_offline_rl_cql.sh --dataset hopper-medium-v2 --output_dir ./output/cql
set -euo pipefail
exec "${PYTHON:-python}" -m vla_rl_lib train cql "$@"
