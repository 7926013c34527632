#!/usr/bin/env bash
# Online RL: sac (thin wrapper; every flag passes through).  Example:
#   ./scripts/run_online_rl_sac.sh --env Pendulum-v1 --output_dir ./output/sac
set -euo pipefail
exec "${PYTHON:-python}" -m vla_rl_lib train sac "$@"
