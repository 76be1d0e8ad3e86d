#!/usr/bin/env bash
# Portcullis quickstart: builds the gateway, starts two echo backends standing in
# for pods (web on 127.0.0.1:9001, api on 127.0.0.1:9002) and the gateway in file
# mode serving the manifests in this directory, waits until it is ready, then
# prints commands to try. Ctrl-C stops everything it started.
#
# QUICKSTART_SMOKE=1 runs those commands itself, checks each answer and exits
# (0 when all pass); CI uses this to run the quickstart end to end.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."

readonly dir=examples/quickstart
readonly manifests=$dir/manifests
# QUICKSTART_PROFILE=debug skips the release build (CI has a debug build already).
if [[ ${QUICKSTART_PROFILE:-release} == debug ]]; then
  readonly bin=target/debug/portcullis build=(cargo build --quiet --bin portcullis)
else
  readonly bin=target/release/portcullis build=(cargo build --release --quiet --bin portcullis)
fi
readonly admin=http://127.0.0.1:9180
readonly ports=(8080 8443 9180 9001 9002)

logs=$(mktemp -d "${TMPDIR:-/tmp}/portcullis-quickstart.XXXXXX")
pids=()

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  # Give each process a few seconds to shut down cleanly before forcing it.
  for pid in "${pids[@]}"; do
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() {
  echo "quickstart: $*" >&2
  exit 1
}

show_logs() {
  local log
  for log in "$logs"/*.log; do
    echo "----- $log (last 40 lines) -----" >&2
    tail -n 40 "$log" >&2 || true
  done
}

# A process already listening on one of our ports would answer the readiness
# check in our place, so refuse to start rather than test the wrong thing.
for port in "${ports[@]}"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
    fail "port 127.0.0.1:$port is already in use; stop whatever listens there and retry"
  fi
done

echo "Building portcullis (the first release build takes a few minutes)..."
"${build[@]}"

"$bin" echo --listen 127.0.0.1:9001 --name web >"$logs/echo-web.log" 2>&1 &
pids+=($!)
"$bin" echo --listen 127.0.0.1:9002 --name api >"$logs/echo-api.log" 2>&1 &
pids+=($!)
"$bin" serve --manifests "$manifests" --config "$dir/config.yaml" >"$logs/portcullis.log" 2>&1 &
gateway=$!
pids+=("$gateway")

# wait_until NAME URL: poll URL until it answers 2xx, for at most 30 seconds,
# giving up early if any process we started has exited.
wait_until() {
  local name=$1 url=$2 deadline=$((SECONDS + 30)) pid
  until curl -fsS --max-time 2 -o /dev/null "$url" 2>/dev/null; do
    for pid in "${pids[@]}"; do
      if ! kill -0 "$pid" 2>/dev/null; then
        show_logs
        fail "a process exited before $name was ready (logs above)"
      fi
    done
    if ((SECONDS >= deadline)); then
      show_logs
      fail "$name not ready after 30s: $url did not answer 2xx (logs above)"
    fi
    sleep 0.5
  done
}
wait_until "echo backend web" http://127.0.0.1:9001/
wait_until "echo backend api" http://127.0.0.1:9002/
wait_until "the gateway" "$admin/readyz"

if [[ "${QUICKSTART_SMOKE:-0}" != 1 ]]; then
  cat <<EOF

Portcullis is serving examples/quickstart (logs in $logs).
Try, from the repository root:

  # HTTPS with the quickstart certificate, routed to the web backend
  curl --cacert $dir/ca.crt https://web.localhost:8443/

  # Prefix route /v1 on api.localhost, routed to the api backend
  curl --cacert $dir/ca.crt https://api.localhost:8443/v1/hello

  # Exact route /healthz: /healthz matches, /healthz/more does not (404)
  curl --cacert $dir/ca.crt https://api.localhost:8443/healthz
  curl --cacert $dir/ca.crt -i https://api.localhost:8443/healthz/more

  # Plain HTTP on a TLS host: a 308 redirect to HTTPS
  curl -i http://web.localhost:8080/

  # The same over HTTP/2
  curl --http2 --cacert $dir/ca.crt -sS -o /dev/null -w '%{http_version}\n' https://web.localhost:8443/

  # Gateway metrics (Prometheus text format)
  curl http://127.0.0.1:9180/metrics

  # The compiled route table
  $bin routes --manifests $manifests

If your curl does not resolve *.localhost to 127.0.0.1, add
--resolve web.localhost:8443:127.0.0.1 (and likewise for each host and port).

Press Ctrl-C to stop.
EOF
  wait "$gateway" || true
  show_logs
  fail "the gateway exited"
fi

# Smoke mode: run the commands above and check every answer.
failures=0

# check WANT CURL_ARGS...: runs curl, prints the result, counts a failure when
# the status is not WANT.
check() {
  local want=$1 got shown=()
  shift
  got=$(curl -sS --max-time 10 -o /dev/null -w '%{http_code}' "$@" 2>&1) || got="curl failed: $got"
  # Print the command without the --resolve pairs, which only add noise.
  while (($#)); do
    if [[ "$1" == --resolve ]]; then shift 2; else shown+=("$1"); shift; fi
  done
  if [[ "$got" == "$want" ]]; then
    printf 'ok    %-4s curl %s\n' "$got" "${shown[*]}"
  else
    printf 'FAIL  want %s, got %s: curl %s\n' "$want" "$got" "${shown[*]}"
    failures=$((failures + 1))
  fi
}

resolve=(
  --resolve web.localhost:8443:127.0.0.1 --resolve api.localhost:8443:127.0.0.1
  --resolve web.localhost:8080:127.0.0.1
)
tls=(--cacert "$dir/ca.crt")

echo
echo "Smoke checks:"
check 200 "${resolve[@]}" "${tls[@]}" https://web.localhost:8443/
check 200 "${resolve[@]}" "${tls[@]}" https://api.localhost:8443/v1/hello
check 200 "${resolve[@]}" "${tls[@]}" https://api.localhost:8443/healthz
check 404 "${resolve[@]}" "${tls[@]}" https://api.localhost:8443/healthz/more
check 308 "${resolve[@]}" http://web.localhost:8080/
check 200 "$admin/metrics"

got=$(curl -sS --max-time 10 -o /dev/null -w '%{http_code} HTTP/%{http_version}' --http2 \
  "${resolve[@]}" "${tls[@]}" https://web.localhost:8443/ 2>&1) || got="curl failed: $got"
if [[ "$got" == "200 HTTP/2" ]]; then
  echo "ok    200  curl --http2 https://web.localhost:8443/ (HTTP/2)"
else
  echo "FAIL  want 200 HTTP/2, got $got: curl --http2 https://web.localhost:8443/"
  failures=$((failures + 1))
fi

for cmd in check routes; do
  if out=$("$bin" "$cmd" --manifests "$manifests" 2>&1); then
    echo "ok    portcullis $cmd --manifests $manifests"
    if [[ "$cmd" == routes ]]; then echo "$out"; fi
  else
    echo "FAIL  portcullis $cmd --manifests $manifests:"
    echo "$out"
    failures=$((failures + 1))
  fi
done

if ((failures > 0)); then
  show_logs
  fail "$failures smoke check(s) failed"
fi
echo "All quickstart smoke checks passed."
