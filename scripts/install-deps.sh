#!/usr/bin/env bash
# Installs what momnet needs from Debian 12 packages when run as root (or
# with sudo); otherwise checks they are there and prints the command that
# would install them.
#   install-deps.sh         everything: tests, examples, benchmarks, the plots
#   install-deps.sh build   what building and testing need (the Fashion-MNIST
#                           dataset included: a test trains on it)
set -euo pipefail

# zlib and nlohmann-json: the optional momnet::data (gzip IDX files) and
# momnet::io (safetensors) targets, which the tests cover; Open MPI: the
# optional momnet::distributed (data-parallel training), whose tests run
# under mpirun.
# dataset-fashion-mnist (30 MB) is among the build packages: ctest checks the
# paper's claims 4 and 6 on it (example.paper_fashion_mnist.quick).
packages=(g++ cmake make libeigen3-dev catch2 libbenchmark-dev zlib1g-dev nlohmann-json3-dev
          libopenmpi-dev openmpi-bin dataset-fashion-mnist)
if [ "${1:-all}" != build ]; then
  packages+=(python3 python3-matplotlib)
fi

missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
  as_root=()
elif command -v sudo >/dev/null 2>&1; then
  as_root=(sudo)
else
  echo "momnet needs: ${missing[*]}" >&2
  echo "install them as root: apt-get update && apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "installing: ${missing[*]}"
"${as_root[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
