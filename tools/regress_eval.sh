#!/usr/bin/env bash
# Reproduces the speed-gate measurements of dimbench issue 13 (false alarms, sensitivity,
# runtime, busy neighbours). Not part of the package.
#
#   N=10 OUT=/tmp/regress_eval STAGES="verify same slow25 slow15 busy stream" \
#       bash tools/regress_eval.sh   # from the repository root
#
# REPO: a dimbench checkout with the A/B gate and a .venv (whose python runs everything). Its HEAD
# is checked out as $OUT/head; each gate runs with the dimbench (gate code included) of the tree
# it is run in, so edits to REPO while this runs change nothing.
# Stages (each N gate runs, one JSON per run under $OUT, a line per run in $OUT/runs.tsv with
# the 1-min load average before and after):
#   same    HEAD against HEAD (`dimbench regress --base HEAD`): every failure is a false alarm
#   slow25  HEAD against HEAD with the head's cpu scan forward 25% slower: its workers alone get
#           DIMBENCH_SCAN_CPU_EXTRA_PASSES (extra kernel passes on the same output, see
#           dimbench/ops/scan_cpu.py) through the gate's DIMBENCH_REGRESS_HEAD_ENV; the passes
#           worth 25% of the op's time are calibrated once ($OUT/passes-slow25.txt)
#   slow15  the same with 15%
#   busy    HEAD against HEAD with a CPU-bound neighbour (python 'while True: pass')
#   stream  HEAD against HEAD with a memory-streaming neighbour (numpy copy of 256 MiB)
#   verify  the slowdowns measured independently of the gate: the op alone in one process, the
#           extra passes switched on and off in alternate samples (CPU time, 1 thread), in 3
#           fresh processes
#   clean   removes the worktree under $OUT
# The summary at the end reads everything under $OUT. No source file is edited: the slowdown is
# scan_cpu's documented knob, so this keeps working whatever scan_cpu.py looks like inside.
set -euo pipefail
REPO=${REPO:-$(cd "$(dirname "$0")/.." && pwd)}
N=${N:-10}
OUT=${OUT:-/tmp/regress_eval}
STAGES=${STAGES:-"verify same slow25 slow15 busy stream"}
PY=$REPO/.venv/bin/python
export OMP_WAIT_POLICY=PASSIVE
mkdir -p "$OUT"
touch "$OUT/runs.tsv"

load() { cut -d' ' -f1 /proc/loadavg; }

# The op scan/forward[cpu] of a tree, timed in one process with the extra passes switched
# between 0 and a value, interleaved (CPU time, 1 thread, 400 samples of 16 calls each).
# `calibrate PCT`: the passes worth PCT% of the op's time (from the cost of one pass);
# `verify PASSES`: their slowdown, "ratio" = median(with) / median(without).
slowdown() {  # tree mode pct|passes
  "$PY" - "$@" <<'PY'
import statistics, sys, time
tree, mode, value = sys.argv[1], sys.argv[2], float(sys.argv[3])
sys.path.insert(0, tree)
import torch
torch.set_num_threads(1)
from dimbench.ops import scan_cpu
sys.path.insert(0, tree + "/dimbench/regress")
import cases
fn = cases.gate_cases("cpu")[0].setup(torch.device("cpu"))
def ratio(passes):
    on, off = [], []
    for _ in range(50): fn()
    for i in range(800):
        scan_cpu.set_extra_passes(passes if i % 2 else 0.0)
        t0 = time.process_time()
        for _ in range(16): fn()
        (on if i % 2 else off).append((time.process_time() - t0) / 16)
    scan_cpu.set_extra_passes(0.0)
    return statistics.median(on) / statistics.median(off), statistics.median(off)
if mode == "calibrate":
    r, t = ratio(1.0)
    print(round(value / 100 / (r - 1), 4), f"(op {t * 1e3:.3f} ms, one extra pass +{r - 1:.1%})")
else:
    r, t = ratio(value)
    print(f"ratio {r:.3f} op {t * 1e3:.3f} ms passes {value}")
PY
}

passes_for() {  # name percent: the extra passes worth percent% (calibrated once, then read)
  local name=$1 pct=$2 file=$OUT/passes-$1.txt
  if [ ! -s "$file" ]; then
    local passes rest
    read -r passes rest < <(slowdown "$OUT/head" calibrate "$pct")
    echo "$name: $passes extra kernel passes per call $rest" | tee -a "$OUT/verify.txt" >&2
    echo "$passes" > "$file"
  fi
  cat "$file"
}

