#!/usr/bin/env bash
# Installs River (the reference the logistic model is compared against) into the git-ignored
# venv .tools/river-venv, apart from .tools/venv so its numpy/scipy never touch the test tools.
# Idempotent: a second run only checks the pinned versions are there.
set -euo pipefail
here=$(cd "$(dirname "$0")/../.." && pwd)
venv="$here/.tools/river-venv"
requirements="$here/tools/river/requirements.txt"

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
# pip is only called when a pin is missing or differs, so a re-run takes a fraction of a second.
if ! "$venv/bin/python" - "$requirements" <<'PY' 2>/dev/null
import sys
from importlib.metadata import version
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if line:
        name, pinned = line.split("==")
        if version(name) != pinned:
            sys.exit(1)
PY
then
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$requirements"
fi
"$venv/bin/python" -c 'import river; print("river", river.__version__)'
