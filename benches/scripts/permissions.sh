#!/usr/bin/env bash
# Permission checks and rate limiting on against off, in the same run
# (issue 14): loadgen's insert and get workloads, alternating the two
# configurations ROUNDS times so drift on a shared machine hits both.
#
#   cargo build --release -p tidepool-smol -p tidepool-benches
#   benches/scripts/permissions.sh [ROUNDS] [SECONDS]
#
# "off": the admin key, no rate limit. "on": a non-admin key granted the
# bench collections and KV prefix (every request checked and its records
# shaped) and a per-key and per-address limit far above the load.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}
SECONDS_PER=${2:-5}
LOADGEN=target/release/loadgen
ON_ARGS="--rate-limit-per-key 1000000000 --rate-limit-per-address 1000000000"
for round in $(seq 1 "$ROUNDS"); do
  for mode in off on; do
    if [ "$mode" = on ]; then
      extra=(--scoped --server-args "$ON_ARGS")
    else
      extra=()
    fi
    echo "## round $round, permissions and rate limits $mode"
    "$LOADGEN" --spawn tidepool --connections 32 --seconds "$SECONDS_PER" \
      --workloads insert,get --prefill 5000 "${extra[@]}" | grep -E '^\| (insert|get)'
  done
done
