#!/usr/bin/env bash
# Follows docs/src/getting-started.md as a newcomer would: on a fresh clone of this repository,
# runs the commands of the block marked `<!-- ci: getting-started -->` exactly as written.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

commands=$(awk '
    /<!-- ci: getting-started -->/ { marked = 1; next }
    marked && /^```sh/ { inside = 1; next }
    inside && /^```/ { exit }
    inside { print }
' docs/src/getting-started.md)
if [ -z "$commands" ]; then
    echo "error: docs/src/getting-started.md has no block marked <!-- ci: getting-started -->" >&2
    exit 1
fi
echo "$commands"

git clone --quiet "$ROOT" "$WORK/chassis"
# The working tree as it is (CI runs on what is committed; a local run checks the edits too).
git -C "$ROOT" diff HEAD | git -C "$WORK/chassis" apply --allow-empty
cd "$WORK/chassis"
# Shared with .ci/template-test.sh: the chassis compiles once.
export CARGO_TARGET_DIR="$ROOT/target/template"
bash -euo pipefail -c "$commands"
echo "getting started OK"
