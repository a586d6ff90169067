#!/usr/bin/env bash
# Paper-scale MNIST results on one GPU (issue #18), in parts that each fit
# one device call (10 min) and resume when rerun on the same machine.
#
#   OUT=/path bash benchmarks/device/mnist_paper_scale.sh PART [PART ...]
#
# PARTs (planned times on one H200, from the README's 0.91 ms classifier
# step / 2.98 ms CGN step and the CPU timings of the issue's report; `probe`
# measures the real ones first):
#   probe     ~1.5 min  tiny run of every command (compiles, steps/s): check
#                       the machine, calibrate the rest. Always run first.
#   authors   ~6-9 min  the authors' three CGNs at 1e6 CFs (10 per shape),
#                       counterfactual-only and +real, SEEDS classifier seeds
#                       vmapped per setting (python -m
#                       cgn_jax.experiments.mnist_table --seeds).
#   cgn_speed ~1 min    wildlife CGN, 2000 steps, 1 vs 8 seeds vmapped, scan
#                       of 100: ms/step (the issue's speed goal).
#   own_cgn   ~8-10 min per dataset: SEEDS CGNs x 15 epochs vmapped
#                       (CGNS=colored,colored_edge,double_colored,wildlife;
#                       one per call), then their table at 1e6.
#   ablation  ~10 min per variant: 10^4/10^5/10^6 x CFs per shape, 1 seed
#                       (VARIANTS=wildlife for one call).
#   collect   seconds   $OUT/results.json, tables.md, *.png, details.tar.gz.
# Every part ends with `collect`, so each call brings its results back.
#
# Needs on the machine: the repo (this tree), shared/ (MNIST, the authors'
# cgn_*_MNIST.pth; torch converts them in memory), the Python packages the
# GPU image lacks (grain, ml_collections, tensorboardX) as wheels in
# $WHEELS (default ./wheels), and for own_cgn the converted VGG16
# ($VGG16_DIR, default ./vgg16: `python -m converters vgg16 --output vgg16`
# here, then carry it). Environment: SEEDS (3), EPOCHS (10 classifier
# epochs), NUM (1000000), SCALE (ablation N divisor, 1), STEPS_PER_CALL
# (100), WORK (scratch, default /tmp/mnist_paper_scale).
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/mnist_paper_scale_out}
WORK=${WORK:-/tmp/mnist_paper_scale}
PY=${PY:-python3}
SHARED=${CGN_SHARED_DIR:-$PWD/shared}
[ -d "$SHARED" ] || SHARED=$PWD/../shared
export CGN_SHARED_DIR=$SHARED
export CGN_MNIST_DIR=${CGN_MNIST_DIR:-$SHARED/data/mnist}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
CGN_DIR=${CGN_DIR:-$SHARED/data/cgn_upstream}
VGG16_DIR=${VGG16_DIR:-$PWD/vgg16}
WHEELS=${WHEELS:-$PWD/wheels}
SEEDS=${SEEDS:-3}
EPOCHS=${EPOCHS:-10}
NUM=${NUM:-1000000}
SCALE=${SCALE:-1}
SPC=${STEPS_PER_CALL:-100}
CGNS=${CGNS:-wildlife}
VARIANTS=${VARIANTS:-colored,double_colored,wildlife}
mkdir -p "$OUT" "$WORK"
LOG=$WORK/log.txt
PARTS=$WORK/parts.jsonl

