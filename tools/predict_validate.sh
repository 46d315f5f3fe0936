#!/usr/bin/env bash
# Issue 16 validation: the cost model's predicted forward latency against measured, on a QUIET
# machine (check `uptime` first: load well below the core count). About 12 minutes on 2 cores:
# calibrate ~1.5-3 min, the throughput sweep ~8 min, the predictions ~2 min.
#
#   bash tools/predict_validate.sh      # from the repository root; results in runs/validate-*
#
# Targets: every row within 15% (predicted vs measured latency), and the predicted DiM-S/2 vs
# DiT-S/2 crossover within 10% of the measured one (both interpolated the same way, in log-log
# between the measured resolutions, as `dimbench plot` does).
set -euo pipefail
cd "${REPO:-$(dirname "$0")/..}"
DB=${DB:-dimbench}
PY=${PY:-python}
OUT=${OUT:-runs/validate-$(date +%Y%m%d-%H%M)}
MODELS="DiM-S/2 DiT-S/2 U-ViT-S/2"
RES="256 512 1024 1536"
mkdir -p "$OUT"
echo "load at start: $(uptime)"
time $DB calibrate --out "$OUT/device-profile.json"
[ -n "${SKIP_MEASURE:-}" ] || time $DB run throughput --models $MODELS --res $RES --dtype fp32 bf16 --out "$OUT"
time $DB predict --models $MODELS --res $RES --dtype fp32 bf16 \
    --device-profile "$OUT/device-profile.json" --out "$OUT"
echo "load after the measurements: $(uptime)"
$PY - "$OUT" <<'EOF'
import sys

from dimbench.plots import _crossing
from dimbench.results import load_results
from dimbench.bench.registry import all_suites
all_suites()  # result columns

out = sys.argv[1]
df = load_results(out)
ok = df[df["status"] == "ok"]
meas = ok[ok["suite"] == "throughput"].set_index(["model", "image_size", "dtype"])
pred = ok[ok["suite"] == "predict"].set_index(["model", "image_size", "dtype"])
print("\n| model | px | dtype | measured ms | predicted ms | error | load |")
print("|---|---|---|---|---|---|---|")
worst = 0.0
for key in sorted(set(meas.index) & set(pred.index)):
    m = float(meas.loc[key, "latency_ms"])
    p = float(pred.loc[key, "predicted_latency_ms"])
    err = 100 * (p / m - 1)
    worst = max(worst, abs(err))
    load = meas.loc[key, "load_avg_1m"]
    print(f"| {key[0]} | {key[1]} | {key[2]} | {m:.1f} | {p:.1f} | {err:+.1f}% | {load} |")
print(f"\nworst |error| {worst:.1f}% (target 15%)")
for dtype in sorted(set(meas.index.get_level_values(2))):
    for frame, col, what in ((meas, "latency_ms", "measured"),
                             (pred, "predicted_latency_ms", "predicted")):
        res = sorted({r for (m, r, d) in frame.index if d == dtype and m == "DiM-S/2"})
        ratios = [float(frame.loc[("DiT-S/2", r, dtype), col]) /
                  float(frame.loc[("DiM-S/2", r, dtype), col]) for r in res]
        x = _crossing(res, ratios)
        print(f"{dtype} {what} DiM-S/2 vs DiT-S/2 crossover: "
              f"{'%.0f px' % x if x else 'none'} (ratios {', '.join('%.2f' % q for q in ratios)})")
EOF
$DB plot "$OUT"
# the paper-sized models, predicted only: this CPU (its profile) and an H100 (datasheet peaks)
$DB predict --models DiM-H/2 DiT-XL/2 --res 256 512 1024 1536 2048 3072 4096 --dtype fp32 bf16 \
    --device-profile "$OUT/device-profile.json" --out "$OUT"
$DB predict --models DiM-H/2 DiT-XL/2 --res 256 512 1024 1536 2048 3072 4096 --dtype bf16 \
    --device-profile results/device_profiles/h100-sxm-datasheet.json --out "$OUT"
echo "load at the end: $(uptime)"
