#!/usr/bin/env bash
# Load benchmark of the olla proxy, side by side with its peers: the same wrk load against one
# olla-mock backend directly (the limit), through olla (round-robin over two mocks), through
# haproxy and through nginx (round-robin over the same two mocks), in non-stream (JSON) and SSE
# stream modes, with CPU time per request; then an SSE inter-event gap check with slow streams
# (20 tokens, 20 ms apart); then N concurrent slow SSE streams held open through each proxy
# (100 tokens, 50 ms apart): peak RSS, memory per stream, failed streams and time to first
# token added over direct (median and p99).
#
#   SERVER_CPUS=1 bash benches/load.sh                      # the fair (pinned) comparison
#   SERVER_CPUS=1 STREAMS=9000 bash benches/load.sh         # memory at 9k streams
#   DURATION=5s ROUNDS=1 STREAMS=0 bash benches/load.sh     # quick look, no stream phase
#   STRICT=1 bash benches/load.sh                           # exit 1 if a bar fails
#   SERVER_CPUS=1 TLS=1 bash benches/load.sh                # olla vs haproxy/nginx terminating TLS
#   SERVER_CPUS=1 OLLA_SERVER_EXTRA='rate_limits: {global_requests_per_minute: 100000000,
#       per_ip_requests_per_minute: 100000000, burst_size: 1000000}' bash benches/load.sh
#                                                           # what checking rate limits costs
#
# TLS=1: olla, haproxy and nginx terminate TLS on their client port with one throwaway
# certificate for 127.0.0.1 (ECDSA P-256, signed by a throwaway CA; both made with the openssl
# CLI in the work directory at run time and deleted with it). The mocks stay plain HTTP, and so
# does direct: it is the limit. wrk speaks https:// (it does not verify certificates); every
# curl check verifies against the CA file. wrk keeps its connections alive, so each pays one
# handshake and then reuses it for the whole run: the handshake cost is amortised, as it is for
# clients with a connection pool, and what the rps and p99 ratios show is the per-request cost of
# TLS records. The SSE gap check speaks TLS too (handshake outside the timings); the held-streams
# phase is skipped under TLS=1 (olla-hold speaks plain TCP only).
#
# Knobs (environment):
#   DURATION=10s     wrk duration of each measurement (wrk syntax: 10s, 1m)
#   ROUNDS=3         measurements per target and mode, interleaved; the median is reported
#   STRICT=0         1 = exit non-zero when a bar fails
#   WARMUP=2s        wrk warm-up per target and mode (not recorded)
#   CONNS=32         wrk connections (always -t1)
#   WRK_CPU=0        CPU wrk is pinned to (taskset)
#   SERVER_CPUS=     CPU list for mocks, olla and haproxy (taskset); empty = not pinned (default)
#   SSE_STREAMS=10   streams per target in the SSE gap check
#   STREAMS=3000     concurrent streams held per proxy in the memory phase (0 = skip); each
#                    proxied stream holds two sockets, so keep 2*STREAMS under `ulimit -n`
#   PEERS="haproxy nginx"  peer proxies measured beside olla
#   OLLA_CONFIG_EXTRA=     YAML appended to olla's config (top-level sections), to measure what a
#                    feature costs, e.g. $'telemetry: {metrics: {enabled: false}}'
#   CLIENT_KEY=      sent as `Authorization: Bearer` by wrk and the checks (with auth.keys set)
#   OTLP_SINK=0      1 = trace every request (telemetry.otlp, sample_ratio 1.0) to a collector stand-in
#                    (nginx answering 200 to POST /v1/traces, pinned with wrk); the spans olla
#                    exported and dropped are reported. Do not also set telemetry in OLLA_CONFIG_EXTRA.
#   OLLA_SERVER_EXTRA=  YAML keys spliced into olla's one-line `server: {host: ..., port: ...}`
#                    mapping (flow style, comma-separated `key: value` pairs), e.g. the
#                    rate_limits above. Set limits far above the load: the point is the cost of
#                    checking, not of refusing (any 429 shows in the errors column). With a
#                    per-IP limit the script dies unless olla's proxy responses carry
#                    X-RateLimit-Limit/Remaining/Reset (olla sends them only with a per-IP limit),
#                    and the report gives olla's rate-limit refusal count after the run.
#   TLS=0            1 = olla and the peers terminate TLS (see above); needs openssl
#   SKIP_BUILD=0     1 = use the existing target/release binaries
#   KEEP_LOGS=0      1 = keep the work directory (configs, logs, raw wrk output)
#
# Bars: olla rps >= 0.8 x haproxy rps in each mode; SSE gaps through olla (median and p99)
# within 1 ms of direct. Results are printed and written to target/load-results.txt.
# Everything listens on and talks to 127.0.0.1 only; every process started here is stopped
# by PID on exit.
set -euo pipefail

