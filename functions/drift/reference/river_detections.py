"""Golden detections for drift's detectors, taken from River (`river.drift`).

Builds deterministic sequences with known change points, runs River's ADWIN, PageHinkley,
binary DDM and KSWIN on them with River's default parameters, and writes the sequences, the
indexes at which River signalled, and River-free PSI and Kolmogorov-Smirnov reference values to
river_detections.json beside this script. The Rust tests in src/detectors/river_parity.rs read
that file, so re-running this script and committing its output is how the goldens are refreshed.

Usage, from any directory (River pulls in numpy and scipy):

    python3 -m venv /tmp/river-venv && /tmp/river-venv/bin/pip install river
    /tmp/river-venv/bin/python functions/drift/reference/river_detections.py

The committed JSON was written with River 0.26.1 (see its river_version); River 0.22.0, whose
ADWIN is the Cython one, writes the same file apart from that field.

Every value is rounded to 6 decimals before any detector sees it. A decimal with at most 16
significant digits and a power-of-ten exponent below 22 reads back bit-exactly with one correctly
rounded division, so the Rust side sees the very doubles River saw whatever JSON parser it uses.
"""

from __future__ import annotations

import json
import math
import pathlib
import platform
import random

import numpy as np
import river
import scipy
from river import drift
from scipy import stats

OUT = pathlib.Path(__file__).with_name("river_detections.json")

# KSWIN draws its comparison sample at random, so River's indexes depend on its seed; the Rust
# tests compare rates and delays, not indexes, and these seeds give River's spread.
KSWIN_SEEDS = [0, 1, 2, 3, 4]

PSI_EPSILON = 1e-4
PSI_BINS = 10


def r6(x: float) -> float:
    return round(float(x), 6)


def gauss(rng: random.Random, mu: float, sigma: float, k: int) -> list[float]:
    return [r6(rng.gauss(mu, sigma)) for _ in range(k)]


def bernoulli(rng: random.Random, p: float, k: int) -> list[float]:
    return [1.0 if rng.random() < p else 0.0 for _ in range(k)]


def sequences() -> dict[str, dict]:
    """Named sequences: values, change points and whether the stream is binary."""
    out = {}

    rng = random.Random(20240601)
    out["mean_shift"] = {
        "description": "N(0,1) then N(1,1) from 1000, then N(-0.5,1) from 2000",
        "change_points": [1000, 2000],
        "binary": False,
        "values": gauss(rng, 0.0, 1.0, 1000) + gauss(rng, 1.0, 1.0, 1000) + gauss(rng, -0.5, 1.0, 1000),
    }

    rng = random.Random(20240602)
    out["variance_change"] = {
        "description": "N(0,1) then N(0,3) from 1000 (same mean, wider spread)",
        "change_points": [1000],
        "binary": False,
        "values": gauss(rng, 0.0, 1.0, 1000) + gauss(rng, 0.0, 3.0, 1000),
    }

    rng = random.Random(20240603)
    out["stationary"] = {
        "description": "N(0,1) throughout: every signal is a false alarm",
        "change_points": [],
        "binary": False,
        "values": gauss(rng, 0.0, 1.0, 10000),
    }

    # The example in River's ADWIN and PageHinkley docstrings (ADWIN: 1023, PageHinkley: 1006).
    rng = random.Random(12345)
    out["river_docstring_steps"] = {
        "description": "River's docstring example: choices([0, 1]) then choices(range(4, 8)) from 1000",
        "change_points": [1000],
        "binary": False,
        "values": [float(v) for v in rng.choices([0, 1], k=1000) + rng.choices(range(4, 8), k=1000)],
    }

    rng = random.Random(20240604)
    out["error_rate_rise"] = {
        "description": "Bernoulli errors, rate 0.1 then 0.3 from 1000, then 0.1 again from 2000",
        "change_points": [1000, 2000],
        "binary": True,
        "values": bernoulli(rng, 0.1, 1000) + bernoulli(rng, 0.3, 1000) + bernoulli(rng, 0.1, 1000),
    }

    # The example in River's DDM docstring (warning 1084, drift 1334, warning 1492).
    rng = random.Random(42)
    out["river_docstring_ddm"] = {
        "description": "River's DDM docstring example: error rate 0.5 then 0.7 from 1000",
        "change_points": [1000],
        "binary": True,
        "values": [
            float(v)
            for v in rng.choices([0, 1], k=1000) + rng.choices([0, 1], k=1000, weights=[0.3, 0.7])
        ],
    }
    return out


def run(detector, values, warnings=False):
    drifts, warns = [], []
    for i, x in enumerate(values):
        detector.update(x)
        if detector.drift_detected:
            drifts.append(i)
        if warnings and detector.warning_detected:
            warns.append(i)
    return (drifts, warns) if warnings else drifts


