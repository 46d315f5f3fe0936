#!/usr/bin/env bash
# Regenerates results/training/: the README's train -> sample example (300 steps, 32 px, the
# bundled photos, default recipe but --lr 2e-3) for DiM-T/2, DiT-T/2 and U-ViT-T/2, their loss
# curves, sample grids, training-free 2x/3x upsampling from the DiM run (direct and guided), and
# metadata.json. Usage: tools/training_examples.sh [RUNS_DIR]   (about 10 minutes on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-runs/training-examples}
dest=results/training
mkdir -p "$runs" "$dest"
log="$runs/times.log"
: > "$log"
for model in DiM-T/2 DiT-T/2 U-ViT-T/2; do
    slug=${model//\//_}
    echo "=== $model start $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)" >> "$log"
    dimbench train --model "$model" --data photos --image-size 32 --steps 300 --batch-size 16 \
        --lr 2e-3 --log-every 1 --out "$runs/$slug" --no-progress
    echo "=== $model end $(date -u +%FT%TZ) load $(cut -d' ' -f1-3 /proc/loadavg)" >> "$log"
    dimbench sample --ckpt "$runs/$slug" --num 16 --sampler dpm++ --steps 50 --cfg-scale 0.4 \
        --out "$runs/$slug/samples" --no-progress
done
for m in 2 3; do
    for kind in guided direct; do
        flag=$([ "$kind" = guided ] && echo --upsample-guidance || echo --no-upsample-guidance)
        dimbench sample --ckpt "$runs/DiM-T_2" --num 16 --cfg-scale 0.4 --upsample "$m" "$flag" \
            --out "$runs/DiM-T_2/up${m}_$kind" --no-progress
    done
done
python - "$runs" "$dest" <<'PY'
import csv, json, shutil, subprocess, sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

runs, dest = Path(sys.argv[1]), Path(sys.argv[2])
for old in dest.glob("*"):
    old.unlink()
meta = {
    "command": "tools/training_examples.sh (README: dimbench train --model M --data photos "
    "--image-size 32 --steps 300 --batch-size 16 --lr 2e-3; dimbench sample --num 16 "
    "--cfg-scale 0.4)",
    "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip(),
    "times_log": (runs / "times.log").read_text().splitlines(),
    "runs": {},
}
fig, ax = plt.subplots(figsize=(6, 4))
for model in ("DiM-T/2", "DiT-T/2", "U-ViT-T/2"):
    slug = model.replace("/", "_")
    run = runs / slug
    rows = list(csv.DictReader(open(run / "log.csv")))
    shutil.copy(run / "log.csv", dest / f"loss_{slug}_32px_300steps.csv")
    shutil.copy(run / "samples" / "grid.png", dest / f"samples_32px_300steps_{slug}.png")
    sample = json.loads((run / "samples" / "samples.json").read_text())
    config = json.loads((run / "config.json").read_text())
    meta["runs"][model] = {
        "loss_last50_mean": sum(float(r["loss"]) for r in rows[-50:]) / 50,
        "wall_time_s": float(rows[-1]["wall_time"]),
        "train_config": config["config"],
        "omp_wait_policy": config.get("omp_wait_policy"),
        "samples": {k: sample[k] for k in ("weights_used", "lag1_autocorrelation", "clip_x0", "sampler", "steps", "cfg_scale")},
    }
    ax.plot([int(r["step"]) for r in rows], [float(r["loss"]) for r in rows], label=model, lw=1)
ax.set(xlabel="step", ylabel="training loss (per step)", yscale="log", title="32 px photos, batch 16, lr 2e-3")
ax.legend()
fig.tight_layout()
fig.savefig(dest / "loss_curves_32px_300steps.png", dpi=120)
for m in (2, 3):
    for kind in ("guided", "direct"):
        src = runs / "DiM-T_2" / f"up{m}_{kind}"
        shutil.copy(src / "grid.png", dest / f"samples_{32 * m}px_upsample{m}_{kind}_300steps_DiM-T_2.png")
        meta["runs"]["DiM-T/2"][f"upsample{m}_{kind}_lag1"] = json.loads((src / "samples.json").read_text()).get("lag1_autocorrelation")
(dest / "metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
print(json.dumps({m: r["samples"]["lag1_autocorrelation"] for m, r in meta["runs"].items()}))
PY
