"""benchmarks/medical.py: data filtering, the missing-file error, the bootstrap interval, and a smoke run
on tiny fabricated files in the real files' formats (no /work/shared/data needed)."""

import contextlib
import importlib.util
import json
import random
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fedpeer.metrics import read_records
from fedpeer.model.tiny import build_tiny_model

ROOT = Path(__file__).resolve().parent.parent

SPECIALTIES = {  # name -> words its notes are made of (the Kaggle CSV writes names with a leading space)
    " Cardiovascular / Pulmonary": "heart cardiac artery coronary stent chest lung",
    " Orthopedic": "knee fracture bone joint tendon arthroscopy",
    " Gastroenterology": "colon endoscopy stomach bowel liver polyp",
    " Urology": "bladder prostate kidney urinary stone cystoscopy",
}
NOTE_TYPES = [
    " Consult - History and Phy.",
    " SOAP / Chart / Progress Notes",
    " Discharge Summary",
    " Letters",
]
ABSTRACT_CLASSES = {
    "neoplasms": "tumor carcinoma cancer chemotherapy metastasis",
    "digestive system diseases": "bowel hepatic gastric colitis pancreas",
    "nervous system diseases": "brain seizure neuron stroke dementia",
    "cardiovascular diseases": "heart hypertension artery infarction cardiac",
    "general pathological conditions": "patients treatment outcome clinical study",
}


