#!/usr/bin/env bash
# Publish one bookstore event to freshet from a shell, with nothing but bash and the envelope
# contract: the NATS protocol is plain text, so bash's /dev/tcp speaks it.
#
#   examples/produce.sh TYPE ENTITY DATA_JSON
#   examples/produce.sh user_action u1 '{"user":"u1","item":"b1","action":"view"}'
#
# ENTITY is the user of a user_action, the item of a new_item (what keeps an entity's events in
# order). The event is wrapped in a CloudEvents 1.0 envelope, published to
# <prefix>.events.TYPE.ENTITY with its id as Nats-Msg-Id, and the script waits for JetStream's
# acknowledgement, printing it: {"stream":"EVENTS","seq":N}. An attempt that gets no
# acknowledgement (server down or restarting, JetStream not ready) is repeated, the same bytes
# under the same Nats-Msg-Id, with capped exponential backoff and jitter, for up to RETRY_FOR
# seconds: JetStream stores the event once even if an earlier attempt got through and only its
# acknowledgement was lost, as long as the retries stay inside the stream's duplicate window.
# Run it once per event, waiting for each, and the events are stored in order.
# Exits 0 once stored, 1 if the server refused it, no stream takes the subject, or RETRY_FOR ran
# out.
#
# Environment: NATS_HOST (127.0.0.1), NATS_PORT (4222), FRESHET_SUBJECT_PREFIX (freshet),
# EVENT_ID (a fresh id), EVENT_SOURCE (examples/produce.sh), TRACEPARENT (a W3C traceparent sent
# as a header, continued by freshet), RETRY_FOR (60). No authentication or TLS: for a secured
# server use the Python producer or the nats CLI.
set -euo pipefail

if [ $# -ne 3 ]; then
  sed -n '2,9p' "$0" >&2
  exit 2
fi
type=$1 entity=$2 data=$3
host=${NATS_HOST:-127.0.0.1} port=${NATS_PORT:-4222} prefix=${FRESHET_SUBJECT_PREFIX:-freshet}
id=${EVENT_ID:-$(cat /proc/sys/kernel/random/uuid 2>/dev/null || date +%s%N)}
source=${EVENT_SOURCE:-examples/produce.sh}
retry_for=${RETRY_FOR:-60}
now=$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)

# Built once: every attempt sends the same bytes under the same id.
payload=$(printf '{"specversion":"1.0","id":"%s","source":"%s","type":"%s","time":"%s","datacontenttype":"application/json","data":%s}' \
  "$id" "$source" "$type" "$now" "$data")
trace_header=${TRACEPARENT:+traceparent: $TRACEPARENT$'\r\n'}
headers=$(printf 'NATS/1.0\r\nNats-Msg-Id: %s\r\n%s\r\n' "$id" "$trace_header")
subject="$prefix.events.$type.$entity"
inbox="_INBOX.produce_sh.$$"
# Lengths in bytes, whatever the locale.
bytes() { local LC_ALL=C; printf '%s' "${#1}"; }
header_len=$(bytes "$headers")
total_len=$((header_len + $(bytes "$payload")))

# One attempt on a fresh connection. Returns 0 when acknowledged (the ack printed), 1 when
# refused for good, 2 when there was no answer worth trusting (retry), 3 on "no responders"
# (no stream takes the subject, or JetStream is not ready yet after a restart).
attempt() {
  { exec 3<>"/dev/tcp/$host/$port"; } 2>/dev/null || return 2
  local info line ack deadline=$((SECONDS + 5))
  IFS= read -r -t 5 info <&3 || { exec 3>&-; return 2; }
  case $info in INFO*) ;; *) echo "not a NATS server: $info" >&2; exec 3>&-; return 1 ;; esac
  printf 'CONNECT {"verbose":false,"pedantic":false,"headers":true,"no_responders":true,"name":"produce.sh"}\r\n' >&3
  printf 'SUB %s 1\r\n' "$inbox" >&3
  printf 'HPUB %s %s %s %s\r\n%s%s\r\n' "$subject" "$inbox" "$header_len" "$total_len" "$headers" "$payload" >&3
  printf 'PING\r\n' >&3
  while [ $SECONDS -lt $deadline ]; do
    IFS= read -r -t 5 line <&3 || break
    line=${line%$'\r'}
    case $line in
      PING) printf 'PONG\r\n' >&3 ;;
      -ERR*) echo "server error: $line" >&2; exec 3>&-; return 1 ;;
      MSG*|HMSG*)
        # The acknowledgement's payload (or a status line) follows on the next line.
        IFS= read -r -t 5 ack <&3 || break
        ack=${ack%$'\r'}
        case $ack in
          'NATS/1.0 503'*) exec 3>&-; return 3 ;;
          *'"code":503'*) exec 3>&-; return 2 ;;
          *'"error"'*) echo "refused: $ack" >&2; exec 3>&-; return 1 ;;
          *'"seq"'*) echo "$ack"; exec 3>&-; return 0 ;;
          *) ;;  # another header-only status message; keep waiting
        esac
        ;;
    esac
  done
  exec 3>&-
  return 2
}

started=$SECONDS
delay_ms=100
tries=0
while :; do
  status=0
  attempt || status=$?
  tries=$((tries + 1))
  case $status in
    0) exit 0 ;;
    1) exit 1 ;;
    3)
      # On a first attempt that reached the server, no responders means no stream.
      if [ $tries -eq 1 ]; then
        echo "no stream takes $subject (is the topology provisioned?)" >&2
        exit 1
      fi
      ;;
  esac
  if [ $((SECONDS - started)) -ge "$retry_for" ]; then
    echo "no acknowledgement from JetStream within ${retry_for} s" >&2
    exit 1
  fi
  # Capped exponential backoff, each delay drawn from its upper half.
  pause_ms=$((delay_ms / 2 + RANDOM % (delay_ms / 2 + 1)))
  echo "no acknowledgement yet; sending event $id again in ${pause_ms} ms" >&2
  sleep "$(printf '%d.%03d' $((pause_ms / 1000)) $((pause_ms % 1000)))"
  delay_ms=$((delay_ms * 2 > 5000 ? 5000 : delay_ms * 2))
done
