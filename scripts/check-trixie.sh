#!/usr/bin/env bash
# Build and test lora against the LibTorch 2.x generation (Debian trixie: LibTorch 2.6,
# Catch2 v3, fmt 10) inside a debootstrapped trixie root. Needs root and debootstrap.
#
#   sudo scripts/check-trixie.sh            # root in ${LORA_TRIXIE_ROOT:-/var/tmp/lora-trixie}
#
# The root is reused on later runs; delete it to start over. The repository is copied
# into the root (a clean `git archive` of HEAD plus uncommitted changes is NOT taken:
# commit first), and ../shared is bind-mounted read-only when present so that the
# fixture tests run too.
set -euo pipefail

root=${LORA_TRIXIE_ROOT:-/var/tmp/lora-trixie}
here=$(cd "$(dirname "$0")/.." && pwd)
mirror=${LORA_TRIXIE_MIRROR:-}
if [ -z "$mirror" ]; then
  # The mirror the machine's own apt sources name (deb822 or one-line format).
  # (Comment lines are skipped: they may name a snapshot archive that is not reachable.)
  mirror=$(grep -hvE '^[[:space:]]*#' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
           | grep -oE 'https?://[^ ]+/debian/?' | grep -v security | head -n1 || true)
  mirror=${mirror:-http://deb.debian.org/debian}
fi

if [ "$(id -u)" != 0 ]; then echo "check-trixie: run as root (debootstrap and chroot need it)" >&2; exit 2; fi
command -v debootstrap >/dev/null || apt-get install -y -qq debootstrap

if [ ! -x "$root/usr/bin/apt-get" ]; then
  echo "check-trixie: debootstrapping trixie from $mirror into $root"
  debootstrap --variant=minbase trixie "$root" "$mirror"
fi

mount_once() { mountpoint -q "$2" || mount --bind "$1" "$2"; }
mkdir -p "$root/proc" "$root/dev" "$root/src" "$root/shared"
mount_once /proc "$root/proc"
mount_once /dev "$root/dev"
cleanup() { umount "$root/shared" 2>/dev/null || true; umount "$root/dev" "$root/proc" 2>/dev/null || true; }
trap cleanup EXIT
if [ -d "$here/../shared" ]; then mount_once "$here/../shared" "$root/shared"; mount -o remount,ro,bind "$root/shared" || true; fi
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true

# A fresh copy of the committed tree, as CI would see it.
rm -rf "$root/src/lora" && mkdir -p "$root/src/lora"
git -C "$here" archive HEAD | tar -x -C "$root/src/lora"

chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
  LORA_SHARED_DIR=/shared bash -euo pipefail -c '
    cd /src/lora
    scripts/install-deps.sh
    echo "check-trixie: LibTorch $(dpkg-query -W -f="\${Version}" libtorch-dev), Catch2 $(dpkg-query -W -f="\${Version}" catch2), fmt $(dpkg-query -W -f="\${Version}" libfmt-dev)"
    scripts/test.sh
  '
