#!/usr/bin/env bash
# `make up` / `make down`: a local freshet in the background. nats-server listens on
# 127.0.0.1:4222 with its store in .freshet/jetstream; artifacts go to .freshet/artifacts; every
# function logs to .freshet/logs. `down` stops exactly the processes `up` started, by pid.
#
# Each function runs under a small supervisor that starts it again when it exits, as Kubernetes
# and Compose do: a function exits on purpose when it can no longer work safely (status 3: its
# lease aged out while it was stopped or cut off, and another replica may hold it now), and
# expects to be restarted. Restarts back off from 1 s, doubling to 30 s while the function keeps
# exiting within a minute of its start; each is noted in the function's log.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
state="$here/.freshet"
pids="$state/pids"
bin="$here/target/debug"

# Runs function $1 with HTTP on port $2 until it is told to stop (SIGTERM), starting it again
# whenever it exits.
supervise() {
  local name=$1 port=$2 log="$state/logs/$1.log"
  local delay=1 child='' stopping='' status started
  trap 'stopping=1; if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null || true; fi' TERM INT
  while [ -z "$stopping" ]; do
    started=$SECONDS
    FRESHET_HTTP_PORT=$port "$bin/freshet-$name" >> "$log" 2>&1 &
    child=$!
    status=0
    wait "$child" || status=$?
    # A trapped signal ends `wait` early: wait for the function itself to finish.
    while kill -0 "$child" 2>/dev/null; do wait "$child" || status=$?; done
    child=''
    if [ -n "$stopping" ]; then break; fi
    if [ $((SECONDS - started)) -ge 60 ]; then delay=1; fi
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) supervisor: $name exited with status $status; starting it again in ${delay}s" >> "$log"
    sleep "$delay" & wait $! || true
    delay=$((delay * 2 > 30 ? 30 : delay * 2))
  done
}

up() {
  mkdir -p "$state/logs" "$state/jetstream"
  if [ -s "$pids" ]; then echo "already up (see $pids); run make down first"; exit 1; fi
  "$here/.tools/venv/bin/nats-server" -js -a 127.0.0.1 -p 4222 -sd "$state/jetstream" \
    -l "$state/logs/nats-server.log" < /dev/null > /dev/null 2>&1 & echo $! >> "$pids"
  sleep 0.5
  export FRESHET_NATS_URL=nats://127.0.0.1:4222 FRESHET_OBJECT_STORE="file://$state/artifacts"
  # Loopback only, like the server: the functions' HTTP ports ask for no credential here.
  export FRESHET_HTTP_ADDR=127.0.0.1
  "$bin/freshet" provision
  port=9101
  for f in featurize train predict drift; do
    : > "$state/logs/$f.log"
    # Detached from this script's output, so `make up` returns however it was run.
    supervise "$f" "$port" < /dev/null > /dev/null 2>&1 & echo $! >> "$pids"
    echo "$f: http://127.0.0.1:$port/metrics"
    port=$((port + 1))
  done
  echo "up: nats://127.0.0.1:4222; publish with: $bin/freshet publish FILE.jsonl"
}

down() {
  [ -f "$pids" ] || { echo "not up"; return; }
  # Supervisors first (each stops its function and waits for it), nats-server last.
  tac "$pids" | while read -r pid; do
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  done
  rm -f "$pids"
  echo "down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down"; exit 2 ;;
esac