DURATION=${DURATION:-10s}
ROUNDS=${ROUNDS:-3}
STRICT=${STRICT:-0}
WARMUP=${WARMUP:-2s}
CONNS=${CONNS:-32}
WRK_CPU=${WRK_CPU:-0}
SERVER_CPUS=${SERVER_CPUS:-}
SSE_STREAMS=${SSE_STREAMS:-10}
STREAMS=${STREAMS:-3000}
TLS=${TLS:-0}
case $TLS in 0 | 1) ;; *) printf '[load] ERROR: TLS must be 0 or 1, not %s\n' "$TLS" >&2; exit 1 ;; esac
# One line, so it fits in the flow mapping `server: {...}`.
OLLA_SERVER_EXTRA=${OLLA_SERVER_EXTRA:-}
OLLA_SERVER_EXTRA=${OLLA_SERVER_EXTRA//$'\n'/ }
# Rate limits configured (RATE_LIMITS) and a per-IP limit among them (RATE_PER_IP: olla then
# adds X-RateLimit-* headers to proxy responses, which the script checks).
RATE_LIMITS=0; RATE_PER_IP=0
[[ $OLLA_SERVER_EXTRA == *rate_limits* ]] && RATE_LIMITS=1
[[ $OLLA_SERVER_EXTRA =~ per_ip_requests_per_minute:[[:space:]]*[\"\']?[1-9] ]] && RATE_PER_IP=1
AUTH_ARGS=()
WRK_AUTH_LINE=
if [ -n "${CLIENT_KEY:-}" ]; then
    AUTH_ARGS=(-H "Authorization: Bearer $CLIENT_KEY")
    WRK_AUTH_LINE="wrk.headers[\"Authorization\"] = \"Bearer $CLIENT_KEY\""
fi
read -r -a PEER_LIST <<<"${PEERS:-haproxy nginx}"
SKIP_BUILD=${SKIP_BUILD:-0}
KEEP_LOGS=${KEEP_LOGS:-0}
# HEALTH=off: circuit breaker disabled and probes hourly, to measure what health costs.
HEALTH=${HEALTH:-on}
if [ "$HEALTH" = off ]; then
  OLLA_PROXY_EXTRA=", circuit_breaker: {enabled: false}"; OLLA_CHECK_INTERVAL=3600s
else
  OLLA_PROXY_EXTRA=""; OLLA_CHECK_INTERVAL=2s
fi
RPS_BAR=0.8
GAP_BAR_MS=1
MODEL=m

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
RESULTS=$TARGET_DIR/load-results.txt
WORK=$(mktemp -d "${TMPDIR:-/tmp}/olla-load.XXXXXX")
PIDS=()

log() { printf '[load] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }
# report: print to stdout and append to the results file.
report() { printf '%s\n' "$*" | tee -a "$RESULTS"; }

cleanup() {
    local rc=$? pid i alive
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for i in $(seq 50); do
        alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    if [ "$KEEP_LOGS" = 1 ] || [ "$rc" != 0 ]; then
        log "work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_until SECONDS DESCRIPTION COMMAND...: poll COMMAND every 0.2 s until it succeeds.
wait_until() {
    local secs=$1 what=$2; shift 2
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || die "timed out after ${secs}s waiting for: $what"
        sleep 0.2
    done
}

# dur_secs 10s|1m|500ms|10 -> whole seconds (at least 1)
dur_secs() {
    local d=$1
    case $d in
        *ms) echo 1 ;;
        *s) echo "${d%s}" ;;
        *m) echo $(( ${d%m} * 60 )) ;;
        *h) echo $(( ${d%h} * 3600 )) ;;
        *) echo "$d" ;;
    esac
}

# ---------------------------------------------------------------------------------------------
# 1. Tools
# ---------------------------------------------------------------------------------------------
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }
need=()
have wrk || need+=(wrk)
for peer in "${PEER_LIST[@]}"; do have "$peer" || need+=("$peer"); done
if [ "$TLS" = 1 ]; then have openssl || need+=(openssl); fi
if [ "${#need[@]}" -gt 0 ]; then
    SUDO=()
    [ "$(id -u)" = 0 ] || SUDO=(sudo)
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        # Keep apt from starting haproxy as a system service.
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${SUDO[@]}" chmod 755 /usr/sbin/policy-rc.d
    fi
    log "installing: ${need[*]}"
    if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}"; then
        "${SUDO[@]}" apt-get update
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y "${need[@]}"
    fi
fi
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
WRK=$(command -v wrk || echo /usr/bin/wrk)
for t in python3 curl taskset timeout; do have "$t" || die "missing tool: $t"; done

# ---------------------------------------------------------------------------------------------
# 2. Binaries (copied, so a concurrent cargo build cannot swap them mid-run)
# ---------------------------------------------------------------------------------------------
if [ "$SKIP_BUILD" != 1 ]; then
    log "cargo build --release (may wait on the cargo lock)"
    (cd "$ROOT" && cargo build --release --bin olla --bin olla-mock -p olla -p olla-mock)
fi
if [ "$SKIP_BUILD" != 1 ] || [ ! -x "$TARGET_DIR/release/olla-hold" ]; then
    (cd "$ROOT" && cargo build --release --bin olla-hold -p olla-mock)
fi
for b in olla olla-mock olla-hold; do
    [ -x "$TARGET_DIR/release/$b" ] || die "missing $TARGET_DIR/release/$b"
    cp "$TARGET_DIR/release/$b" "$WORK/$b"
done
BIN=$WORK
STARTED=$(date -u +%Y-%m-%dT%H:%M:%SZ)
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# ---------------------------------------------------------------------------------------------
# 3. Servers
# ---------------------------------------------------------------------------------------------
PIN=()
[ -n "$SERVER_CPUS" ] && PIN=(taskset -c "$SERVER_CPUS")

# TLS=1: a throwaway CA and a certificate for 127.0.0.1 (ECDSA P-256), made here and deleted
# with $WORK. CA_ARGS goes to every curl (and sse_gaps.py) that talks to olla, haproxy or nginx.
CA_ARGS=()
SCHEME=http
if [ "$TLS" = 1 ]; then
    (
        cd "$WORK" &&
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key &&
        openssl req -x509 -new -key ca.key -sha256 -days 2 -subj '/CN=olla load.sh throwaway CA' \
            -addext 'basicConstraints=critical,CA:TRUE' -addext 'keyUsage=critical,keyCertSign,cRLSign' \
            -out ca.pem &&
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out server.key &&
        openssl req -new -key server.key -subj '/CN=127.0.0.1' -out server.csr &&
        printf '%s\n' 'basicConstraints=critical,CA:FALSE' 'keyUsage=critical,digitalSignature' \
            'extendedKeyUsage=serverAuth' 'subjectAltName=IP:127.0.0.1' >server.ext &&
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -sha256 \
            -extfile server.ext -out server.pem &&
        cat server.pem server.key >hap.pem && # haproxy wants certificate and key in one file
        chmod 600 ca.key server.key hap.pem &&
        openssl verify -CAfile ca.pem server.pem
    ) >"$WORK/tls-gen.log" 2>&1 || die "cannot make the throwaway certificates: $(tail -5 "$WORK/tls-gen.log")"
    CA_ARGS=(--cacert "$WORK/ca.pem")
    SCHEME=https
