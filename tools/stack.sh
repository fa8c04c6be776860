#!/usr/bin/env bash
# `make up` / `make down`: a local freshet in the background. nats-server listens on
# 127.0.0.1:4222 with its store in .freshet/jetstream; artifacts go to .freshet/artifacts; every
# function logs to .freshet/logs. `down` stops exactly the processes `up` started, by pid.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
state="$here/.freshet"
pids="$state/pids"
bin="$here/target/debug"

up() {
  mkdir -p "$state/logs" "$state/jetstream"
  if [ -s "$pids" ]; then echo "already up (see $pids); run make down first"; exit 1; fi
  "$here/.tools/venv/bin/nats-server" -js -a 127.0.0.1 -p 4222 -sd "$state/jetstream" \
    -l "$state/logs/nats-server.log" & echo $! >> "$pids"
  sleep 0.5
  export FRESHET_NATS_URL=nats://127.0.0.1:4222 FRESHET_OBJECT_STORE="file://$state/artifacts"
  # Loopback only, like the server: the functions' HTTP ports ask for no credential here.
  export FRESHET_HTTP_ADDR=127.0.0.1
  "$bin/freshet" provision
  port=9101
  for f in featurize train predict drift; do
    FRESHET_HTTP_PORT=$port "$bin/$f" > "$state/logs/$f.log" 2>&1 & echo $! >> "$pids"
    echo "$f: http://127.0.0.1:$port/metrics"
    port=$((port + 1))
  done
  echo "up: nats://127.0.0.1:4222; publish with: $bin/freshet publish FILE.jsonl"
}

down() {
  [ -f "$pids" ] || { echo "not up"; return; }
  tac "$pids" | while read -r pid; do kill -TERM "$pid" 2>/dev/null || true; done
  rm -f "$pids"
  echo "down"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: $0 up|down"; exit 2 ;;
esac
