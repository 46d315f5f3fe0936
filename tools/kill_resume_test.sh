#!/usr/bin/env bash
# kill -9 / Ctrl-C at 60% of the README's 300-step run, then --resume; compares with an
# uninterrupted run's final checkpoint ($REF). Usage: tools/kill_resume_test.sh WORKDIR REF_CKPT
set -uo pipefail
work=$1; ref=$2
[ -n "${VENV:-}" ] && . "$VENV/bin/activate"  # else the dimbench on PATH
cd /tmp
for sig in KILL INT; do
  out=$work/$sig; rm -rf "$out"
  dimbench train --model DiM-T/2 --data photos --image-size 32 --steps 300 --batch-size 16 --lr 2e-3 \
      --log-every 1 --out "$out" --no-progress > "$work/$sig.train.log" 2>&1 &
  pid=$!
  while true; do
    step=$(tail -1 "$out/log.csv" 2>/dev/null | cut -d, -f1)
    [[ "$step" =~ ^[0-9]+$ ]] && [ "$step" -ge 180 ] && break
    sleep 0.05
  done
  kill -$sig $pid; wait $pid; rc=$?
  saved=$(python -c "import torch;print(torch.load('$out/checkpoint.pt',weights_only=True)['step'])")
  echo "$sig: signal sent after step $step, exit $rc, checkpoint at step $saved, steps lost $((step - saved)), tmp files: $(ls -a $out | grep -c tmp)"
  tail -2 "$work/$sig.train.log" | sed 's/^/    /'
  dimbench train --model DiM-T/2 --data photos --image-size 32 --steps 300 --batch-size 16 --lr 2e-3 \
      --log-every 1 --out "$out" --resume --no-progress > "$work/$sig.resume.log" 2>&1
  python - "$out/checkpoint.pt" "$ref" <<'PY'
import sys, torch
a, b = (torch.load(p, weights_only=True) for p in sys.argv[1:])
same = all(torch.equal(a[k][n], b[k][n]) for k in ("model", "ema") for n in a[k])
print(f"    resumed to step {a['step']}; weights bitwise equal to the uninterrupted run: {same}")
PY
done
