#!/usr/bin/env python3
"""Publish bookstore events to freshet from Python, with nothing but the envelope contract.

Each line of the input is one event's `type` and `data` as JSON, e.g.

    {"type": "new_item", "data": {"item": "b1", "category": "fantasy", "price": 12.5}}
    {"type": "user_action", "data": {"user": "u1", "item": "b1", "action": "view"}}

The producer wraps it in a CloudEvents 1.0 envelope (id, source, time), publishes it to
`<prefix>.events.<type>.<entity>` (the entity is the user of a user_action, the item of a
new_item, which is what keeps an entity's events in order), and waits for JetStream's
acknowledgement. The event id doubles as `Nats-Msg-Id`.

A server restart loses nothing and reorders nothing. An event that is not acknowledged (a
timeout, the connection lost, JetStream not ready yet) is sent again, the same bytes under the
same `Nats-Msg-Id`, with capped exponential backoff and jitter, until it is: JetStream stores it
once even if an earlier attempt got through and only its acknowledgement was lost, as long as
the retries stay inside the stream's duplicate window (--retry-for, 5 minutes, against 10 by
default). The next line is only sent once this one is acknowledged, so events are stored in
input order. (A producer keeping many acknowledgements in flight needs one more step to keep
that order, see cli/src/publisher.rs: each event names the one before it in
`Nats-Expected-Last-Msg-Id`.) A line that cannot be stored within --retry-for stops the run, so
no later line is stored before it.

    python3 examples/producer.py --server nats://127.0.0.1:4222 < events.jsonl

With --trace, each event starts a W3C trace: a `traceparent` header that freshet continues
through its example, model versions and logs.

Needs nats-py (`pip install nats-py`). Exits 0 when every event was stored, 1 otherwise.
"""

import argparse
import asyncio
import datetime
import json
import random
import secrets
import sys
import time
import uuid

import nats
from nats.errors import Error as NatsError
from nats.errors import OutboundBufferLimitError, TimeoutError as NatsTimeoutError
from nats.js.errors import APIError, NoStreamResponseError, ServiceUnavailableError

# The data field naming the entity an event is about, by event type.
ENTITY_FIELD = {
    "user_action": "user",
    "new_item": "item",
    "example": "model",
    "outcome": "prediction_id",
}

FIRST_RETRY_DELAY = 0.1
MAX_RETRY_DELAY = 5.0


def envelope(event_type, data, source):
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": source,
        "type": event_type,
        # RFC 3339 as CloudEvents and freshet read it: uppercase T, and Z for UTC.
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z"),
        "datacontenttype": "application/json",
        "data": data,
    }


def subject_of(prefix, event):
    field = ENTITY_FIELD.get(event["type"])
    entity = event["data"].get(field) if field else None
    if not isinstance(entity, str) or not entity:
        raise ValueError(f"a {event['type']} event needs a string data.{field}")
    return f"{prefix}.events.{event['type']}.{entity}"


class NotStored(Exception):
    """An event the stream did not acknowledge, and will not: the run stops."""


async def publish_until_acknowledged(nc, js, subject, payload, headers, retry_for, first_try):
    """Publishes one event, sending it again under the same Nats-Msg-Id until JetStream
    acknowledges it or `retry_for` seconds have passed since the first attempt."""
    started = time.monotonic()
    delay = FIRST_RETRY_DELAY
    reconnects = nc.stats["reconnects"]
    while True:
        try:
            return await js.publish(subject, payload, timeout=5, headers=headers)
        except NoStreamResponseError:
            # No responders: no stream takes the subject, or the stream is not loaded yet
            # after a server restart. Before any acknowledgement, without a reconnect, the former.
            if first_try and nc.stats["reconnects"] == reconnects:
                raise NotStored(f"no stream stores {subject}: is the topology provisioned?")
            problem = "JetStream not ready"
        except ServiceUnavailableError as error:
            problem = repr(error)
        except APIError as error:
            raise NotStored(f"refused by JetStream: {error!r}")
        except (NatsTimeoutError, asyncio.TimeoutError, OutboundBufferLimitError) as error:
            problem = repr(error)
        except NatsError as error:
            problem = repr(error)
        if time.monotonic() - started > retry_for:
            raise NotStored(f"not acknowledged for {retry_for:.0f} s (last: {problem})")
        pause = delay / 2 + random.uniform(0, delay / 2)
        print(f"  not acknowledged ({problem}); sending it again in {pause:.2f} s", file=sys.stderr)
        await asyncio.sleep(pause)
        delay = min(delay * 2, MAX_RETRY_DELAY)


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="nats://127.0.0.1:4222")
    parser.add_argument("--prefix", default="freshet")
    parser.add_argument("--source", default="examples/producer.py")
    parser.add_argument("--trace", action="store_true", help="start a W3C trace per event")
    parser.add_argument(
        "--retry-for",
        type=float,
        default=300.0,
        help="seconds an event is sent again before the run gives up (inside the duplicate window)",
    )
    args = parser.parse_args()

    # Reconnect forever: giving up is --retry-for's decision, per event.
    nc = await nats.connect(
        args.server, connect_timeout=5, max_reconnect_attempts=-1, reconnect_time_wait=0.5
    )
    js = nc.jetstream()
    stored = failed = 0
    for number, line in enumerate(sys.stdin, start=1):
        if not line.strip():
            continue
        try:
            given = json.loads(line)
            event = envelope(given["type"], given["data"], args.source)
            subject = subject_of(args.prefix, event)
        except (ValueError, KeyError, TypeError) as error:
            failed += 1
            print(f"line {number}: not published: {error!r}", file=sys.stderr)
            continue
        headers = {"Nats-Msg-Id": event["id"]}
        if args.trace:
            headers["traceparent"] = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
        try:
            ack = await publish_until_acknowledged(
                nc, js, subject, json.dumps(event).encode(), headers, args.retry_for,
                first_try=stored == 0,
            )
        except NotStored as error:
            failed += 1
            print(f"line {number}: not stored, stopping here: {error}", file=sys.stderr)
            break
        stored += 1
        duplicate = " (a duplicate: an earlier attempt got through)" if ack.duplicate else ""
        print(f"line {number}: stored as {ack.stream} #{ack.seq}{duplicate}", file=sys.stderr)
    await nc.drain()
    print(json.dumps({"stored": stored, "failed": failed}))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
