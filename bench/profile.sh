#!/usr/bin/env bash
# Where the broker's time goes, for docs/BENCHMARKS.md's analysis. Writes a Markdown fragment on
# stdout; `bench/compare.sh` runs it and appends it to the report (so that these figures, too,
# come from a script run). About five minutes.
#
#   bench/profile.sh [RELEASE_DIR]    (default: $CARGO_TARGET_DIR/release or ./target/release)
#
# - callgrind (instruction counts: repeatable whatever else the machine does) of the broker
#   through a fan-out at maximum rate and at a fixed rate, per delivery;
# - perf with the cpu-clock software event (when perf works here) for the kernel's share, and
#   perf's syscall tracepoints for the socket writes per delivery of our broker and of NATS
#   (NATS_SERVER, else nats-server on PATH);
# - DHAT for the heap an idle connection holds;
# - Redis's own command statistics per replicated message.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-${CARGO_TARGET_DIR:-$(pwd)/target}/release}
BROKER=$BIN/broker
LOADGEN=$BIN/loadgen
WORK=$(mktemp -d "${TMPDIR:-/tmp}/pubsub-profile.XXXXXX")
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
KEY=bench-key
GEN=()
[ "$(nproc)" -ge 2 ] && GEN=(taskset -c 1)
log() { echo "[profile $(date +%H:%M:%S)] $*" >&2; }

# broker_under TOOL-ARGS… : starts the broker under a tool, on a free port; sets PID and URL.
broker_under() {
  local out=$WORK/broker.out
  : > "$out"
  "$@" "$BROKER" --listen 127.0.0.1:0 --api-key "$KEY" --admin-token a --allow-all-channels \
    > "$out" 2> "$WORK/broker.err" &
  PID=$!; PIDS+=("$PID")
  for _ in $(seq 600); do grep -q '^broker listening on' "$out" 2>/dev/null && break; sleep 0.1; done
  URL=ws://$(sed -n 's|^broker listening on http://\([^ ]*\).*|\1|p' "$out")/ws
}

