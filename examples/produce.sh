#!/usr/bin/env bash
# Publish one bookstore event to freshet from a shell, with nothing but bash and the envelope
# contract: the NATS protocol is plain text, so bash's /dev/tcp speaks it.
#
#   examples/produce.sh TYPE ENTITY DATA_JSON
#   examples/produce.sh user_action u1 '{"user":"u1","item":"b1","action":"view"}'
#
# ENTITY is the user of a user_action, the item of a new_item (what keeps an entity's events in
# order). The event is wrapped in a CloudEvents 1.0 envelope, published to
# <prefix>.events.TYPE.ENTITY with its id as Nats-Msg-Id (a retried publish is stored once), and
# the script waits for JetStream's acknowledgement, printing it: {"stream":"EVENTS","seq":N}.
# Exits 0 once stored, 1 if the server refused it or did not answer in time.
#
# Environment: NATS_HOST (127.0.0.1), NATS_PORT (4222), FRESHET_SUBJECT_PREFIX (freshet),
# EVENT_ID (a fresh id), EVENT_SOURCE (examples/produce.sh), TRACEPARENT (a W3C traceparent sent
# as a header, continued by freshet). No authentication or TLS: for a secured server use the
# Python producer or the nats CLI.
set -euo pipefail

if [ $# -ne 3 ]; then
  sed -n '2,9p' "$0" >&2
  exit 2
fi
type=$1 entity=$2 data=$3
host=${NATS_HOST:-127.0.0.1} port=${NATS_PORT:-4222} prefix=${FRESHET_SUBJECT_PREFIX:-freshet}
id=${EVENT_ID:-$(cat /proc/sys/kernel/random/uuid 2>/dev/null || date +%s%N)}
source=${EVENT_SOURCE:-examples/produce.sh}
now=$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)

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

exec 3<>"/dev/tcp/$host/$port"
IFS= read -r -t 5 info <&3 || { echo "no answer from $host:$port" >&2; exit 1; }
case $info in INFO*) ;; *) echo "not a NATS server: $info" >&2; exit 1 ;; esac
printf 'CONNECT {"verbose":false,"pedantic":false,"headers":true,"name":"produce.sh"}\r\n' >&3
printf 'SUB %s 1\r\n' "$inbox" >&3
printf 'HPUB %s %s %s %s\r\n%s%s\r\n' "$subject" "$inbox" "$header_len" "$total_len" "$headers" "$payload" >&3
printf 'PING\r\n' >&3

deadline=$((SECONDS + 5))
while [ $SECONDS -lt $deadline ]; do
  IFS= read -r -t 5 line <&3 || break
  line=${line%$'\r'}
  case $line in
    PING) printf 'PONG\r\n' >&3 ;;
    -ERR*) echo "server error: $line" >&2; exit 1 ;;
    MSG*|HMSG*)
      # The acknowledgement's payload follows on the next line.
      IFS= read -r -t 5 ack <&3 || break
      ack=${ack%$'\r'}
      case $ack in
        *'"error"'*) echo "refused: $ack" >&2; exit 1 ;;
        *'"seq"'*) echo "$ack"; exec 3>&-; exit 0 ;;
        *) ;;  # a header-only status message; keep waiting
      esac
      ;;
  esac
done
echo "no acknowledgement from JetStream within 5 s (is $subject captured by a stream?)" >&2
exit 1
