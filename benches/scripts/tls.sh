#!/usr/bin/env bash
# TLS against plain HTTP, in the same run (issue 14): loadgen's insert and get
# workloads over keep-alive connections, alternating the two ROUNDS times so
# drift on a shared machine hits both.
#
#   cargo build --release -p tidepool-smol -p tidepool-benches
#   benches/scripts/tls.sh [ROUNDS] [SECONDS] [CONNECTIONS] [tidepool|tidepool-std]
#
# "tls": the server gets a fresh self-signed certificate (`--tls-cert`,
# `--tls-key`) and loadgen speaks TLS 1.3 to it (rustls on both sides).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}
SECONDS_PER=${2:-5}
CONNECTIONS=${3:-32}
SERVER=${4:-tidepool}
LOADGEN=target/release/loadgen
for round in $(seq 1 "$ROUNDS"); do
  for mode in plain tls; do
    if [ "$mode" = tls ]; then extra=(--tls); else extra=(); fi
    echo "## round $round, $mode"
    "$LOADGEN" --spawn "$SERVER" --connections "$CONNECTIONS" --seconds "$SECONDS_PER" \
      --workloads insert,get --prefill 5000 "${extra[@]}" | grep -E '^\| (insert|get)'
  done
done
