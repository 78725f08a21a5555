#!/usr/bin/env bash
# The gateway benchmark (issue 11): Bulkhead's gateway against the upstream
# itself and against nginx as a plain reverse proxy, in one run on this
# machine; prints Markdown tables and writes nothing outside a temporary
# directory, which it removes.
#
#   scripts/bench_gateway.sh
#
# 1. An upstream: nginx answering a small static body on 127.0.0.1.
# 2. Full load, wrk with keep-alive (-t2 -c64, warm-up first): the upstream
#    directly; nginx proxying to it (upstream keep-alive); `bulkhead serve`
#    (embedded store) with a realm token (cached after the first
#    verification), routing, the rate limits and recording.
# 3. The same three at half and at a quarter of nginx's measured throughput,
#    at a fixed rate, with how busy the machine was
#    (oha with latency correction; `cargo install oha --locked` when missing).
# 4. The bulkhead: tenant A's upstream accepts and never answers, and A
#    floods the gateway; tenant B's latency at a fixed rate, without and with
#    A's flood, and A's status codes.
# 5. Bulkhead again with 10, 10,000 and 100,000 tenants configured: extra
#    synthetic tenants are written straight into the stopped server's SQLite
#    store (scripts/bench/seed_tenants.py), then the server starts again;
#    requests/s, p99, the process's RSS, memory per tenant and the snapshot
#    build time.
# 6. What the gateway's own state takes per tenant and how long a snapshot
#    takes to build, without the control plane beside it (the snapshot
#    bench of crates/gateway; needs cargo).
#
# The measured tenants are on the enterprise plan with their own rate
# raised far above what one machine can send (the plan's 60,000 a minute
# would answer most of the load with 429, and the script says so under the
# tables when any measured request was refused).
#
# Needs the release binary (`cargo build --release -p bulkhead`; found in
# $CARGO_TARGET_DIR/release or target/release, or set BULKHEAD_BIN), and
# installs wrk and nginx with apt-get when missing (as root).
#
# Knobs (environment): BENCH_DURATION (15s), BENCH_WARMUP (3s),
# BENCH_THREADS (2), BENCH_CONNECTIONS (64), BENCH_SIZES ("10 10000 100000"),
# BENCH_B_RATE (requests/s of tenant B in the bulkhead check: 500),
# BENCH_FLOOD_CONNECTIONS (A's flood: 256); BENCH_TENANT_FLAGS (extra flags
# for `bulkhead tenants create` of the measured tenants `bench` and
# `tenant-b`; default: the highest rate a tenant may have); BENCH_KEEP=1 keeps the
# temporary directory (the servers' logs, wrk's and oha's output).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
HERE=$ROOT/scripts/bench

BIN=${BULKHEAD_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/bulkhead}
DURATION=${BENCH_DURATION:-15s}
WARMUP=${BENCH_WARMUP:-3s}
THREADS=${BENCH_THREADS:-2}
CONNS=${BENCH_CONNECTIONS:-64}
SIZES=${BENCH_SIZES:-10 10000 100000}
B_RATE=${BENCH_B_RATE:-500}
FLOOD_CONNS=${BENCH_FLOOD_CONNECTIONS:-256}
read -r -a TENANT_FLAGS <<<"${BENCH_TENANT_FLAGS:---rate-limit 60000000 --burst 1000000}"

say() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }
secs() { local d=$1; case $d in *s) echo "${d%s}" ;; *m) echo $((${d%m} * 60)) ;; *) echo "$d" ;; esac; }

# ---- tools ------------------------------------------------------------------

can_install() { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; }
APT_UPDATED=0
apt_install() {
    can_install || die "$* is missing and cannot be installed here (needs root and apt-get)"
    say "installing $*"
    if [ "$APT_UPDATED" = 0 ]; then apt-get update -qq; APT_UPDATED=1; fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}
export PATH="$PATH:/usr/sbin:/sbin:$HOME/.cargo/bin"
command -v wrk >/dev/null || apt_install wrk
command -v nginx >/dev/null || apt_install nginx
command -v curl >/dev/null || apt_install curl
command -v python3 >/dev/null || die "python3 is needed (the seeding script and the hung upstream)"
[ -x "$BIN" ] || die "$BIN is missing: run \`cargo build --release -p bulkhead\` first (or set BULKHEAD_BIN)"

