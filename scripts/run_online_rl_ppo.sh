#!/usr/bin/env bash
# Online RL: ppo (thin wrapper; every flag passes through).  Example:
#   ./scripts/run_online_rl_ppo.sh --env CartPole-v1 --output_dir ./output/ppo
set -euo pipefail
exec "${PYTHON:-python}" -m vla_rl_lib train ppo "$@"
