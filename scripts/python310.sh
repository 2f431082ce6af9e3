#!/usr/bin/env bash
# Fetch a CPython 3.10 interpreter (JetPack 6's Python) without building one: Ubuntu 22.04's
# python3.10 packages, unpacked into a private directory (nothing is installed system-wide).
#
#   scripts/python310.sh [DEST]     # prints the interpreter's path on stdout
#
# DEST defaults to ~/.cache/moe2-edge/python3.10; a second run reuses it. Exits 3 (with one
# line on stderr) when the Ubuntu archive cannot be reached, so callers can tell "no
# interpreter here" from a failure of the tests it runs.
set -euo pipefail

DEST=${1:-${XDG_CACHE_HOME:-$HOME/.cache}/moe2-edge/python3.10}
ARCHIVE=${UBUNTU_ARCHIVE:-http://archive.ubuntu.com/ubuntu}
SUITE=jammy-updates
PACKAGES="python3.10 python3.10-minimal libpython3.10-minimal libpython3.10-stdlib"
PY="$DEST/usr/bin/python3.10"

if [ -x "$PY" ] && "$PY" -c 'import ssl, sqlite3, ctypes, venv' 2>/dev/null; then
  echo "$PY"
  exit 0
fi
command -v dpkg-deb >/dev/null || { echo "python310.sh: dpkg-deb is needed to unpack" >&2; exit 3; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if ! curl -sfL --max-time 120 "$ARCHIVE/dists/$SUITE/main/binary-amd64/Packages.gz" \
  -o "$work/Packages.gz"; then
  echo "python310.sh: cannot reach $ARCHIVE (no Python 3.10 here)" >&2
  exit 3
fi
gunzip "$work/Packages.gz"
rm -rf "$DEST.partial"
mkdir -p "$DEST.partial"
for name in $PACKAGES; do
  file=$(awk -v want="$name" '/^Package: /{p=$2} /^Filename: /{if (p == want) {print $2; exit}}' \
    "$work/Packages")
  [ -n "$file" ] || { echo "python310.sh: $name is not in $SUITE" >&2; exit 1; }
  curl -sfL --max-time 300 "$ARCHIVE/$file" -o "$work/$name.deb"
  dpkg-deb -x "$work/$name.deb" "$DEST.partial"
done
"$DEST.partial/usr/bin/python3.10" -c 'import ssl, sqlite3, ctypes, venv' \
  || { echo "python310.sh: the unpacked interpreter does not run here" >&2; exit 1; }
rm -rf "$DEST"
mv "$DEST.partial" "$DEST"
echo "$PY"