def river_detections(seqs: dict[str, dict]) -> dict[str, dict]:
    out = {}
    for name, seq in seqs.items():
        values = seq["values"]
        entry = {
            "adwin": run(drift.ADWIN(), values),
            "page_hinkley": run(drift.PageHinkley(mode="both"), values),
        }
        if seq["binary"]:
            drifts, warns = run(drift.binary.DDM(), values, warnings=True)
            entry["ddm"] = {"drifts": drifts, "warnings": warns}
        else:
            entry["kswin"] = {
                str(seed): run(drift.KSWIN(alpha=0.005, window_size=100, stat_size=30, seed=seed), values)
                for seed in KSWIN_SEEDS
            }
        out[name] = entry
    return out


def ks_cases() -> list[dict]:
    """Pairs of 30-value samples and scipy's two-sample KS result, as KSWIN calls it."""
    rng = random.Random(20240605)
    cases = []

    def add(name, a, b):
        st, p = stats.ks_2samp(a, b, method="auto")
        cases.append({"name": name, "a": a, "b": b, "statistic": float(st), "p_value": float(p)})

    add("same_distribution", gauss(rng, 0, 1, 30), gauss(rng, 0, 1, 30))
    add("shifted_by_one", gauss(rng, 0, 1, 30), gauss(rng, 1, 1, 30))
    add("shifted_by_half", gauss(rng, 0, 1, 30), gauss(rng, 0.5, 1, 30))
    add("wider", gauss(rng, 0, 1, 30), gauss(rng, 0, 3, 30))
    add("disjoint", gauss(rng, 0, 1, 30), gauss(rng, 100, 1, 30))
    add("identical", [float(i) for i in range(30)], [float(i) for i in range(30)])
    add("ties", [float(rng.randrange(4)) for _ in range(30)], [float(rng.randrange(5)) for _ in range(30)])
    return cases


# ---- PSI, by the formula documented in src/detectors/psi.rs, without River ----


def quantile(sorted_values: list[float], q: float) -> float:
    """Linear interpolation between order statistics (numpy's default, Hyndman-Fan type 7)."""
    n = len(sorted_values)
    h = (n - 1) * q
    lo = math.floor(h)
    if lo + 1 >= n:
        return sorted_values[n - 1]
    return sorted_values[lo] + (h - lo) * (sorted_values[lo + 1] - sorted_values[lo])


def psi_edges(reference: list[float], bins: int) -> list[float]:
    s = sorted(reference)
    edges = []
    for i in range(1, bins):
        e = quantile(s, i / bins)
        if not edges or e > edges[-1]:
            edges.append(e)
    # Cross-check the hand-written quantile against numpy's.
    expected = np.unique(np.quantile(np.array(reference), [i / bins for i in range(1, bins)]))
    assert np.allclose(edges, expected, rtol=0, atol=1e-12), (edges, expected)
    return edges


def bin_of(edges: list[float], x: float) -> int:
    # Bins are right-closed: the number of edges strictly below x.
    return sum(1 for e in edges if e < x)


def psi_from_counts(ref_counts, ref_n, cur_counts, cur_n, epsilon):
    total = 0.0
    for rc, cc in zip(ref_counts, cur_counts):
        r = max(rc / ref_n, epsilon)
        c = max(cc / cur_n, epsilon)
        total += (c - r) * math.log(c / r)
    return total


def counts(edges, values):
    out = [0] * (len(edges) + 1)
    for x in values:
        out[bin_of(edges, x)] += 1
    return out


def psi(reference, recent, bins=PSI_BINS, epsilon=PSI_EPSILON):
    edges = psi_edges(reference, bins)
    value = psi_from_counts(counts(edges, reference), len(reference), counts(edges, recent), len(recent), epsilon)
    # Cross-check with numpy's own binning and summation (order of summation may differ by ulps).
    ref_p = np.maximum(np.bincount(np.searchsorted(edges, reference, side="left"), minlength=len(edges) + 1) / len(reference), epsilon)
    cur_p = np.maximum(np.bincount(np.searchsorted(edges, recent, side="left"), minlength=len(edges) + 1) / len(recent), epsilon)
    assert abs(float(np.sum((cur_p - ref_p) * np.log(cur_p / ref_p))) - value) <= 1e-12 * max(1.0, value)
    return edges, value


