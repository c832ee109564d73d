#!/usr/bin/env bash
# Installs what lora, its examples and its tests need, from Debian's packages (bookworm:
# LibTorch 1.13, Catch2 v2, fmt 9; trixie: LibTorch 2.6, Catch2 v3, fmt 10). Run as root on
# Debian or Ubuntu; elsewhere it prints what to install. Does nothing when all is present.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git curl unzip ca-certificates
  libtorch-dev
  libopenblas0-pthread   # without it Debian's LibTorch runs on the reference BLAS: ~40x slower matmuls
  libfmt-dev catch2 nlohmann-json3-dev libcli11-dev libutf8proc-dev
  librsvg2-bin           # rsvg-convert: the sweeps' plots as PNG too (SVG is always written)
  zip                    # tests/scripts/fetch_assets_test.sh builds a WikiText-like zip to unpack
)

if ! command -v dpkg-query >/dev/null 2>&1 || ! command -v apt-get >/dev/null 2>&1; then
  cat >&2 <<MSG
install-deps: not a Debian/Ubuntu system. Install these yourself:
  - LibTorch (1.13 or 2.x, CPU or CUDA: https://pytorch.org/get-started/locally/, "LibTorch", cxx11 ABI),
    then pass -DCMAKE_PREFIX_PATH=/path/to/libtorch to cmake
  - CMake >= 3.18, a C++17 compiler, Ninja (optional), pkg-config
  - nlohmann/json >= 3.2, fmt >= 9, CLI11 >= 2, utf8proc, Catch2 v2 or v3 (tests only)
MSG
  exit 0
fi

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all dependencies are installed"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install-deps: missing packages: ${missing[*]}" >&2
  echo "install-deps: run as root, or: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
