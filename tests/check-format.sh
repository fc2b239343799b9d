#!/usr/bin/env bash
# Fails when a C source differs from what clang-format (.clang-format) makes of it.
set -euo pipefail
cd "${1:-$(dirname "$0")/..}"
mapfile -t files < <(find scheduler proto tests bench server cli gpu-probe fuzz \
	-name '*.[ch]' -not -path '*/build*' 2>/dev/null | sort)
clang-format --dry-run --Werror "${files[@]}"
echo "check-format: ${#files[@]} files formatted"