if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps "$WHEELS"/*.whl >>"$LOG" 2>&1
fi
$PY -c "import jax; print('devices:', jax.devices())" 2>&1 | tee -a "$LOG"

# timed NAME CMD...: runs CMD, appends {part, seconds, rc} to parts.jsonl.
timed() {
  local name=$1; shift
  local t0=$(date +%s.%N) rc=0
  echo "=== $name: $*" | tee -a "$LOG"
  "$@" >>"$LOG" 2>&1 || rc=$?
  local dt=$(awk "BEGIN{print $(date +%s.%N) - $t0}")
  echo "{\"part\": \"$name\", \"seconds\": $dt, \"rc\": $rc}" >>"$PARTS"
  echo "=== $name: ${dt}s rc=$rc" | tee -a "$LOG"
}

table() {  # table WORKDIR ARGS...: the authors' CGN table command
  local w=$1; shift
  $PY -m cgn_jax.experiments.mnist_table --cgn-dir "$CGN_DIR" \
      --workdir "$w" --seeds "$SEEDS" --steps-per-call "$SPC" "$@"
}

part_probe() {
  timed probe_table table "$WORK/probe_table" --num 2000 --cfs-per-shape 10 \
      --epochs 1 --variants wildlife --test-subset 640
  timed probe_cgn $PY train.py --config=configs/cgn_mnist_many.py:wildlife,seeds=2 \
      --workdir="$WORK/probe_cgn" --config.num_train_steps=200 \
      --config.steps_per_call=100 --config.progress_bar=False \
      --config.perceptual.vgg16=random --config.overwrite=True
}

part_authors() {
  timed authors table "$WORK/authors" --num "$NUM" --cfs-per-shape 10 \
      --epochs "$EPOCHS" --variants "$VARIANTS"
}

part_cgn_speed() {
  for k in 1 8; do
    timed "cgn_speed_seeds$k" $PY train.py \
        --config=configs/cgn_mnist_many.py:wildlife,seeds=$k \
        --workdir="$WORK/cgn_speed_$k" --config.num_train_steps=2000 \
        --config.steps_per_call=100 --config.progress_bar=False \
        --config.sample_every_steps=100000 --config.ckpt_every_steps=100000 \
        --config.perceptual.vgg16="$VGG16_DIR" --config.overwrite=True
  done
}

part_own_cgn() {
  timed "own_cgn_train_$CGNS" $PY -m cgn_jax.experiments.mnist_own_cgns \
      --workdir "$WORK/own" --stage cgn --cgns "$CGNS" --seeds "$SEEDS" \
      --steps-per-call "$SPC" --vgg16 "$VGG16_DIR"
  timed "own_cgn_table_$CGNS" $PY -m cgn_jax.experiments.mnist_own_cgns \
      --workdir "$WORK/own" --stage table --cgns "$CGNS" --seeds "$SEEDS" \
      --num "$NUM" --epochs "$EPOCHS"
}

part_ablation() {
  timed "ablation_$VARIANTS" $PY -m cgn_jax.experiments.mnist_ablation \
      --cgn-dir "$CGN_DIR" --workdir "$WORK/ablation" --variants "$VARIANTS" \
      --seeds 1 --epochs "$EPOCHS" --scale "$SCALE" --steps-per-call "$SPC"
}

part_collect() {
  $PY - "$WORK" "$OUT" <<'PYEOF'
import json, pathlib, platform, shutil, subprocess, sys, tarfile
work, out = map(pathlib.Path, sys.argv[1:])
res = {"machine": platform.node(), "parts": []}
try:
  import jax
  res["devices"] = [str(d) for d in jax.devices()]
except Exception as e:  # noqa
  res["devices"] = repr(e)
p = work / "parts.jsonl"
if p.exists():
  res["parts"] = [json.loads(l) for l in p.read_text().splitlines() if l]
md = []
for name in ("probe_table/mnist_table", "authors/mnist_table",
             "own/own_cgns", "ablation/ablation"):
  j = work / f"{name}.json"
  if j.exists():
    res[name.split("/")[0]] = json.loads(j.read_text())
  m = work / f"{name}.md"
  if m.exists():
    md += [f"## {name.split('/')[0]}", "", m.read_text()]
for d in sorted(work.glob("cgn_speed_*")) + sorted(work.glob("probe_cgn")):
  r = d / "results.json"
  if r.exists():
    res[d.name] = json.loads(r.read_text())
out.mkdir(parents=True, exist_ok=True)
(out / "results.json").write_text(json.dumps(res, indent=1))
(out / "tables.md").write_text("\n".join(md) or "(no tables yet)\n")
if (work / "ablation" / "ablation.png").exists():
  shutil.copy(work / "ablation" / "ablation.png", out / "ablation.png")
if (work / "log.txt").exists():
  shutil.copy(work / "log.txt", out / "log.txt")
with tarfile.open(out / "details.tar.gz", "w:gz") as tar:  # small files only
  for f in work.rglob("*"):
    if f.is_file() and f.suffix in (".json", ".jsonl", ".md") and \
        "checkpoints" not in f.parts and f.stat().st_size < 2**20:
      tar.add(f, arcname=str(f.relative_to(work)))
print("collected into", out)
PYEOF
}

[ $# -gt 0 ] || set -- probe
for part in "$@"; do
  case $part in
    probe|authors|cgn_speed|own_cgn|ablation) "part_$part" ;;
    collect) ;;  # always done below
    all) part_probe; part_authors; part_cgn_speed; part_own_cgn; part_ablation ;;
    *) echo "unknown PART $part (probe authors cgn_speed own_cgn ablation collect all)" >&2; exit 2 ;;
  esac
done
part_collect
