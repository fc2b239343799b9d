#!/usr/bin/env bash
# eval.sh — the evaluation matrix: two policies (default: the shipped
# fifo.json and default.json) replayed by gpumatch-sim on
#   MSR ITP clusters x {Alibaba v2023 inventory, the modern fleet
#   (data/fleets/modern-nodes.csv)} x arrival factors x seeds x
#   {non-preemptible, preemptible}
# plus a Gavel-style setup (data/fleets/gavel-nodes.csv: 36 each of K80,
# P100, V100; Poisson arrivals from sim/gavel-jobs.py over a range of rates),
# with non-preemptible jobs (cells gavel.*) and, as in Gavel's paper, every
# job preemptible (cells gavelp.*).
# Prints a table per part and the floors, and writes summary.json.
#
# usage: sim/eval.sh --traces DIR [options]
#   --traces DIR      the public traces: DIR/msr-itp/clusterNN.csv,
#                     DIR/alibaba-gpu-v2023/openb_node_list_gpu_node.csv,
#                     DIR/gavel/isolated_throughputs_steps_per_sec.csv
#                     (docs/traces.md says where to get them)
#   --sim FILE        gpumatch-sim (default build-rel/sim/tool/gpumatch-sim)
#   --out DIR         results (default /tmp/gpumatch-eval)
#   --baseline FILE   (default examples/policies/fifo.json)
#   --candidate FILE  (default examples/policies/default.json)
#   --clusters "01 .." --fleets "alibaba modern" --scales "0.0025 .."
#   --seeds "1 2 3" --modes "np p" --gavel-rates "0.5 1 .." --gavel-jobs N
#   --gavel-modes "np p"
#                     narrow the matrix (defaults: the full one)
#   --no-msr / --no-gavel   leave a part out
#   --parallel N      replays at once (default 1)
#   --cache DIR       keep each replay's result under DIR, keyed by the
#                     policy file's content, the binary and the arguments,
#                     and reuse it (the baseline is then replayed once)
#   --extra "ARGS"    more gpumatch-sim options for every replay
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
traces= sim=$here/build-rel/sim/tool/gpumatch-sim out=/tmp/gpumatch-eval
base=$here/examples/policies/fifo.json cand=$here/examples/policies/default.json
clusters="01 02 03 04 05 06" fleets="alibaba modern" scales="0.0025 0.005 0.01 0.02"
seeds="1 2 3" modes="np p" grates="0.5 1 1.5 2 2.5 3" gjobs=1000 gmodes="np p" par=1 extra=
msr=1 gavel=1 cache=
while [ $# -gt 0 ]; do
	case $1 in
	--traces) traces=$2; shift ;;
	--sim) sim=$2; shift ;;
	--out) out=$2; shift ;;
	--baseline) base=$2; shift ;;
	--candidate) cand=$2; shift ;;
	--clusters) clusters=$2; shift ;;
	--fleets) fleets=$2; shift ;;
	--scales) scales=$2; shift ;;
	--seeds) seeds=$2; shift ;;
	--modes) modes=$2; shift ;;
	--gavel-rates) grates=$2; shift ;;
	--gavel-jobs) gjobs=$2; shift ;;
	--gavel-modes) gmodes=$2; shift ;;
	--parallel) par=$2; shift ;;
	--extra) extra=$2; shift ;;
	--cache) cache=$2; shift ;;
	--no-msr) msr=0 ;;
	--no-gavel) gavel=0 ;;
	-h|--help) sed -n '2,30p' "$0"; exit 0 ;;
	*) echo "eval.sh: unknown option $1" >&2; exit 2 ;;
	esac
	shift
done
[ -n "$traces" ] || { echo "eval.sh: --traces DIR is required" >&2; exit 2; }
tput=$traces/gavel/isolated_throughputs_steps_per_sec.csv
for f in "$sim" "$tput" "$base" "$cand"; do
	[ -e "$f" ] || { echo "eval.sh: $f: not found" >&2; exit 2; }
done
rm -rf "$out/cells"
mkdir -p "$out/cells" "$out/jobs"
: > "$out/cells.txt"
fleet_file() {
	case $1 in
	alibaba) echo "$traces/alibaba-gpu-v2023/openb_node_list_gpu_node.csv" ;;
	modern) echo "$here/data/fleets/modern-nodes.csv" ;;
	gavel) echo "$here/data/fleets/gavel-nodes.csv" ;;
	esac
}
# one line per replay: name, then gpumatch-sim arguments
if [ $msr = 1 ]; then
	for c in $clusters; do for fl in $fleets; do for sc in $scales; do
		for sd in $seeds; do for md in $modes; do
			for pn in base cand; do
				pf=$base; [ $pn = cand ] && pf=$cand
				pre=; [ $md = p ] && pre=--preemptible
				echo "msr.c$c.$fl.$sc.s$sd.$md.$pn --nodes $(fleet_file $fl) --jobs $traces/msr-itp/cluster$c.csv --policy $pf --seed $sd --arrival-scale $sc${pre:+ $pre}" >> "$out/cells.txt"
			done
		done; done
	done; done; done
fi
if [ $gavel = 1 ]; then
	for md in $gmodes; do for r in $grates; do for sd in $seeds; do
		g=gavel pre=
		[ $md = p ] && g=gavelp pre=--preemptible
		jf=$out/jobs/$g.r$r.s$sd.csv
		python3 "$here/sim/gavel-jobs.py" "$tput" "$r" "$gjobs" "$sd" $pre > "$jf"
		for pn in base cand; do
			pf=$base; [ $pn = cand ] && pf=$cand
			echo "$g.r$r.s$sd.$pn --nodes $(fleet_file gavel) --jobs $jf --policy $pf --seed $sd" >> "$out/cells.txt"
		done
	done; done; done
fi
run_one() {
	name=$1; shift
	key=
	if [ -n "$cache" ]; then
		pol=
		prev=
		for a in "$@"; do [ "$prev" = --policy ] && pol=$a; prev=$a; done
		key=$cache/$( { sha1sum "$sim" "$pol" | cut -c1-40; echo "$extra $*" | sed "s|--policy [^ ]*||"; for a in "$@"; do case $a in *.csv) sha1sum "$a" | cut -c1-40 ;; esac; done; } | sha1sum | cut -c1-40).json
		if [ -s "$key" ]; then
			cp "$key" "$out/cells/$name.json"
			return 0
		fi
	fi
	if ! "$sim" --throughputs "$tput" $extra "$@" > "$out/cells/$name.out" 2> "$out/cells/$name.err"; then
		echo "eval.sh: $name failed: $(tail -1 "$out/cells/$name.err")" >&2
		return 0
	fi
	tail -1 "$out/cells/$name.out" > "$out/cells/$name.json"
	if [ -n "$key" ]; then cp "$out/cells/$name.json" "$key"; fi
}
export -f run_one
[ -z "$cache" ] || mkdir -p "$cache"
export sim tput out extra cache
echo "eval.sh: $(wc -l < "$out/cells.txt") replays, $par at a time, results in $out" >&2
xargs -P "$par" -L 1 bash -c 'run_one "$@"' _ < "$out/cells.txt"
python3 "$here/sim/eval-summary.py" "$out"
