#!/usr/bin/env bash
# Portcullis vs nginx, side by side, as TLS-terminating reverse proxies in front of one
# origin (issue 8). Not part of CI. Usage: bench/run.sh
#
#   BENCH_ROUNDS=3        rounds; each round runs every variant once (A B [C]), alternating
#   BENCH_SECONDS=10      length of each measured run
#   BENCH_IDLE_CONNS=10000  idle TLS connections in scenario 6 (lowered to fit `ulimit -n`)
#   BENCH_SCENARIOS="1 2 3 3f 3n 3r 4 5 6 7"  which scenarios to run
#   BENCH_HANDSHAKE_RATE=2000  scenario 3f's new connections per second
#   BENCH_OUT=DIR         where raw outputs and results.jsonl go (default: a new temp dir)
#   BENCH_REV=COMMIT      build that commit from a clean `git archive` export (in
#                         BENCH_SRC_DIR, default /tmp/portcullis-bench-src) instead of
#                         the work tree, e.g. BENCH_REV=HEAD while others edit the tree
#   BENCH_BIN=PATH        use this portcullis binary instead of building it (the bench
#                         tools in bench/handshakes are still built for scenarios 1 and 3f)
#   BENCH_OIDC_DIR=DIR    scenario 5's OpenID provider (panva/oidc-provider): a copy of
#                         crates/portcullis/tests/oidc with node_modules (default: its own
#                         node_modules if installed, else `npm ci` into
#                         /tmp/portcullis-bench-oidc)
#   BENCH_SCALE_INGRESSES=10000  scenario 7's Ingress count (5 paths each)
#
# Layout (all on 127.0.0.1):
#   origin  nginx, 1 worker, CPU 1, :23080   / -> "ok\n", /1m -> 1 MiB static file
#   A       nginx proxy,  worker_processes 1,    CPU 0, :23443
#   A'      the same nginx with proxy_buffer_size 64k instead of 4k (scenario 4 only)
#   B       portcullis,   TOKIO_WORKER_THREADS=1, CPU 0, :24443 (admin :24180)
#   C       B with the audit log on, to a file (scenario 1 only)
#   A+log   A with ingress-nginx's default access log (upstreaminfo format, unbuffered,
#           to a file; scenario 1 only)
#   D       B out of the box: RUST_LOG unset (access log on), audit log on stdout,
#           text logs on stderr, both to files (scenario 1 only)
#   F       the floor: bench/handshakes' tls-forward, TLS termination and byte
#           forwarding only (no HTTP), one thread, CPU 0, :25443 (scenario 1 only)
#   auth    scenario 5: nginx, 1 worker, CPU 1, :23081, answers 200 when the request has
#           an Authorization header, else 401 (what nginx's auth_request calls); and the
#           OpenID provider (node, CPU 1, :25090) that Portcullis checks tokens against
#   load    wrk / h2load / openssl s_time / python, CPU 1 (shared with the origin)
# Scenarios (issue 8's numbering):
#   1   HTTPS keep-alive HTTP/1.1, "ok\n"        wrk -t1 -c50 --latency       (A B C A+log D F)
#   2   HTTPS HTTP/2 multiplexed, "ok\n"         h2load -c10 -m10 -D SECS     (A B)
#   3   full TLS handshake per request           wrk ... -H 'Connection: close' (A B)
#   3f  the same at a fixed rate (open loop): BENCH_HANDSHAKE_RATE new connections/s,
#       one request each, whatever the proxy's speed, so both carry the same load and
#       neither saturates a CPU; latency per connection, from when it was due to the
#       end of its response           bench/handshakes (built here)            (A B)
#   3n  full handshakes, one at a time           openssl s_time -new          (A B)
#   3r  resumed handshakes, one at a time        openssl s_time -reuse        (A B)
#   4   1 MiB responses                          wrk -t1 -c10 /1m             (A A' B)
#   5   scenario 1's load with authentication                                 (A B)
#       A: / ; /authreq (auth_request, a new connection to the auth server per
#          request, ingress-nginx's default auth-keepalive 0) ; /authreq-ka (the same
#          over a keep-alive pool), all with an Authorization header
#       B: / ; /jwt (portcullis.dev/auth: jwt, a real at+jwt ES256 token from the
#          provider) ; /oidc (auth: oidc, the session cookie of one real login)
#   6   idle keep-alive TLS connections: RSS growth per connection           (A B)
#   7   10,000 Ingresses / 50,000 paths (bench/routes generates them):
#       compile time and memory (compile-stats, `portcullis check`), then scenario 1's
#       load on B with the 1-Ingress config, the 10k config, and the 10k config with
#       one of its files rewritten every second (each rewrite is a reload); errors
#       must be 0. The criterion micro-benchmark is separate: see bench/routes.
# Defaults take about 21 minutes plus the build (scenarios 5 and 7: about 6 of them).
# wrk and h2load need bench.test to resolve to 127.0.0.1: a line is added to /etc/hosts
# if missing and removed at exit.
# Each measured run starts the proxy fresh, warms it up for 1 s, then measures: the
# load generator's requests/s and latency, and the proxy's CPU seconds (utime+stime
# delta from /proc/PID/stat, all threads; nginx: master+worker) and peak RSS (VmHWM;
# nginx: master+worker summed).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="$REPO/bench"
ROUNDS="${BENCH_ROUNDS:-3}"
SECS="${BENCH_SECONDS:-10}"
IDLE_CONNS="${BENCH_IDLE_CONNS:-10000}"
SCENARIOS="${BENCH_SCENARIOS:-1 2 3 3f 3n 3r 4 5 6 7}"
HANDSHAKE_RATE="${BENCH_HANDSHAKE_RATE:-2000}"
[[ $HANDSHAKE_RATE =~ ^[1-9][0-9]*$ ]] ||
  { echo "BENCH_HANDSHAKE_RATE must be a whole number of connections per second, not '$HANDSHAKE_RATE'" >&2; exit 2; }
SCALE_INGRESSES="${BENCH_SCALE_INGRESSES:-10000}"
has_scenario() { [[ " $SCENARIOS " == *" $1 "* ]]; }
OUT="${BENCH_OUT:-$(mktemp -d /tmp/portcullis-bench.XXXXXX)}"
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: >"$RESULTS"

# Below the ephemeral range (32768+), so tests binding port 0 never take them.
ORIGIN_PORT=23080
NGINX_PORT=23443
PC_HTTPS=24443
FLOOR_PORT=25443
PC_HTTP=24080
PC_ADMIN=24180
AUTH_PORT=23081
IDP_PORT=25090
HOSTS_MARK="# added by portcullis bench/run.sh"

