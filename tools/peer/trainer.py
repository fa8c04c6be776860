#!/usr/bin/env python3
"""The Python peer's trainer: River learning from every bookstore event, pickled to disk.

This is the job freshet does, done the way a Python team would build it today: one consumer
reads the raw CloudEvents from JetStream (a Kafka-style durable pull consumer), keeps each
entity's running state in plain dicts, builds a feature dict per `user_action`, calls River's
`learn_one`, acknowledges the message, and every `--every` learned events pickles the whole
model to a file and announces it by putting a small JSON record in a KV key, which
`predictor.py` watches.

    .tools/river-venv/bin/python tools/peer/trainer.py --store /tmp/peer --count 100000

What it does NOT do, on purpose, because the usual Python job does not either: the state lives
in this process only (a restart starts from an empty model and empty counts), messages are
acknowledged as soon as they are learned (so a crash loses what was learned since the last
pickle), and nothing is deduplicated. The benchmark measures that simple design, not a
weakened copy of freshet.

Once subscribed it says so on stderr ("peer trainer: consuming ..."); at exit it prints one line:

    peer trainer: learned=N seconds=S events_per_s=R handled=H versions=V undecodable=U ignored=I

`seconds` runs from the first message fetched to the last one handled, so connecting and
waiting for an empty stream are not counted; `learned` counts the `user_action` events given
to `learn_one`, `handled` every message acknowledged.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import pickle
import signal
import sys
import time
from dataclasses import dataclass, field

import nats
import nats.errors
import nats.js.errors
from river import compose, linear_model, preprocessing

ACTIONS = ("view", "add_to_cart", "purchase")

# Priors of the smoothed rates, the same as freshet's bookstore features
# (shared/features/src/bookstore.rs), so the two models see comparable inputs.
PRIOR_WEIGHT = 4.0
PRIOR_PURCHASE_RATE = 0.1
PRIOR_CATEGORY_SHARE = 0.5


class Undecodable(ValueError):
    """An event that is not a well-formed bookstore CloudEvent."""


# ---------------------------------------------------------------------------------------------
# Decoding: bytes -> (type, data). Pure functions, no NATS.
# ---------------------------------------------------------------------------------------------


def decode(payload: bytes) -> tuple[str, dict]:
    """Returns the CloudEvent's `type` and validated `data`, or raises Undecodable.

    Types other than `new_item` and `user_action` are returned with their data unchecked, for
    the caller to skip.
    """
    try:
        event = json.loads(payload)
    # ValueError covers bad UTF-8 and bad JSON; RecursionError absurdly deep nesting.
    except (ValueError, RecursionError) as error:
        raise Undecodable(f"not JSON: {error}") from None
    if not isinstance(event, dict):
        raise Undecodable("not a JSON object")
    event_type, data = event.get("type"), event.get("data")
    if not isinstance(event_type, str) or not isinstance(data, dict):
        raise Undecodable("no string `type` or object `data`")
    if event_type == "new_item":
        _require_str(data, "item")
        _require_str(data, "category")
        price = data.get("price")
        # bool is an int in Python; a price of `true` is a broken producer, not a price of 1.
        if isinstance(price, bool) or not isinstance(price, (int, float)):
            raise Undecodable("new_item.price is not a number")
        if not _finite(price) or price < 0:
            raise Undecodable("new_item.price is not a finite, non-negative number")
    elif event_type == "user_action":
        _require_str(data, "user")
        _require_str(data, "item")
        if data.get("action") not in ACTIONS:
            raise Undecodable(f"user_action.action is not one of {ACTIONS}")
    return event_type, data


def _finite(number: int | float) -> bool:
    """Whether a JSON number is a finite float (JSON allows NaN, Infinity and 400-digit ints)."""
    try:
        return math.isfinite(number)
    except OverflowError:
        return False


def _require_str(data: dict, name: str) -> None:
    if not isinstance(data.get(name), str) or not data[name]:
        raise Undecodable(f"`{name}` is not a non-empty string")


# ---------------------------------------------------------------------------------------------
# Entity state and features: plain dicts, as a Python team keeps them.
# ---------------------------------------------------------------------------------------------


@dataclass
class Counts:
    """Actions on (or by) one entity."""

    view: int = 0
    add_to_cart: int = 0
    purchase: int = 0


@dataclass
class Item:
    counts: Counts = field(default_factory=Counts)
    price: float | None = None
    category: str | None = None


@dataclass
class User:
    counts: Counts = field(default_factory=Counts)
    # Views per category, for the share of the user's attention an item's category gets.
    category_views: dict[str, int] = field(default_factory=dict)


class Bookstore:
    """Every user's, item's and category's running counts, in process memory."""

    def __init__(self) -> None:
        self.users: dict[str, User] = {}
        self.items: dict[str, Item] = {}
        self.categories: dict[str, Counts] = {}

    def add_item(self, data: dict) -> None:
        """A `new_item` event: the item's price and category (a re-listing updates them)."""
        item = self.items.setdefault(data["item"], Item())
        item.price = float(data["price"])
        item.category = data["category"]

    def features(self, data: dict) -> dict[str, float]:
        """The feature dict of a `user_action`, from the state BEFORE that action is counted.

        Names and definitions follow freshet's bookstore features of schema version 3
        (shared/features/src/bookstore.rs) where they need no clock: counts as ln(1 + n), rates
        smoothed towards a prior. The event-time windows and recency features are left out: a
        Python team would need a stream processor for those.
        """
        user = self.users.get(data["user"]) or User()
        item = self.items.get(data["item"]) or Item()
        category = self.categories.get(item.category) if item.category else None
        category = category or Counts()
        category_rate = _smoothed(category.purchase, category.view, PRIOR_PURCHASE_RATE)
        category_views = user.category_views.get(item.category, 0) if item.category else 0
        return {
            "user_log_views": math.log1p(user.counts.view),
            "user_log_carts": math.log1p(user.counts.add_to_cart),
            "user_log_purchases": math.log1p(user.counts.purchase),
            "user_purchase_rate": _smoothed(
                user.counts.purchase, user.counts.view, PRIOR_PURCHASE_RATE
            ),
            "user_category_share": _smoothed(
                category_views, user.counts.view, PRIOR_CATEGORY_SHARE
            ),
            "item_log_views": math.log1p(item.counts.view),
            "item_purchase_rate": _smoothed(item.counts.purchase, item.counts.view, category_rate),
            "item_log_price": math.log1p(item.price) if item.price is not None else 0.0,
            "category_purchase_rate": category_rate,
        }

    def count_action(self, data: dict) -> None:
        """Counts a `user_action` on its user, its item and the item's category."""
        action = data["action"]
        user = self.users.setdefault(data["user"], User())
        item = self.items.setdefault(data["item"], Item())
        _bump(user.counts, action)
        _bump(item.counts, action)
        if item.category is not None:
            _bump(self.categories.setdefault(item.category, Counts()), action)
            if action == "view":
                views = user.category_views
                views[item.category] = views.get(item.category, 0) + 1


