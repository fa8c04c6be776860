"""Joins River's and freshet's results on the same stream files into Markdown tables.

Reads ``<out>/river.json`` (from ``streams.py``) and the ``freshet-quality`` reports that
``tools/river/compare.sh`` writes beside it, prints two tables and writes
``<out>/comparison.json`` with the joined figures. Standard library only.

- **Accuracy against River**: River's models (the logistic pipeline, HAT, ARF) beside freshet's
  logistic model with the defaults it shipped before one step per row (``freshet-before.json``,
  batch 256) and with those it ships now (``kind-logistic.json``, batches 1 and 256), and the
  mlp and the fourier kind with the shipped settings (``kind-mlp.json``, ``kind-fourier.json``).
- **Through the pipeline**: the same files published as examples and learned by the ``train``
  binary with its defaults, before and now (``pipeline-before.json``, ``pipeline-default.json``),
  and with ``--kind fourier`` (``pipeline-fourier.json``), each beside the raw JetStream floor
  of the same run (a bare pull consumer draining the same backlog).
- **Recovery after the concept change** of the two streams that switch concept mid-stream (SEA's
  threshold, Agrawal's function; ``streams.py`` centres the switch at the middle row, over a
  twentieth of the rows): accuracy over the 1,000 rows before the switch begins, and how many
  rows after its centre pass until the accuracy over the last 500 rows, all after the centre,
  is back within 2 points of that level (from each model's row-by-row predictions).
- **Every kind, batch 256 against batch 1**: for each kind, prequential accuracy at batch 1 and
  at batch 256 with the shipped one row per step, and at batch 256 with one step per batch (the
  rate scaled by the batch, the linear scaling rule), with the training rate of each.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

KINDS = ("logistic", "mlp", "factorization_machine", "fourier")


def load(path: Path) -> dict[tuple[str, int, int], dict] | None:
    """A freshet-quality report keyed by (stream, batch, rows per step), or None if absent."""
    if not path.exists():
        return None
    report = json.loads(path.read_text())
    table = {}
    for r in report["results"]:
        step = r["hyper"]["rows_per_step"] or r["batch"]
        table[(r["stream"], r["batch"], step)] = r
    return table


def pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}"


def rate(v: float | None) -> str:
    return "–" if v is None else f"{v:,.0f}"


#: Streams whose concept switches mid-stream: the switch is centred at rows // 2 and spread
#: over rows // 20 rows (``sea_drift`` and ``agrawal_drift`` in ``streams.py``).
CHANGING = ("sea_drift", "agrawal_drift")
#: Rows before the switch begins over which the level to recover is measured.
BEFORE = 1000
#: Trailing rows over which recovery is judged, and the tolerance, in accuracy.
RECOVERY_WINDOW = 500
TOLERANCE = 0.02


def recovery(hits: str | None, rows: int) -> tuple[float, int | None] | None:
    """(accuracy before the switch, rows after its centre until the trailing accuracy is back
    within TOLERANCE of it, or None if never), or None without row-by-row predictions."""
    if not hits or len(hits) != rows:
        return None
    centre, width = rows // 2, max(rows // 20, 1)
    start = centre - width // 2
    level = hits[start - BEFORE:start].count("1") / BEFORE
    window = hits[centre:centre + RECOVERY_WINDOW].count("1")
    for end in range(centre + RECOVERY_WINDOW, rows + 1):
        if end > centre + RECOVERY_WINDOW:
            window += (hits[end - 1] == "1") - (hits[end - 1 - RECOVERY_WINDOW] == "1")
        if window / RECOVERY_WINDOW >= level - TOLERANCE:
            return level, end - centre
    return level, None


def main() -> int:
    if len(sys.argv) != 2:
        print(f"usage: {sys.argv[0]} OUT_DIR", file=sys.stderr)
        return 2
    out = Path(sys.argv[1])
    river = json.loads((out / "river.json").read_text())
    before = load(out / "freshet-before.json") or {}
    river_setting = load(out / "freshet-river-setting.json") or {}
    kinds = {kind: load(out / f"kind-{kind}.json") or {} for kind in KINDS}
    default = kinds["logistic"]
    kinds_batch_step = {kind: load(out / f"kind-{kind}-batch-step.json") or {} for kind in KINDS}
    models = river.get("models", ["logistic"])

    def load_pipeline(path: Path) -> dict[str, dict]:
        if not path.exists():
            return {}
        return {r["stream"]: r for r in json.loads(path.read_text())["results"]}

    pipeline_before = load_pipeline(out / "pipeline-before.json")
    pipeline_default = load_pipeline(out / "pipeline-default.json")
    pipeline_fourier = load_pipeline(out / "pipeline-fourier.json")
    pipeline_population = load_pipeline(out / "pipeline-population.json")
    population = load_pipeline(out / "population-auto.json")

    def get(table: dict, stream: str, batch: int, step: int, key: str, rows: int):
        row = table.get((stream, batch, step))
        if row is None:
            return None
        if row["rows"] != rows:
            raise SystemExit(f"{stream}: freshet read {row['rows']} rows, River {rows}")
        return row[key]

    river_names = {"logistic": "River logistic", "hat": "River HAT", "arf": "River ARF"}
    joined = []
    for name, ref in river["streams"].items():
        rows = ref["rows"]
        entry = {"stream": name, "rows": rows, "river": {}}
        for model in models:
            result = ref.get("models", {}).get(model, ref if model == "logistic" else None)
            entry["river"][model] = None if result is None else {
                "accuracy": result["accuracy"],
                "learn_rows_per_second": result["learn_rows_per_second"],
            }
        entry["freshet_before_b256"] = get(before, name, 256, 256, "accuracy", rows)
        entry["freshet_river_setting_b1"] = get(river_setting, name, 1, 1, "accuracy", rows)
        entry["freshet_river_setting_b256"] = get(river_setting, name, 256, 1, "accuracy", rows)
        entry["freshet_default_b1"] = get(default, name, 1, 1, "accuracy", rows)
        entry["freshet_default_b256"] = get(default, name, 256, 1, "accuracy", rows)
        for label, table in (("before", pipeline_before), ("default", pipeline_default),
                             ("fourier", pipeline_fourier), ("population", pipeline_population)):
            row = table.get(name)
            entry[f"pipeline_{label}"] = None if row is None else row["accuracy"]
            entry[f"pipeline_{label}_rows_per_second"] = (
                None if row is None else row["rows_per_second"]
            )
            entry[f"pipeline_{label}_floor_rows_per_second"] = (
                None if row is None else row.get("floor_rows_per_second")
            )
            if row is not None and row["window_examples"] != rows:
                print(f"note: {name}: train learned {row['window_examples']} of {rows} rows "
                      f"({label})", file=sys.stderr)
        entry["recovery"] = {}
        if name in CHANGING:
            for model in models:
                result = ref.get("models", {}).get(model)
                entry["recovery"][river_names.get(model, model)] = recovery(
                    None if result is None else result.get("hits"), rows)
            for kind in KINDS:
                entry["recovery"][f"freshet {kind}, defaults, b256"] = recovery(
                    get(kinds[kind], name, 256, 1, "hits", rows), rows)
            served = population.get(name)
            entry["recovery"]["freshet population (auto), b256, served"] = recovery(
                None if served is None else served["hits"], rows)
        served = population.get(name)
        entry["population"] = None if served is None else {
            "accuracy": served["accuracy"],
            "members": served["members"],
            "promotions": served["promotions"],
            "rows_per_second": served["rows_per_second"],
        }
        entry["kinds"] = {}
        for kind in KINDS:
            entry["kinds"][kind] = {
                "b1": get(kinds[kind], name, 1, 1, "accuracy", rows),
                "b256": get(kinds[kind], name, 256, 1, "accuracy", rows),
                "b256_rows_per_second": get(kinds[kind], name, 256, 1, "rows_per_second", rows),
                "b256_one_step": get(kinds_batch_step[kind], name, 256, 256, "accuracy", rows),
                "b256_one_step_rows_per_second": get(
                    kinds_batch_step[kind], name, 256, 256, "rows_per_second", rows
                ),
            }
        joined.append(entry)

    header = (
        ["stream", "rows"]
        + [river_names.get(m, m) for m in models]
        + ["freshet logistic, before: b256 (one step)", "at River's η 0.01: b1", "b256",
           "freshet logistic, defaults: b1", "b256", "train binary, before", "train binary, defaults",
           "freshet mlp, defaults: b256", "freshet fourier, defaults: b1", "b256",
           "train binary, --kind fourier"]
    )
    lines = [
        "Prequential accuracy, %:",
        "",
        "| " + " | ".join(header) + " |",
        "| --- | " + " | ".join("---:" for _ in header[1:]) + " |",
    ]
    for e in joined:
        cells = [e["stream"], f"{e['rows']:,}"]
        cells += [pct(None if e["river"][m] is None else e["river"][m]["accuracy"]) for m in models]
        cells += [pct(e["freshet_before_b256"]), pct(e["freshet_river_setting_b1"]),
                  pct(e["freshet_river_setting_b256"]), pct(e["freshet_default_b1"]),
                  pct(e["freshet_default_b256"]), pct(e["pipeline_before"]),
                  pct(e["pipeline_default"]), pct(e["kinds"]["mlp"]["b256"]),
                  pct(e["kinds"]["fourier"]["b1"]), pct(e["kinds"]["fourier"]["b256"]),
                  pct(e["pipeline_fourier"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "River's learn_one rows/s: "
        + "; ".join(
            f"{river_names.get(m, m)} "
            + ", ".join(
                rate(None if e["river"][m] is None else e["river"][m]["learn_rows_per_second"])
                for e in joined
            )
            for m in models
        )
        + " (streams in the order above). The train binary, end to end (start-up included), "
        "rows/s: before "
        + ", ".join(rate(e["pipeline_before_rows_per_second"]) for e in joined)
        + "; defaults "
        + ", ".join(rate(e["pipeline_default_rows_per_second"]) for e in joined)
        + "; --kind fourier "
        + ", ".join(rate(e["pipeline_fourier_rows_per_second"]) for e in joined)
        + "; the raw JetStream floor of each run (a bare pull consumer draining the same "
        "backlog), defaults "
        + ", ".join(rate(e["pipeline_default_floor_rows_per_second"]) for e in joined)
        + ".",
        "",
        "Every kind at the shipped settings (one row per step), batch 256 against batch 1, and at "
        "batch 256 with one step per batch (η × 256), accuracy % and train rows/s:",
        "",
        "| stream | kind | b1 | b256 | b256 − b1 (points) | b256 rows/s | b256, one step per batch "
        "| its rows/s |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for e in joined:
        for kind in KINDS:
            k = e["kinds"][kind]
            gap = None if k["b1"] is None or k["b256"] is None else 100 * (k["b256"] - k["b1"])
            lines.append(
                f"| {e['stream']} | {kind} | {pct(k['b1'])} | {pct(k['b256'])} "
                f"| {'–' if gap is None else f'{gap:+.2f}'} | {rate(k['b256_rows_per_second'])} "
                f"| {pct(k['b256_one_step'])} | {rate(k['b256_one_step_rows_per_second'])} |"
            )
    lines += [
        "",
        f"Recovery after the concept change: accuracy % over the {BEFORE:,} rows before the "
        f"switch begins, and rows after its centre until the accuracy over the last "
        f"{RECOVERY_WINDOW} rows is back within {100 * TOLERANCE:.0f} points of it:",
        "",
        "| stream | model | before the switch | rows to recover |",
        "| --- | --- | ---: | ---: |",
    ]
    for e in joined:
        for model, measured in e["recovery"].items():
            if measured is None:
                continue
            level, rows_needed = measured
            lines.append(f"| {e['stream']} | {model} | {pct(level)} | "
                         f"{'not by the end' if rows_needed is None else f'{rows_needed:,}'} |")
    lines += [
        "",
        "The population (`--population auto`: logistic, mlp and fourier, shipped settings, batch "
        "256), judged by drift's gate with its defaults; served accuracy is each row's "
        "prequential prediction by the member live when it arrived. Target: the best of River's "
        "models minus 1 point. Rates: in process, every member trained (rows/s), beside the "
        "logistic model alone; end to end, the train binary with and without the population "
        "(no gate runs there, so live stays logistic):",
        "",
        "| stream | served accuracy | best River − 1 | met | members' own | promotions "
        "| in process rows/s | logistic alone | train binary, population | train binary, defaults |",
        "| --- | ---: | ---: | --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for e in joined:
        p = e["population"]
        if p is None:
            continue
        best = max((r["accuracy"] for r in e["river"].values() if r is not None), default=None)
        target = None if best is None else best - 0.01
        met = "–" if target is None else ("yes" if p["accuracy"] >= target else "no")
        own = ", ".join(f"{k} {pct(a)}" for k, a in p["members"])
        moves = ", ".join(f"{m['from']}→{m['to']} at {m['row']:,}" for m in p["promotions"]) or "none"
        lines.append(
            f"| {e['stream']} | {pct(p['accuracy'])} | {pct(target)} | {met} | {own} | {moves} "
            f"| {rate(p['rows_per_second'])} | {rate(e['kinds']['logistic']['b256_rows_per_second'])} "
            f"| {rate(e['pipeline_population_rows_per_second'])} "
            f"| {rate(e['pipeline_default_rows_per_second'])} |"
        )
    print("\n".join(lines))
    summary = {
        "river": {k: river[k] for k in ("model", "river", "python", "seed") if k in river},
        "river_models": models,
        "streams": joined,
    }
    (out / "comparison.json").write_text(json.dumps(summary, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