fi

free_ports() { # free_ports N -> N free 127.0.0.1 TCP ports
    python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

MOCK_PORT=
start_mock() { # start_mock NAME -> sets MOCK_PORT
    local name=$1 logf=$WORK/mock-$1.log
    "${PIN[@]}" "$BIN/olla-mock" --port 0 --host 127.0.0.1 --name "$name" --models "$MODEL" \
        --tokens 16 --token-delay-ms 0 >"$logf" 2>&1 &
    PIDS+=($!)
    MOCK_PIDS+=($!)
    wait_until 15 "olla-mock $name to listen" grep -q 'listening on http://' "$logf"
    MOCK_PORT=$(sed -n 's#.*listening on http://127\.0\.0\.1:\([0-9]*\).*#\1#p' "$logf" | head -1)
    [ -n "$MOCK_PORT" ] || die "cannot read the port of olla-mock $name: $(cat "$logf")"
}

MOCK_PIDS=()
start_mock a; PORT_A=$MOCK_PORT
start_mock b; PORT_B=$MOCK_PORT
read -r OLLA_PORT HAP_PORT HAP_STATS_PORT NGX_PORT < <(free_ports 4)

OTLP_SINK=${OTLP_SINK:-0}
OLLA_TRACING=""
if [ "$OTLP_SINK" = 1 ]; then
    read -r SINK_PORT < <(free_ports 1)
    mkdir -p "$WORK/sink-tmp"
    cat >"$WORK/otlp-sink.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/otlp-sink.pid;
error_log $WORK/otlp-sink-error.log warn;
events { worker_connections 256; }
http {
    access_log $WORK/otlp-sink-access.log;
    client_body_temp_path $WORK/sink-tmp/body;
    proxy_temp_path $WORK/sink-tmp/proxy;
    fastcgi_temp_path $WORK/sink-tmp/fastcgi;
    uwsgi_temp_path $WORK/sink-tmp/uwsgi;
    scgi_temp_path $WORK/sink-tmp/scgi;
    client_max_body_size 64m;
    client_body_buffer_size 16m;
    server {
        listen 127.0.0.1:$SINK_PORT;
        location = /v1/traces { return 200; }
    }
}
EOF
    taskset -c "$WRK_CPU" "$NGINX" -p "$WORK" -c "$WORK/otlp-sink.conf" -e "$WORK/otlp-sink-error.log" >"$WORK/otlp-sink.log" 2>&1 &
    PIDS+=($!)
    wait_until 15 "the OTLP sink to listen" curl -sf -o /dev/null -X POST --data-binary x "http://127.0.0.1:$SINK_PORT/v1/traces"
    OLLA_TRACING="telemetry: {otlp: {endpoint: \"http://127.0.0.1:$SINK_PORT\", sample_ratio: 1.0}}"
fi
OLLA_SERVER="host: 127.0.0.1, port: $OLLA_PORT"
if [ "$TLS" = 1 ]; then
    OLLA_SERVER+=", tls: {cert_file: \"$WORK/server.pem\", key_file: \"$WORK/server.key\"}"
fi
if [ -n "$OLLA_SERVER_EXTRA" ]; then OLLA_SERVER+=", $OLLA_SERVER_EXTRA"; fi
cat >"$WORK/olla.yaml" <<EOF
server: {$OLLA_SERVER}
proxy: {load_balancer: round-robin$OLLA_PROXY_EXTRA}
discovery:
  type: static
  model_discovery: {enabled: true}
  static:
    endpoints:
      - {name: mock-a, url: "http://127.0.0.1:$PORT_A", type: openai-compatible, priority: 100, check_interval: $OLLA_CHECK_INTERVAL}
      - {name: mock-b, url: "http://127.0.0.1:$PORT_B", type: openai-compatible, priority: 100, check_interval: $OLLA_CHECK_INTERVAL}
logging: {level: warn}
$OLLA_TRACING
${OLLA_CONFIG_EXTRA:-}
EOF
"${PIN[@]}" "$BIN/olla" -c "$WORK/olla.yaml" >"$WORK/olla.log" 2>&1 &
OLLA_PID=$!; PIDS+=($!)

# TLS=1: haproxy offers h2 and http/1.1 in ALPN, as olla does (nginx 1.22 offers http/1.1 here);
# wrk speaks HTTP/1.1 only, so the offers do not change the measurement.
HAP_BIND_TLS=
if [ "$TLS" = 1 ]; then HAP_BIND_TLS=" ssl crt $WORK/hap.pem alpn h2,http/1.1"; fi
cat >"$WORK/haproxy.cfg" <<EOF
global
    maxconn 9500
    nbthread 2
defaults
    mode http
    option http-keep-alive
    option http-no-delay
    timeout connect 5s
    timeout client 300s
    timeout server 300s
frontend llm_in
    bind 127.0.0.1:$HAP_PORT$HAP_BIND_TLS
    default_backend llm
frontend stats
    bind 127.0.0.1:$HAP_STATS_PORT
    stats enable
    stats uri /stats
backend llm
    balance roundrobin
    option httpchk GET /health
    server a 127.0.0.1:$PORT_A check inter 2s
    server b 127.0.0.1:$PORT_B check inter 2s
EOF
"$HAPROXY" -q -c -f "$WORK/haproxy.cfg" || die "haproxy rejects $WORK/haproxy.cfg"
"${PIN[@]}" "$HAPROXY" -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
HAP_PID=$!; PIDS+=($!)

# nginx: one worker (the servers share one core when pinned), upstream keep-alive, no
# response buffering (so SSE streams through), no access log (olla and haproxy keep none here).
mkdir -p "$WORK/nginx-tmp"
NGX_LISTEN_TLS=
NGX_TLS_CONF=
if [ "$TLS" = 1 ]; then
    NGX_LISTEN_TLS=" ssl"
    # nginx 1.22's built-in default stops at TLS 1.2; olla (rustls) and haproxy offer 1.2 and 1.3.
    NGX_TLS_CONF=$'\n'"        ssl_certificate $WORK/server.pem;"$'\n'"        ssl_certificate_key $WORK/server.key;"
    NGX_TLS_CONF+=$'\n'"        ssl_protocols TLSv1.2 TLSv1.3;"
fi
cat >"$WORK/nginx.conf" <<EOF
worker_processes 1;
worker_rlimit_nofile 20000;
daemon off;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 19000; }
http {
    access_log off;
    client_body_temp_path $WORK/nginx-tmp/body;
    proxy_temp_path $WORK/nginx-tmp/proxy;
    fastcgi_temp_path $WORK/nginx-tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx-tmp/uwsgi;
    scgi_temp_path $WORK/nginx-tmp/scgi;
    keepalive_requests 100000;
    upstream llm {
        server 127.0.0.1:$PORT_A;
        server 127.0.0.1:$PORT_B;
        keepalive 64;
    }
    server {
        listen 127.0.0.1:$NGX_PORT$NGX_LISTEN_TLS;$NGX_TLS_CONF
        location / {
            proxy_pass http://llm;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 300s;
        }
    }
}
EOF
NGX_PID=
NGX_PIDS=""
if [[ " ${PEER_LIST[*]} " == *" nginx "* ]]; then
    "$NGINX" -t -q -p "$WORK" -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log" 2>"$WORK/nginx-t.log" ||
        die "nginx rejects $WORK/nginx.conf: $(cat "$WORK/nginx-t.log")"
    "${PIN[@]}" "$NGINX" -p "$WORK" -c "$WORK/nginx.conf" -e "$WORK/nginx-error.log" >"$WORK/nginx.log" 2>&1 &
    NGX_PID=$!; PIDS+=($!)
