#!/usr/bin/env bash
# The project's test command: lint, type-check, then the test suite.
# Run from the repo root inside an environment where `pip install -e '.[test]'` was done.
set -euo pipefail
cd "$(dirname "$0")/.."

ruff check src tests
mypy
python -m pytest