verify() {  # name percent: three fresh processes
  local passes; passes=$(passes_for "$1" "$2")
  for i in 1 2 3; do
    echo "verify-$1 $i $(slowdown "$OUT/head" verify "$passes") load $(load)"
  done | tee -a "$OUT/verify.txt"
}

gate() {  # stage i dir args...
  local stage=$1 i=$2 dir=$3; shift 3
  local before; before=$(load)
  local rc=0
  (cd "$dir" && "$PY" -c 'import sys; sys.path.insert(0, sys.argv.pop(1)); from dimbench.cli import main; main()' \
      "$dir" regress --seed "$i" --json "$OUT/$stage-$i.json" "$@" > "$OUT/$stage-$i.txt" 2>&1) || rc=$?
  printf '%s\t%s\t%s\t%s\t%s\n' "$stage" "$i" "$rc" "$before" "$(load)" | tee -a "$OUT/runs.tsv"
}

with_neighbour() {  # stage code
  local stage=$1 code=$2
  "$PY" -c "$code" & local pid=$!
  sleep 2
  for i in $(seq 1 "$N"); do gate "$stage" "$i" "$OUT/head" --base HEAD; done
  kill "$pid"; wait "$pid" 2>/dev/null || true
}

slow() {  # stage percent: HEAD against HEAD, the head's cpu scan percent% slower
  local stage=$1 passes; passes=$(passes_for "$1" "$2")
  for i in $(seq 1 "$N"); do
    DIMBENCH_REGRESS_HEAD_ENV="DIMBENCH_SCAN_CPU_EXTRA_PASSES=$passes" \
      gate "$stage" "$i" "$OUT/head" --base HEAD
  done
}

[ -d "$OUT/head" ] || git -C "$REPO" worktree add -q --detach "$OUT/head" HEAD
for stage in $STAGES; do
  case $stage in
    same) for i in $(seq 1 "$N"); do gate same "$i" "$OUT/head" --base HEAD; done ;;
    slow25) slow slow25 25 ;;
    slow15) slow slow15 15 ;;
    busy) with_neighbour busy 'while True: pass' ;;
    stream) with_neighbour stream $'import numpy as np\na = np.ones(2**25); b = np.empty_like(a)\nwhile True: np.copyto(b, a)' ;;
    verify) verify slow25 25; verify slow15 15 ;;
    clean)
      [ -d "$OUT/head" ] && git -C "$REPO" worktree remove --force "$OUT/head"
      git -C "$REPO" worktree prune ;;
  esac
done

"$PY" - "$OUT" <<'PY'
import collections, json, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
runs = collections.defaultdict(list)
for line in (out / "runs.tsv").read_text().splitlines():
    stage, i, rc, before, after = line.split("\t")
    runs[stage].append((int(i), int(rc), float(before), float(after)))
print(f"\n{'stage':8s} {'runs':>4s} {'exit 1':>6s} {'exit 2+':>7s}  scan/forward ratio (first run)   "
      "largest ratio (case)             gate s (min/med/max)   load before..after")
for stage, rs in runs.items():
    docs = [json.loads((out / f"{stage}-{i}.json").read_text()) for i, rc, *_ in rs
            if rc in (0, 1) and (out / f"{stage}-{i}.json").exists()]
    scan = [r["comparison"]["ratio"] for d in docs for r in d["rows"]
            if r["name"] == "scan/forward[cpu]" and r["comparison"]]
    allr = [(r["comparison"]["ratio"], r["name"]) for d in docs for r in d["rows"] if r["comparison"]]
    top = max(allr) if allr else (float("nan"), "-")
    el = sorted(d["elapsed_s"] for d in docs)
    fails = sum(rc == 1 for _, rc, *_ in rs)
    other = sum(rc not in (0, 1) for _, rc, *_ in rs)
    confirmed = collections.Counter(r["name"] for d in docs for r in d["rows"] if r["verdict"] == "regression")
    print(f"{stage:8s} {len(rs):4d} {fails:6d} {other:7d}  "
          f"{min(scan, default=0):.3f}..{max(scan, default=0):.3f} (med {statistics.median(scan) if scan else 0:.3f})   "
          f"{top[0]:.3f} ({top[1]})  "
          f"{el[0] if el else 0:5.1f}/{statistics.median(el) if el else 0:5.1f}/{el[-1] if el else 0:5.1f}   "
          f"{min(r[2] for r in rs):.1f}..{max(r[3] for r in rs):.1f}   failed: {dict(confirmed)}")
v = out / "verify.txt"
if v.exists():
    print(v.read_text())
PY
