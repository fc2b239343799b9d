#!/usr/bin/env bash
# Checks deploy/prometheus with promtool (Debian package prometheus):
# the scrape config and its rule file parse, and the alert rules' unit tests
# (rules_test.yml) pass.
set -euo pipefail
cd "${1:-$(dirname "$0")/../..}/deploy/prometheus"
if ! command -v promtool >/dev/null 2>&1; then
	echo "promtool not found: install the Debian package prometheus (deploy/install-deps.sh)" >&2
	exit 1
fi
promtool check config prometheus.yml
promtool check rules rules.yml
promtool test rules rules_test.yml
