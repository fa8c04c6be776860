"""Joins River's and freshet's results on the same stream files into one Markdown table.

Reads ``<out>/river.json`` (from ``streams.py``), ``<out>/freshet.json`` (freshet-quality with
the compared setting, batches 1, 32 and 256) and, if present, ``<out>/freshet-default.json``
(freshet-quality with its built-in defaults); prints the table and writes
``<out>/comparison.json`` with the joined figures. Standard library only.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def by_stream_and_batch(report: dict) -> dict[tuple[str, int], dict]:
    return {(r["stream"], r["batch"]): r for r in report["results"]}


def main() -> int:
    if len(sys.argv) != 2:
        print(f"usage: {sys.argv[0]} OUT_DIR", file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    river = json.loads((out / "river.json").read_text())
    freshet = json.loads((out / "freshet.json").read_text())
    default_path = out / "freshet-default.json"
    default = json.loads(default_path.read_text()) if default_path.exists() else None

    ours = by_stream_and_batch(freshet)
    theirs_default = by_stream_and_batch(default) if default else {}
    joined = []
    for name, ref in river["streams"].items():
        def get(table: dict, batch: int, key: str) -> float | None:
            row = table.get((name, batch))
            if row is not None and row["rows"] != ref["rows"]:
                raise SystemExit(f"{name}: freshet read {row['rows']} rows, River {ref['rows']}")
            return None if row is None else row[key]

        entry = {
            "stream": name,
            "rows": ref["rows"],
            "river_accuracy": ref["accuracy"],
            "river_learn_rows_per_second": ref["learn_rows_per_second"],
        }
        for batch in (1, 32, 256):
            entry[f"freshet_b{batch}_accuracy"] = get(ours, batch, "accuracy")
            entry[f"freshet_b{batch}_rows_per_second"] = get(ours, batch, "rows_per_second")
        for batch in (1, 32):
            entry[f"freshet_default_b{batch}_accuracy"] = get(theirs_default, batch, "accuracy")
        for batch in (1, 256):
            rate = entry[f"freshet_b{batch}_rows_per_second"]
            entry[f"speed_ratio_b{batch}"] = None if rate is None else rate / ref["learn_rows_per_second"]
        joined.append(entry)

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.2f} %"

    def rate(v: float | None) -> str:
        return "–" if v is None else f"{v:,.0f}"

    def ratio(v: float | None) -> str:
        return "–" if v is None else f"{v:.2f}×"

    lines = [
        "| stream | rows | River acc. | freshet acc. b1 | freshet acc. b32 "
        "| freshet defaults acc. b1 / b32 | River learn_one rows/s "
        "| freshet rows/s b1 | b32 | b256 | speed ratio b1 | speed ratio b256 |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for e in joined:
        lines.append(
            f"| {e['stream']} | {e['rows']:,} | {pct(e['river_accuracy'])} "
            f"| {pct(e['freshet_b1_accuracy'])} | {pct(e['freshet_b32_accuracy'])} "
            f"| {pct(e['freshet_default_b1_accuracy'])} / {pct(e['freshet_default_b32_accuracy'])} "
            f"| {rate(e['river_learn_rows_per_second'])} "
            f"| {rate(e['freshet_b1_rows_per_second'])} | {rate(e['freshet_b32_rows_per_second'])} "
            f"| {rate(e['freshet_b256_rows_per_second'])} "
            f"| {ratio(e['speed_ratio_b1'])} | {ratio(e['speed_ratio_b256'])} |"
        )
    print("\n".join(lines))
    summary = {
        "river": {k: river[k] for k in ("model", "river", "python", "seed")},
        "freshet": {k: freshet[k] for k in ("hyper", "scale_rate_by_batch", "runs", "build")},
        "freshet_default": None if default is None else default["hyper"],
        "streams": joined,
    }
    (out / "comparison.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