SUDO=()
if [[ $(id -u) -ne 0 ]]; then SUDO=(sudo); fi

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }

# ---------------------------------------------------------------- processes and cleanup
PIDS=()
ADDED_HOSTS=0
cleanup() {
  local rc=$?
  set +e
  for pid in "${PIDS[@]}"; do
    kill -TERM "$pid" 2>/dev/null
  done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
  done
  if [[ $ADDED_HOSTS == 1 ]]; then
    grep -vF "$HOSTS_MARK" /etc/hosts >"$OUT/hosts.tmp" && "${SUDO[@]}" tee /etc/hosts <"$OUT/hosts.tmp" >/dev/null
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

forget_pid() { # PID
  local keep=() p
  for p in "${PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
  PIDS=("${keep[@]+"${keep[@]}"}")
}
stop_pid() { # PID: TERM, wait up to 10 s, then KILL
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  forget_pid "$pid"
}
# Runs a command in the background (so the trap can stop it) and waits for it.
run_bg_wait() { # OUTFILE CMD...
  local outfile=$1; shift
  "$@" >"$outfile" 2>&1 &
  local pid=$!
  PIDS+=("$pid")
  local rc=0
  wait "$pid" || rc=$?
  forget_pid "$pid"
  return $rc
}

# ---------------------------------------------------------------- tools
need=()
command -v nginx >/dev/null || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
command -v openssl >/dev/null || need+=(openssl)
command -v curl >/dev/null || need+=(curl)
command -v taskset >/dev/null || need+=(util-linux)
[[ -x /usr/bin/time ]] || need+=(time)
if has_scenario 5; then
  command -v node >/dev/null || need+=(nodejs)
  command -v npm >/dev/null || need+=(npm)
fi
if ((${#need[@]})); then
  log "installing from Debian: ${need[*]}"
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  # Debian's nginx package may start its own service on :80; it is not ours to stop,
  # and it does not use our ports.
fi
if [[ $(nproc) -lt 2 ]]; then
  echo "need at least 2 CPUs (proxy on CPU 0, load on CPU 1); nproc=$(nproc)" >&2
  exit 1
fi

if [[ -n ${BENCH_BIN:-} ]]; then
  BIN=$BENCH_BIN   # a binary built elsewhere
  log "using BENCH_BIN=$BIN (not building)"
elif [[ -n ${BENCH_REV:-} ]]; then
  # Build one commit from a clean export, so uncommitted edits in the work tree are not
  # measured. The target dir is kept across runs; the first one is seeded from the
  # work tree's dist build (only the workspace crates then compile again).
  rev=$(git -C "$REPO" rev-parse --verify "$BENCH_REV^{commit}")
  SRC="${BENCH_SRC_DIR:-/tmp/portcullis-bench-src}"
  rm -rf "$SRC/src"
  mkdir -p "$SRC/src"
  git -C "$REPO" archive "$rev" | tar -x -C "$SRC/src"
  if [[ ! -d $SRC/target/dist && -d ${CARGO_TARGET_DIR:-$REPO/target}/dist ]]; then
    mkdir -p "$SRC/target"
    cp -a "${CARGO_TARGET_DIR:-$REPO/target}/dist" "$SRC/target/"
  fi
  log "building commit $(git -C "$REPO" rev-parse --short "$rev") from a clean export in $SRC/src"
  (cd "$SRC/src" && CARGO_TARGET_DIR="$SRC/target" cargo build --profile dist --bin portcullis)
  BIN="$SRC/target/dist/portcullis"
else
  # The `dist` profile (fat LTO) is what the container image ships.
  log "building: cargo build --profile dist --bin portcullis"
  (cd "$REPO" && cargo build --profile dist --bin portcullis)
  BIN="${CARGO_TARGET_DIR:-$REPO/target}/dist/portcullis"
fi
[[ -x $BIN ]] || { echo "no binary at $BIN" >&2; exit 1; }

if has_scenario 3f || has_scenario 1; then
  # From the same source as the gateway: the floor is a measured variant. One target
  # dir for both, so an export does not build its dependencies again.
  HS_SRC="$BENCH/handshakes"
  [[ -n ${BENCH_REV:-} && -z ${BENCH_BIN:-} ]] && HS_SRC="$SRC/src/bench/handshakes"
  HS_TARGET="${CARGO_TARGET_DIR:-$BENCH/handshakes/target}"
  log "building $HS_SRC (scenario 3f's load generator, scenario 1's floor)"
  (cd "$HS_SRC" && CARGO_TARGET_DIR="$HS_TARGET" cargo build --release)
  HANDSHAKES_BIN="$HS_TARGET/release/portcullis-bench-handshakes"
  TLS_FORWARD_BIN="$HS_TARGET/release/tls-forward"
fi

# File descriptors: 10,000 idle connections need 10k on both sides.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
if ((IDLE_CONNS + 1000 > NOFILE)); then
  log "ulimit -n is $NOFILE: lowering idle connections from $IDLE_CONNS to $((NOFILE - 1000))"
  IDLE_CONNS=$((NOFILE - 1000))
fi

# wrk and h2load take the TLS server name (SNI) from the URL host, so bench.test must
# resolve to 127.0.0.1. Added to /etc/hosts if absent, and removed again at exit.
if ! grep -Eq '^[[:space:]]*127\.0\.0\.1[[:space:]].*\bbench\.test\b' /etc/hosts; then
  echo "127.0.0.1 bench.test $HOSTS_MARK" | "${SUDO[@]}" tee -a /etc/hosts >/dev/null
  ADDED_HOSTS=1
fi
[[ $(getent hosts bench.test | awk '{print $1}') == 127.0.0.1 ]] || {
  echo "bench.test does not resolve to 127.0.0.1" >&2; exit 1; }

# ---------------------------------------------------------------- certificates
TLS="$OUT/tls"
mkdir -p "$TLS"
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$TLS/ca.key" 2>/dev/null
openssl req -x509 -new -key "$TLS/ca.key" -subj "/CN=portcullis bench CA" -days 30 \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out "$TLS/ca.crt" 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$TLS/tls.key" 2>/dev/null
openssl req -new -key "$TLS/tls.key" -subj "/CN=bench.test" -out "$TLS/leaf.csr" 2>/dev/null
printf 'subjectAltName=DNS:bench.test\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' >"$TLS/leaf.ext"
openssl x509 -req -in "$TLS/leaf.csr" -CA "$TLS/ca.crt" -CAkey "$TLS/ca.key" -CAcreateserial \
  -days 30 -extfile "$TLS/leaf.ext" -out "$TLS/leaf.crt" 2>/dev/null
cat "$TLS/leaf.crt" "$TLS/ca.crt" >"$TLS/tls.crt"   # the same chain for both proxies

# ---------------------------------------------------------------- origin (nginx, CPU 1)
ORIGIN="$OUT/origin"
mkdir -p "$ORIGIN/www" "$ORIGIN/tmp"
head -c 1048576 /dev/urandom >"$ORIGIN/www/1m"
cat >"$ORIGIN/nginx.conf" <<EOF
user root;
worker_processes 1;
pid $ORIGIN/nginx.pid;
error_log $ORIGIN/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  default_type application/octet-stream;
  sendfile on;
  tcp_nopush on;
  keepalive_timeout 300s;
  keepalive_requests 100000000;
  client_body_temp_path $ORIGIN/tmp/body;
  proxy_temp_path $ORIGIN/tmp/proxy;
  fastcgi_temp_path $ORIGIN/tmp/fastcgi;
  uwsgi_temp_path $ORIGIN/tmp/uwsgi;
  scgi_temp_path $ORIGIN/tmp/scgi;
  server {
    listen 127.0.0.1:$ORIGIN_PORT;
    root $ORIGIN/www;
    location / { default_type text/plain; return 200 "ok\n"; }
    location = /1m { }
  }
}
EOF

# ---------------------------------------------------------------- A: nginx proxy (CPU 0)
NGX="$OUT/nginx-proxy"
mkdir -p "$NGX/tmp"
cat >"$NGX/nginx.conf" <<EOF
# An equivalent of what ingress-nginx generates for one TLS Ingress, minus its Lua
# (metrics, balancer) and access log: 1 worker, HTTP/2, keep-alive upstream pool,
# proxy_buffering off (ingress-nginx's default), the same forwarding headers and HSTS
# that portcullis sets.
user root;
worker_processes 1;
worker_rlimit_nofile $NOFILE;
pid $NGX/nginx.pid;
error_log $NGX/error.log warn;
events { worker_connections $NOFILE; }
http {
  access_log off;
  sendfile on;
  tcp_nodelay on;
  keepalive_timeout 75s;   # ingress-nginx's default; portcullis gets clientHeader: 75s
  keepalive_requests 100000000;
  client_body_temp_path $NGX/tmp/body;
  proxy_temp_path $NGX/tmp/proxy;
  fastcgi_temp_path $NGX/tmp/fastcgi;
  uwsgi_temp_path $NGX/tmp/uwsgi;
  scgi_temp_path $NGX/tmp/scgi;

  ssl_protocols TLSv1.2 TLSv1.3;
  ssl_ciphers ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305;
  ssl_prefer_server_ciphers off;
  ssl_ecdh_curve X25519:prime256v1:secp384r1;
  ssl_session_cache shared:SSL:10m;
  ssl_session_timeout 1d;
  ssl_session_tickets on;

  upstream origin {
    server 127.0.0.1:$ORIGIN_PORT;
    keepalive 320;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
  }
  # Scenario 5: the auth server behind auth_request. ingress-nginx's default
  # (auth-keepalive 0) opens a new connection per subrequest: authsrv. authsrv_ka is the
  # same with a keep-alive pool (the auth-keepalive annotation).
  upstream authsrv {
    server 127.0.0.1:$AUTH_PORT;
  }
  upstream authsrv_ka {
    server 127.0.0.1:$AUTH_PORT;
    keepalive 64;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
  }
  server {
    listen 127.0.0.1:$NGINX_PORT ssl http2 default_server;
    server_name bench.test;
    ssl_certificate $TLS/tls.crt;
    ssl_certificate_key $TLS/tls.key;
    add_header Strict-Transport-Security "max-age=31536000" always;
    add_header X-Request-ID \$request_id always;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$http_host;
      proxy_set_header X-Request-ID \$request_id;
      proxy_set_header X-Real-IP \$remote_addr;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Forwarded-Host \$http_host;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_buffering off;
      __PROXY_BUFFERS__
    }
    # Scenario 5: what ingress-nginx generates for nginx.ingress.kubernetes.io/auth-url
    # (an internal subrequest location with these headers; the protected location copies
    # the auth server's identity headers to the upstream request), minus its Lua.
    # /authreq: a new connection to the auth server per request (ingress-nginx's default,
    # auth-keepalive 0); /authreq-ka: the same over a keep-alive pool.
    location = /_external-auth {
      internal;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Forwarded-Proto "";
      proxy_set_header X-Request-ID \$request_id;
      proxy_set_header Host auth.bench;
      proxy_set_header X-Original-URL \$scheme://\$http_host\$request_uri;
      proxy_set_header X-Original-Method \$request_method;
      proxy_set_header X-Sent-From "nginx-ingress-controller";
      proxy_set_header X-Real-IP \$remote_addr;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Auth-Request-Redirect \$request_uri;
      proxy_buffering off;
      proxy_buffer_size 4k;
      proxy_http_version 1.1;
      proxy_pass http://authsrv;
    }
    location /authreq {
      auth_request /_external-auth;
      auth_request_set \$auth_user \$upstream_http_x_auth_request_user;
      auth_request_set \$auth_email \$upstream_http_x_auth_request_email;
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$http_host;
      proxy_set_header X-Request-ID \$request_id;
      proxy_set_header X-Real-IP \$remote_addr;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Forwarded-Host \$http_host;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Auth-Request-User \$auth_user;
      proxy_set_header X-Auth-Request-Email \$auth_email;
      proxy_buffering off;
      __PROXY_BUFFERS__
    }
    location = /_external-auth-ka {
      internal;
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header Connection "";
      proxy_set_header X-Forwarded-Proto "";
      proxy_set_header X-Request-ID \$request_id;
      proxy_set_header Host auth.bench;
      proxy_set_header X-Original-URL \$scheme://\$http_host\$request_uri;
      proxy_set_header X-Original-Method \$request_method;
      proxy_set_header X-Sent-From "nginx-ingress-controller";
      proxy_set_header X-Real-IP \$remote_addr;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Auth-Request-Redirect \$request_uri;
      proxy_buffering off;
      proxy_buffer_size 4k;
      proxy_http_version 1.1;
      proxy_pass http://authsrv_ka;
    }
    location /authreq-ka {
      auth_request /_external-auth-ka;
      auth_request_set \$auth_user \$upstream_http_x_auth_request_user;
      auth_request_set \$auth_email \$upstream_http_x_auth_request_email;
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$http_host;
      proxy_set_header X-Request-ID \$request_id;
      proxy_set_header X-Real-IP \$remote_addr;
      proxy_set_header X-Forwarded-For \$remote_addr;
      proxy_set_header X-Forwarded-Host \$http_host;
      proxy_set_header X-Forwarded-Proto \$scheme;
      proxy_set_header X-Auth-Request-User \$auth_user;
      proxy_set_header X-Auth-Request-Email \$auth_email;
      proxy_buffering off;
      __PROXY_BUFFERS__
    }
  }
}
EOF

# The auth server for auth_request (scenario 5), CPU 1: the cheapest possible answer (no
# token is verified), so what A pays is the subrequest itself; oauth2-proxy would do
# more work per request on top of this.
AUTHSRV="$OUT/nginx-auth"
mkdir -p "$AUTHSRV/tmp"
cat >"$AUTHSRV/nginx.conf" <<EOF
user root;
worker_processes 1;
worker_rlimit_nofile $NOFILE;
pid $AUTHSRV/nginx.pid;
error_log $AUTHSRV/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_timeout 300s;
  keepalive_requests 100000000;
  client_body_temp_path $AUTHSRV/tmp/body;
  proxy_temp_path $AUTHSRV/tmp/proxy;
  fastcgi_temp_path $AUTHSRV/tmp/fastcgi;
  uwsgi_temp_path $AUTHSRV/tmp/uwsgi;
  scgi_temp_path $AUTHSRV/tmp/scgi;
  server {
    listen 127.0.0.1:$AUTH_PORT;
    location / {
      if (\$http_authorization = "") { return 401; }
      add_header X-Auth-Request-User bench;
      add_header X-Auth-Request-Email bench@example.com;
      return 200;
    }
  }
}
EOF
# A: ingress-nginx's default proxy-buffer-size (4k). A': 64k, only for the 1 MB scenario
# (nginx then relays the body in 64k reads instead of 4k ones).
NGX64="$OUT/nginx-proxy-64k"
mkdir -p "$NGX64/tmp"
sed -e "s|$NGX/|$NGX64/|g" \
  -e 's|__PROXY_BUFFERS__|proxy_buffer_size 64k; proxy_buffers 8 64k; proxy_busy_buffers_size 128k;|' \
  "$NGX/nginx.conf" >"$NGX64/nginx.conf"
sed -i 's|__PROXY_BUFFERS__|proxy_buffer_size 4k;|' "$NGX/nginx.conf"
# A with its access log on, as ingress-nginx has it by default: its `upstreaminfo`
# format (with the two upstream names its Lua sets written as constants), unbuffered,
# to a file (ingress-nginx's goes to stdout). Scenario 1 only.
NGXLOG="$OUT/nginx-proxy-log"
mkdir -p "$NGXLOG/tmp"
sed -e "s|$NGX/|$NGXLOG/|g" \
  -e "s|^  access_log off;|  log_format upstreaminfo '\$remote_addr - \$remote_user [\$time_local] \"\$request\" \$status \$body_bytes_sent \"\$http_referer\" \"\$http_user_agent\" \$request_length \$request_time [bench-origin-80] [] \$upstream_addr \$upstream_response_length \$upstream_response_time \$upstream_status \$request_id';\\n  access_log $NGXLOG/access.log upstreaminfo;|" \
  "$NGX/nginx.conf" >"$NGXLOG/nginx.conf"

# ---------------------------------------------------------------- B: portcullis (CPU 0)
MAN="$OUT/manifests"
mkdir -p "$MAN"
indent() { sed 's/^/      /' "$1"; }
cat >"$MAN/bench.yaml" <<EOF
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: bench
  namespace: bench
spec:
  ingressClassName: portcullis
  tls:
  - hosts: [bench.test]
    secretName: bench-tls
  rules:
  - host: bench.test
    http:
      paths:
      - path: /
        pathType: Prefix
        backend:
          service:
            name: origin
            port:
              number: 80
---
apiVersion: v1
kind: Service
metadata:
  name: origin
  namespace: bench
spec:
  type: ClusterIP
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: $ORIGIN_PORT
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: origin-1
  namespace: bench
  labels:
    kubernetes.io/service-name: origin
addressType: IPv4
endpoints:
- addresses: [127.0.0.1]
  conditions:
    ready: true
ports:
- name: http
  port: $ORIGIN_PORT
  protocol: TCP
---
apiVersion: v1
kind: Secret
metadata:
  name: bench-tls
  namespace: bench
type: kubernetes.io/tls
stringData:
  tls.crt: |
$(indent "$TLS/tls.crt")
  tls.key: |
$(indent "$TLS/tls.key")
EOF
# The audit log is off for parity with nginx's `access_log off` (RUST_LOG=warn also
# turns portcullis's access log off). Variant C turns the audit log on, to a file.
# defaultCertificate: openssl s_time sends no SNI; both proxies then serve bench.test's.
# clientHeader: 75s: portcullis has no separate keep-alive idle timeout; hyper's
# header_read_timeout (timeouts.clientHeader, default 10s) also closes a keep-alive
# connection that stays idle that long. 75s matches nginx's keepalive_timeout above, so
# scenario 6's connections (idle for up to ~15 s) stay open on both.
# maxConnectionsPerClient: every load generator connects from 127.0.0.1, and scenario 6
# holds more connections than the default per-client limit (1024); nginx has no such
# limit here.
write_pc_config() { # FILE AUDIT(on|off|default)
  local audit='{enabled: false}'
  [[ $2 == on ]] && audit="{enabled: true, path: $OUT/audit.log}"
  [[ $2 == default ]] && audit="{}"
  cat >"$1" <<EOF
listen: {http: 127.0.0.1:$PC_HTTP, https: 127.0.0.1:$PC_HTTPS, admin: 127.0.0.1:$PC_ADMIN}
ingressClass: portcullis
tls: {defaultCertificate: bench/bench-tls}
timeouts: {clientHeader: 75s, shutdownGrace: 2s}
limits: {maxConnectionsPerClient: $((IDLE_CONNS + 1000))}
auditLog: $audit
EOF
}
write_pc_config "$OUT/portcullis.yaml" off
write_pc_config "$OUT/portcullis-audit.yaml" on
write_pc_config "$OUT/portcullis-defaults.yaml" default
"$BIN" check --manifests "$MAN" --config "$OUT/portcullis.yaml"

# Scenario 5: the same Ingress plus two protected ones on bench.test (/jwt: bearer
# tokens only; /oidc: browser sessions), one OpenID provider on loopback HTTP.
IDP_ISSUER="http://127.0.0.1:$IDP_PORT"
CLIENT_SECRET=bench-client-secret
MAN_AUTH="$OUT/manifests-auth"
mkdir -p "$MAN_AUTH"
cp "$MAN/bench.yaml" "$MAN_AUTH/"
auth_ingress() { # NAME MODE PATH
  cat <<EOF
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata:
  name: $1
  namespace: bench
  annotations:
    portcullis.dev/auth: $2
spec:
  ingressClassName: portcullis
  tls:
  - hosts: [bench.test]
    secretName: bench-tls
  rules:
  - host: bench.test
    http:
      paths:
      - path: $3
        pathType: Prefix
        backend:
          service:
            name: origin
            port:
              number: 80
EOF
}
{
  cat <<EOF
apiVersion: v1
kind: Secret
metadata:
  name: oidc
  namespace: bench
stringData:
  clientSecret: $CLIENT_SECRET
  sessionKey: $(openssl rand -base64 32)
EOF
  auth_ingress bench-jwt jwt /jwt
  auth_ingress bench-oidc oidc /oidc
} >"$MAN_AUTH/auth.yaml"
{
  cat "$OUT/portcullis.yaml"
  cat <<EOF
oidc:
  providers:
  - name: bench
    issuer: $IDP_ISSUER
    clientId: portcullis
    clientSecret: {secret: bench/oidc, key: clientSecret}
    scopes: [openid, email, profile, groups]
    audiences: ["urn:portcullis:api"]
    accessTokenType: at+jwt
  sessionKeys: [{secret: bench/oidc, key: sessionKey}]
EOF
} >"$OUT/portcullis-auth.yaml"
if has_scenario 5; then
  "$BIN" check --manifests "$MAN_AUTH" --config "$OUT/portcullis-auth.yaml"
fi

# Scenario 7: 10,000 Ingresses (5 paths each, 100 per namespace and file, each with its
# own Service and EndpointSlice to the origin, a wildcard certificate per namespace),
# generated by bench/routes, plus bench.test's Ingress so the load is scenario 1's.
SCALE="$OUT/manifests-10k"
if has_scenario 7; then
  log "building bench/routes (gen-manifests, compile-stats)"
  (cd "$BENCH/routes" && cargo build --release --bins)
  ROUTES_BIN="${CARGO_TARGET_DIR:-$BENCH/routes/target}/release"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$TLS/scale.key" 2>/dev/null
  openssl req -new -key "$TLS/scale.key" -subj "/CN=*.scale.test" -out "$TLS/scale.csr" 2>/dev/null
  printf 'subjectAltName=DNS:*.scale.test\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$TLS/scale.ext"
  openssl x509 -req -in "$TLS/scale.csr" -CA "$TLS/ca.crt" -CAkey "$TLS/ca.key" -CAcreateserial \
    -days 30 -extfile "$TLS/scale.ext" -out "$TLS/scale.crt" 2>/dev/null
  GEN=("$ROUTES_BIN/gen-manifests" --cert "$TLS/scale.crt" --key "$TLS/scale.key" --ingresses "$SCALE_INGRESSES" --port "$ORIGIN_PORT")
  "${GEN[@]}" "$SCALE"
  cp "$MAN/bench.yaml" "$SCALE/"
  SCALE_FILES=$(find "$SCALE" -name 'ns*.yaml' | wc -l)
fi

# ---------------------------------------------------------------- start / stop / measure
ORIGIN_PID=
start_origin() {
  taskset -c 1 nginx -e "$ORIGIN/error.log" -p "$ORIGIN/" -c "$ORIGIN/nginx.conf" -g 'daemon off;' \
    >>"$ORIGIN/stderr.log" 2>&1 &
  ORIGIN_PID=$!
  PIDS+=("$ORIGIN_PID")
  for _ in $(seq 100); do
    [[ $(curl -s "http://127.0.0.1:$ORIGIN_PORT/" 2>/dev/null) == ok ]] && return 0
    sleep 0.1
  done
  echo "origin did not start; see $ORIGIN/" >&2; exit 1
}

PROXY_PID=
PROXY_PIDS=()   # every process of the proxy: nginx master + worker, or portcullis
PROXY_PORT=
start_proxy() { # VARIANT
  case $1 in
    nginx | nginx-64k | nginx-log)
      local d=$NGX
      [[ $1 == nginx-64k ]] && d=$NGX64
      [[ $1 == nginx-log ]] && d=$NGXLOG
      taskset -c 0 nginx -e "$d/error.log" -p "$d/" -c "$d/nginx.conf" -g 'daemon off;' \
        >>"$d/stderr.log" 2>&1 &
      PROXY_PID=$!
      PROXY_PORT=$NGINX_PORT
      ;;
    portcullis*)
      local cfg="$OUT/portcullis.yaml" man="$MAN"
      case $1 in
        portcullis-audit) cfg="$OUT/portcullis-audit.yaml"; rm -f "$OUT/audit.log" ;;
        portcullis-auth) cfg="$OUT/portcullis-auth.yaml"; man="$MAN_AUTH" ;;
        portcullis-10k) man="$SCALE" ;;
      esac
      if [[ $1 == portcullis-defaults ]]; then
        # Out of the box: RUST_LOG unset (info: the access log on), text logs on
        # stderr, the audit log on stdout; both to files here.
        TOKIO_WORKER_THREADS=1 taskset -c 0 "$BIN" serve --manifests "$man" \
          --config "$OUT/portcullis-defaults.yaml" >"$OUT/defaults.stdout.log" 2>"$OUT/defaults.stderr.log" &
      else
        TOKIO_WORKER_THREADS=1 RUST_LOG=warn taskset -c 0 "$BIN" serve --manifests "$man" \
          --config "$cfg" --log-format json >>"$OUT/portcullis.stderr.log" 2>&1 &
      fi
      PROXY_PID=$!
      PROXY_PORT=$PC_HTTPS
      ;;
    tls-forward)
      taskset -c 0 "$TLS_FORWARD_BIN" --listen "127.0.0.1:$FLOOR_PORT" --origin "127.0.0.1:$ORIGIN_PORT" \
        --cert "$TLS/tls.crt" --key "$TLS/tls.key" >>"$OUT/tls-forward.stderr.log" 2>&1 &
      PROXY_PID=$!
      PROXY_PORT=$FLOOR_PORT
      ;;
  esac
  PIDS+=("$PROXY_PID")
  local body= t0
  t0=$(date +%s%N)
  for _ in $(seq 600); do
    body=$(curl -s --cacert "$TLS/ca.crt" "https://bench.test:$PROXY_PORT/" 2>/dev/null || true)
    [[ $body == ok ]] && break
    kill -0 "$PROXY_PID" 2>/dev/null || { echo "$1 exited at start; see $OUT" >&2; exit 1; }
    sleep 0.1
  done
  [[ $body == ok ]] || { echo "$1 did not answer ok; see $OUT" >&2; exit 1; }
  READY_MS=$((($(date +%s%N) - t0) / 1000000))
  READY_RSS_KB=$(awk '/^VmRSS:/ {print $2}' "/proc/$PROXY_PID/status")
  PROXY_PIDS=("$PROXY_PID")
  if [[ $1 == nginx* ]]; then
    local w
    for w in $(pgrep -P "$PROXY_PID"); do PROXY_PIDS+=("$w"); done
  fi
}
stop_proxy() {
  stop_pid "$PROXY_PID"
  PROXY_PID=
  PROXY_PIDS=()
}
TCK=$(getconf CLK_TCK)
proxy_cpu_s() { # utime+stime of all proxy processes (all threads), seconds
  local t=0 p
  for p in "${PROXY_PIDS[@]}"; do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  awk -v t="$t" -v h="$TCK" 'BEGIN { printf "%.3f", t / h }'
}
proxy_user_s() { # utime alone: the proxy's own code, without the kernel's TCP and TLS I/O
  local t=0 p
  for p in "${PROXY_PIDS[@]}"; do
    t=$((t + $(awk '{print $14}' "/proc/$p/stat")))
  done
  awk -v t="$t" -v h="$TCK" 'BEGIN { printf "%.3f", t / h }'
}
proxy_hwm_kb() {
  local t=0 p
  for p in "${PROXY_PIDS[@]}"; do
    t=$((t + $(awk '/^VmHWM:/ {print $2}' "/proc/$p/status")))
  done
  echo "$t"
}