fi

OLLA=$SCHEME://127.0.0.1:$OLLA_PORT
HAP=$SCHEME://127.0.0.1:$HAP_PORT
NGX=$SCHEME://127.0.0.1:$NGX_PORT
DIRECT=http://127.0.0.1:$PORT_A

olla_routable() {
    kill -0 "$OLLA_PID" || die "olla exited: $(tail -5 "$WORK/olla.log")"
    curl -sf --max-time 2 "${CA_ARGS[@]}" "$OLLA/internal/status/endpoints" | grep -q '"routable_count":2' &&
        curl -sf --max-time 2 "${CA_ARGS[@]}" "${AUTH_ARGS[@]}" "$OLLA/olla/proxy/v1/models" |
        grep -q "\"id\":\"$MODEL\""
}
haproxy_ready() {
    kill -0 "$HAP_PID" || die "haproxy exited: $(tail -5 "$WORK/haproxy.log")"
    curl -sf --max-time 2 "${CA_ARGS[@]}" "$HAP/health" >/dev/null &&
        [ "$(curl -sf --max-time 2 "http://127.0.0.1:$HAP_STATS_PORT/stats;csv" |
            awk -F, '$1=="llm" && ($2=="a" || $2=="b") && $18=="UP"' | wc -l)" = 2 ]
}
nginx_ready() {
    kill -0 "$NGX_PID" || die "nginx exited: $(tail -5 "$WORK/nginx-error.log")"
    curl -sf --max-time 2 "${CA_ARGS[@]}" "$NGX/health" >/dev/null
}
wait_until 30 "olla to route to both mocks and list model $MODEL" olla_routable
wait_until 30 "haproxy to answer with both servers UP" haproxy_ready
if [ -n "$NGX_PID" ]; then
    wait_until 30 "nginx to answer" nginx_ready
    # The master and its worker: both are charged to nginx.
    NGX_PIDS="$NGX_PID $(pgrep -P "$NGX_PID" | tr '\n' ' ')"
fi

# Both proxies must actually spread requests over both mocks.
spread() { # spread URL -> distinct X-Mock-Name values over 6 requests
    local i
    for i in 1 2 3 4 5 6; do
        curl -sf --max-time 5 -o /dev/null -D - "${CA_ARGS[@]}" -H 'Content-Type: application/json' "${AUTH_ARGS[@]}" \
            -d "{\"model\":\"$MODEL\",\"stream\":false,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}" "$1" |
            tr -d '\r' | awk -F': ' 'tolower($1)=="x-mock-name"{print $2}'
    done | sort -u | tr '\n' ' '
}
SPREAD_OLLA=$(spread "$OLLA/olla/proxy/v1/chat/completions") ||
    die "a chat completion through olla failed (see $WORK/olla.log)"
SPREAD_HAP=$(spread "$HAP/v1/chat/completions") || die "a chat completion through haproxy failed"
log "backends hit: olla -> [$SPREAD_OLLA], haproxy -> [$SPREAD_HAP]"
[ "$SPREAD_OLLA" = "a b " ] || die "olla did not use both mocks: [$SPREAD_OLLA]"
[ "$SPREAD_HAP" = "a b " ] || die "haproxy did not use both mocks: [$SPREAD_HAP]"
if [ -n "$NGX_PID" ]; then
    SPREAD_NGX=$(spread "$NGX/v1/chat/completions") || die "a chat completion through nginx failed"
    [ "$SPREAD_NGX" = "a b " ] || die "nginx did not use both mocks: [$SPREAD_NGX]"