stop() { # stop PID: SIGTERM and wait (valgrind writes its output on exit)
  kill "$1" 2>/dev/null || true
  for _ in $(seq 600); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

deliveries() { python3 -c 'import json,sys; t=json.load(open(sys.argv[1]))["traffic"]; print(t["received"], t["published"])' "$1"; }

callgrind_case() { # callgrind_case TITLE loadgen-fanout-args…
  local title=$1; shift
  local cg=$WORK/cg.out json=$WORK/cg.json
  broker_under valgrind --tool=callgrind --callgrind-out-file="$cg" --dump-instr=no
  "${GEN[@]}" "$LOADGEN" fanout --url "$URL" --api-key "$KEY" --warmup 0s --json "$json" "$@" \
    > /dev/null 2>&1 || true
  stop "$PID"
  local total
  total=$(sed -n 's/^totals: //p' "$cg")
  read -r recv pubs < <(deliveries "$json")
  echo "**$title** (\`loadgen fanout $*\`): $recv deliveries of $pubs messages; broker total"
  echo "$total instructions, **$((total / recv)) per delivery** (connection set-up included)."
  echo "Functions with the most instructions of their own:"
  echo
  echo '```text'
  { callgrind_annotate "$cg" 2>/dev/null | awk '/file:function/ {on = 1; getline; next} on && n < 10 {print; n++}' \
    | sed -E 's|/root/.cargo/registry/src/[^/]*/||; s|/rustc/[0-9a-f]*/||; s| *\[[^]]*\] *$||; s|^ *||' | cut -c1-150; } || true
  echo '```'
  echo
}

echo "## Profiles"
echo
echo "Written by [\`bench/profile.sh\`](../bench/profile.sh) in the same run (broker built in"
echo "release mode, unpinned, one connection set-up included in each count)."
echo

if command -v valgrind >/dev/null; then
  log "callgrind: fan-out at maximum rate"
  callgrind_case "Fan-out at maximum rate, 100 subscribers" --subscribers 100 --window 64 --duration 5s
  log "callgrind: fixed rate, one frame per write"
  callgrind_case "Fixed rate, one frame per wake-up (200 subscribers × 50 msg/s)" --subscribers 200 --rate 50 --duration 5s
fi

# perf_case TITLE loadgen-fanout-args…: the broker pinned to CPU 0 under perf (cpu-clock) through
# a fan-out; prints the share of its time by where it ran and the top kernel functions.
perf_case() {
  local title=$1; shift
  broker_under taskset -c 0
  perf record -q -e cpu-clock -F 2000 -g -p "$PID" -o "$WORK/perf.data" -- sleep 6 > /dev/null 2>&1 &
  local prec=$!
  sleep 0.3
  "${GEN[@]}" "$LOADGEN" fanout --url "$URL" --api-key "$KEY" --duration 5s --warmup 0s \
    --json /dev/null "$@" > /dev/null 2>&1 || true
  wait "$prec" || true
  stop "$PID"
  echo "**$title** (perf, cpu-clock, \`loadgen fanout $*\`): share of the broker's CPU time by"
  echo "where it ran, then the kernel functions with the most samples of their own:"
  echo
  echo '```text'
  { perf report -i "$WORK/perf.data" --no-children --sort dso --stdio -g none 2>/dev/null \
    | awk '/%/ && n < 4 {sub(/^ +/, ""); print; n++}'; } || true
  echo
  { perf report -i "$WORK/perf.data" --no-children --sort symbol --stdio -g none 2>/dev/null \
    | awk '/\[k\]/ && n < 8 {gsub(/ +/, " "); sub(/^ /, ""); sub(/ - - *$/, ""); print; n++}'; } || true
  echo '```'
  echo
}

if perf stat -e cpu-clock true >/dev/null 2>&1; then
  log "perf: fan-out at maximum rate, 100 subscribers"
  perf_case "Fan-out at maximum rate, 100 subscribers" --subscribers 100 --window 64
  log "perf: fixed rate 1000 x 200"
  perf_case "Fixed rate, 1,000 subscribers × 200 msg/s" --subscribers 1000 --rate 200
fi

# writes_case BACKEND PID loadgen-target-args…: socket writes the server made (perf's syscall
# tracepoints) during a 100-subscriber fan-out at maximum rate, per delivery.
writes_case() {
  local backend=$1 pid=$2; shift 2
  local ev=syscalls:sys_enter_write,syscalls:sys_enter_writev,syscalls:sys_enter_sendto,syscalls:sys_enter_sendmsg
  perf stat -x, -e "$ev" -p "$pid" -o "$WORK/stat.txt" > /dev/null 2>&1 &
  local pstat=$!
  sleep 0.3
  "${GEN[@]}" "$LOADGEN" fanout --subscribers 100 --window 64 --duration 5s --warmup 0s \
    --json "$WORK/w.json" "$@" > /dev/null 2>&1 || true
  kill -INT "$pstat" 2>/dev/null || true
  wait "$pstat" 2>/dev/null || true
  local writes recv pubs
  writes=$(awk -F, '$1 ~ /^[0-9]+$/ {n += $1} END {print n + 0}' "$WORK/stat.txt")
  read -r recv pubs < <(deliveries "$WORK/w.json")
  awk -v b="$backend" -v w="$writes" -v r="$recv" \
    'BEGIN {printf "%-22s %9d deliveries  %7d socket writes  %5.1f deliveries per write\n", b, r, w, (w > 0 ? r / w : 0)}'
}

NATS=${NATS_SERVER:-$(command -v nats-server || true)}
if [ -n "$NATS" ] && [ -x "$NATS" ] && perf stat -e syscalls:sys_enter_writev true >/dev/null 2>&1; then
  log "perf: socket writes per delivery, ours and NATS"
  echo "**Socket writes per delivery** (perf's syscall tracepoints on the server: \`write\`,"
  echo "\`writev\`, \`sendto\`, \`sendmsg\`), fan-out at maximum rate, 100 subscribers, window 64,"
  echo "each server pinned to CPU 0:"
  echo
  echo '```text'
  broker_under taskset -c 0
  writes_case "pubsub-broker (ws)" "$PID" --backend ws --url "$URL" --api-key "$KEY"
  stop "$PID"
  port=$(free_port); wsport=$(free_port)
  printf 'listen: 127.0.0.1:%s\nauthorization { token: "t" }\nwebsocket {\n  listen: "127.0.0.1:%s"\n  no_tls: true\n  compression: false\n}\n' \
    "$port" "$wsport" > "$WORK/nats.conf"
  GOMAXPROCS=1 taskset -c 0 "$NATS" -c "$WORK/nats.conf" > "$WORK/nats.log" 2>&1 &
  npid=$!; PIDS+=("$npid")
  for _ in $(seq 100); do grep -q "Server is ready" "$WORK/nats.log" 2>/dev/null && break; sleep 0.05; done
  writes_case "NATS (ws)" "$npid" --backend nats --url "ws://127.0.0.1:$wsport" --token t
  stop "$npid"
  echo '```'
  echo
fi

if command -v valgrind >/dev/null; then
  log "dhat: 2,000 idle connections"
  # DHAT sees only the system allocator's heap, and the broker's own allocator (mimalloc) maps
  # its memory directly: this profile uses a broker built without it.
  DHAT_TARGET=${DHAT_TARGET:-$BIN/../dhat}
  cargo build --release --locked --quiet -p examples --bin broker --no-default-features \
    --target-dir "$DHAT_TARGET" >&2
  BROKER_SAVED=$BROKER; BROKER=$DHAT_TARGET/release/broker
  broker_under valgrind --tool=dhat --dhat-out-file="$WORK/dhat.json"
  BROKER=$BROKER_SAVED
  "${GEN[@]}" "$LOADGEN" idle --url "$URL" --api-key "$KEY" --connections 2000 --processes 1 \
    --broker-pid "$PID" --settle 3s --json /dev/null > /dev/null 2>&1 || true
  stop "$PID"
  echo "**Heap of 2,000 idle connections at its peak** (DHAT, broker built with the system"
  echo "allocator: \`--no-default-features\`; the peak is with every connection open): bytes per"
  echo "connection by allocation site."
  echo
  echo '```text'
  python3 - "$WORK/dhat.json" <<'PY'
import json, re, sys
d = json.load(open(sys.argv[1]))
ft = d["ftbl"]
pps = sorted(d["pps"], key=lambda p: -p.get("gb", 0))
skip = ("alloc.rs", "memalign", "unix.rs", "raw_vec", "boxed.rs", "sync.rs:", "vec/mod.rs",
        "spec_from", "UnknownInlinedFun", "bytes_mut.rs", "malloc (in", "raw/mod.rs",
        "registration.rs", "poll_evented.rs", "driver.rs")
total = sum(p.get("gb", 0) for p in pps)
print(f"{total / 2000:7.0f}  bytes per connection in all (malloc's own overhead not included)")
sites = {}
for p in pps:
    frames = [re.sub(r"^0x[0-9A-F]+: ", "", ft[i]) for i in p["fs"]]
    where = [f for f in frames if not any(s in f for s in skip)]
    site = (where[0] if where else frames[-1])[:110]
    sites[site] = sites.get(site, 0) + p.get("gb", 0)
for site, gb in sorted(sites.items(), key=lambda kv: -kv[1])[:12]:
    if gb >= 2000 * 16:
        print(f"{gb / 2000:7.0f}  {site}")
PY
  echo '```'
  echo
fi

if command -v redis-server >/dev/null; then
  log "redis: commands per replicated message"
  for r in a b; do
    mkdir -p "$WORK/$r"
    redis-server --port 0 --unixsocket "$WORK/$r/s" --unixsocketperm 700 --dir "$WORK/$r" \
      --save "" --appendonly no --logfile "$WORK/$r/log" > /dev/null 2>&1 &
    PIDS+=($!)
  done
  for r in a b; do
    for _ in $(seq 100); do redis-cli -s "$WORK/$r/s" ping 2>/dev/null | grep -q PONG && break; sleep 0.05; done
  done
  "$BROKER" --listen 127.0.0.1:0 --api-key "$KEY" --allow-all-channels --region a \
    --redis "redis+unix://$WORK/a/s" --peer "b=redis+unix://$WORK/b/s" > "$WORK/ra.out" 2>/dev/null &
  pa=$!; PIDS+=("$pa")
  "$BROKER" --listen 127.0.0.1:0 --api-key "$KEY" --allow-all-channels --region b \
    --redis "redis+unix://$WORK/b/s" --peer "a=redis+unix://$WORK/a/s" > "$WORK/rb.out" 2>/dev/null &
  pb=$!; PIDS+=("$pb")
  sleep 2
  ua=ws://$(sed -n 's|^broker listening on http://\([^ ]*\).*|\1|p' "$WORK/ra.out")/ws
  ub=ws://$(sed -n 's|^broker listening on http://\([^ ]*\).*|\1|p' "$WORK/rb.out")/ws
  for r in a b; do redis-cli -s "$WORK/$r/s" config resetstat > /dev/null; done
  "${GEN[@]}" "$LOADGEN" replication --url-a "$ua" --url-b "$ub" --api-key "$KEY" --publishers 16 \
    --window 256 --duration 5s --warmup 1s --json "$WORK/repl.json" > /dev/null 2>&1 || true
  read -r recv pubs < <(deliveries "$WORK/repl.json")
  echo "**Replication at maximum rate** (\`loadgen replication --publishers 16 --window 256\`):"
  echo "Redis commands per replicated message ($pubs messages), and Redis's own time per call and"
  echo "per message (an EVALSHA's time includes the XADDs it runs, which Redis also counts as XADD):"
  echo
  echo '```text'
  for r in a b; do
    redis-cli -s "$WORK/$r/s" info commandstats | tr -d '\r' | { grep '^cmdstat_' || true; } \
      | sed 's/^cmdstat_//; s/:calls=/ /; s/,usec=/ /; s/,usec_per_call=/ /; s/,.*//' \
      | awk -v r="$r" -v n="$pubs" '$2 > 0 && $1 != "config|resetstat" {printf "redis %s  %-8s %6.3f calls per message  %7.2f µs per call  %5.2f µs per message\n", r, $1, $2 / n, $4, $3 / n}'
  done
  echo '```'
  echo
fi
log "done"
