#!/usr/bin/env python3
"""Publish bookstore events to freshet from Python, with nothing but the envelope contract.

Each line of the input is one event's `type` and `data` as JSON, e.g.

    {"type": "new_item", "data": {"item": "b1", "category": "fantasy", "price": 12.5}}
    {"type": "user_action", "data": {"user": "u1", "item": "b1", "action": "view"}}

The producer wraps it in a CloudEvents 1.0 envelope (id, source, time), publishes it to
`<prefix>.events.<type>.<entity>` (the entity is the user of a user_action, the item of a
new_item, which is what keeps an entity's events in order), and waits for JetStream's
acknowledgement. The event id doubles as `Nats-Msg-Id`, so publishing a line again (a retry
after a timeout) is stored once.

    python3 examples/producer.py --server nats://127.0.0.1:4222 < events.jsonl

With --trace, each event starts a W3C trace: a `traceparent` header that freshet continues
through its example, model versions and logs.

Needs nats-py (`pip install nats-py`). Exits 0 when every event was stored, 1 otherwise.
"""

import argparse
import asyncio
import datetime
import json
import secrets
import sys
import uuid

import nats
from nats.errors import Error as NatsError

# The data field naming the entity an event is about, by event type.
ENTITY_FIELD = {
    "user_action": "user",
    "new_item": "item",
    "example": "model",
    "outcome": "prediction_id",
}


def envelope(event_type, data, source):
    return {
        "specversion": "1.0",
        "id": str(uuid.uuid4()),
        "source": source,
        "type": event_type,
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "datacontenttype": "application/json",
        "data": data,
    }


def subject_of(prefix, event):
    field = ENTITY_FIELD.get(event["type"])
    entity = event["data"].get(field) if field else None
    if not isinstance(entity, str) or not entity:
        raise ValueError(f"a {event['type']} event needs a string data.{field}")
    return f"{prefix}.events.{event['type']}.{entity}"


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="nats://127.0.0.1:4222")
    parser.add_argument("--prefix", default="freshet")
    parser.add_argument("--source", default="examples/producer.py")
    parser.add_argument("--trace", action="store_true", help="start a W3C trace per event")
    args = parser.parse_args()

    nc = await nats.connect(args.server, connect_timeout=5, max_reconnect_attempts=3)
    js = nc.jetstream()
    stored = failed = 0
    for number, line in enumerate(sys.stdin, start=1):
        if not line.strip():
            continue
        try:
            given = json.loads(line)
            event = envelope(given["type"], given["data"], args.source)
            headers = {"Nats-Msg-Id": event["id"]}
            if args.trace:
                headers["traceparent"] = f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"
            ack = await js.publish(
                subject_of(args.prefix, event),
                json.dumps(event).encode(),
                timeout=5,
                headers=headers,
            )
            stored += 1
            print(f"line {number}: stored as {ack.stream} #{ack.seq}", file=sys.stderr)
        except (ValueError, KeyError, TypeError, NatsError, asyncio.TimeoutError) as error:
            failed += 1
            print(f"line {number}: not published: {error!r}", file=sys.stderr)
    await nc.drain()
    print(json.dumps({"stored": stored, "failed": failed}))
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
