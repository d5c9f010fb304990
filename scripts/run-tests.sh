#!/usr/bin/env bash
# Run pytest; exit non-zero when it fails OR when it ran no test (pytest exit 5). The 20 slowest tests are
# listed at the end (make test is kept under ~20 minutes: docs/development.md).
set -uo pipefail
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
.venv/bin/python -m pytest --durations=20 "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "run-tests: pytest collected no tests — failing on purpose" >&2
  exit 1
fi
exit "$rc"
