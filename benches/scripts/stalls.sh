#!/usr/bin/env bash
# Other clients while one client scans (issue 11): loadgen's insert and get
# workloads alone, then with another client running a long scan of the
# prefilled collection over and over, alternating ROUNDS times so drift on a
# shared machine hits both; prints the medians and their ratio.
#
#   cargo build --release -p tidepool-smol -p tidepool-std -p tidepool-benches
#   benches/scripts/stalls.sh [ROUNDS] [SECONDS] [DOCS] [CONDITIONS] [tidepool|tidepool-std]
#
# The scan examines every document CONDITIONS times (an `Or` of `Contains`
# conditions matching nothing); with the defaults it takes seconds per scan.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${1:-3}
SECONDS_PER=${2:-5}
DOCS=${3:-200000}
CONDITIONS=${4:-1000}
BIN=${5:-tidepool}
LOADGEN=target/release/loadgen
OUT=$(mktemp -d)
for round in $(seq 1 "$ROUNDS"); do
  for mode in alone scanning; do
    extra=()
    if [ "$mode" = scanning ]; then extra=(--background-scan "$CONDITIONS"); fi
    echo "## round $round, $mode"
    "$LOADGEN" --spawn "$BIN" --connections 32 --seconds "$SECONDS_PER" \
      --workloads insert,get --prefill "$DOCS" \
      --server-args "--max-query-work 1000000000000 --max-query-time 3600" "${extra[@]}" \
      | tee -a "$OUT/$mode.txt" | grep -E '^\| (insert|get)|^background'
  done
done
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
for w in insert get; do
  alone=$(grep -E "^\| $w" "$OUT/alone.txt" | awk -F'|' '{print $3}' | median)
  scanning=$(grep -E "^\| $w" "$OUT/scanning.txt" | awk -F'|' '{print $3}' | median)
  echo "$w: alone $alone ops/s, while scanning $scanning ops/s, ratio $(awk -v a="$alone" -v b="$scanning" 'BEGIN {printf "%.2f", b/a}')"
done
rm -rf "$OUT"
