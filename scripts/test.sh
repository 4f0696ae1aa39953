#!/usr/bin/env bash
# The project's test command: lint, type-check, then the test suite.
# Run from the repo root inside an environment where `pip install -e '.[test]'` was done.
set -euo pipefail
cd "$(dirname "$0")/.."

ruff check src tests
mypy
# Two workers: CI machines have two cores, and the simulator and crash tests are CPU-bound.
# The slowest tests are listed, so a slow CI run shows where its time went.
python -m pytest -n 2 --durations=25
