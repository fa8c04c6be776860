"""Writes the public streams of the model comparison as CSV and scores River on them.

Each stream is drawn once from River's generators with a fixed seed and written to
``<out>/<name>.csv`` (a header of feature names, then ``label`` as 0/1, one row per example).
River is then run on *that file*, read back, so it learns exactly the rows, values and order that
``freshet-quality`` reads, prequentially (``predict_one`` then ``learn_one`` per row), accuracy
by ``metrics.Accuracy``. The models (``--models``): ``logistic``,
``StandardScaler | LogisticRegression(optimizer=SGD(0.01))``, the one freshet's logistic model
is compared with row for row; and River's strongest stock learners on these streams, ``hat``
(``HoeffdingAdaptiveTreeClassifier``) and ``arf`` (``ARFClassifier``, 10 trees), both seeded.
``learn_one`` is timed on its own (``perf_counter`` around each call, summed), beside the time of
the whole loop, and the results go to ``<out>/river.json``.

Every feature these generators emit is already a number (Agrawal's ``elevel``, ``car`` and
``zipcode`` are integer codes, Phishing's answers are 0, 0.5 or 1), so both sides take them as
they are; only the labels (bool or int) are mapped to 0/1.

Run with the venv from ``tools/river/install.sh``; ``tools/river/compare.sh`` drives both sides.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import river
from river import datasets, forest, linear_model, metrics, optim, preprocessing, tree
from river.datasets import synth

Row = tuple[dict[str, float], int]


def sea_drift(rows: int, seed: int) -> Iterable:
    """SEA (label: x0 + x1 <= threshold, 10 % label noise), threshold 8 then 7 mid-stream."""
    return synth.ConceptDriftStream(
        stream=synth.SEA(variant=0, noise=0.1, seed=seed),
        drift_stream=synth.SEA(variant=2, noise=0.1, seed=seed + 1),
        position=rows // 2,
        width=max(rows // 20, 1),
        seed=seed,
    )


def hyperplane(rows: int, seed: int) -> Iterable:
    """A hyperplane in 10 dimensions that keeps rotating (2 of them move by 0.001 per example,
    reversing direction with probability 0.1), with 5 % label noise."""
    del rows  # drifts continuously, so it has no mid-stream position to place
    return synth.Hyperplane(
        seed=seed, n_features=10, n_drift_features=2, mag_change=0.001,
        noise_percentage=0.05, sigma=0.1,
    )


def hyperplane_20(rows: int, seed: int) -> Iterable:
    """The same rotating hyperplane in 20 dimensions (5 of them drifting): the width the
    training-rate figures of every model kind are quoted at."""
    del rows
    return synth.Hyperplane(
        seed=seed, n_features=20, n_drift_features=5, mag_change=0.001,
        noise_percentage=0.05, sigma=0.1,
    )


def agrawal_drift(rows: int, seed: int) -> Iterable:
    """Agrawal's loan concept, River's function 1 (salary bands by age group) then function 2
    (education levels by age group) mid-stream, the first switch of MOA's AGR drift benchmark.
    Neither concept is linearly separable, so a linear model stays near the majority class."""
    return synth.ConceptDriftStream(
        stream=synth.Agrawal(classification_function=1, seed=seed),
        drift_stream=synth.Agrawal(classification_function=2, seed=seed + 1),
        position=rows // 2,
        width=max(rows // 20, 1),
        seed=seed,
    )


def phishing(rows: int, seed: int) -> Iterable:
    """River's bundled Phishing data set (1,250 rows, shipped inside the package)."""
    del rows, seed  # a fixed file: every row, in its order
    return datasets.Phishing()


def bananas(rows: int, seed: int) -> Iterable:
    """River's bundled Bananas data set (5,300 rows, 2 features): a non-linear boundary between
    two banana-shaped clusters, where a linear model stays near chance."""
    del rows, seed
    return datasets.Bananas()


#: Stream name -> (generator, whether `--rows` applies).
STREAMS: dict[str, tuple[Callable[[int, int], Iterable], bool]] = {
    "sea_drift": (sea_drift, True),
    "hyperplane": (hyperplane, True),
    "hyperplane_20": (hyperplane_20, True),
    "agrawal_drift": (agrawal_drift, True),
    "phishing": (phishing, False),
    "bananas": (bananas, False),
}

#: River model name -> a fresh model.
MODELS: dict[str, Callable[[], object]] = {
    "logistic": lambda: preprocessing.StandardScaler()
    | linear_model.LogisticRegression(optimizer=optim.SGD(0.01)),
    "hat": lambda: tree.HoeffdingAdaptiveTreeClassifier(seed=42),
    "arf": lambda: forest.ARFClassifier(seed=42),
}


