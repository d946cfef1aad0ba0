#!/usr/bin/env bash
# The GPU checks of issue #14 in one run, for a session that is lent a CUDA machine (see the device
# tool's README): the CUDA tests, then benchmarks/train_throughput.py on the ~1 B default shape and a
# 4-bit smoke test. Prepare the wheels the machine lacks once, here (they travel with `carry`):
#
#   .venv/bin/pip download -d .whl --only-binary :all: --no-deps zstandard tensorly cryptography \
#       networkx grpcio-health-checking pytest hypothesis bitsandbytes
#   device run: bash scripts/gpu_check.sh        (carry: [".whl"], timeout_s: 540)
#
# Results land in $OUT (train_throughput.json, tests.log), or ./gpu-out when $OUT is unset.
set -uo pipefail
out=${OUT:-gpu-out}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$out/gpu.txt"
pip install -q --no-index --find-links .whl zstandard tensorly cryptography networkx grpcio-health-checking \
    pytest hypothesis 2>&1 | tail -2
pip install -q --no-index --find-links .whl bitsandbytes 2>/dev/null || echo "no bitsandbytes wheel: 4-bit skipped"
pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
python -m pytest -q -p no:cacheprovider -o addopts="" tests/test_codec.py tests/test_codec_pipeline.py \
    tests/test_quantize.py tests/test_train.py tests/test_fused.py tests/test_train_speed.py 2>&1 | tee "$out/tests.log" | tail -5
python benchmarks/train_throughput.py --json 2>"$out/train_throughput.err" | tee "$out/train_throughput.txt" | tail -1 >"$out/train_throughput.json"
python - <<'PY' 2>&1 | tee "$out/quantize4bit.txt"
import tempfile, torch
from fedpeer.config import AdapterConfig, ModelConfig, TrainConfig
from fedpeer.model.dual_lora import load_dual_lora
from fedpeer.model.tiny import build_tiny_model
from fedpeer.errors import ModelError
d = build_tiny_model(tempfile.mkdtemp(), arch="llama", task="causal-lm", corpus=["a b c d e f g h"] * 4, hidden_size=128)
try:
    dual = load_dual_lora(ModelConfig(path=str(d), task="causal-lm", quantize="4bit"), AdapterConfig(), torch.device("cuda"), 1)
    ids = torch.tensor([[5, 6, 7, 8]], device="cuda")
    print("4bit ok: loss", float(dual.model(input_ids=ids, labels=ids).loss))
except ModelError as e:
    print("4bit:", e)
PY