def psi_cases(seqs) -> list[dict]:
    """Reference and recent windows are slices [start, end) of the named sequences."""
    cases = [
        ("same_window", ("mean_shift", 0, 1000), ("mean_shift", 0, 1000), PSI_BINS),
        ("stationary_halves", ("stationary", 0, 5000), ("stationary", 5000, 10000), PSI_BINS),
        ("stationary_small_windows", ("stationary", 0, 500), ("stationary", 500, 700), PSI_BINS),
        ("mean_shift_one_sigma", ("mean_shift", 0, 1000), ("mean_shift", 1000, 1500), PSI_BINS),
        ("mean_shift_five_bins", ("mean_shift", 0, 1000), ("mean_shift", 1000, 1500), 5),
        ("variance_tripled", ("variance_change", 0, 1000), ("variance_change", 1000, 2000), PSI_BINS),
        # Recent values (4 to 7) lie above the whole reference: every bin but the last is empty.
        ("empty_bins", ("mean_shift", 0, 1000), ("river_docstring_steps", 1000, 1200), PSI_BINS),
        # A reference of 0s and 1s: most quantiles coincide and collapse into a few edges.
        ("tied_reference", ("river_docstring_steps", 0, 1000), ("error_rate_rise", 0, 500), PSI_BINS),
    ]
    out = []
    for name, ref, cur, bins in cases:
        edges, value = psi(seqs[ref[0]]["values"][ref[1] : ref[2]], seqs[cur[0]]["values"][cur[1] : cur[2]], bins)
        out.append(
            {
                "name": name,
                "reference": {"sequence": ref[0], "start": ref[1], "end": ref[2]},
                "recent": {"sequence": cur[0], "start": cur[1], "end": cur[2]},
                "bins": bins,
                "edges": edges,
                "psi": value,
            }
        )
    return out


def psi_stream(values, reference_size, recent_size, bins=PSI_BINS, epsilon=PSI_EPSILON, moderate=0.1, significant=0.25):
    """The streaming wrapper: a reference fills first, then a sliding recent window; after a
    significant PSI everything starts afresh with the next value."""
    warnings, drifts, psis = [], [], {}
    reference, recent, edges, ref_counts = [], [], None, None
    for i, x in enumerate(values):
        if edges is None:
            reference.append(x)
            if len(reference) == reference_size:
                edges = psi_edges(reference, bins)
                ref_counts = counts(edges, reference)
            continue
        recent.append(x)
        if len(recent) > recent_size:
            recent.pop(0)
        if len(recent) < recent_size:
            continue
        value = psi_from_counts(ref_counts, reference_size, counts(edges, recent), recent_size, epsilon)
        if i % 50 == 0:
            psis[str(i)] = value
        if value >= significant:
            drifts.append(i)
            reference, recent, edges, ref_counts = [], [], None, None
        elif value >= moderate:
            warnings.append(i)
    return {"warnings": warnings, "drifts": drifts, "psi_every_50": psis}


def main():
    seqs = sequences()
    doc = {
        "generator": "functions/drift/reference/river_detections.py",
        "river_version": river.__version__,
        "python_version": platform.python_version(),
        "numpy_version": np.__version__,
        "scipy_version": scipy.__version__,
        "parameters": {
            "adwin": {"delta": 0.002, "clock": 32, "max_buckets": 5, "min_window_length": 5, "grace_period": 10},
            "page_hinkley": {"min_instances": 30, "delta": 0.005, "threshold": 50.0, "alpha": 1 - 0.0001, "mode": "both"},
            "ddm": {"warm_start": 30, "warning_threshold": 2.0, "drift_threshold": 3.0},
            "kswin": {"alpha": 0.005, "window_size": 100, "stat_size": 30, "seeds": KSWIN_SEEDS},
            "psi": {"bins": PSI_BINS, "epsilon": PSI_EPSILON, "moderate": 0.1, "significant": 0.25},
        },
        "sequences": seqs,
        "river": river_detections(seqs),
        "ks_cases": ks_cases(),
        "psi_cases": psi_cases(seqs),
        "psi_stream": {
            "sequence": "mean_shift",
            "reference_size": 500,
            "recent_size": 200,
            **psi_stream(seqs["mean_shift"]["values"], 500, 200),
        },
    }
    OUT.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    for name, entry in doc["river"].items():
        kswin = {seed: len(d) for seed, d in entry.get("kswin", {}).items()}
        ddm = {k: (v if k == "drifts" else len(v)) for k, v in entry.get("ddm", {}).items()}
        print(f"{name}: adwin {entry['adwin']} page_hinkley {entry['page_hinkley']} ddm {ddm} kswin counts {kswin}")
    print("psi:", [(c["name"], round(c["psi"], 4)) for c in doc["psi_cases"]])
    print("psi stream:", doc["psi_stream"]["drifts"], len(doc["psi_stream"]["warnings"]))


if __name__ == "__main__":
    main()