# The fixed-rate load generator: wrk2 when installed (Debian does not
# package it), else oha (built from crates.io when missing), else wrk with
# fewer connections, which only approximates a fixed rate.
RATE_TOOL=
if command -v wrk2 >/dev/null; then
    RATE_TOOL=wrk2
elif command -v oha >/dev/null; then
    RATE_TOOL=oha
elif command -v cargo >/dev/null; then
    say "building oha from crates.io (cargo install oha --locked; a few minutes, once)"
    if cargo install oha --locked --quiet >&2; then RATE_TOOL=oha; fi
fi
if [ -z "$RATE_TOOL" ]; then
    RATE_TOOL=wrk-c4
    say "neither wrk2 nor oha: the fixed-rate rows are wrk with 4 connections instead (closed loop, not a fixed rate)"
fi

# ---- processes and cleanup --------------------------------------------------

WORK=$(mktemp -d "${TMPDIR:-/tmp}/bulkhead-bench-gw.XXXXXX")
PIDS=()
SERVER_PID=
cleanup() {
    local status=$?
    set +e
    [ -n "$SERVER_PID" ] && kill -TERM "$SERVER_PID" 2>/dev/null
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${PIDS[@]}" $SERVER_PID; do
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
    done
    if [ "$status" != 0 ] && [ -d "$WORK" ]; then
        for log in "$WORK"/serve-*.log; do
            [ -f "$log" ] || continue
            printf '\n--- last lines of %s ---\n' "$(basename "$log")" >&2
            tail -n 20 "$log" >&2
        done
    fi
    if [ -n "${BENCH_KEEP:-}" ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free TCP port on 127.0.0.1.
free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { # port what
    for _ in $(seq 1 100); do listening "$1" && return 0; sleep 0.1; done
    die "$2 did not come up on 127.0.0.1:$1"
}

# ---- the upstream and nginx as a reverse proxy ------------------------------

UP_PORT=$(free_port)
PROXY_PORT=$(free_port)
GW_PORT=$(free_port)
# A fixed API port (not :0): realm tokens name the API's URL as their
# issuer, so the tokens stay valid when the server starts again.
API_PORT=$(free_port)
HANG_PORT=$(free_port)

start_nginx() { # name body-of-http-block
    local dir=$WORK/$1
    mkdir -p "$dir/tmp"
    cat >"$dir/nginx.conf" <<EOF
user root;
worker_processes auto;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
daemon off;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    keepalive_timeout 120s;
    keepalive_requests 10000000;
$2
}
EOF
    nginx -p "$dir" -c "$dir/nginx.conf" -e "$dir/error.log" &
    PIDS+=($!)
}

say "upstream: nginx on 127.0.0.1:$UP_PORT; nginx as a reverse proxy on 127.0.0.1:$PROXY_PORT"
start_nginx upstream "
    server {
        listen 127.0.0.1:$UP_PORT backlog=4096;
        location / { default_type text/plain; return 200 'hello from the upstream\n'; }
    }"
start_nginx proxy "
    upstream origin {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
        keepalive_requests 10000000;
    }
    server {
        listen 127.0.0.1:$PROXY_PORT backlog=4096;
        location / {
            proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }
    }"
wait_port "$UP_PORT" "the upstream (nginx)"
wait_port "$PROXY_PORT" "nginx as a reverse proxy"

python3 "$HERE/hang_upstream.py" "$HANG_PORT" &
HANG_PID=$!
PIDS+=($HANG_PID)
wait_port "$HANG_PORT" "the hung upstream"

# ---- Bulkhead ---------------------------------------------------------------

DATA=$WORK/data
mkdir -m 700 "$DATA"
for var in $(env | sed -n 's/^\(BULKHEAD_[A-Z_]*\)=.*/\1/p'); do unset "$var"; done
export BULKHEAD_DATA_DIR=$DATA
bh() { "$BIN" "$@"; }

SERVE_RUN=0
STARTED_AT=
# Starts `bulkhead serve` on the data directory; its log is
# $WORK/serve-<n>.log (JSON), with the gateway feed at debug level.
start_server() {
    SERVE_RUN=$((SERVE_RUN + 1))
    SERVE_LOG=$WORK/serve-$SERVE_RUN.log
    rm -f "$DATA/api.url"
    STARTED_AT=$(date +%s%N)
    (cd "$WORK" && exec env BULKHEAD_LOG=bulkhead_control::gateway=debug,info \
        "$BIN" serve --api-listen "127.0.0.1:$API_PORT" --gateway-listen "127.0.0.1:$GW_PORT" \
        --log-format json >"$SERVE_LOG" 2>&1) &
    SERVER_PID=$!
    for _ in $(seq 1 1200); do
        if [ -s "$DATA/api.url" ] && curl -fsS -o /dev/null "$(cat "$DATA/api.url")/readyz" 2>/dev/null; then
            return 0
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || die "bulkhead serve exited (see $SERVE_LOG)"
        sleep 0.05
    done
    die "bulkhead serve did not become ready in 60 s"
}

stop_server() {
    kill -TERM "$SERVER_PID"
    for _ in $(seq 1 600); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$SERVER_PID" 2>/dev/null; then
        say "bulkhead serve did not stop within 60 s of SIGTERM; killing it"
        kill -KILL "$SERVER_PID"
    fi
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=
}

# Waits for the first 200 through the gateway; prints the milliseconds
# since the server was started.
first_200() { # host token path
    for _ in $(seq 1 12000); do
        code=$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $1" -H "Authorization: Bearer $2" \
            "http://127.0.0.1:$GW_PORT$3" || true)
        if [ "$code" = 200 ]; then
            echo $((($(date +%s%N) - STARTED_AT) / 1000000))
            return 0
        fi
        sleep 0.01
    done
    die "no 200 through the gateway for $1$3 within 120 s (last status $code)"
}

rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$SERVER_PID/status"; }

# The server's CPU time so far, in clock ticks.
cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$SERVER_PID/stat"; }
# Waits until the server uses under 5% of a core over a second (its work
# at start done: the reconciler's pass over every tenant); prints the
# milliseconds since it was started.
wait_idle() {
    local hz before after
    hz=$(getconf CLK_TCK)
    for _ in $(seq 1 300); do
        before=$(cpu_ticks); sleep 1; after=$(cpu_ticks)
        if [ $(((after - before) * 100)) -lt $((hz * 5)) ]; then
            echo $((($(date +%s%N) - STARTED_AT) / 1000000))
            return 0
        fi
    done
    die "bulkhead serve still busy 300 s after its start"
}

# elapsed_ms of the first "gateway snapshot rebuilt" line of the current log.
snapshot_ms() {
    grep -m1 'gateway snapshot rebuilt' "$SERVE_LOG" | sed -nE 's/.*"?elapsed_ms"?[:=]"?([0-9]+).*/\1/p'
}

say "bulkhead serve: $BIN, data in $DATA, gateway on 127.0.0.1:$GW_PORT"
start_server
bh tenants create bench --plan enterprise "${TENANT_FLAGS[@]}" --wait >"$WORK/create.log"
bh tenants create tenant-a --plan starter --wait >>"$WORK/create.log"
bh tenants create tenant-b --plan enterprise "${TENANT_FLAGS[@]}" --wait >>"$WORK/create.log"
bh apis create --tenant bench echo --prefix /echo --rate-limit 60000000 --burst 1000000 \
    --upstream "http://127.0.0.1:$UP_PORT" >>"$WORK/create.log"
bh apis create --tenant tenant-b echo --prefix /echo --rate-limit 60000000 --burst 1000000 \
    --upstream "http://127.0.0.1:$UP_PORT" >>"$WORK/create.log"
bh apis create --tenant tenant-a slow --prefix /slow --upstream "http://127.0.0.1:$HANG_PORT" \
    >>"$WORK/create.log"
TOKEN=$(bh auth token --tenant bench --subject bench --role viewer --ttl 24h)
TOKEN_A=$(bh auth token --tenant tenant-a --subject flood --role viewer --ttl 24h)
TOKEN_B=$(bh auth token --tenant tenant-b --subject calm --role viewer --ttl 24h)
first_200 bench.localhost "$TOKEN" /echo/bench >/dev/null
first_200 tenant-b.localhost "$TOKEN_B" /echo/b >/dev/null

# Every target gets the same request: the same path, Host and token.
DIRECT_URL="http://127.0.0.1:$UP_PORT/echo/bench"
NGINX_URL="http://127.0.0.1:$PROXY_PORT/echo/bench"
BULKHEAD_URL="http://127.0.0.1:$GW_PORT/echo/bench"
HDRS=(-H "Host: bench.localhost" -H "Authorization: Bearer $TOKEN")

# ---- measuring --------------------------------------------------------------

declare -A RPS P50 P99 NON2XX ERRS
# wrk_run label url [wrk args...]: a warm-up, then the measured run.
wrk_run() {
    local label=$1 url=$2; shift 2
    wrk -t"$THREADS" -c"$CONNS" -d"$WARMUP" "$@" "$url" >/dev/null
    wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency -s "$HERE/report.lua" "$@" "$url" \
        >"$WORK/wrk-$label.txt"
    parse_bench "$label" "$WORK/wrk-$label.txt"
    say "$label: ${RPS[$label]} requests/s, p50 $(ms "${P50[$label]}"), p99 $(ms "${P99[$label]}"), non-2xx ${NON2XX[$label]}"
}
parse_bench() { # label file (a BENCH line)
    local line; line=$(grep '^BENCH ' "$2") || die "no result in $2: $(cat "$2")"
    RPS[$1]=$(sed -nE 's/.* rps=([0-9]+).*/\1/p' <<<"$line")
    P50[$1]=$(sed -nE 's/.* p50_us=([0-9]+).*/\1/p' <<<"$line")
    P99[$1]=$(sed -nE 's/.* p99_us=([0-9]+).*/\1/p' <<<"$line")
    NON2XX[$1]=$(sed -nE 's/.* non2xx=([0-9]+).*/\1/p' <<<"$line")
    ERRS[$1]=$(sed -nE 's/.* errors=([0-9]+).*/\1/p' <<<"$line")
}

# The machine's idle and total CPU ticks so far (every core).
machine_ticks() { awk '/^cpu / { total = 0; for (i = 2; i <= NF; i++) total += $i; print $5 + $6, total }' /proc/stat; }

declare -A BUSY
# rate_run label url rate [header args...]: latency at a fixed rate, and
# how busy the whole machine was meanwhile (the load generator, the
# upstream and the proxy share its cores).
rate_run() {
    local label=$1 url=$2 rate=$3; shift 3
    local out=$WORK/rate-$label before
    before=$(machine_ticks)
    case $RATE_TOOL in
    wrk2)
        wrk2 -t"$THREADS" -c"$CONNS" -d"$DURATION" -R"$rate" --latency -s "$HERE/report.lua" "$@" "$url" >"$out.txt"
        parse_bench "$label" "$out.txt"
        ;;
    oha)
        oha --no-tui -z "$DURATION" -q "$rate" -c "$CONNS" --latency-correction --output-format json \
            "$@" "$url" >"$out.json"
        python3 - "$out.json" >"$out.txt" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
