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
#   slow25  a throw-away commit on branch scratch13-slow25 (worktree $OUT/scratch-slow25) whose
#           cpu scan forward does extra C++ forward passes worth 25% of the op's time, against
#           its parent (the default base, HEAD~1)
#   slow15  the same with 15%
#   busy    HEAD against HEAD with a CPU-bound neighbour (python 'while True: pass')
#   stream  HEAD against HEAD with a memory-streaming neighbour (numpy copy of 256 MiB)
#   verify  the slowdowns measured independently of the gate: the op alone in one process, the
#           extra passes switched on and off in alternate samples (CPU time, 1 thread), in 3
#           fresh processes
#   clean   removes the worktrees under $OUT and the scratch13-* branches
# The summary at the end reads everything under $OUT.
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

# The op scan/forward[cpu] in a scratch tree, timed in one process with SLOWDOWN_PASSES switched
# between 0 and a value, interleaved (CPU time, 1 thread, 400 samples of 16 calls each).
# `calibrate PCT`: the passes worth PCT% of the op's time (from the cost of one pass);
# `verify`: the committed value's slowdown, "ratio" = median(with) / median(without).
slowdown() {  # tree mode [pct]
  "$PY" - "$@" <<'PY'
import statistics, sys, time
tree, mode = sys.argv[1], sys.argv[2]
sys.path.insert(0, tree)
import torch
torch.set_num_threads(1)
from dimbench.ops import scan_cpu
sys.path.insert(0, tree + "/dimbench/regress")
import cases
fn = cases.gate_cases("cpu")[0].setup(torch.device("cpu"))
committed = scan_cpu.SLOWDOWN_PASSES
def ratio(passes):
    on, off = [], []
    for _ in range(50): fn()
    for i in range(800):
        scan_cpu.SLOWDOWN_PASSES = passes if i % 2 else 0.0
        t0 = time.process_time()
        for _ in range(16): fn()
        (on if i % 2 else off).append((time.process_time() - t0) / 16)
    return statistics.median(on) / statistics.median(off), statistics.median(off)
if mode == "calibrate":
    r, t = ratio(1.0)
    print(round(float(sys.argv[3]) / 100 / (r - 1), 4), f"(op {t * 1e3:.3f} ms, one extra pass +{r - 1:.1%})")
else:
    r, t = ratio(committed)
    print(f"ratio {r:.3f} op {t * 1e3:.3f} ms passes {committed}")
PY
}

make_scratch() {  # name percent
  local name=$1 pct=$2 dir=$OUT/scratch-$1
  [ -d "$dir" ] && return
  git -C "$REPO" branch -f "scratch13-$name" "$(git -C "$OUT/head" rev-parse HEAD)"
  git -C "$REPO" worktree add -q "$dir" "scratch13-$name"
  "$PY" - "$dir/dimbench/ops/scan_cpu.py" "$pct" <<'PY'
import sys
path, pct = sys.argv[1], sys.argv[2]
src = open(path).read()
# the forward kernel's launch in scan_cpu.forward (13f2930's form, then main's of 2026-12)
for old in (
    "        launch_forward(shape, t, delta_softplus, out, ckpt, thread_ranges(shape))\n",
    "        prep.forward(out, ckpt)\n",
):
    if src.count(old) == 1:
        break
else:
    raise SystemExit("scan_cpu.forward changed: update the patch")
new = old + (
    "        _slowdown[0] += SLOWDOWN_PASSES\n"
    "        while _slowdown[0] >= 1:  # throw-away: the same kernel again on the same output\n"
    "            _slowdown[0] -= 1\n"
    + old.replace("        ", "            ", 1)
)
src = src.replace(old, new).replace(
    "\ndef forward(",
    f"\nSLOWDOWN_PASSES = 0.0  # issue 13 sensitivity test: {pct}% slower\n"
    "_slowdown = [0.0]\n\n\ndef forward(",
)
open(path, "w").write(src)
PY
  read -r passes rest < <(slowdown "$dir" calibrate "$pct")
  echo "scratch-$name: $passes extra kernel passes per call $rest" | tee -a "$OUT/verify.txt"
  sed -i "s/^SLOWDOWN_PASSES = 0.0 /SLOWDOWN_PASSES = $passes /" "$dir/dimbench/ops/scan_cpu.py"
  git -C "$dir" -c user.name=eval -c user.email=eval@example.com commit -q -am \
    "throw-away: the cpu scan forward $pct% slower (issue 13 sensitivity test)"
}

verify() {  # name: three fresh processes
  for i in 1 2 3; do
    echo "verify-$1 $i $(slowdown "$OUT/scratch-$1" verify) load $(load)"
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

[ -d "$OUT/head" ] || git -C "$REPO" worktree add -q --detach "$OUT/head" HEAD
for stage in $STAGES; do
  case $stage in
    same) for i in $(seq 1 "$N"); do gate same "$i" "$OUT/head" --base HEAD; done ;;
    slow25) make_scratch slow25 25; for i in $(seq 1 "$N"); do gate slow25 "$i" "$OUT/scratch-slow25"; done ;;
    slow15) make_scratch slow15 15; for i in $(seq 1 "$N"); do gate slow15 "$i" "$OUT/scratch-slow15"; done ;;
    busy) with_neighbour busy 'while True: pass' ;;
    stream) with_neighbour stream $'import numpy as np\na = np.ones(2**25); b = np.empty_like(a)\nwhile True: np.copyto(b, a)' ;;
    verify) make_scratch slow25 25; make_scratch slow15 15; verify slow25; verify slow15 ;;
    clean)
      for d in "$OUT"/scratch-* "$OUT"/head; do
        [ -d "$d" ] && git -C "$REPO" worktree remove --force "$d"
      done
      git -C "$REPO" branch -D scratch13-slow25 scratch13-slow15 2>/dev/null || true
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
