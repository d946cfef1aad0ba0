# shellcheck shell=bash
# What scripts/gpu_check.sh and scripts/gpu_generation.sh share; each sources it after setting `name`
# (its label in progress lines). Runs from the repository root; results go to $OUT (or ./gpu-out).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=${OUT:-gpu-out}
mkdir -p "$out"
py=${PYTHON:-python3}
site=/tmp/fedpeer-site  # the carried wheels, installed once per machine
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
say() { echo "[$name $((SECONDS))s] $*" | tee -a "$out/$name.txt"; }

# use_wheels MODULE...: install the carried wheels (.whl/) when a module is missing; fedpeer from here.
use_wheels() {
    local imports
    imports=$(IFS=,; echo "$*")
    if ! "$py" -c "import $imports" 2>/dev/null; then
        if [ ! -d "$site/zstandard" ]; then
            say "installing the carried wheels"
            "$py" -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl || exit 1
        fi
        export PYTHONPATH=$site
    fi
    export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD
}

# unpack_data SRC DEST: the gzipped corpora that gpu_prepare.sh wrote to SRC, unpacked into DEST.
unpack_data() {
    mkdir -p "$2"
    "$py" -c 'import gzip, pathlib, shutil, sys
for f in pathlib.Path(sys.argv[1]).glob("*.jsonl.gz"):
    shutil.copyfileobj(gzip.open(f), open(pathlib.Path(sys.argv[2]) / f.stem, "wb"))' "$1" "$2"
}

# report_runs ROOT LABEL: the scores and errors of the benchmark processes under ROOT (one --out
# directory and one .log each), their finished runs merged into $OUT/LABEL.{log,json}, and the small
# files (results, settings, logs, per-round metrics) in $OUT/LABEL.tgz. Sets `finished`.
report_runs() {
    local root=$1 label=$2 parts
    grep -H ": \(macro-F1\|ROUGE-L\) [0-9]" "$root"/*.log | sed "s|$root/||"
    grep -l "Traceback" "$root"/*.log | head -n 3 | while read -r f; do echo "== $f"; tail -n 15 "$f"; done
    mapfile -t parts < <(find "$root" -mindepth 2 -maxdepth 2 -name results.jsonl -printf '%h\n' | sort)
    finished=$(cat "${parts[@]/%//results.jsonl}" /dev/null | grep -c . || true)
    say "$finished runs finished"
    if [ "${#parts[@]}" -gt 0 ]; then
        "$py" benchmarks/medical.py --merge "${parts[@]}" --out "$root/merged" --json >"$out/$label.log" 2>&1
        tail -n 1 "$out/$label.log" >"$out/$label.json"
    fi
    (cd "$root" && find . \( -name results.jsonl -o -name settings.json -o -name data.json -o -name '*.log' \
        -o -name run.json -o -name medical.md -o -name metrics.jsonl \) -print0 | tar -czf - --null -T -) \
        >"$out/$label.tgz"
}