codes = r.get("statusCodeDistribution", {})
ok = sum(n for c, n in codes.items() if str(c).startswith("2"))
total = sum(codes.values())
# oha ends the requests still out at the deadline: not errors.
errors = sum(n for e, n in r.get("errorDistribution", {}).items() if e != "aborted due to deadline")
p = r["latencyPercentiles"]
print("BENCH requests=%d duration_us=0 rps=%.1f p50_us=%d p99_us=%d max_us=%d non2xx=%d errors=%d codes=%s" % (
    total, r["summary"]["requestsPerSec"], p["p50"] * 1e6, p["p99"] * 1e6,
    r["summary"]["slowest"] * 1e6, total - ok, errors,
    ",".join(f"{c}:{n}" for c, n in sorted(codes.items()))))
EOF
        parse_bench "$label" "$out.txt"
        ;;
    wrk-c4)
        wrk -t1 -c4 -d"$DURATION" --latency -s "$HERE/report.lua" "$@" "$url" >"$out.txt"
        parse_bench "$label" "$out.txt"
        ;;
    esac
    BUSY[$label]=$(awk -v b="$before" -v a="$(machine_ticks)" \
        'BEGIN { split(b, x, " "); split(a, y, " "); printf "%.0f%%", 100 * (1 - (y[1] - x[1]) / (y[2] - x[2])) }')
    say "$label at $rate/s: ${RPS[$label]} requests/s, p50 $(ms "${P50[$label]}"), p99 $(ms "${P99[$label]}"), non-2xx ${NON2XX[$label]}, machine busy ${BUSY[$label]}"
}

