#!/usr/bin/env python3
"""The Python peer's predictor: hot-loads each pickle the trainer announces, answers over NATS.

It watches the KV key `trainer.py` puts after every pickle, unpickles the announced file and
swaps the model reference (requests in flight keep the model they started with; asyncio runs one
handler at a time, so no lock is needed). It answers NATS request/reply on `--subject`:

    request  {"x": {"user_log_views": 1.2, ...}}   ({} or no "x": an empty feature dict)
    reply    {"version": V, "last_sequence": S, "score": p}
    error    {"error": "..."}

p is River's `predict_proba_one(x)[True]`. Before the first model it answers version 0,
last_sequence 0 and score 0.5. A version whose record or file cannot be read is reported on
stderr and the previous model keeps serving.

    .tools/river-venv/bin/python tools/peer/predictor.py --bucket PEER --key peer.live

Each load is logged to stderr with its delay from the trainer's announcement:

    peer predictor: loaded version=V last_sequence=S events=N delay_ms=D
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import pickle
import signal
import sys
import time
from dataclasses import dataclass

import nats
import nats.errors
import nats.js.errors

# Not used by name: unpickling a River model imports these, and importing River takes a second
# or two. Done here at start-up, not inside the first load where it would block the event loop
# (and delay that version and every request behind it).
import river.compose  # noqa: F401
import river.linear_model  # noqa: F401
import river.preprocessing  # noqa: F401

# KV operations that remove a key rather than set it.
REMOVALS = ("DEL", "PURGE")


@dataclass(frozen=True)
class Live:
    """The model serving now and what the trainer said about it. Replaced whole on each load,
    never mutated, so a reader holding one sees a consistent triple."""

    model: object = None
    version: int = 0
    last_sequence: int = 0
    revision: int = 0  # KV revision of the record it came from


def load(value: bytes, revision: int) -> Live:
    """Reads a trainer record and unpickles the file it names. Raises on any problem."""
    record = json.loads(value)
    with open(record["path"], "rb") as file:
        model = pickle.load(file)  # the trainer's own files: trusted input
    live = Live(model, int(record["version"]), int(record["last_sequence"]), revision)
    delay_ms = (time.time() - float(record.get("at", time.time()))) * 1000
    print(
        f"peer predictor: loaded version={live.version} last_sequence={live.last_sequence} "
        f"events={record.get('events')} delay_ms={delay_ms:.1f}",
        file=sys.stderr,
        flush=True,
    )
    return live


def answer(live: Live, body: bytes) -> dict:
    """The reply to one request body. Pure: no NATS."""
    try:
        request = json.loads(body) if body.strip() else {}
    # ValueError covers bad UTF-8 and bad JSON; RecursionError absurdly deep nesting.
    except (ValueError, RecursionError) as error:
        return {"error": f"the request is not JSON: {error}"}
    if not isinstance(request, dict):
        return {"error": 'the request must be a JSON object {"x": {...}}'}
    raw = request.get("x", {})
    if not isinstance(raw, dict):
        return {"error": "x must be an object of feature name to number"}
    x = {}
    for name, value in raw.items():
        # bool is an int in Python; JSON's NaN and Infinity literals are accepted by json.loads.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return {"error": f"feature {name!r} is not a number"}
        try:
            x[name] = float(value)  # an int too large for a float raises OverflowError
        except OverflowError:
            x[name] = math.inf
        if not math.isfinite(x[name]):
            return {"error": f"feature {name!r} is not finite"}
    if live.model is None:
        score = 0.5
    else:
        score = float(live.model.predict_proba_one(x).get(True, 0.0))
    return {"version": live.version, "last_sequence": live.last_sequence, "score": score}


class Predictor:
    def __init__(self, kv, key: str) -> None:
        self.kv = kv
        self.key = key
        self.live = Live()

    def swap(self, value: bytes, revision: int) -> None:
        try:
            self.live = load(value, revision)
        except Exception as error:  # a bad record or file must not stop serving
            print(
                f"peer predictor: kept version={self.live.version}: "
                f"revision {revision} not loaded: {error!r}",
                file=sys.stderr,
                flush=True,
            )

    async def load_current(self) -> None:
        """Loads the key's current value, if it has one."""
        try:
            entry = await self.kv.get(self.key)
        except nats.js.errors.KeyNotFoundError:
            return
        self.swap(entry.value, entry.revision)

    async def follow(self, watcher) -> None:
        """Loads every later value of the key, until cancelled.

        nats-py quirk: the watcher first yields the key's current value (already loaded by
        load_current, skipped by revision), then a None marker meaning "caught up". `async for`
        over a watcher ends at that marker, so updates() is called in a loop instead.
        """
        while True:
            entry = await watcher.updates(timeout=None)
            if entry is None or entry.revision <= self.live.revision:
                continue
            if entry.operation in REMOVALS:
                continue  # the key was deleted: keep serving the last model
            self.swap(entry.value, entry.revision)

    async def handle(self, message) -> None:
        if not message.reply:
            return  # a publish, not a request: nobody to answer
        try:
            reply = answer(self.live, message.data)
        except Exception as error:  # whatever the model raises, the caller gets an answer
            reply = {"error": f"prediction failed: {error!r}"}
        await message.respond(json.dumps(reply).encode())


async def run(args) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    nc = await nats.connect(args.nats_url, connect_timeout=5, max_reconnect_attempts=10)
    js = nc.jetstream()
    # The predictor may start before the trainer ever ran, so it creates the bucket too (the
    # same config as the trainer's, which makes creating it twice harmless).
    try:
        kv = await js.key_value(args.bucket)
    except nats.js.errors.BucketNotFoundError:
        kv = await js.create_key_value(bucket=args.bucket, history=1)

    predictor = Predictor(kv, args.key)
    await predictor.load_current()
    watcher = await kv.watch(args.key)
    following = asyncio.create_task(predictor.follow(watcher))
    await nc.subscribe(args.subject, cb=predictor.handle)
    await nc.flush()  # the subscription is registered at the server: requests reach us now
    print(f"peer predictor: serving on {args.subject}", file=sys.stderr, flush=True)

    await stop.wait()
    following.cancel()
    await watcher.stop()
    await nc.drain()
    return 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--nats-url", default="nats://127.0.0.1:4222", help="NATS server (%(default)s)")
    add(
        "--bucket",
        default="PEER",
        help="KV bucket the trainer announces in, created with history 1 (%(default)s)",
    )
    add("--key", default="peer.live", help="KV key to watch (%(default)s)")
    add("--subject", default="peer.predict", help="request/reply subject (%(default)s)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(run(parse_args())))
