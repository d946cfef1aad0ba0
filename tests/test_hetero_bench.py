"""The heterogeneous benchmark end to end on a tiny local BERT (smoke test of its machinery and JSON)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from fedpeer.datasets.clinical import CLINICAL_LABELS, write_clinical_sites
from fedpeer.model.tiny import build_tiny_model

ROOT = Path(__file__).resolve().parent.parent


def load_benchmark():
    spec = importlib.util.spec_from_file_location("hetero", ROOT / "benchmarks" / "hetero.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["hetero"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_hetero_benchmark_runs_every_method_and_writes_a_report(tmp_path):
    hetero = load_benchmark()
    corpus_sites = write_clinical_sites(tmp_path / "corpus", 5, task="seq-cls", n_train=40, n_eval=10)
    corpus = [
        json.loads(line)["text"]
        for s in corpus_sites
        for f in ("train.jsonl", "eval.jsonl")
        for line in (s / f).read_text().splitlines()
    ]
    model = build_tiny_model(
        tmp_path / "bert",
        arch="bert",
        task="seq-cls",
        corpus=corpus,
        labels=CLINICAL_LABELS,
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        intermediate_size=64,
    )
    s = hetero.Settings(
        sites=3,
        rounds=2,
        steps=2,
        batch=8,
        max_length=48,
        n_train=24,
        n_eval=12,
        new_site_train=8,
        new_site_rounds=1,
    )
    result = hetero.run_all(s, [0], str(model), tmp_path / "out", grpc=False)

    combos = {(r["method"], r["topology"]) for r in result["results"]}
    assert combos == {
        ("local", "none"),
        ("central", "none"),
        ("global", "ring"),
        ("global", "complete"),
        ("dual", "ring"),
        ("dual", "complete"),
    }
    for r in result["results"]:
        assert set(r["per_site_macro_f1"]) == {"node0", "node1", "node2"}
        assert 0.0 <= r["mean_macro_f1"] <= 1.0
    assert len(result["new_site"]["mesh"]) == len(result["new_site"]["scratch"]) == 2
    json.dumps(result)  # the --json line must serialize

    from fedpeer.report import build_report

    runs = [d for d in sorted((tmp_path / "out").iterdir()) if (d / "run.json").exists()]
    report = build_report(runs, tmp_path / "out" / "report", metric="macro_f1").read_text()
    assert "dual" in report and "central" in report
