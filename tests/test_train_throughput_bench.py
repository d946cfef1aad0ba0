"""benchmarks/train_throughput.py end to end on a very small Llama (its machinery and JSON, not speed)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_train_throughput_benchmark_prints_every_path_and_one_json_object(tmp_path):
    small = ["--hidden", "64", "--layers", "2", "--heads", "4", "--intermediate", "128", "--seq", "32"]
    args = [*small, "--batch", "4", "--rank", "4", "--steps", "1", "--repeats", "2", "--threads", "1"]
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "train_throughput.py"),
            *args,
            "--codec-params",
            "65536",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["device"] == "cpu" and result["threads"] == 1 and result["model_params"] > 0
    runs = {r["path"]: r for r in result["runs"]}
    assert set(runs) == {"peft_single", "peft_dual", "fedpeer_unfused", "fedpeer"}
    assert runs["peft_single"]["vs_anchor"] == 1.0
    for r in runs.values():
        lo, hi = r["vs_anchor_ci95"]
        assert r["tokens_s"] > 0 and lo <= r["vs_anchor"] <= hi and r["mfu"] is None
    assert {c["name"] for c in result["codec"]} == {"int8", "int4", "int4-factorized"}
    assert all(c["encode_mb_s"] > 0 and c["decode_mb_s"] > 0 and c["ratio"] > 1 for c in result["codec"])
    assert "vs peft_single" in out.stdout  # the table for people comes first