def draw(name: str, rows: int, seed: int) -> Iterator[Row]:
    """The stream's examples with string feature names and 0/1 labels."""
    generator, sized = STREAMS[name]
    source = generator(rows, seed)
    examples = itertools.islice(source, rows) if sized else iter(source)
    for x, y in examples:
        yield {f"x{k}" if isinstance(k, int) else str(k): float(v) for k, v in x.items()}, int(bool(y))


def write_csv(path: Path, examples: Iterable[Row]) -> int:
    """Writes examples with a fixed column order (the first row's) and returns the row count."""
    count = 0
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        names: list[str] | None = None
        for x, y in examples:
            if names is None:
                names = list(x)
                writer.writerow([*names, "label"])
            if list(x) != names:
                raise ValueError(f"{path}: row {count} has features {list(x)}, expected {names}")
            # repr is the shortest text that reads back as the same float64.
            writer.writerow([*(repr(x[k]) for k in names), y])
            count += 1
    return count


def read_csv(path: Path) -> list[Row]:
    """Reads a stream file back; the same parsing rules as the Rust side (finite, 0/1 labels)."""
    rows: list[Row] = []
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        if header[-1] != "label":
            raise ValueError(f"{path}: last column is {header[-1]!r}, expected 'label'")
        names = header[:-1]
        for line, record in enumerate(reader, start=2):
            values = [float(v) for v in record[:-1]]
            if len(values) != len(names) or not all(math.isfinite(v) for v in values):
                raise ValueError(f"{path}:{line}: expected {len(names)} finite values")
            label = int(record[-1])
            if label not in (0, 1):
                raise ValueError(f"{path}:{line}: label {label} is not 0 or 1")
            rows.append((dict(zip(names, values)), label))
    return rows


def score_river(rows: list[Row], name: str = "logistic") -> dict:
    """A River model, prequentially; learn_one timed apart from the whole loop."""
    model = MODELS[name]()
    accuracy = metrics.Accuracy()
    hits = []
    learn_seconds = 0.0
    clock = time.perf_counter
    start = clock()
    for x, label in rows:
        y = label == 1
        predicted = model.predict_one(x)
        accuracy.update(y, predicted)
        hits.append("1" if predicted == y else "0")
        before = clock()
        model.learn_one(x, y)
        learn_seconds += clock() - before
    total_seconds = clock() - start
    return {
        "rows": len(rows),
        "accuracy": accuracy.get(),
        "learn_seconds": learn_seconds,
        "learn_rows_per_second": len(rows) / learn_seconds,
        "total_seconds": total_seconds,
        "total_rows_per_second": len(rows) / total_seconds,
        # Each row's prequential prediction, 1 right and 0 wrong, in file order.
        "hits": "".join(hits),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("target/quality"),
                        help="folder for the stream CSVs and river.json")
    parser.add_argument("--rows", type=int, default=20_000,
                        help="rows drawn from each synthetic stream (Phishing is always whole)")
    parser.add_argument("--seed", type=int, default=42, help="seed of every generator")
    parser.add_argument("--streams", nargs="+", choices=list(STREAMS), default=list(STREAMS))
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=["logistic"],
                        help="River models to score (the first is the reference column)")
    parser.add_argument("--write-only", action="store_true", help="write the CSVs, skip River")
    args = parser.parse_args()
    if args.rows < 1:
        parser.error("--rows must be at least 1")

    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for name in args.streams:
        path = args.out / f"{name}.csv"
        count = write_csv(path, draw(name, args.rows, args.seed))
        print(f"wrote {path} ({count} rows)", file=sys.stderr)
        if not args.write_only:
            rows = read_csv(path)
            scored = {model: score_river(rows, model) for model in args.models}
            # The first model's figures stay at the top level, where table.py reads them.
            results[name] = {"file": str(path), **scored[args.models[0]], "models": scored}
            for model, result in scored.items():
                print(f"river {model} {name}: accuracy {result['accuracy']:.4f}, "
                      f"learn_one {result['learn_rows_per_second']:,.0f} rows/s",
                      file=sys.stderr)
    if not args.write_only:
        report = {
            "model": "StandardScaler | LogisticRegression(optimizer=SGD(0.01))",
            "models": args.models,
            "river": river.__version__,
            "python": platform.python_version(),
            "seed": args.seed,
            "streams": results,
        }
        (args.out / "river.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