ms() { awk -v us="$1" 'BEGIN { printf "%.3f ms", us / 1000 }'; }
diff_ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.3f ms", (a - b) / 1000 }'; }
thousands() { sed -E ':a;s/^([0-9]+)([0-9]{3})/\1,\2/;ta' <<<"$1"; }

# ---- 1. full load -----------------------------------------------------------

say "full load: wrk -t$THREADS -c$CONNS -d$DURATION (after a $WARMUP warm-up)"
wrk_run direct "$DIRECT_URL" "${HDRS[@]}"
wrk_run nginx "$NGINX_URL" "${HDRS[@]}"
wrk_run bulkhead "$BULKHEAD_URL" "${HDRS[@]}"

# ---- 2. half of nginx's throughput -----------------------------------------

HALF=$((${RPS[nginx]} / 2))
say "fixed rate: $HALF requests/s ($RATE_TOOL)"
rate_run half-direct "$DIRECT_URL" "$HALF" "${HDRS[@]}"
rate_run half-nginx "$NGINX_URL" "$HALF" "${HDRS[@]}"
rate_run half-bulkhead "$BULKHEAD_URL" "$HALF" "${HDRS[@]}"
# A quarter as well: where the machine has cores to spare, what is left is
# the proxy's own latency.
QUARTER=$((HALF / 2))
rate_run quarter-direct "$DIRECT_URL" "$QUARTER" "${HDRS[@]}"
rate_run quarter-nginx "$NGINX_URL" "$QUARTER" "${HDRS[@]}"
rate_run quarter-bulkhead "$BULKHEAD_URL" "$QUARTER" "${HDRS[@]}"

