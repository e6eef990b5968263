#!/usr/bin/env bash
# Other clients while one client scans (issue 11): loadgen's insert and get
# workloads alone; with another client running a long scan of the prefilled
# collection over and over; and, as the control, with a busy loop in another
# process (niced) taking the core a scan takes. Alternates ROUNDS times so
# drift on a shared machine hits all three; prints the medians and ratios.
# Scanning against burning near 1.0 means the scan costs the others its CPU
# and nothing more: no lock held, nobody waiting.
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
  for mode in alone scanning burning; do
    extra=()
    burner=
    if [ "$mode" = scanning ]; then extra=(--background-scan "$CONDITIONS"); fi
    if [ "$mode" = burning ]; then
      nice -n 10 sh -c 'while :; do :; done' &
      burner=$!
    fi
    echo "## round $round, $mode"
    "$LOADGEN" --spawn "$BIN" --connections 32 --seconds "$SECONDS_PER" \
      --workloads insert,get --prefill "$DOCS" \
      --server-args "--max-query-work 1000000000000 --max-query-time 3600" "${extra[@]}" \
      | tee -a "$OUT/$mode.txt" | grep -E '^\| (insert|get)|^background'
    if [ -n "$burner" ]; then kill "$burner"; fi
  done
done
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
rate() { grep -E "^\| $1" "$OUT/$2.txt" | awk -F'|' '{print $3}' | median; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", b/a}'; }
for w in insert get; do
  alone=$(rate "$w" alone)
  scanning=$(rate "$w" scanning)
  burning=$(rate "$w" burning)
  echo "$w: alone $alone ops/s; while scanning $scanning ($(ratio "$alone" "$scanning")x alone); with a busy loop instead $burning (scanning/busy loop $(ratio "$burning" "$scanning")x)"
done
rm -rf "$OUT"
