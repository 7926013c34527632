#!/usr/bin/env bash
# Online RL: grpo (thin wrapper; every flag passes through).  Example:
#   ./scripts/run_online_rl_grpo.sh --env driving --output_dir ./output/grpo
set -euo pipefail
exec "${PYTHON:-python}" -m vla_rl_lib train grpo "$@"
