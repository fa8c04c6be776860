"""River's drift detectors on the benchmark's streams, the reference for `freshet-bench --suite
detectors`.

Reads the streams the Rust suite wrote (JSON: {"streams": [{"family", "seed", "binary",
"detectors", "values"}]}), runs each named River detector with River's default parameters over
each stream, and writes, per stream and detector, the indexes at which River signalled drift and
the seconds its update loop took (time.perf_counter around the loop alone).

Usage: python detectors.py STREAMS.json OUT.json  (with River from tools/river/requirements.txt)
"""

from __future__ import annotations

import json
import sys
import time

import river
from river import drift


def make(name: str, seed: int):
    if name == "adwin":
        return drift.ADWIN()
    if name == "page_hinkley":
        return drift.PageHinkley()
    if name == "ddm":
        return drift.binary.DDM()
    if name == "kswin":
        return drift.KSWIN(seed=seed)
    raise ValueError(f"River has no {name}")


def main() -> None:
    streams = json.load(open(sys.argv[1]))["streams"]
    results = []
    for stream in streams:
        values = stream["values"]
        for name in stream["detectors"]:
            if name == "psi" or "@" in name:
                continue  # River has no PSI detector; "<name>@drift" runs are freshet's only
            detector = make(name, stream["seed"])
            detections = []
            start = time.perf_counter()
            for i, x in enumerate(values):
                detector.update(x)
                if detector.drift_detected:
                    detections.append(i)
            seconds = time.perf_counter() - start
            results.append(
                {
                    "family": stream["family"],
                    "seed": stream["seed"],
                    "detector": name,
                    "detections": detections,
                    "seconds": seconds,
                }
            )
    json.dump({"river_version": river.__version__, "results": results}, open(sys.argv[2], "w"))


if __name__ == "__main__":
    main()