# ---- 3. the bulkhead: A hangs and floods, B keeps its latency ---------------

B_URL="http://127.0.0.1:$GW_PORT/echo/b"
B_HDRS=(-H "Host: tenant-b.localhost" -H "Authorization: Bearer $TOKEN_B")
say "bulkhead check: tenant B at $B_RATE requests/s, alone"
rate_run b-alone "$B_URL" "$B_RATE" "${B_HDRS[@]}"
FLOOD_SECS=$(($(secs "$DURATION") + 4))
say "bulkhead check: tenant A floods (wrk -t1 -c$FLOOD_CONNS, hung upstream) while B runs again"
wrk -t1 -c"$FLOOD_CONNS" -d"${FLOOD_SECS}s" --timeout 60s -s "$HERE/count.lua" \
    -H "Host: tenant-a.localhost" -H "Authorization: Bearer $TOKEN_A" \
    "http://127.0.0.1:$GW_PORT/slow/x" >"$WORK/flood.txt" &
FLOOD_PID=$!
PIDS+=($FLOOD_PID)
sleep 2
rate_run b-flood "$B_URL" "$B_RATE" "${B_HDRS[@]}"
wait "$FLOOD_PID" || true
# A's requests still held by the hung upstream end (502) when it goes, so
# the server stops at once.
kill -TERM "$HANG_PID" 2>/dev/null || true
FLOOD=$(grep '^BENCH ' "$WORK/flood.txt" || echo "BENCH (no result: $(tr '\n' ' ' <"$WORK/flood.txt"))")
say "A's flood: $FLOOD"
A_RPS=$(sed -nE 's/.* rps=([0-9]+).*/\1/p' <<<"$FLOOD")
A_CODES=$(sed -nE 's/.* codes=([^ ]*).*/\1/p' <<<"$FLOOD")
A_TIMEOUTS=$(sed -nE 's/.* timeouts=([0-9]+).*/\1/p' <<<"$FLOOD")

