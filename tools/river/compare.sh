#!/usr/bin/env bash
# The logistic model beside River on the same public streams, in one run: installs River, builds
# freshet-quality (release), writes the stream files and scores River on them, trains freshet on
# the same files, then prints the joined Markdown table (also written to comparison.md and
# comparison.json beside the stream files).
#
# freshet's compared setting is River's optimizer per row: η0 = 0.01 × batch size (the linear
# scaling rule), no decay, no L2, one setting for every stream. It is also run with its built-in
# defaults (Hyper::default) at batches 1 and 32, for the accuracy column of what ships.
#
# Settings (environment): OUT (default target/quality), ROWS per synthetic stream (20000),
# SEED (42), RUNS per freshet setting (3, median rate).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here"
out=${OUT:-target/quality}
rows=${ROWS:-20000}
seed=${SEED:-42}
runs=${RUNS:-3}
target=${CARGO_TARGET_DIR:-$here/target}

bash tools/river/install.sh >/dev/null
${CARGO:-cargo} build --quiet --release -p freshet-tests --bin freshet-quality
bin="$target/release/freshet-quality"

.tools/river-venv/bin/python tests/quality/streams.py --out "$out" --rows "$rows" --seed "$seed"
streams=("$out"/sea_drift.csv "$out"/hyperplane.csv "$out"/hyperplane_20.csv "$out"/agrawal_drift.csv "$out"/phishing.csv)
"$bin" --runs "$runs" --batch 1 --batch 32 --batch 256 \
  --learning-rate 0.01 --scale-rate-by-batch --decay 0 --l2 0 \
  --json "$out/freshet.json" "${streams[@]}" >&2
"$bin" --runs 1 --batch 1 --batch 32 --json "$out/freshet-default.json" "${streams[@]}" >&2 >&2
.tools/river-venv/bin/python tests/quality/table.py "$out" | tee "$out/comparison.md"
# Training rate of every model kind at batch 256 on the 20-feature stream (same run, same file).
{
  echo
  echo "Training rate per model kind, batch 256, hyperplane_20 (20 features), median of $runs runs:"
  echo
  echo "| kind | rows | batch | η0 | accuracy | log-loss | train rows/s |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
  for kind in logistic mlp factorization_machine; do
    "$bin" --runs "$runs" --batch 256 --kind "$kind" --learning-rate 0.01 --scale-rate-by-batch \
      --decay 0 --l2 0 --json "$out/kind-$kind.json" "$out/hyperplane_20.csv" | tail -n 1 \
      | sed "s/^| hyperplane_20 /| $kind /"
  done
} | tee -a "$out/comparison.md"
