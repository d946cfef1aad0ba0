#!/usr/bin/env bash
# Every GPU check in one run, for a session lent a CUDA machine (see the device tool's README):
#
#   1. the tests that exercise CUDA (skipped elsewhere), and the medical benchmark's smoke test, on the GPU;
#   2. benchmarks/train_throughput.py on its ~1 B CUDA default shape (fused dual LoRA against plain peft,
#      MFU, the codec's MB/s on the device) and a 4-bit smoke test (needs bitsandbytes; skipped without);
#   3. benchmarks/medical.py's full default (mtsamples and abstracts, seeds 2-6, local/global/dual/central)
#      as one process per (task, seed), all on the one GPU, then merged: its wall time and its scores;
#      then, if more than 150 s of the budget are left, seeds 7-11 (MORE_SEEDS) the same way.
#
# Prepare once, here: `bash scripts/gpu_prepare.sh` (wheels the machine lacks, the data and MiniLM).
#   device run: bash scripts/gpu_check.sh     carry: [".whl", ".gpu"]     timeout_s: 600
#
# GPU_CHECK_BUDGET_S (default 540) bounds the whole script: the medical runs get what is left and are
# stopped at that point; the runs that finished are still merged. Results land in $OUT (or ./gpu-out):
# gpu.txt (progress, versions, the 4-bit test), tests.log, train_throughput.{txt,err,json}, medical.{log,json,tgz}: 8
# files, the most a device call brings back.
# Seen on an H200 (2026-11-30): 409 s in all, of which tests 141 s, throughput and 4-bit 66 s, the
# default's seeds 2-6 84 s and seeds 7-11 84 s; the machine's start and the 57 MB carry took 30 s.
# For a dry run on a CPU: PYTHON=.venv/bin/python TASKS=mtsamples SEEDS=2 \
#   MEDICAL_ARGS="--quick --methods local,dual --set rounds=1 --set steps=1" TT_ARGS="--steps 1 --repeats 1"
name=gpu
# shellcheck source=scripts/gpu_common.sh
source "$(dirname "$0")/gpu_common.sh"
budget=${GPU_CHECK_BUDGET_S:-540}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$out/gpu.txt"
use_wheels zstandard tensorly
"$py" -c "import sys, torch, transformers, peft; print('python', sys.version.split()[0], 'torch', torch.__version__,
'transformers', transformers.__version__, 'peft', peft.__version__, 'cuda', torch.cuda.is_available())" \
    | tee -a "$out/gpu.txt"

say "1. tests"
timeout 150 "$py" -m pytest -q -p no:cacheprovider -o addopts="" tests/test_codec.py tests/test_codec_pipeline.py \
    tests/test_quantize.py tests/test_train.py tests/test_fused.py tests/test_train_speed.py \
    tests/test_medical_bench.py -rs 2>&1 | tee "$out/tests.log" | tail -8

say "2. train throughput"
# shellcheck disable=SC2086  # TT_ARGS is a list of flags
timeout 240 "$py" benchmarks/train_throughput.py --json ${TT_ARGS:-} 2>"$out/train_throughput.err" \
    | tee "$out/train_throughput.txt" | tail -1 >"$out/train_throughput.json"
sed -n '/^$/,$p' "$out/train_throughput.txt" | head -n -1
timeout 60 "$py" - <<'PY' 2>&1 | tee -a "$out/gpu.txt"
import tempfile, torch
from fedpeer.config import AdapterConfig, ModelConfig
from fedpeer.errors import ModelError
from fedpeer.model.dual_lora import load_dual_lora
from fedpeer.model.tiny import build_tiny_model
if not torch.cuda.is_available():
    raise SystemExit("4bit: no CUDA here, skipped")
d = build_tiny_model(tempfile.mkdtemp(), arch="llama", task="causal-lm", corpus=["a b c d e f g h"] * 4, hidden_size=128)
try:
    dual = load_dual_lora(ModelConfig(path=str(d), task="causal-lm", quantize="4bit"), AdapterConfig(), torch.device("cuda"), 1)
    ids = torch.tensor([[5, 6, 7, 8]], device="cuda")
    print("4bit ok: loss", float(dual.model(input_ids=ids, labels=ids).loss))
except ModelError as e:
    print("4bit:", e)
PY

say "3. medical benchmark, one process per (task, seed)"
data=/tmp/fedpeer-data
med=/tmp/fedpeer-medical
rm -rf "$med"
mkdir -p "$med"
unpack_data .gpu/data "$data"
# One process per (task, seed), all at once, each stopped when the budget runs out (its finished runs
# stay in its results.jsonl). The first wave is the default; what time is left goes to more seeds.
wave() {
    local left=$((budget - SECONDS - 30)) t0=$SECONDS
    say "seeds $1: the runs get ${left}s"
    for task in ${TASKS:-mtsamples abstracts}; do
        for seed in $1; do
            # shellcheck disable=SC2086  # MEDICAL_ARGS is a list of flags
            timeout "$left" "$py" benchmarks/medical.py --task "$task" --seeds 1 --first-seed "$seed" \
                --data-dir "$data" --model .gpu/minilm --out "$med/$task-s$seed" ${MEDICAL_ARGS:-} \
                >"$med/$task-s$seed.log" 2>&1 &
        done
    done
    wait
    say "seeds $1: $((SECONDS - t0))s of wall time"
    echo "wall_s_medical seeds $1: $((SECONDS - t0))" >>"$out/gpu.txt"
}
wave "${SEEDS:-2 3 4 5 6}"
if [ $((budget - SECONDS)) -gt 150 ] && [ -n "${MORE_SEEDS-7 8 9 10 11}" ]; then
    wave "${MORE_SEEDS-7 8 9 10 11}"
fi
report_runs "$med" medical
echo "finished_runs $finished" >>"$out/gpu.txt"
say "done"