# ---- 4. 10, 10,000 and 100,000 tenants ---------------------------------------

declare -A RSS_IDLE RSS_LOAD SNAP_MS FIRST_MS IDLE_MS SEED_MSG REBUILDS
for size in $SIZES; do
    stop_server
    SEED_MSG[$size]=$(python3 "$HERE/seed_tenants.py" "$DATA/bulkhead.db" bench "$size")
    say "${SEED_MSG[$size]}"
    start_server
    FIRST_MS[$size]=$(first_200 bench.localhost "$TOKEN" /echo/bench)
    IDLE_MS[$size]=$(wait_idle)
    RSS_IDLE[$size]=$(rss_kib)
    SNAP_MS[$size]=$(snapshot_ms)
    count=$(grep -m1 'gateway snapshot rebuilt' "$SERVE_LOG" | sed -nE 's/.*"?tenants"?[:=]"?([0-9]+).*/\1/p')
    say "$size tenants: snapshot of ${count:-?} tenants built in ${SNAP_MS[$size]:-?} ms; first 200 after ${FIRST_MS[$size]} ms; idle after ${IDLE_MS[$size]} ms; RSS ${RSS_IDLE[$size]} KiB"
    before=$(grep -c 'gateway snapshot rebuilt' "$SERVE_LOG" || true)
    wrk_run "size-$size" "$BULKHEAD_URL" "${HDRS[@]}"
    RSS_LOAD[$size]=$(rss_kib)
    REBUILDS[$size]=$(($(grep -c 'gateway snapshot rebuilt' "$SERVE_LOG" || true) - before))
done
stop_server

# ---- the server's complaints ---------------------------------------------------

COMPLAINTS=$(cat "$WORK"/serve-*.log | grep -E '"level":"(WARN|ERROR)"' \
    | sed -nE 's/.*"message":"([^"]*)".*/\1/p' | sort | uniq -c | sort -rn | head -n 10 || true)

# ---- tables --------------------------------------------------------------------

note_non2xx() { # label
    local n=${NON2XX[$1]:-0} e=${ERRS[$1]:-0}
    if [ "$n" != 0 ] || [ "$e" != 0 ]; then printf '%s non-2xx, %s errors' "$(thousands "$n")" "$(thousands "$e")"; else printf 'none'; fi
}

echo
echo "### Full load: wrk -t$THREADS -c$CONNS -d$DURATION, keep-alive"
echo
echo "| target | requests/s | p50 | p99 | added p50 | added p99 | non-2xx or errors |"
echo "|---|---|---|---|---|---|---|"
for t in direct nginx bulkhead; do
    case $t in direct) name="upstream directly (nginx, static body)" ;; nginx) name="nginx reverse proxy (keepalive 64)" ;; bulkhead) name="Bulkhead gateway (token, limits, recording)" ;; esac
    added=" | "
    if [ "$t" != direct ]; then added="$(diff_ms "${P50[$t]}" "${P50[direct]}") | $(diff_ms "${P99[$t]}" "${P99[direct]}")"; fi
    echo "| $name | $(thousands "${RPS[$t]}") | $(ms "${P50[$t]}") | $(ms "${P99[$t]}") | $added | $(note_non2xx "$t") |"
done