# The request openssl s_time sends is "GET <page> HTTP/1.0\r\n\r\n"; this page adds a
# Host header (s_time has none, and portcullis routes by Host).
S_TIME_PAGE=$'/ HTTP/1.0\r\nHost: bench.test\r\nX-Bench: 1'

# Scenario 5's credentials: a bearer token (minted before each run: they live 300 s) and
# the session cookie of one login (sealed with the fixed session key, valid for hours).
TOKEN=
SESSION_COOKIE=

load_cmd() { # SCENARIO PORT LOGFILE DURATION VARIANT -> prints nothing, sets LOAD=(...) TOOL=
  local sc=$1 port=$2 logf=$3 d=$4 v=${5:-}
  case $sc in
    1 | 7) TOOL=wrk; LOAD=(wrk -t1 -c50 -d"${d}s" --latency "https://bench.test:$port/") ;;
    5)
      TOOL=wrk
      local path=/ hdr=()
      case $v in
        nginx-authreq) path=/authreq; hdr=(-H "Authorization: Bearer $TOKEN") ;;
        nginx-authreq-ka) path=/authreq-ka; hdr=(-H "Authorization: Bearer $TOKEN") ;;
        portcullis-jwt) path=/jwt; hdr=(-H "Authorization: Bearer $TOKEN") ;;
        portcullis-session) path=/oidc; hdr=(-H "Cookie: $SESSION_COOKIE") ;;
      esac
      LOAD=(wrk -t1 -c50 -d"${d}s" --latency "${hdr[@]}" "https://bench.test:$port$path")
      ;;
    2) TOOL=h2load; LOAD=(h2load -c10 -m10 -D "$d" --log-file="$logf" "https://bench.test:$port/") ;;
    3) TOOL=wrk; LOAD=(wrk -t1 -c50 -d"${d}s" --latency -H 'Connection: close' "https://bench.test:$port/") ;;
    3f) TOOL=handshakes; LOAD=("$HANDSHAKES_BIN" --addr "127.0.0.1:$port" --host bench.test --rate "$HANDSHAKE_RATE" --seconds "$d") ;;
    3n) TOOL=s_time; LOAD=(openssl s_time -connect "127.0.0.1:$port" -new -time "$d" -www "$S_TIME_PAGE") ;;
    3r) TOOL=s_time; LOAD=(openssl s_time -connect "127.0.0.1:$port" -reuse -time "$d" -www "$S_TIME_PAGE") ;;
    4) TOOL=wrk; LOAD=(wrk -t1 -c10 -d"${d}s" --latency "https://bench.test:$port/1m") ;;
  esac
}