fi

# Rate limits: the limiter must be active, or the run measures nothing. Olla adds
# X-RateLimit-Limit/Remaining/Reset to proxy responses when a per-IP limit is set.
RL_HEADERS=
if [ "$RATE_LIMITS" = 1 ]; then
    RL_HEADERS=$(curl -sf --max-time 5 -o /dev/null -D - "${CA_ARGS[@]}" -H 'Content-Type: application/json' \
        "${AUTH_ARGS[@]}" -d "{\"model\":\"$MODEL\",\"stream\":false,\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]}" \
        "$OLLA/olla/proxy/v1/chat/completions" | tr -d '\r' | awk -F': ' '
            tolower($1) == "x-ratelimit-limit" { l = $2 }
            tolower($1) == "x-ratelimit-remaining" { r = $2 }
            tolower($1) == "x-ratelimit-reset" { t = $2 }
            END { if (l != "" && r != "" && t != "") printf "X-RateLimit-Limit %s, -Remaining %s, -Reset %s", l, r, t }') ||
        die "the rate-limit check request through olla failed"
    if [ "$RATE_PER_IP" = 1 ]; then
        [ -n "$RL_HEADERS" ] ||
            die "rate limits are configured but olla's proxy response has no X-RateLimit-Limit/Remaining/Reset headers (is the limiter active? OLLA_SERVER_EXTRA='$OLLA_SERVER_EXTRA')"
        log "rate limiter active: $RL_HEADERS"
    else
        log "note: no per-IP limit, so olla sends no X-RateLimit-* headers; the global limit cannot be confirmed from headers"
    fi
fi

# TLS=1: what each proxy negotiates with an OpenSSL client (the library wrk uses); this also
# verifies each certificate chain against the throwaway CA.
TLS_INFO=
if [ "$TLS" = 1 ]; then
    for t in olla "${PEER_LIST[@]}"; do
        case $t in olla) port=$OLLA_PORT ;; haproxy) port=$HAP_PORT ;; nginx) port=$NGX_PORT ;; *) continue ;; esac
        info=$(openssl s_client -connect "127.0.0.1:$port" -CAfile "$WORK/ca.pem" -verify_return_error \
            -brief </dev/null 2>&1 | awk -F': ' '
                $1 == "Protocol version" { p = $2 } $1 == "Ciphersuite" { c = $2 }
                $1 == "Verification" { v = $2 }
                END { if (v == "OK" && p != "") printf "%s %s", p, c }')
        [ -n "$info" ] || die "TLS handshake with $t on port $port failed or did not verify against $WORK/ca.pem"
        TLS_INFO+="${TLS_INFO:+ | }$t $info"
    done
    log "TLS: $TLS_INFO"
fi

# ---------------------------------------------------------------------------------------------
# 4. Throughput: wrk, interleaved rounds
# ---------------------------------------------------------------------------------------------
for mode in json sse; do
    stream=false; [ "$mode" = sse ] && stream=true
    cat >"$WORK/$mode.lua" <<EOF
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
$WRK_AUTH_LINE
wrk.body = '{"model":"$MODEL","stream":$stream,"messages":[{"role":"user","content":"Say hello in sixteen tokens."}]}'
EOF
done

declare -A URL=(
    [direct]="$DIRECT/v1/chat/completions"
    [olla]="$OLLA/olla/proxy/v1/chat/completions"
    [haproxy]="$HAP/v1/chat/completions"
    [nginx]="$NGX/v1/chat/completions"
)
# Processes whose CPU is charged to each target: the proxy's, then the mocks'.
declare -A PROXY_PROCS=([direct]="" [olla]="$OLLA_PID" [haproxy]="$HAP_PID" [nginx]="$NGX_PIDS")
declare -A PROC=(
    [direct]="${MOCK_PIDS[0]}"
    [olla]="$OLLA_PID ${MOCK_PIDS[*]}"
    [haproxy]="$HAP_PID ${MOCK_PIDS[*]}"
    [nginx]="$NGX_PIDS ${MOCK_PIDS[*]}"
)
TARGETS=(direct olla "${PEER_LIST[@]}")
PROXIES=(olla "${PEER_LIST[@]}")
MODES=(json sse)
CLK_TCK=$(getconf CLK_TCK)
declare -A RPS P50 P99 ERRS CPU_WRK CPU_PROXY CPU_MOCKS US

cpu_ticks() { # cpu_ticks PID... -> utime+stime of each, space separated
    local pid
    for pid in "$@"; do
        sed 's/^.*) //' "/proc/$pid/stat" | awk '{printf "%d ", $12 + $13}'
    done
}

to_ms() { # wrk latency (612.00us, 1.23ms, 1.01s, 2.00m) -> ms
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
        if (u == "us") n /= 1000; else if (u == "s") n *= 1000; else if (u == "m") n *= 60000
        printf "%.3f", n }'
}

