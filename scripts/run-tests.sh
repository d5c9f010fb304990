#!/usr/bin/env bash
# Run pytest; exit non-zero when it fails OR when it ran no test (pytest exit 5).
set -uo pipefail
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "run-tests: pytest collected no tests — failing on purpose" >&2
  exit 1
fi
exit "$rc"
