#!/usr/bin/env bash
# The main job: builds the memory-versus-depth benchmark (Release, -O3
# -march=native on that target only), runs a short sweep and prints
# depth | ResNet MiB | ResNet MB/layer | Momentum MiB | ratio | ResNet ms/step | Momentum ms/step | slowdown.
# Extra arguments go to the benchmark (e.g. --depths=16,64,256,1024 --batch=1024).
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
build=build/release
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release
cmake --build "$build" -j "$(nproc)" --target memory_vs_depth
mkdir -p out
json=out/memory_vs_depth.json
"$build/benchmarks/memory_vs_depth" --depths=16,64,256 --batch=256 --width=256 --hidden=256 --tied=yes \
  --modes=residual,exact --benchmark_min_time=0.3 --benchmark_repetitions=3 --benchmark_enable_random_interleaving=true \
  --benchmark_report_aggregates_only=true --benchmark_out="$json" --benchmark_out_format=json "$@"
/usr/bin/python3 benchmarks/report.py "$json"