echo
case $RATE_TOOL in
wrk2) how="wrk2 -R$HALF -t$THREADS -c$CONNS -d$DURATION" ;;
oha) how="oha -q $HALF -c $CONNS -z $DURATION --latency-correction" ;;
*) how="wrk -t1 -c4 -d$DURATION (closed loop: not a fixed rate)" ;;
esac
echo "### Half and a quarter of nginx's throughput: $(thousands "$HALF") and $(thousands "$QUARTER") requests/s ($how)"
echo
echo "| rate | target | requests/s | p50 | p99 | added p50 | added p99 | machine CPU busy | non-2xx or errors |"
echo "|---|---|---|---|---|---|---|---|---|"
for share in half quarter; do
    for t in direct nginx bulkhead; do
        case $t in direct) name="upstream directly" ;; nginx) name="nginx reverse proxy" ;; bulkhead) name="Bulkhead gateway" ;; esac
        l=$share-$t
        added="| "
        if [ "$t" != direct ]; then added="$(diff_ms "${P50[$l]}" "${P50[$share-direct]}") | $(diff_ms "${P99[$l]}" "${P99[$share-direct]}")"; fi
        echo "| $share | $name | $(thousands "${RPS[$l]}") | $(ms "${P50[$l]}") | $(ms "${P99[$l]}") | $added | ${BUSY[$l]} | $(note_non2xx "$l") |"
    done
done

echo
echo "### Tenants configured (the real \`bench\` tenant takes the traffic; wrk as above)"
echo
echo "| tenants | requests/s | p99 | non-2xx or errors | RSS after the snapshot | RSS after the run | memory per tenant (vs 10) | snapshot build (log) | start to first 200 | start to idle | full rebuilds during the run |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
first_size=${SIZES%% *}
for size in $SIZES; do
    l=size-$size
    per="n/a"
    if [ "$size" != "$first_size" ]; then
        per=$(awk -v a="${RSS_IDLE[$size]}" -v b="${RSS_IDLE[$first_size]}" -v n="$size" -v m="$first_size" \
            'BEGIN { printf "%.2f KB", (a - b) * 1024 / (n - m) / 1000 }')
    fi
    echo "| $(thousands "$size") | $(thousands "${RPS[$l]}") | $(ms "${P99[$l]}") | $(note_non2xx "$l") | $(awk -v k="${RSS_IDLE[$size]}" 'BEGIN { printf "%.1f MiB", k / 1024 }') | $(awk -v k="${RSS_LOAD[$size]}" 'BEGIN { printf "%.1f MiB", k / 1024 }') | $per | ${SNAP_MS[$size]:-?} ms | ${FIRST_MS[$size]} ms | ${IDLE_MS[$size]} ms | ${REBUILDS[$size]} |"
done

echo
echo "### The bulkhead: tenant A's upstream hangs and A floods; tenant B at $B_RATE requests/s ($RATE_TOOL)"
echo
echo "| tenant B | requests/s | p50 | p99 | non-2xx or errors |"
echo "|---|---|---|---|---|"
echo "| alone | $(thousands "${RPS[b-alone]}") | $(ms "${P50[b-alone]}") | $(ms "${P99[b-alone]}") | $(note_non2xx b-alone) |"
echo "| while A floods | $(thousands "${RPS[b-flood]}") | $(ms "${P50[b-flood]}") | $(ms "${P99[b-flood]}") | $(note_non2xx b-flood) |"
echo
echo "A's flood (starter plan: max_in_flight 64; wrk -t1 -c$FLOOD_CONNS for ${FLOOD_SECS} s): ${A_RPS:-?} responses/s; status codes ${A_CODES:-?}; ${A_TIMEOUTS:-0} requests still waiting at wrk's 60 s timeout."

REFUSED=0
for l in bulkhead half-bulkhead $(for size in $SIZES; do echo "size-$size"; done); do
    if [ "${NON2XX[$l]:-0}" != 0 ]; then REFUSED=1; fi
done
if [ "$REFUSED" = 1 ]; then
    echo
    echo '**Not valid:** the gateway refused some of the measured requests (non-2xx above: 429 `rate_limited` when the tenant'"'"'s own plan rate is below the load), so its requests/s and latencies are not those of the proxy path.'
fi

if command -v cargo >/dev/null; then
    echo
    echo "### What the gateway itself holds per tenant (cargo bench -p bulkhead-gateway --bench snapshot)"
    echo
    (cd "$ROOT" && cargo bench --quiet -p bulkhead-gateway --bench snapshot -- 10000 100000 2>/dev/null) \
        || echo "(the snapshot bench did not run)"
fi

echo
echo "Server warnings and errors (count, message):"
if [ -n "$COMPLAINTS" ]; then sed 's/^/    /' <<<"$COMPLAINTS"; else echo "    none"; fi
