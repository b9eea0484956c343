#!/usr/bin/env bash
# mner-bench on a GPU machine, unattended, in one command (about 5 minutes on one H100):
#
#   bash benchmarks/gpu.sh [OUT_DIR]          (default: benchmarks/results/gpu-paper)
#
# 1. writes a paper-preset checkpoint with random weights (speed does not depend on them),
#    its WordPiece vocabulary learnt from TWITTER-2017's training text;
# 2. exports its tagger to a bundle, FP32 and FP16 graphs, plus TensorRT engines when
#    `tensorrt` imports (random ResNet-152 weights overflow FP16, so the vision stage is
#    left out; the TWITTER-2017 posts have no pictures anyway);
# 3. runs mner-bench on the TWITTER-2017 test posts, batch sizes 1, 8, 32, with every
#    backend this machine has: torch and torch-fp16 on CUDA always, ort and ort-fp16 on
#    CUDA when onnxruntime-gpu is installed, trt when TensorRT is.
#
# Nothing is installed or downloaded: it uses the Python environment it finds
# ($PYTHON, else .venv/bin/python, else python3) and ../shared/data/twitter2017.
# `--dry-run` prints the plan and the commands without running them.
set -euo pipefail

cd "$(dirname "$0")/.."
DRY_RUN=0
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
OUT=${1:-benchmarks/results/gpu-paper}
DATA=${DATA:-../shared/data/twitter2017}
WORK=${WORK:-$(mktemp -d /tmp/mner-gpu.XXXXXX)}

if [[ -n "${PYTHON:-}" ]]; then PY=$PYTHON
elif [[ -x .venv/bin/python ]]; then PY=.venv/bin/python
else PY=python3; fi
# Run from a source checkout without installing: the development namespace (see CONTRIBUTING in the README).
if ! "$PY" -c "import mner.runtime" 2>/dev/null; then
    mkdir -p .dev/mner
    for part in runtime train export benchmarks; do ln -sfn "$PWD/$part" ".dev/mner/$part"; done
    export PYTHONPATH="$PWD/.dev${PYTHONPATH:+:$PYTHONPATH}"
fi

for split in train test; do
    [[ -f "$DATA/$split.txt" ]] || { echo "gpu.sh: $DATA/$split.txt is missing (set DATA=...)" >&2; exit 2; }
done

has() { "$PY" -c "$1" >/dev/null 2>&1; }
if ! has "import torch; assert torch.cuda.is_available()"; then
    echo "gpu.sh: torch sees no CUDA GPU here; run it on a GPU machine (or mner-bench --device cpu on a CPU)" >&2
    [[ $DRY_RUN == 1 ]] || exit 2
fi
BACKENDS=torch,torch-fp16
EXPORT_FLAGS=(--stages tagger --fp16)
if has "import onnxruntime as o; assert 'CUDAExecutionProvider' in o.get_available_providers()"; then
    BACKENDS=$BACKENDS,ort,ort-fp16
else
    echo "gpu.sh: onnxruntime has no CUDA execution provider (onnxruntime-gpu not installed): no ort backends" >&2
fi
if has "import tensorrt"; then
    BACKENDS=$BACKENDS,trt
    EXPORT_FLAGS+=(--trt)
else
    echo "gpu.sh: tensorrt does not import: no trt backend" >&2
fi

run() {
    echo "+ $*"
    [[ $DRY_RUN == 1 ]] || "$@"
}
echo "gpu.sh: backends $BACKENDS; work directory $WORK; report to $OUT"
run "$PY" -m mner.export.random_checkpoint --preset paper --out "$WORK/best.pt" --words-from "$DATA/train.txt"
run "$PY" -m mner.export.cli --checkpoint "$WORK/best.pt" -o "$WORK/bundle" "${EXPORT_FLAGS[@]}" --overwrite
run "$PY" -m mner.benchmarks.cli --engine "$WORK/bundle" --checkpoint "$WORK/best.pt" --device cuda \
    --backends "$BACKENDS" --batch-size 1,8,32 --data "$DATA" -o "$OUT"