def _bump(counts: Counts, action: str) -> None:
    setattr(counts, action, getattr(counts, action) + 1)


def _smoothed(hits: int, trials: int, prior: float) -> float:
    return (hits + PRIOR_WEIGHT * prior) / (trials + PRIOR_WEIGHT)


def new_model() -> compose.Pipeline:
    return compose.Pipeline(preprocessing.StandardScaler(), linear_model.LogisticRegression())


# ---------------------------------------------------------------------------------------------
# Snapshots: pickle to a file, then announce it in KV.
# ---------------------------------------------------------------------------------------------


def write_pickle(model, store: str, version: int) -> str:
    """Pickles the model to `store/peer-v{version}.pkl` atomically (temp file, then rename), so
    a predictor never opens half a file. Returns the absolute path."""
    path = os.path.abspath(os.path.join(store, f"peer-v{version}.pkl"))
    temporary = f"{path}.tmp"
    with open(temporary, "wb") as file:
        file.write(pickle.dumps(model))
    os.replace(temporary, path)
    return path


async def open_bucket(js, bucket: str):
    """The KV bucket, created with history 1 when it does not exist yet."""
    try:
        return await js.key_value(bucket)
    except nats.js.errors.BucketNotFoundError:
        return await js.create_key_value(bucket=bucket, history=1)


