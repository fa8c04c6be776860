#!/usr/bin/env bash
# freshet's models beside River on the same public streams, in one run: installs River, builds
# freshet-quality (release), writes the stream files and scores River's models on them, trains
# freshet on the same files, then prints the joined Markdown tables (also written to
# comparison.md and comparison.json beside the stream files).
#
# freshet runs:
# - kind-<kind>.json: every kind (logistic, mlp, factorization_machine, fourier) with the
#   defaults train ships (Hyper::default: SGD, η0 0.005 per step, constant, no L2, one row per
#   step) at batches 1 and 256, the rate of each the median of RUNS runs;
# - freshet-river-setting.json: logistic with River's optimizer per row (η0 0.01) at batches 1
#   and 256, the row-for-row comparison with River's logistic pipeline;
# - freshet-before.json: logistic with the defaults train shipped before (η0 0.5, decay 0.01,
#   L2 1e-4, one step per batch) at batch 256, the pipeline's batch;
# - kind-<kind>-batch-step.json: every kind at batch 256 in one step per batch, η0 × 256 (the
#   linear scaling rule): what stepping per row costs and buys;
# - pipeline-default.json and pipeline-before.json: every file published as examples to a fresh
#   nats-server and learned by the `train` binary, with the defaults it ships and with those it
#   shipped before (freshet-quality --pipeline): what a user running the pipeline gets; and
#   pipeline-fourier.json, the same with `--kind fourier`. Each also measures the raw floor: a
#   bare pull consumer draining the same backlog.
# - population-auto.json: the population `train --population auto` declares (logistic, mlp and
#   fourier with the shipped settings) at batch 256, judged by drift's gate with its defaults, in
#   process (freshet-quality --population): what live served, row by row;
#   pipeline-population.json: the train binary with `--population auto` (no gate runs there, so
#   live stays logistic): what training the population costs end to end.
#
# Settings (environment): OUT (default target/quality), ROWS per synthetic stream (20000),
# SEED (42), RUNS per freshet setting (3, median rate), RIVER_MODELS (logistic hat arf; ARF
# learns about 1,000 rows/s here, so it is most of the run's 3–5 minutes).
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
cd "$here"
out=${OUT:-target/quality}
rows=${ROWS:-20000}
seed=${SEED:-42}
runs=${RUNS:-3}
read -r -a river_models <<< "${RIVER_MODELS:-logistic hat arf}"
target=${CARGO_TARGET_DIR:-$here/target}

bash tools/river/install.sh >/dev/null
${CARGO:-cargo} build --quiet --release -p freshet-tests --bin freshet-quality
${CARGO:-cargo} build --quiet --release -p freshet-train
bash tools/install.sh >/dev/null # nats-server, for the pipeline runs
bin="$target/release/freshet-quality"

.tools/river-venv/bin/python tests/quality/streams.py --out "$out" --rows "$rows" --seed "$seed" \
  --models "${river_models[@]}"
streams=("$out"/sea_drift.csv "$out"/hyperplane.csv "$out"/hyperplane_20.csv "$out"/agrawal_drift.csv "$out"/phishing.csv "$out"/bananas.csv)
"$bin" --runs 1 --batch 1 --batch 256 --learning-rate 0.01 \
  --json "$out/freshet-river-setting.json" "${streams[@]}" >&2
"$bin" --runs 1 --batch 256 --learning-rate 0.5 --decay 0.01 --l2 1e-4 --rows-per-step 0 \
  --json "$out/freshet-before.json" "${streams[@]}" >&2
for kind in logistic mlp factorization_machine fourier; do
  "$bin" --runs "$runs" --kind "$kind" --batch 1 --batch 256 \
    --json "$out/kind-$kind.json" "${streams[@]}" >&2
  "$bin" --runs "$runs" --kind "$kind" --batch 256 --rows-per-step 0 --scale-rate-by-step \
    --json "$out/kind-$kind-batch-step.json" "${streams[@]}" >&2
done
"$bin" --pipeline --json "$out/pipeline-default.json" "${streams[@]}" >&2
before=(--learning-rate 0.5 --lr-decay 0.01 --l2 1e-4 --rows-per-step 0)
"$bin" --pipeline "${before[@]/#/--train-arg=}" --json "$out/pipeline-before.json" "${streams[@]}" >&2
"$bin" --pipeline --train-arg=--kind --train-arg=fourier --json "$out/pipeline-fourier.json" \
  "${streams[@]}" >&2
"$bin" --runs "$runs" --population auto --batch 256 --json "$out/population-auto.json" \
  "${streams[@]}" >&2
"$bin" --pipeline --train-arg=--population --train-arg=auto \
  --json "$out/pipeline-population.json" "${streams[@]}" >&2
.tools/river-venv/bin/python tests/quality/table.py "$out" | tee "$out/comparison.md"