def load_benchmark():
    spec = importlib.util.spec_from_file_location("medical", ROOT / "benchmarks" / "medical.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["medical"] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _text(words: str, rng: random.Random, n: int = 12) -> str:
    vocab = words.split() + ["the", "patient", "was", "seen", "today", "with", "history", "of", "pain"]
    return " ".join(rng.choice(vocab) for _ in range(n)) + "."


def mtsamples_rows(per_class: int = 30) -> list[dict]:
    rng = random.Random(0)
    rows = []

    def add(specialty: str, text: str) -> None:
        rows.append(
            {
                "note_id": str(len(rows) + 1),
                "specialty": specialty,
                "sample_name": "Sample",
                "description": "A description.",
                "keywords": "",
                "text": text,
            }
        )

    for name, words in SPECIALTIES.items():
        for _ in range(per_class):
            text = _text(words, rng)
            add(name, text)
            if rng.random() < 0.3:  # MTSamples files surgical notes under " Surgery" too
                add(" Surgery", text)
    for name in NOTE_TYPES:
        for _ in range(per_class + 5):  # larger than any specialty: must still be dropped
            add(name, _text("follow up visit plan", rng))
    add(" Surgery", _text("incision suture", rng))  # Surgery alone: dropped as well
    shared = _text("knee bladder", rng)  # one note filed under two specialties: ambiguous, dropped
    add(" Orthopedic", shared)
    add(" Urology", shared)
    return rows


def abstracts_rows(per_class: int = 40) -> list[dict]:
    rng = random.Random(1)
    return [
        {"label": label, "text": _text(words, rng, 20)}
        for label, words in ABSTRACT_CLASSES.items()
        for _ in range(per_class)
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run_benchmark(
    medical, capsys, data: Path, model: Path, out: Path, task: str, methods: str, settings
) -> dict:
    """medical.main on 3 sites, alpha 1.0, one seed; its --json object."""
    threads = torch.get_num_threads()
    try:
        medical.main(
            [
                *("--task", task, "--data-dir", str(data), "--sites", "3", "--alpha", "1.0"),
                *("--seeds", "1", "--methods", methods, "--model", str(model), "--out", str(out), "--json"),
                *(x for kv in settings for x in ("--set", kv)),
            ]
        )
    finally:
        torch.set_num_threads(threads)
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_mtsamples_filter_drops_note_types_surgery_and_ambiguous_notes():
    medical = load_benchmark()
    rows = mtsamples_rows()
    labels, counts = medical.mtsamples_categories(rows, 10)
    assert sorted(labels) == sorted(name.strip() for name in SPECIALTIES)
    assert not set(counts) & ({n.strip() for n in NOTE_TYPES} | {"Surgery"})
    # the note filed under Orthopedic and Urology is in neither class; the Surgery copies are not counted
    assert counts["Orthopedic"] == counts["Urology"] == 30
    # equal counts: ties are broken by name
    assert medical.mtsamples_categories(rows, 2)[0] == ["Cardiovascular / Pulmonary", "Gastroenterology"]
    # the real clinspacy copy writes names without the leading space: same result
    stripped = [{**r, "specialty": r["specialty"].strip()} for r in rows]
    assert medical.mtsamples_categories(stripped, 10) == (labels, counts)


def test_missing_data_file_is_one_line_and_exit_2(tmp_path, capsys):
    medical = load_benchmark()
    with pytest.raises(SystemExit) as exc:
        medical.main(["--task", "abstracts", "--data-dir", str(tmp_path)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "medical_abstracts_test.jsonl" in err and "sebischair/Medical-Abstracts-TC-Corpus" in err


def test_bootstrap_ci_known_cases():
    medical = load_benchmark()
    assert medical.bootstrap_ci([0.25] * 12, n_boot=500) == (0.25, 0.25, 0.25)
    # 0/1 differences, p = 0.5, n = 1000: mean 0.5, standard error 0.0158, 95 % interval about +-0.031
    mean, lo, hi = medical.bootstrap_ci([0.0, 1.0] * 500, n_boot=4000, seed=1)
    assert mean == 0.5
    assert lo == pytest.approx(0.469, abs=0.006) and hi == pytest.approx(0.531, abs=0.006)
    assert medical.bootstrap_ci([0.1, 0.2, 0.3], n_boot=100, seed=3) == medical.bootstrap_ci(
        [0.1, 0.2, 0.3], n_boot=100, seed=3
    )


def result_row(method, seed, scores, topology="ring"):
    """One run's row of benchmark results: task "t", 2 sites, alpha 0.3, node<i> scoring scores[i]."""
    per_site = {f"node{i}": v for i, v in enumerate(scores)}
    return {
        "task": "t",
        "sites": 2,
        "alpha": 0.3,
        "method": method,
        "topology": topology,
        "seed": seed,
        "per_site": per_site,
    }


def test_a_lossy_dual_is_paired_with_its_lossless_twin():
    medical = load_benchmark()
    assert medical.lossless_twin("dual+codec=pipeline+gamma=0.5+budget_bytes=2600") == "dual"
    assert medical.lossless_twin("dual+dual_head=local+codec=fp16") == "dual+dual_head=local"
    assert medical.lossless_twin("dual+dual_head=local") is None and medical.lossless_twin("dual") is None

    lossy = "dual+codec=pipeline+gamma=0.5"
    results = [result_row("dual", s, [0.6, 0.7]) for s in (0, 1)]
    results += [result_row(lossy, s, [0.58, 0.69]) for s in (0, 1)]
    rows = {
        r["comparison"]: r for r in medical.paired(results, n_boot=200) if r.get("method", lossy) == lossy
    }
    assert rows["pipeline-lossless"]["mean"] == pytest.approx(-0.015)
    assert rows["pipeline-lossless"]["ci95"][0] <= -0.015 <= rows["pipeline-lossless"]["ci95"][1]
    # a baseline that ran only on other seeds (merged files) gives no row, not a NaN one
    central = [result_row("central", 5, [0.5, 0.5], "none")]
    assert not [r for r in medical.paired(results + central, n_boot=200) if r["comparison"] == "dual-central"]


def test_compare_pairs_any_two_methods_by_seed_and_site():
    medical = load_benchmark()

    a, b = "global+rounds=32+prior=0.5", "local+rounds=16"
    results = [
        result_row(a, 0, [0.6, 0.7]),
        result_row(a, 1, [0.5, 0.9]),
        result_row(b, 0, [0.5, 0.7], "none"),
        result_row(b, 1, [0.6, 0.6], "none"),
        result_row(b, 2, [0.1, 0.1], "none"),  # no partner: left out
    ]
    (c,) = medical.compare(results, [f"{a} - {b}"], n_boot=500)
    assert (c["method"], c["baseline"], c["n_pairs"], c["seeds"]) == (a, b, 4, [0, 1])
    assert c["mean"] == pytest.approx(0.075) and c["per_seed"] == pytest.approx([0.05, 0.1])
    assert c["ci95"][0] <= 0.075 <= c["ci95"][1] and c["ci95_seeds"] == pytest.approx([0.05, 0.1])
    assert medical.compare(results, [f"{a}@ring - {b}@none"], n_boot=500)[0]["mean"] == pytest.approx(0.075)
    table = "\n".join(medical.compare_table([c], ("t", 2, 0.3)))
    assert "| +7.5 |" in table and "| 0-1 | 4 |" in table and "+5.0, +10.0" in table

    with pytest.raises(SystemExit, match="spaces around the minus"):
        medical.compare(results, [f"{a}-{b}"], n_boot=10)
    with pytest.raises(SystemExit, match="no \\(seed, site\\) has both.*local\\+rounds=16@none"):
        medical.compare(results, [f"dual - {b}"], n_boot=10)
    with pytest.raises(SystemExit, match="several topologies.*@TOPOLOGY"):
        medical.compare([*results, result_row(a, 0, [0.6, 0.7], "complete")], [f"{a} - {b}"], n_boot=10)
    assert medical.seed_list([2, 3, 4, 7, 9, 10]) == "2-4, 7, 9-10"


def test_the_shared_test_set_is_scored_without_the_site_prior(monkeypatch):
    """train.prior puts a site's own label mix into its predictions; the shared test set is no site's
    mix (the global view), so a site's model is scored there with prior 0 and on its own eval set with
    the τ it predicts with (train.prior, or the one train.prior_choices chose)."""
    medical = load_benchmark()
    calls = []
    monkeypatch.setattr(medical, "_score", lambda dual, cfg, data, prior: calls.append((data, prior)) or 0.5)
    nodes = [SimpleNamespace(node_id=f"node{i}", model=SimpleNamespace(task="seq-cls")) for i in range(2)]
    files = [{"eval": f"eval{i}", "test": "test"} for i in range(2)]
    dual = SimpleNamespace(load_adapter_state=lambda state: None)
    priors = {"node0": 0.5, "node1": 1.0}  # each site's train.prior, or what prior_choices chose
    medical.evaluate_sites(SimpleNamespace(nodes=nodes), dual, {"node0": {}, "node1": {}}, priors, files)
    assert calls == [("eval0", 0.5), ("test", 0.0), ("eval1", 1.0), ("test", 0.0)]


def test_the_shared_part_is_scored_alone_at_the_sites_prior_and_compared_as_method_slash_shared(monkeypatch):
    """A mesh run with a private part also scores each site's shared part alone (the private part left
    out), on the same eval set at the same τ; "A - A/shared" pairs the two."""
    medical = load_benchmark()
    alone = []
    monkeypatch.setattr(medical, "_score", lambda dual, cfg, data, prior: 0.4 if alone else 0.6)

    @contextlib.contextmanager
    def shared_only():
        alone.append(True)
        yield
        alone.pop()

    nodes = [SimpleNamespace(node_id=f"node{i}", model=SimpleNamespace(task="seq-cls")) for i in range(2)]
    files = [{"eval": f"eval{i}", "test": "test"} for i in range(2)]
    dual = SimpleNamespace(load_adapter_state=lambda state: None, shared_only=shared_only)
    priors = {"node0": 0.5, "node1": 1.0}
    states = {"node0": {}, "node1": {}}
    own, _, part = medical.evaluate_sites(SimpleNamespace(nodes=nodes), dual, states, priors, files, True)
    assert own == {"node0": 0.6, "node1": 0.6} and part == {"node0": 0.4, "node1": 0.4}
    assert medical.evaluate_sites(SimpleNamespace(nodes=nodes), dual, states, priors, files)[2] == {}

    def site(**adapter):
        a = {"use_local": True, "head": "split", "share": "b", **adapter}
        return SimpleNamespace(model=SimpleNamespace(task="seq-cls"), adapter=SimpleNamespace(**a))

    assert medical.has_shared_part(site())
    assert not any(medical.has_shared_part(site(**a)) for a in ({"use_local": False}, {"head": "local"}))

    part_scores = {"node0": 0.5, "node1": 0.8}
    rows = [{**result_row("dual", s, [0.6, 0.7]), "shared_part_per_site": part_scores} for s in (0, 1)]
    (c,) = medical.compare(rows, ["dual - dual/shared"], n_boot=200)
    assert c["mean"] == pytest.approx(0.0) and c["n_pairs"] == 4
    assert c["per_seed"] == pytest.approx([0.0, 0.0])
    assert medical.compare(rows, ["dual@ring/shared - dual"], n_boot=200)[0]["mean"] == pytest.approx(0.0)
    with pytest.raises(SystemExit, match="only part that can be named is /shared"):
        medical.compare(rows, ["dual - dual/private"], n_boot=10)
    with pytest.raises(SystemExit, match="no \\(seed, site\\) has both"):  # runs without a shared part
        medical.compare([result_row("dual", 0, [0.6, 0.7])], ["dual - dual/shared"], n_boot=10)


def test_split_is_seeded_disjoint_and_gives_each_site_its_eval_set():
    medical = load_benchmark()
    y = [i % 5 for i in range(600)]
    s = medical.Settings(sites=4, alpha=0.3, min_site=40)
    a, b = medical.split_sites(y, 5, s, 0), medical.split_sites(y, 5, s, 0)
    assert a == b and a != medical.split_sites(y, 5, s, 1)
    every = a.test + [i for tr, ev in a.sites for i in tr + ev]
    assert sorted(every) == list(range(600))  # each example in exactly one place
    for train, ev in a.sites:
        assert len(ev) == min(max(100, round(0.2 * (len(train) + len(ev)))), (len(train) + len(ev)) // 2)


# Settings of the runs on the tiny files: one step a round, small batches, sites and eval sets.
TINY_SETTINGS = [
    "rounds=1",
    "steps=1",
    "batch=8",
    "max_length=32",
    "eval_min=6",
    "min_site=12",
    "test_max=40",
    "test_fraction=0.3",
    "monitor=4",
    "n_boot=200",
]


def tiny_files_and_model(tmp_path: Path) -> tuple[Path, Path]:
    """Both tasks' files in the real formats, and a tiny BERT classifier built on their words."""
    data = tmp_path / "data"
    write_jsonl(data / "mtsamples.jsonl", mtsamples_rows())
    write_jsonl(data / "medical_abstracts_test.jsonl", abstracts_rows())
    corpus = [r["text"] for r in mtsamples_rows() + abstracts_rows()]
    model = build_tiny_model(
        tmp_path / "bert",
        arch="bert",
        task="seq-cls",
        corpus=corpus,
        labels=sorted(ABSTRACT_CLASSES),
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        intermediate_size=64,
    )
    return data, model


@pytest.mark.slow
def test_medical_benchmark_smoke_on_tiny_files(tmp_path, capsys):
    medical = load_benchmark()
    data, model = tiny_files_and_model(tmp_path)
    settings = [*TINY_SETTINGS, "late_train=6", "late_eval=20"]
    methods = (
        "local,global,dual,central,fedrep,dual-ab,dual-a+dual_head=split,dual+keep_best=macro_f1,"
        "global+prior_choices=0:100"
    )
    result = run_benchmark(
        medical, capsys, data, model, tmp_path / "out", "mtsamples,abstracts", methods, settings
    )
    assert result["wall_s"] > 0
    # every row records where it ran: the CPU here, the GPU under device=auto on a CUDA machine
    assert {r["device"] for r in result["results"]} == {result["device"]} == {medical.device_name("auto")}
    combos = {(r["task"], r["method"], r["topology"]) for r in result["results"]}
    for task in ("mtsamples", "abstracts"):
        assert {(m, t) for k, m, t in combos if k == task} == {
            ("local", "none"),
            ("central", "none"),
            ("global", "ring"),
            ("dual", "ring"),
            ("fedrep", "ring"),
            ("dual-ab", "ring"),
            ("dual-a+dual_head=split", "ring"),
            ("dual+keep_best=macro_f1", "ring"),
            ("global+prior_choices=0:100", "ring"),
        }
    for r in result["results"]:
        assert set(r) >= {"task", "sites", "alpha", "method", "topology", "seed", "mean_score", "per_site"}
        assert set(r["per_site"]) == {"node0", "node1", "node2"}
        assert 0.0 <= r["mean_score"] <= 1.0
        assert (r["bytes_per_link_round"] > 0) == (r["method"] not in ("local", "central"))
    # A_g trained and shared (dual-ab) sends more than B_g alone (dual, FFA-LoRA)
    by = {(r["task"], r["method"]): r["bytes_per_link_round"] for r in result["results"]}
    assert by[("mtsamples", "dual-ab")] > by[("mtsamples", "dual")]
    # FedSA-LoRA sends A_g instead of B_g (and part of the head): about what FFA-LoRA sends
    assert 0.5 < by[("mtsamples", "dual-a+dual_head=split")] / by[("mtsamples", "dual")] < 2.0
    comparisons = {(p["task"], p["method"], p["comparison"]) for p in result["paired"]}
    assert comparisons == {
        (t, m, c)
        for t in ("mtsamples", "abstracts")
        for m in ("dual", "dual-ab", "dual-a+dual_head=split", "dual+keep_best=macro_f1")
        for c in ("dual-best_baseline", "dual-central")
    }
    for p in result["paired"]:
        assert p["n_pairs"] == 3 and p["ci95"][0] <= p["mean"] <= p["ci95"][1]
    # The late joiner: after each seed's dual run, from the mesh's consensus and from scratch.
    late = {r["task"]: r for r in result["late_joiner"]}
    assert set(late) == {"mtsamples", "abstracts"}
    for r in late.values():
        assert r["method"] == "dual" and r["late_train"] == 6 and r["late_eval"] == 20
        assert len(r["mesh"]) == len(r["scratch"]) == 2  # before training, then after each round
        assert r["rounds_to_match"] is None or 0 <= r["rounds_to_match"] <= 1
    assert (tmp_path / "out" / "mtsamples-n3-a1" / "late-s0" / "train.jsonl").read_text().count("\n") == 6
    md = (tmp_path / "out" / "medical.md").read_text()
    # keep_best: every site's best round kept, scored on a split of its training data, not the eval set
    kept = tmp_path / "out" / "mtsamples-n3-a1" / "dual+keep_best=macro_f1-ring-s0"
    assert all((kept / f"node{i}" / "best" / "checkpoint.safetensors").exists() for i in range(3))
    assert not (tmp_path / "out" / "mtsamples-n3-a1" / "dual-ring-s0" / "node0" / "best").exists()
    # prior_choices: every site's τ is one of its choices
    for r in result["results"]:
        assert ("prior_per_site" in r) == (r["method"] == "global+prior_choices=0:100")
        assert set(r.get("prior_per_site", {}).values()) <= {0.0, 100.0}
        if "prior_per_site" in r:
            assert set(r["prior_per_site"]) == set(r["per_site"])
    assert md.count("dual-central") == 8 and "## Late joiner, abstracts (6 training examples, 20 eval)" in md
    assert (tmp_path / "out" / "mtsamples-n3-a1" / "report" / "report.md").exists()

    # --merge of the --out directory pools what finished: the same rows and comparisons. Rows written
    # before runs recorded their device were CPU runs.
    old = tmp_path / "old"
    old.mkdir()
    for name in ("settings.json", "data.json"):
        (old / name).write_text((tmp_path / "out" / name).read_text())
    rows = [{k: v for k, v in r.items() if k != "device"} for r in result["results"]]
    (old / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for part, device in ((tmp_path / "out", result["device"]), (old, "cpu")):
        medical.main(["--merge", str(part), "--compare", "dual - central", "--json"])
        out = capsys.readouterr().out
        merged = json.loads(out.strip().splitlines()[-1])
        assert merged["device"] == device
        assert [r["mean_score"] for r in merged["results"]] == [r["mean_score"] for r in result["results"]]
        assert {(p["task"], p["method"], p["comparison"], p["mean"]) for p in merged["paired"]} == {
            (p["task"], p["method"], p["comparison"], p["mean"]) for p in result["paired"]
        }
        # --compare of dual and central is the benchmark's own dual-central row, for each task
        own = {
            p["task"]: p["mean"]
            for p in merged["paired"]
            if (p["method"], p["comparison"]) == ("dual", "dual-central")
        }
        assert {c["task"]: c["mean"] for c in merged["compare"]} == pytest.approx(own) and len(own) == 2
        assert out.count("| dual | central |") == 2


@pytest.mark.slow
def test_central_with_a_prior_scores_the_pooled_model_central_trained(tmp_path, capsys):
    """central+prior=τ after central, same seed: the pooled model is not trained again, and the run's
    scores and per-round metrics are those of a run that trains it itself."""
    medical = load_benchmark()
    data, model = tiny_files_and_model(tmp_path)
    settings = [*TINY_SETTINGS, "rounds=2"]
    both = run_benchmark(
        medical, capsys, data, model, tmp_path / "both", "mtsamples", "central,central+prior=50", settings
    )
    alone = run_benchmark(
        medical, capsys, data, model, tmp_path / "alone", "mtsamples", "central+prior=50", settings
    )
    rows = {r["method"]: r for r in both["results"]}
    reused, trained = rows["central+prior=50"], alone["results"][0]
    assert reused["pooled_model_of"] == "central"
    assert "pooled_model_of" not in trained and "pooled_model_of" not in rows["central"]
    for key in ("per_site", "shared_test_per_site"):
        assert reused[key] == trained[key]
    assert not (tmp_path / "both" / "mtsamples-n3-a1" / "central+prior=50-none-s0" / "pooled.jsonl").exists()

    def rounds(out: Path, label: str, node: str) -> list:
        metrics = out / "mtsamples-n3-a1" / f"{label}-none-s0" / node / "metrics.jsonl"
        return [(r.round, r.train_loss, r.evaluation) for r in read_records(metrics)]

    for node in reused["per_site"]:
        scored = rounds(tmp_path / "both", "central+prior=50", node)
        assert [t for t, _, _ in scored] == [1, 2]
        assert scored == rounds(tmp_path / "alone", "central+prior=50", node)
        # the same model and training losses, scored at another τ: τ = 50 moves the eval loss
        plain = rounds(tmp_path / "both", "central", node)
        assert [loss for _, loss, _ in plain] == [loss for _, loss, _ in scored]
        assert [e["eval_loss"] for _, _, e in plain] != [e["eval_loss"] for _, _, e in scored]


def test_mix_screen_scores_the_kept_runs_and_their_mixes(tmp_path, capsys):
    """benchmarks/mix_screen.py over a kept --out directory: weight 1 is the local model and weight 0
    at the shared run's τ the shared model, each exactly as medical.py scored them."""
    medical = load_benchmark()
    spec = importlib.util.spec_from_file_location("mix_screen", ROOT / "benchmarks" / "mix_screen.py")
    mix = importlib.util.module_from_spec(spec)
    sys.modules["mix_screen"] = mix  # dataclasses look their module up there
    spec.loader.exec_module(mix)
    data = tmp_path / "data"
    write_jsonl(data / "medical_abstracts_test.jsonl", abstracts_rows())
    model = build_tiny_model(
        tmp_path / "bert",
        arch="bert",
        task="seq-cls",
        corpus=[r["text"] for r in abstracts_rows()],
        labels=sorted(ABSTRACT_CLASSES),
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        intermediate_size=64,
    )
    settings = ["rounds=2", "steps=2", "batch=8", "max_length=32", "eval_min=6", "min_site=12", "monitor=4"]
    out = tmp_path / "out"
    result = run_benchmark(medical, capsys, data, model, out, "abstracts", "local,global+prior=0.5", settings)
    scored = {r["method"]: r["per_site"] for r in result["results"]}
    rows_file = tmp_path / "rows.jsonl"
    args = [str(out), "--task", "abstracts", "--local", "local", "--shared", "global+prior=0.5"]
    args += ["--weights", "0,0.5,1", "--priors", "0.5", "--model", str(model), "--rows", str(rows_file)]
    threads = torch.get_num_threads()
    try:
        mix.main([*args, "--n-boot", "200", "--json"])
    finally:
        torch.set_num_threads(threads)
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rows = {r["site"]: r for r in map(json.loads, rows_file.read_text().splitlines())}
    assert summary["pairs"] == 3 and summary["seeds"] == [0] and set(rows) == {"node0", "node1", "node2"}
    for site, r in rows.items():
        assert r["local"] == r["logmix w1 t0.5"] == r["pmix w1 t0.5"] == pytest.approx(scored["local"][site])
        assert r["shared"] == r["logmix w0 t0.5"] == pytest.approx(scored["global+prior=0.5"][site])
    means = {e["mix"]: e for e in summary["mixes"]}
    assert means["local"]["minus_local"] == {"mean": 0.0, "ci95": [0.0, 0.0]}
    assert means["shared"]["mean"] == pytest.approx(result["results"][1]["mean_score"])
    with pytest.raises(SystemExit):  # no dual runs kept there: says so and exits 2
        mix.main([*args[:5], "--shared", "dual", "--model", str(model)])
    assert "no seed has both a 'local' and a 'dual' run" in capsys.readouterr().err


def impression_rows(per_specialty: int = 24) -> list[dict]:
    """MTSamples-like notes with an IMPRESSION section in the corpus' flattened layout."""
    rng = random.Random(2)
    rows = []
    for name, words in SPECIALTIES.items():
        for _ in range(per_specialty):
            findings = _text(words, rng)
            impression = _text(words, rng, 6)
            text = f"FINDINGS:  ,{findings},IMPRESSION:  ,1. {impression},2. Stable.,PLAN: ,Follow up."
            rows.append({"note_id": str(len(rows)), "specialty": name, "text": text})
    return rows


def test_impression_notes_take_the_section_up_to_the_next_heading():
    medical = load_benchmark()
    note = "HISTORY:  ,Knee pain for a year.,IMPRESSION:  ,1. Torn meniscus.,2. Effusion.,PLAN: ,Rest."
    rows = [
        {"specialty": " Consult - History and Phy.", "text": note},  # the same note twice: ...
        {"specialty": " Orthopedic", "text": note},  # ... the specialty wins over the note type
        {"specialty": " Urology", "text": "No impression section here."},
    ]
    assert medical._impression_notes(rows, words=40) == [
        ("Orthopedic", "HISTORY: Knee pain for a year.,", "1. Torn meniscus. 2. Effusion.")
    ]
    assert medical._impression_notes(rows, words=3)[0][2] == "1. Torn meniscus."


def test_impression_task_smoke_on_tiny_files(tmp_path, capsys):
    """The generation task end to end: a causal LM, prompt/completion files, ROUGE-L per site."""
    medical = load_benchmark()
    data = tmp_path / "data"
    rows = impression_rows()
    write_jsonl(data / "mtsamples.jsonl", rows)
    model = build_tiny_model(
        tmp_path / "llama",
        arch="llama",
        task="causal-lm",
        corpus=[r["text"] for r in rows],
        hidden_size=32,
        num_layers=2,
        num_heads=2,
        intermediate_size=64,
    )
    settings = ["rounds=1", "steps=1", "max_length=48", "eval_min=6", "min_site=12", "n_boot=200"]
    result = run_benchmark(
        medical, capsys, data, model, tmp_path / "out", "impression", "local,dual", settings
    )
    assert result["data"]["impression"]["metric"] == "rouge_l"
    assert result["data"]["impression"]["settings"]["lr"] == medical.GENERATION_SETTINGS["lr"]
    assert result["data"]["impression"]["settings"]["max_length"] == 48  # --set wins over the task's own
    assert {r["method"] for r in result["results"]} == {"local", "dual"}
    for r in result["results"]:
        assert set(r["per_site"]) == {"node0", "node1", "node2"}
        assert all(0.0 <= v <= 1.0 for v in r["per_site"].values())
    assert {p["comparison"] for p in result["paired"]} == {"dual-best_baseline"}
    site = tmp_path / "out" / "impression-n3-a1" / "data-s0" / "site0"
    first = json.loads((site / "eval.jsonl").read_text().splitlines()[0])
    assert first["prompt"].endswith("\nIMPRESSION:") and first["completion"].startswith(" 1. ")
    assert (tmp_path / "out" / "impression-n3-a1" / "report").is_dir()