# The process a variant runs: scenario 5's Portcullis variants share one config (the
# protected routes added), scenario 7's 10k variants one manifest set.
proxy_kind() { # SCENARIO VARIANT
  case $1:$2 in
    5:nginx*) echo nginx ;;
    5:portcullis*) echo portcullis-auth ;;
    7:portcullis-10k*) echo portcullis-10k ;;
    *) echo "$2" ;;
  esac
}
pids_cpu_s() { # PID... : utime+stime, seconds
  local t=0 p
  for p in "$@"; do t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done
  awk -v t="$t" -v h="$TCK" 'BEGIN { printf "%.3f", t / h }'
}
reloads_total() { # successful reloads so far, from the admin listener's metrics
  curl -s "http://127.0.0.1:$PC_ADMIN/metrics" |
    awk '/^portcullis_reloads_total\{result="success"\}/ {print $2; found=1} END {if (!found) print 0}'
}
# Scenario 7: rewrites one namespace's file every second (a new generation label, the
# same routes), through a rename so the gateway never reads a half-written file. Each
# rewrite makes the gateway reparse that file and recompile all 10,000 Ingresses.
RELOAD_PID=
start_reload_loop() {
  (
    g=1
    while :; do
      ns=$((g % SCALE_FILES))
      "${GEN[@]}" --rewrite "$ns" "$g" >"$OUT/rewrite.tmp" && mv "$OUT/rewrite.tmp" "$SCALE/$(printf 'ns%04d.yaml' "$ns")"
      g=$((g + 1))
      sleep 1
    done
  ) &
  RELOAD_PID=$!
  PIDS+=("$RELOAD_PID")
}