# run_wrk TARGET MODE DURATION OUTFILE [record]
run_wrk() {
    local target=$1 mode=$2 dur=$3 out=$4 record=${5:-}
    local secs; secs=$(dur_secs "$dur")
    local pids=(${PROC[$target]}) before after t0 t1 wrk_cpu
    before=($(cpu_ticks "${pids[@]}"))
    t0=$EPOCHREALTIME
    local TIMEFORMAT='%U %S'
    { time timeout $((secs + 30)) taskset -c "$WRK_CPU" "$WRK" -t1 -c"$CONNS" -d"$dur" --timeout 5s \
        --latency -s "$WORK/$mode.lua" "${URL[$target]}" >"$out" 2>&1; } 2>"$out.time" ||
        die "wrk failed against $target ($mode): $(tail -3 "$out")"
    t1=$EPOCHREALTIME
    after=($(cpu_ticks "${pids[@]}"))
    [ -n "$record" ] || return 0

    local rps p50 p99 non2xx sockerr
    rps=$(awk '/^Requests\/sec:/ {print $2}' "$out")
    p50=$(to_ms "$(awk '$1=="50%" {print $2; exit}' "$out")")
    p99=$(to_ms "$(awk '$1=="99%" {print $2; exit}' "$out")")
    non2xx=$(awk '/Non-2xx or 3xx responses:/ {print $NF}' "$out"); non2xx=${non2xx:-0}
    sockerr=$(awk '/Socket errors:/ {gsub(/,/, ""); print $4 + $6 + $8 + $10}' "$out"); sockerr=${sockerr:-0}
    [ -n "$rps" ] || die "cannot parse wrk output: $out"
    local k="$mode,$target" wall
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN {print b - a}')
    RPS[$k]+="$rps "; P50[$k]+="$p50 "; P99[$k]+="$p99 "
    ERRS[$k]=$(( ${ERRS[$k]:-0} + non2xx + sockerr ))
    # CPU use in % of one core over the run: wrk; the proxy; the mocks.
    wrk_cpu=$(awk -v w="$wall" '{printf "%.0f", ($1 + $2) / w * 100}' "$out.time")
    CPU_WRK[$k]+="$wrk_cpu "
    local i proxy=0 mocks=0 d nproxy
    nproxy=$(wc -w <<<"${PROXY_PROCS[$target]}")
    for i in "${!pids[@]}"; do
        d=$(( after[i] - before[i] ))
        if [ "$i" -lt "$nproxy" ]; then proxy=$((proxy + d)); else mocks=$((mocks + d)); fi
    done
    CPU_PROXY[$k]+="$(awk -v t="$proxy" -v h="$CLK_TCK" -v w="$wall" 'BEGIN {printf "%.0f", t / h / w * 100}') "
    CPU_MOCKS[$k]+="$(awk -v t="$mocks" -v h="$CLK_TCK" -v w="$wall" 'BEGIN {printf "%.0f", t / h / w * 100}') "
    log "$(printf '%-4s %-7s rps %9s  p50 %7s ms  p99 %7s ms  errors %s' "$mode" "$target" "$rps" "$p50" "$p99" $((non2xx + sockerr)))"
}

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR] = $1} END {
    if (NR == 0) print "nan"; else if (NR % 2) print a[(NR + 1) / 2]; else print (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "n/a"; else printf "%.2f", a / b }'; }

: >"$RESULTS"
half=$(( ($(dur_secs "$DURATION") + 1) / 2 ))
for mode in "${MODES[@]}"; do
    log "mode $mode: warm-up ($WARMUP per target)"
    for target in "${TARGETS[@]}"; do
        run_wrk "$target" "$mode" "$WARMUP" "$WORK/warmup-$mode-$target.txt"
    done
    for round in $(seq "$ROUNDS"); do
        for target in "${TARGETS[@]}"; do
            # A process snapshot half-way through the first olla and haproxy runs.
            if [ "$round" = 1 ] && [ "$target" != direct ]; then
                ( sleep "$half"; top -b -n1 -w 200 2>/dev/null | head -n 16 >"$WORK/top-$mode-$target.txt" ) &
                top_pid=$!
            else
                top_pid=
            fi
            run_wrk "$target" "$mode" "$DURATION" "$WORK/wrk-$mode-$target-$round.txt" record
            [ -z "$top_pid" ] || wait "$top_pid" || true
        done
    done
done

# ---------------------------------------------------------------------------------------------
# 5. SSE inter-event gaps: slow streams, one at a time
# ---------------------------------------------------------------------------------------------
for port in "$PORT_A" "$PORT_B"; do
    curl -sf --max-time 5 -H 'Content-Type: application/json' -d '{"tokens":20,"token_delay_ms":20}' \
        "http://127.0.0.1:$port/_mock/config" | grep -q '"token_delay_ms":20' ||
        die "cannot reconfigure the mock on port $port"
done
log "SSE gap check: $SSE_STREAMS streams per target, 20 tokens 20 ms apart"
set +e
python3 "$ROOT/benches/sse_gaps.py" -n "$SSE_STREAMS" --model "$MODEL" --max-diff-ms "$GAP_BAR_MS" --check olla \
    "${CA_ARGS[@]}" \
    "direct=$DIRECT/v1/chat/completions" "olla=$OLLA/olla/proxy/v1/chat/completions" \
    "haproxy=$HAP/v1/chat/completions" ${NGX_PID:+"nginx=$NGX/v1/chat/completions"} >"$WORK/sse-gaps.txt" 2>&1
gap_rc=$?
set -e
[ "$gap_rc" -le 1 ] || die "sse_gaps.py failed: $(cat "$WORK/sse-gaps.txt")"

# ---------------------------------------------------------------------------------------------
# 5b. Memory per stream: STREAMS concurrent slow streams held open through each target
# ---------------------------------------------------------------------------------------------
declare -A HOLD
HOLD_STREAMS=$STREAMS
if [ "$STREAMS" -gt 0 ] && [ "$TLS" = 1 ]; then
    # olla-hold opens plain TCP connections only; it would get no answer from a TLS port.
    log "held-streams phase skipped: TLS=1 and olla-hold speaks plain TCP only"
    HOLD_STREAMS=0
fi
if [ "$HOLD_STREAMS" -gt 0 ]; then
    for port in "$PORT_A" "$PORT_B"; do
        curl -sf --max-time 5 -H 'Content-Type: application/json' -d '{"tokens":100,"token_delay_ms":50}' \
            "http://127.0.0.1:$port/_mock/config" | grep -q '"token_delay_ms":50' ||
            die "cannot reconfigure the mock on port $port"
    done
    declare -A HOLD_ADDR=([direct]="127.0.0.1:$PORT_A" [olla]="127.0.0.1:$OLLA_PORT"
        [haproxy]="127.0.0.1:$HAP_PORT" [nginx]="127.0.0.1:$NGX_PORT")
    declare -A HOLD_PATH=([direct]=/v1/chat/completions [olla]=/olla/proxy/v1/chat/completions
        [haproxy]=/v1/chat/completions [nginx]=/v1/chat/completions)
    for target in "${TARGETS[@]}"; do
        log "holding $STREAMS streams via $target (100 tokens, 50 ms apart)"
        pid_args=()
        for pid in ${PROXY_PROCS[$target]}; do pid_args+=(--pid "$pid"); done
        [ "$target" = direct ] && pid_args=(--pid "${MOCK_PIDS[0]}")
        HOLD[$target]=$(taskset -c "$WRK_CPU" "$BIN/olla-hold" --addr "${HOLD_ADDR[$target]}" \
            --path "${HOLD_PATH[$target]}" --model "$MODEL" -n "$STREAMS" --ramp-ms 3000 --timeout 120 \
            "${pid_args[@]}" 2>>"$WORK/hold.log") || die "olla-hold failed via $target: $(tail -3 "$WORK/hold.log")"
        log "  ${HOLD[$target]}"
    done
fi

# ---------------------------------------------------------------------------------------------
# 6. Report
# ---------------------------------------------------------------------------------------------
# Rate limits: how many requests olla's limiter refused over the whole run (should be none).
RL_REFUSED=
if [ "$RATE_LIMITS" = 1 ]; then
    RL_REFUSED=$(curl -sf --max-time 5 "${CA_ARGS[@]}" "$OLLA/internal/status" | python3 -c \
        'import json, sys; print(json.load(sys.stdin)["security"]["violations"]["rate_limits"])') ||
        RL_REFUSED=unknown
fi
OTLP_LINE=
if [ "$OTLP_SINK" = 1 ]; then
    # Let the last batch leave (batch_interval 5 s), then read olla's exporter counters.
    sleep 6
    otlp_metric() { curl -sf --max-time 5 "${CA_ARGS[@]}" "$OLLA/internal/metrics" | awk -v m="$1" '$1==m {print $2}'; }
    OTLP_LINE="tracing: every request traced (sample_ratio 1.0) to a collector stand-in (nginx, pinned with wrk): spans exported $(otlp_metric olla_otlp_spans_exported_total), dropped $(otlp_metric olla_otlp_spans_dropped_total), export requests received $(wc -l <"$WORK/otlp-sink-access.log")"
fi
commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
dirty=$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | wc -l)
report "olla load benchmark  started $STARTED, finished $(date -u +%Y-%m-%dT%H:%M:%SZ)  commit $commit$([ "$dirty" = 0 ] || echo " (+$dirty modified files)")"
report "host: $(nproc) CPUs, load average at start: $LOAD_START, at end: $(cut -d' ' -f1-3 /proc/loadavg)"
report "wrk -t1 -c$CONNS -d$DURATION --latency (pinned to CPU $WRK_CPU), warm-up $WARMUP, $ROUNDS interleaved rounds, medians shown"
report "servers: $([ -n "$SERVER_CPUS" ] && echo "pinned to CPUs $SERVER_CPUS" || echo "not pinned") | olla-mock x2 (16 tokens, no delay); direct = one mock; olla round-robin and haproxy roundrobin over both"
# With the TLS / OLLA_SERVER_EXTRA knobs set, say so (without them, the header is as before).
if [ "$TLS" = 1 ] || [ -n "$OLLA_SERVER_EXTRA" ]; then
    if [ "$TLS" = 1 ]; then
        report "mode: tls | $(IFS=,; echo "olla,${PEER_LIST[*]}" | sed 's/,/, /g') terminate TLS (ECDSA P-256 certificate, throwaway CA); direct and the mocks plain HTTP; wrk keeps its connections alive (handshakes amortised)"
        report "tls negotiated with an OpenSSL client: $TLS_INFO"
    else
        report "mode: plain TCP"
    fi
    [ -z "$OLLA_SERVER_EXTRA" ] || report "server extra (olla's server: mapping): $OLLA_SERVER_EXTRA"
    if [ "$RATE_LIMITS" = 1 ]; then
        report "rate limits: ${RL_HEADERS:-no X-RateLimit-* headers (no per-IP limit)} on olla's proxy responses; requests refused by olla's limiter over the whole run: $RL_REFUSED"
    fi
