#!/usr/bin/env bash
# Installs the dependencies, builds everything (Release) and runs every test:
# unit tests, the OpenMP test, the examples and the two consumer projects.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh build
build=build/release
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" -j "$(nproc)"
ctest --test-dir "$build" --output-on-failure -j "$(nproc)"