log_lines() { # WHAT FILE: says how much a logging variant wrote, then removes it
  log "  $1: $(wc -l <"$2" 2>/dev/null || echo 0) lines, $(du -h "$2" 2>/dev/null | cut -f1)"
  rm -f "$2"
}
measure() { # SCENARIO VARIANT ROUND
  local sc=$1 v=$2 rd=$3
  local base="$OUT/s$sc-$v-r$rd"
  case $v in
    *-jwt | *-authreq*) TOKEN=$(python3 "$BENCH/bench.py" oidc-token --issuer "$IDP_ISSUER" --secret "$CLIENT_SECRET") ;;
  esac
  start_proxy "$(proxy_kind "$sc" "$v")"
  local extra=(--extra "ready_ms=$READY_MS" --extra "ready_rss_kb=$READY_RSS_KB")
  # Warm-up: 1 s of the same load, not measured.
  load_cmd "$sc" "$PROXY_PORT" "$base.warmup.h2log" 1 "$v"
  run_bg_wait "$base.warmup.txt" taskset -c 1 "${LOAD[@]}" || true
  rm -f "$base.warmup.h2log"
  load_cmd "$sc" "$PROXY_PORT" "$base.h2log" "$SECS" "$v"
  local cpu0 cpu1 user0 user1 hwm t0 t1 aux0= aux1= reloads0=
  [[ $v == *-reload ]] && { reloads0=$(reloads_total); start_reload_loop; }
  [[ $v == nginx-authreq* ]] && aux0=$(pids_cpu_s "${AUTHSRV_PIDS[@]}")
  cpu0=$(proxy_cpu_s)
  user0=$(proxy_user_s)
  t0=$(date +%s.%N)
  run_bg_wait "$base.txt" taskset -c 1 "${LOAD[@]}" || log "load generator exited non-zero (see $base.txt)"
  t1=$(date +%s.%N)
  cpu1=$(proxy_cpu_s)
  user1=$(proxy_user_s)
  hwm=$(proxy_hwm_kb)
  [[ -n $aux0 ]] && { aux1=$(pids_cpu_s "${AUTHSRV_PIDS[@]}"); extra+=(--aux-cpu-s "$(awk -v a="$aux0" -v b="$aux1" 'BEGIN { print b - a }')"); }
  if [[ -n $reloads0 ]]; then
    stop_pid "$RELOAD_PID"
    sleep 1.5   # let a reload that is under way finish, so it is counted
    extra+=(--extra "reloads=$(($(reloads_total) - reloads0))")
  fi
  stop_proxy
  case $v in
    portcullis-audit) log_lines "audit log" "$OUT/audit.log" ;;
    portcullis-defaults)
      log_lines "audit log (stdout)" "$OUT/defaults.stdout.log"
      log_lines "access log (stderr)" "$OUT/defaults.stderr.log"
      ;;
    nginx-log) log_lines "access log" "$NGXLOG/access.log" ;;
  esac
  python3 "$BENCH/bench.py" record --results "$RESULTS" --scenario "$sc" --variant "$v" --round "$rd" \
    --tool "$TOOL" --out "$base.txt" --log "$base.h2log" --wall-s "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" \
    --cpu-s "$(awk -v a="$cpu0" -v b="$cpu1" 'BEGIN { print b - a }')" \
    --user-s "$(awk -v a="$user0" -v b="$user1" 'BEGIN { print b - a }')" --hwm-kb "$hwm" "${extra[@]}"
  rm -f "$base.h2log"   # large; the percentiles are in results.jsonl
}