fi
[ -z "$OTLP_LINE" ] || report "$OTLP_LINE"
report ""
report "$(printf '%-5s %-8s %10s %9s %9s %7s   %-20s %s' mode target rps p50_ms p99_ms errors 'cpu% wrk/proxy/mocks' 'cpu_us/req proxy/mocks')"
for mode in "${MODES[@]}"; do
    for target in "${TARGETS[@]}"; do
        k="$mode,$target"
        rps=$(median ${RPS[$k]})
        pcpu=$([ "$target" = direct ] && echo - || median ${CPU_PROXY[$k]})
        mcpu=$(median ${CPU_MOCKS[$k]})
        cpu="$(median ${CPU_WRK[$k]})/$pcpu/$mcpu"
        # CPU time per request in microseconds: (cpu% / 100) core-seconds per second / rps.
        us="$([ "$pcpu" = - ] && echo - || awk -v c="$pcpu" -v r="$rps" 'BEGIN {printf "%.0f", c * 1e4 / r}')"
        US[$k]=$us
        us="$us/$(awk -v c="$mcpu" -v r="$rps" 'BEGIN {printf "%.0f", c * 1e4 / r}')"
        report "$(printf '%-5s %-8s %10.0f %9.3f %9.3f %7s   %-20s %s' "$mode" "$target" \
            "$rps" "$(median ${P50[$k]})" "$(median ${P99[$k]})" "${ERRS[$k]:-0}" "$cpu" "$us")"
    done