# ---------------------------------------------------------------------------------------------
# The consumer loop.
# ---------------------------------------------------------------------------------------------


async def run(args) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    os.makedirs(args.store, exist_ok=True)
    nc = await nats.connect(args.nats_url, connect_timeout=5, max_reconnect_attempts=10)
    js = nc.jetstream()
    kv = await open_bucket(js, args.bucket)
    # The durable consumer is created on first use (explicit ack, from the stream's start) and
    # resumed by name afterwards, the way a Kafka consumer group resumes from its commits.
    subscription = await js.pull_subscribe(args.filter, durable=args.durable, stream=args.stream)
    print(
        f"peer trainer: consuming {args.stream} ({args.filter}) as durable {args.durable}",
        file=sys.stderr,
        flush=True,
    )

    model = new_model()
    store = Bookstore()
    learned = handled = undecodable = ignored = version = 0
    started = finished = None

    while not stop.is_set() and (args.count is None or learned < args.count):
        # Never fetch more than the learned events still wanted: each message is at most one
        # learned event, so with --count no fetched message is left unacknowledged.
        want = args.batch if args.count is None else min(args.batch, args.count - learned)
        try:
            # A short timeout so SIGTERM is noticed within a second on an idle stream.
            messages = await subscription.fetch(want, timeout=1.0)
        except nats.errors.TimeoutError:
            continue
        if started is None:
            started = time.perf_counter()
        for message in messages:
            snapshot_due = False
            try:
                event_type, data = decode(message.data)
            except Undecodable as error:
                undecodable += 1
                if undecodable <= 10:  # the first few only: a flood must not drown the log
                    print(f"peer trainer: skipped an undecodable event: {error}", file=sys.stderr)
            else:
                if event_type == "new_item":
                    store.add_item(data)
                elif event_type == "user_action":
                    x = store.features(data)
                    model.learn_one(x, data["action"] == "purchase")
                    store.count_action(data)
                    learned += 1
                    snapshot_due = learned % args.every == 0
                else:
                    ignored += 1
            await message.ack()
            handled += 1
            if snapshot_due:
                version += 1
                path = write_pickle(model, args.store, version)
                record = {
                    "version": version,
                    "path": path,
                    "last_sequence": message.metadata.sequence.stream,
                    "events": learned,
                    "at": time.time(),
                }
                await kv.put(args.key, json.dumps(record).encode())
        finished = time.perf_counter()

    await nc.drain()  # flushes the last acknowledgements
    seconds = (finished - started) if started is not None else 0.0
    rate = learned / seconds if seconds > 0 else 0.0
    print(
        f"peer trainer: learned={learned} seconds={seconds:.3f} events_per_s={rate:.0f} "
        f"handled={handled} versions={version} undecodable={undecodable} ignored={ignored}",
        file=sys.stderr,
    )
    return 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--nats-url", default="nats://127.0.0.1:4222", help="NATS server (%(default)s)")
    add("--stream", default="EVENTS", help="JetStream stream of the events (%(default)s)")
    add(
        "--filter",
        default="freshet.events.>",
        help="subject filter (%(default)s): matches both the published "
        "freshet.events.<type>.<entity> and the partitioned "
        "freshet.events.<partition>.<type>.<entity>",
    )
    add("--durable", default="peer", help="durable consumer name (%(default)s)")
    add("--store", metavar="DIR", required=True, help="folder for the pickles, created")
    add("--bucket", default="PEER", help="KV bucket, created with history 1 (%(default)s)")
    add("--key", default="peer.live", help="KV key announcing each pickle (%(default)s)")
    add("--every", type=_positive, default=1000, help="learned events per pickle (%(default)s)")
    add(
        "--count",
        metavar="N",
        type=_positive,
        help="stop after N learned events (default: run until SIGTERM or SIGINT)",
    )
    add("--batch", type=_positive, default=256, help="messages per pull (%(default)s)")
    return parser.parse_args(argv)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive integer")
    return value


if __name__ == "__main__":
    sys.exit(asyncio.run(run(parse_args())))