measure_idle() { # VARIANT ROUND
  local v=$1 rd=$2
  start_proxy "$v"
  sleep 1
  local pids
  pids=$(IFS=,; echo "${PROXY_PIDS[*]}")
  run_bg_wait "$OUT/s6-$v-r$rd.txt" taskset -c 1 python3 "$BENCH/bench.py" idle --port "$PROXY_PORT" \
    --conns "$IDLE_CONNS" --pids "$pids" --results "$RESULTS" --variant "$v" --round "$rd" ||
    log "idle client exited non-zero (see $OUT/s6-$v-r$rd.txt)"
  cat "$OUT/s6-$v-r$rd.txt"
  stop_proxy
}

# ---------------------------------------------------------------- run
for port in $ORIGIN_PORT $NGINX_PORT $PC_HTTPS $PC_HTTP $PC_ADMIN $FLOOR_PORT $AUTH_PORT $IDP_PORT; do
  if ss -Hltn "sport = :$port" | grep -q .; then
    echo "port $port is already in use; refusing to start" >&2
    exit 1
  fi
done
log "output directory: $OUT"
log "rounds=$ROUNDS seconds=$SECS idle_conns=$IDLE_CONNS scenarios: $SCENARIOS"
start_origin
[[ $(curl -s "http://127.0.0.1:$ORIGIN_PORT/1m" | wc -c) == 1048576 ]] || { echo "origin /1m is wrong" >&2; exit 1; }