done
report ""
report "per-round rps (${TARGETS[*]}):"
for mode in "${MODES[@]}"; do
    line="  $mode:"
    for target in "${TARGETS[@]}"; do line+=" ${RPS[$mode,$target]}|"; done
    report "${line%|}"
done
report ""
report "$(printf '%-5s %-16s %6s %6s %6s %10s' mode ratio rps p50 p99 cpu_us/req)"
fails=0
verdicts=()
for mode in "${MODES[@]}"; do
    for ref in "${PEER_LIST[@]}" direct; do
        report "$(printf '%-5s %-16s %6s %6s %6s %10s' "$mode" "olla/$ref" \
            "$(ratio "$(median ${RPS[$mode,olla]})" "$(median ${RPS[$mode,$ref]})")" \
            "$(ratio "$(median ${P50[$mode,olla]})" "$(median ${P50[$mode,$ref]})")" \
            "$(ratio "$(median ${P99[$mode,olla]})" "$(median ${P99[$mode,$ref]})")" \
            "$([ "$ref" = direct ] && echo - || ratio "${US[$mode,olla]}" "${US[$mode,$ref]}")")"
    done
    r=$(ratio "$(median ${RPS[$mode,olla]})" "$(median ${RPS[$mode,haproxy]})")
    if awk -v r="$r" -v bar="$RPS_BAR" 'BEGIN { exit !(r + 0 >= bar) }'; then
        verdicts+=("$(printf 'PASS  %-4s olla rps = %sx haproxy (bar >= %sx)' "$mode" "$r" "$RPS_BAR")")
    else
        verdicts+=("$(printf 'FAIL  %-4s olla rps = %sx haproxy (bar >= %sx)' "$mode" "$r" "$RPS_BAR")")
        fails=$((fails + 1))
    fi
    errs=0
    for target in "${TARGETS[@]}"; do errs=$(( errs + ${ERRS[$mode,$target]:-0} )); done
    if [ "$errs" != 0 ]; then
        verdicts+=("FAIL  $mode: $errs non-2xx responses or socket errors (see the errors column)")
        fails=$((fails + 1))
    fi
done
report ""
if [ "$RATE_LIMITS" = 1 ]; then
    if [ "$RL_REFUSED" = 0 ]; then
        verdicts+=("PASS  rate limits on and no request refused by olla's limiter")
    else
        verdicts+=("FAIL  rate limits: olla's limiter refused $RL_REFUSED requests (limits must be far above the load)")
        fails=$((fails + 1))
    fi
fi
report "SSE inter-event gaps (mocks reconfigured: 20 tokens, 20 ms apart; $SSE_STREAMS streams per target, sequential, interleaved):"
while IFS= read -r line; do report "  $line"; done <"$WORK/sse-gaps.txt"
if [ "$gap_rc" = 0 ]; then
    verdicts+=("PASS  sse  gaps through olla within ${GAP_BAR_MS} ms of direct (median and p99)")
else
    verdicts+=("FAIL  sse  gaps through olla differ from direct by more than ${GAP_BAR_MS} ms")
    fails=$((fails + 1))
fi
if [ "$HOLD_STREAMS" -gt 0 ]; then
    report ""
    report "$STREAMS concurrent SSE streams held per target (100 tokens, 50 ms apart; ramp 3 s):"
    report "$(printf '  %-8s %6s %7s %9s %9s %9s %10s %9s %9s %9s %9s' target ok failed peak_open idle_MB peak_MB KB/stream ttft_p50 ttft_p99 added_p50 added_p99)"
    hold_field() { python3 -c 'import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])' "$1" "$2"; }
    d50=$(hold_field "${HOLD[direct]}" ttft_p50_ms); d99=$(hold_field "${HOLD[direct]}" ttft_p99_ms)
    for target in "${TARGETS[@]}"; do
        h=${HOLD[$target]}
        idle=$(hold_field "$h" idle_rss_kib); peak=$(hold_field "$h" peak_rss_kib)
        t50=$(hold_field "$h" ttft_p50_ms); t99=$(hold_field "$h" ttft_p99_ms)
        failed=$(hold_field "$h" failed)
        report "$(awk -v t="$target" -v ok="$(hold_field "$h" ok)" -v f="$failed" -v i="$idle" -v p="$peak" \
            -v n="$(hold_field "$h" peak_open)" -v a="$t50" -v b="$t99" -v c="$d50" -v d="$d99" 'BEGIN {
            printf "  %-8s %6d %7d %9d %9.1f %9.1f %10.1f %9.2f %9.2f %9.2f %9.2f", t, ok, f, n, i / 1024, p / 1024,
                (p - i) / (n > 0 ? n : 1), a, b, a - c, b - d }')"
        if [ "$failed" != 0 ]; then
            verdicts+=("FAIL  streams: $failed of $STREAMS streams failed via $target")
            fails=$((fails + 1))
        fi
    done
    report "  (direct = the mock's own memory; peak_open = most streams open at once, past their first"
    report "   token; KB/stream = (peak - idle) / peak_open)"
elif [ "$STREAMS" -gt 0 ]; then
    report ""
    report "held-streams phase ($STREAMS streams) skipped: TLS=1 and olla-hold speaks plain TCP only"
fi
report ""
for v in "${verdicts[@]}"; do report "$v"; done
for mode in "${MODES[@]}"; do
    for target in "${PROXIES[@]}"; do
        f=$WORK/top-$mode-$target.txt
        [ -s "$f" ] || continue
        report ""
        report "top snapshot half-way through round 1, $mode via $target (busiest processes):"
        while IFS= read -r line; do report "  $line"; done < <(sed -n '1,2p;7,12p' "$f")
    done
done
log "results written to $RESULTS"

if [ "$fails" -gt 0 ] && [ "$STRICT" = 1 ]; then
    exit 1
fi
exit 0
