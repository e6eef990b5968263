#!/usr/bin/env bash
# HNSW build time, QPS and recall: Tidepool's index (search_bench) against
# hnswlib (PyPI) on the same vectors in the same run, both with M = 16,
# ef_construction = 128, cosine, one thread.
#
#   benches/scripts/hnswlib.sh [N] [DIM]     (default 100000 384)
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-100000}
DIM=${2:-384}
DIR=target/hnsw-peer
mkdir -p "$DIR"
if [ ! -e "$DIR/site/.installed" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    --target "$DIR/site" hnswlib==0.8.0 numpy==2.4.6
  touch "$DIR/site/.installed"
fi
cargo build --release -q -p tidepool-benches --bin search_bench
./target/release/search_bench --no-text --vectors "$N" --dim "$DIM" --dump-vectors "$DIR/vectors"
PYTHONPATH="$DIR/site" python3 benches/scripts/hnswlib_peer.py "$DIR/vectors" "$DIM"