# Sanity: both proxies serve the same bytes over h1 and h2; record the negotiated TLS.
for v in nginx portcullis; do
  start_proxy "$v"
  [[ $(curl -s --cacert "$TLS/ca.crt" "https://bench.test:$PROXY_PORT/1m" | cmp - "$ORIGIN/www/1m" && echo same) == same ]] ||
    { echo "$v: /1m differs from the origin's" >&2; exit 1; }
  h2=$(curl -s --http2 --cacert "$TLS/ca.crt" -o /dev/null -w '%{http_version}' "https://bench.test:$PROXY_PORT/")
  tls=$(openssl s_client -connect "127.0.0.1:$PROXY_PORT" -servername bench.test </dev/null 2>/dev/null |
    awk '/^New, / {print $2, $NF} /Server Temp Key/ {sub(/^Server Temp Key: /, ""); print}' | paste -sd' ' -)
  log "$v: ok over HTTP/1.1, HTTP/$h2 over ALPN h2; TLS (openssl s_client): $tls"
  log "$v: response headers: $(curl -s -D - -o /dev/null --cacert "$TLS/ca.crt" "https://bench.test:$PROXY_PORT/" | tr -d '\r' | grep -v '^$' | paste -sd'|' -)"
  stop_proxy
done

# ---------------------------------------------------------------- scenario 5 setup
AUTHSRV_PIDS=()
IDP_PID=
start_auth() {
  # The auth server for nginx's auth_request (CPU 1).
  taskset -c 1 nginx -e "$AUTHSRV/error.log" -p "$AUTHSRV/" -c "$AUTHSRV/nginx.conf" -g 'daemon off;' \
    >>"$AUTHSRV/stderr.log" 2>&1 &
  local authsrv=$!
  PIDS+=("$authsrv")
  for _ in $(seq 100); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' -H 'Authorization: Bearer x' "http://127.0.0.1:$AUTH_PORT/") == 200 ]] && break
    sleep 0.1
  done
  AUTHSRV_PIDS=("$authsrv" $(pgrep -P "$authsrv"))

  # The OpenID provider (CPU 1): the integration tests' provider.mjs (panva/oidc-provider).
  local dir=${BENCH_OIDC_DIR:-}
  if [[ -z $dir ]]; then
    dir="$REPO/crates/portcullis/tests/oidc"
    if [[ ! -d $dir/node_modules/oidc-provider ]]; then
      local cache=/tmp/portcullis-bench-oidc
      mkdir -p "$cache"
      cp "$dir/package.json" "$dir/package-lock.json" "$dir/provider.mjs" "$cache/"
      [[ -d $cache/node_modules/oidc-provider ]] ||
        { log "installing the test OpenID provider: npm ci in $cache"; (cd "$cache" && npm ci --no-audit --no-fund >/dev/null); }
      dir=$cache
    fi
  fi
  # ID tokens valid for a day, so the one login's session needs no refresh.
  ID_TOKEN_TTL=86400 taskset -c 1 node "$dir/provider.mjs" "$IDP_PORT" a >"$OUT/idp.stdout" 2>"$OUT/idp.stderr.log" &
  IDP_PID=$!
  PIDS+=("$IDP_PID")
  for _ in $(seq 100); do
    grep -q issuer "$OUT/idp.stdout" 2>/dev/null && break
    sleep 0.1
  done
  grep -q "\"$IDP_ISSUER\"" "$OUT/idp.stdout" || { echo "OpenID provider did not start; see $OUT/idp.*" >&2; exit 1; }
  python3 "$BENCH/bench.py" oidc-register --issuer "$IDP_ISSUER" --secret "$CLIENT_SECRET" \
    --redirect "https://bench.test:$PC_HTTPS/.portcullis/callback"

  # One real login through the gateway; its session cookie is reused for every run.
  start_proxy portcullis-auth
  SESSION_COOKIE=$(python3 "$BENCH/bench.py" oidc-login --url "https://bench.test:$PC_HTTPS/oidc" --ca "$TLS/ca.crt")
  TOKEN=$(python3 "$BENCH/bench.py" oidc-token --issuer "$IDP_ISSUER" --secret "$CLIENT_SECRET")
  local c=(curl -s -o /dev/null -w '%{http_code}' --cacert "$TLS/ca.crt")
  local codes
  codes="$("${c[@]}" "https://bench.test:$PC_HTTPS/jwt") $("${c[@]}" -H "Authorization: Bearer $TOKEN" "https://bench.test:$PC_HTTPS/jwt")"
  codes+=" $("${c[@]}" -H 'Accept: text/html' "https://bench.test:$PC_HTTPS/oidc") $("${c[@]}" -H "Cookie: $SESSION_COOKIE" "https://bench.test:$PC_HTTPS/oidc")"
  stop_proxy
  start_proxy nginx
  codes+=" $("${c[@]}" "https://bench.test:$NGINX_PORT/authreq") $("${c[@]}" -H "Authorization: Bearer $TOKEN" "https://bench.test:$NGINX_PORT/authreq")"
  codes+=" $("${c[@]}" "https://bench.test:$NGINX_PORT/authreq-ka") $("${c[@]}" -H "Authorization: Bearer $TOKEN" "https://bench.test:$NGINX_PORT/authreq-ka")"
  stop_proxy
  # Without credentials / with: /jwt 401 200, /oidc 302 200, /authreq 401 200, /authreq-ka 401 200.
  log "auth check (without credentials, with): $codes"
  [[ $codes == "401 200 302 200 401 200 401 200" ]] || { echo "scenario 5: auth is not in force as expected" >&2; exit 1; }
  log "session cookie: $(printf %s "$SESSION_COOKIE" | wc -c) bytes; bearer token: $(printf %s "$TOKEN" | wc -c) bytes"
}
stop_auth() {
  local p
  for p in "${AUTHSRV_PIDS[0]:-}" "$IDP_PID"; do [[ -n $p ]] && stop_pid "$p"; done
  AUTHSRV_PIDS=()
  IDP_PID=
}

