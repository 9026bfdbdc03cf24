#!/usr/bin/env bash
# Installs the Scratch editor Atelier serves at /projects/{id}/editor: the pinned
# @scratch/scratch-gui-standalone package from npm, its sha512 integrity checked against the
# pinned value before anything is extracted. Then start Atelier with ATELIER_EDITOR_DIR=DIR.
#
#   bash scripts/install-editor.sh [DIR]   (default /var/cache/atelier/editor-15.1.1/package)
#
# The tarball (~150 MB) is kept in a cache directory (ATELIER_EDITOR_CACHE, default
# /var/cache/atelier when writable, else ~/.cache/atelier) and reused while its integrity
# holds, so CI downloads it once per machine; an installed DIR of the same integrity is kept.
set -euo pipefail

VERSION=15.1.1
INTEGRITY='sha512-PJu+9HlhtETpKeVvIAVA7GTcbemBcLrXEe35GP4dnET2/AKP9riAAUAd0aP5jsddIGA2PzHyHjWihHMe3Ix7vw=='

if [ -z "${ATELIER_EDITOR_CACHE:-}" ]; then
  if mkdir -p /var/cache/atelier 2>/dev/null && [ -w /var/cache/atelier ]; then
    ATELIER_EDITOR_CACHE=/var/cache/atelier
  else
    ATELIER_EDITOR_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/atelier"
  fi
fi
cache="$ATELIER_EDITOR_CACHE"
dir="${1:-$cache/editor-$VERSION/package}"
marker="$dir/.atelier-integrity"
tgz="$cache/scratch-scratch-gui-standalone-$VERSION.tgz"

if [ -f "$marker" ] && [ "$(cat "$marker")" = "$INTEGRITY" ] \
  && [ -f "$dir/dist/scratch-gui-standalone.js" ]; then
  echo "editor $VERSION already installed in $dir"
  exit 0
fi

# npm's integrity string of a file: sha512-<base64 of the digest>.
integrity_of() {
  node -e 'const c=require("crypto"),f=require("fs");
    process.stdout.write("sha512-"+c.createHash("sha512").update(f.readFileSync(process.argv[1])).digest("base64"))' "$1"
}

mkdir -p "$cache"
if [ ! -f "$tgz" ] || [ "$(integrity_of "$tgz")" != "$INTEGRITY" ]; then
  work=$(mktemp -d "$cache/.pack.XXXXXX")
  trap 'rm -rf "$work"' EXIT
  echo "downloading @scratch/scratch-gui-standalone@$VERSION from npm"
  (cd "$work" && npm pack "@scratch/scratch-gui-standalone@$VERSION" --silent >/dev/null)
  got=$(integrity_of "$work"/*.tgz)
  if [ "$got" != "$INTEGRITY" ]; then
    echo "integrity mismatch: expected $INTEGRITY, got $got" >&2
    exit 1
  fi
  mv "$work"/*.tgz "$tgz"
fi

# Extract beside the target, then swap it in whole.
parent=$(dirname "$dir")
mkdir -p "$parent"
new=$(mktemp -d "$parent/.editor.XXXXXX")
tar -xzf "$tgz" -C "$new" --strip-components=1
[ -f "$new/dist/scratch-gui-standalone.js" ] || { echo "the package has no dist/" >&2; exit 1; }
printf '%s' "$INTEGRITY" >"$new/.atelier-integrity"
rm -rf "$dir"
mv "$new" "$dir"
chmod 755 "$dir"
echo "editor $VERSION installed in $dir; start Atelier with ATELIER_EDITOR_DIR=$dir"
