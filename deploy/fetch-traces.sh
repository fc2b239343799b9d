#!/usr/bin/env bash
# Puts the public GPU cluster traces that SimulatePolicy, gpumatch-sim and the
# benches replay (docs/traces.md) where gpumatchd looks for them by default,
# and checks each file against the sha256 list shipped with gpumatch.
#
#   deploy/fetch-traces.sh [FROM] [TO]
#
# FROM: a directory holding alibaba-gpu-v2023/, gavel/ and msr-itp/ (a
#       mirror or an unpacked copy of the upstream sources docs/traces.md
#       names); default: the shared copy beside the source tree, ../shared/traces
# TO:   default traces/ in the source tree, or share/gpumatch/traces beside an
#       installed copy of this script
# Nothing is downloaded: the upstream repositories and commits are in
# docs/traces.md, to be fetched and unpacked by hand where the network allows.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
if [ -f "$here/../data/traces.sha256" ]; then
	sums=$here/../data/traces.sha256 # source tree: deploy/
	to_default=$here/../traces
	from_default=$here/../../shared/traces
else
	sums=$here/traces.sha256 # installed: share/gpumatch/
	to_default=$here/traces
	from_default=
fi
from=${1:-$from_default}
to=${2:-$to_default}
if [ -z "$from" ] || [ ! -d "$from" ]; then
	echo "fetch-traces: no trace directory to copy from${from:+ at $from}; give one (see docs/traces.md)" >&2
	exit 2
fi
n=0
while read -r sum path; do
	case $sum in '#'* | '') continue ;; esac
	if [ ! -f "$from/$path" ]; then
		echo "fetch-traces: $from/$path: missing" >&2
		exit 1
	fi
	mkdir -p "$to/$(dirname "$path")"
	cp "$from/$path" "$to/$path"
	chmod u+w "$to/$path"
	if ! echo "$sum  $to/$path" | sha256sum --check --quiet --status; then
		echo "fetch-traces: $path: sha256 differs from $(basename "$sums")" >&2
		exit 1
	fi
	n=$((n + 1))
	echo "fetch-traces: $path ($n)" >&2
done <"$sums"
echo "fetch-traces: $n files in $to" >&2
