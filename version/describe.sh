#!/bin/sh
# Prints `git describe` of the source tree for gpumatch-version.h, or the
# release (argument 1) when the tree is not a git checkout.
cd "$(dirname "$0")/.." || exit 0
git describe --tags --always --dirty 2>/dev/null || echo "v$1"