# ---------------------------------------------------------------- scenario 7 compile
measure_compile() { # ROUND: compile-stats, `portcullis check`, both on the 10k set
  local rd=$1
  local stats check_out
  stats=$(taskset -c 0 "$ROUTES_BIN/compile-stats" "$SCALE" --repeat 3)
  python3 "$BENCH/bench.py" record-json --results "$RESULTS" --scenario 7c --variant compile-stats --round "$rd" --json "$stats"
  check_out="$OUT/s7c-check-r$rd.txt"
  taskset -c 0 /usr/bin/time -f 'TIME %e %M' "$BIN" check --manifests "$SCALE" --config "$OUT/portcullis.yaml" >"$check_out" 2>&1 ||
    { echo "portcullis check failed on the 10k set; see $check_out" >&2; exit 1; }
  tail -2 "$check_out" | sed 's/^/  /'
  python3 "$BENCH/bench.py" record-json --results "$RESULTS" --scenario 7c --variant check --round "$rd" \
    --json "$(awk '/^TIME / {printf "{\"check_wall_ms\": %.0f, \"check_max_rss_kb\": %d}", $2 * 1000, $3}' "$check_out")"
}

for sc in $SCENARIOS; do
  case $sc in
    1) variants=(nginx portcullis portcullis-audit nginx-log portcullis-defaults tls-forward) ;;
    4) variants=(nginx nginx-64k portcullis) ;;
    2 | 3 | 3f | 3n | 3r | 6) variants=(nginx portcullis) ;;
    5) variants=(nginx nginx-authreq nginx-authreq-ka portcullis portcullis-jwt portcullis-session)
       start_auth ;;
    7) variants=(portcullis portcullis-10k portcullis-10k-reload) ;;
    *) log "unknown scenario $sc: skipped"; continue ;;
  esac
  for rd in $(seq "$ROUNDS"); do
    if [[ $sc == 7 ]]; then log "scenario 7 round $rd: compile"; measure_compile "$rd"; fi
    for v in "${variants[@]}"; do
      log "scenario $sc round $rd: $v"
      if [[ $sc == 6 ]]; then measure_idle "$v" "$rd"; else measure "$sc" "$v" "$rd"; fi
    done
  done
  [[ $sc == 5 ]] && stop_auth
done

stop_pid "$ORIGIN_PID"
echo
echo "# Results (ratio columns: per-round ratio x/y, median [min-max] over rounds)"
python3 "$BENCH/bench.py" report --results "$RESULTS"
echo
log "load average: $(cut -d' ' -f1-3 /proc/loadavg)"
log "raw outputs and results.jsonl: $OUT"
