"""`fedpeer report`: synthetic run directories (no training) -> markdown tables and PNG plots."""

import json
import statistics
import sys

import pytest
from fedpeer_cli.main import app
from typer.testing import CliRunner

from fedpeer.report import (
    ReportError,
    build_report,
    curve,
    load_run,
    markdown_table,
    plot_metric_vs_bytes,
    plot_metric_vs_round,
    resolve_metric,
    summarize_run,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROUNDS = 3
BYTES_PER_ROUND = 2048  # -> "2.0 KiB" per node per round

# final macro_f1 per (method, seed) and site; the spread over seeds is what the grouped table reports
FINAL = {
    ("dual", 0): {"site-a": 0.70, "site-b": 0.60},
    ("dual", 1): {"site-a": 0.74, "site-b": 0.62},
    ("dual", 2): {"site-a": 0.72, "site-b": 0.67},
    ("fedavg", 0): {"site-a": 0.50, "site-b": 0.40},
    ("fedavg", 1): {"site-a": 0.55, "site-b": 0.45},
    ("fedavg", 2): {"site-a": 0.52, "site-b": 0.41},
}


def write_run(root, name, finals, meta=None, metric="macro_f1", rounds=ROUNDS):
    """A run directory as `fedpeer scenario run` leaves it; the metric climbs linearly to its final value."""
    d = root / name
    for node, final in finals.items():
        lines = []
        for t in range(1, rounds + 1):
            rec = {"round": t, "train_loss": 1.0 / t, "eval_loss": 2.0 / t, "bytes_sent": BYTES_PER_ROUND}
            rec[metric] = final * t / rounds
            rec["round_s"] = 0.5
            lines.append(json.dumps(rec))
        (d / node).mkdir(parents=True)
        (d / node / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    if meta is not None:
        (d / "run.json").write_text(json.dumps(meta))
    return d


@pytest.fixture
def bench(tmp_path):
    """Six runs: two methods on a ring, three seeds each."""
    return [
        write_run(tmp_path / "bench", f"{m}-ring-s{s}", f, {"method": m, "topology": "ring", "seed": s})
        for (m, s), f in FINAL.items()
    ]


def row(table, start):
    return next(line for line in table.splitlines() if line.startswith(start))


def test_load_and_summarize_one_run(tmp_path):
    d = write_run(tmp_path, "plain", {"node-10": 0.9, "node-2": 0.5})
    (d / "node-2" / "metrics.jsonl").open("a").write('{"round": 4, "macro_')  # torn last line
    run = load_run(d)
    assert run.label == "plain" and run.meta == {}
    assert list(run.nodes) == ["node-2", "node-10"]  # natural order
    s = summarize_run(run, "macro_f1")
    assert s["final"] == pytest.approx({"node-2": 0.5, "node-10": 0.9})
    assert (s["mean"], s["min"], s["max"]) == pytest.approx((0.7, 0.5, 0.9))
    assert s["bytes_sent"] == {"node-2": 3 * 2048, "node-10": 3 * 2048}
    assert s["mean_bytes_sent_per_round"] == 2048 and s["rounds"] == 3
    assert s["wall_s"] == pytest.approx(1.5)


def test_restarted_node_keeps_the_later_record_of_a_round(tmp_path):
    d = write_run(tmp_path, "r", {"a": 0.3})
    (d / "a" / "metrics.jsonl").open("a").write(json.dumps({"round": 3, "macro_f1": 0.8, "bytes_sent": 10}))
    run = load_run(d)
    assert [r.round for r in run.nodes["a"]] == [1, 2, 3]
    assert summarize_run(run, "macro_f1")["final"] == {"a": 0.8}


def test_curve_is_mean_over_nodes_against_cumulative_bytes(tmp_path):
    run = load_run(write_run(tmp_path, "c", {"a": 0.3, "b": 0.9}))
    rounds, x, y = curve(run, "macro_f1")
    assert rounds == [1, 2, 3]
    assert x == [2048, 4096, 6144]
    assert y == pytest.approx([0.2, 0.4, 0.6])


def test_per_run_table_has_the_numbers(bench):
    runs = [load_run(d) for d in bench]
    assert runs[0].label == "dual ring seed 0"
    table = markdown_table(runs, "macro_f1")
    r = row(table, "| dual ring seed 1 |")
    assert "| dual | ring | 1 | 0.6800 | 0.6200–0.7400 | site-a 0.7400, site-b 0.6200 | 2.0 KiB | 3 |" in r


def test_grouped_table_is_mean_and_std_over_seeds(bench):
    table = markdown_table([load_run(d) for d in bench], "macro_f1")
    assert "± std over seeds" in table
    for method in ("dual", "fedavg"):
        seeds = [FINAL[(method, s)] for s in range(3)]
        means = [statistics.fmean(f.values()) for f in seeds]
        a = [f["site-a"] for f in seeds]
        r = row(table, f"| {method} | ring | 0, 1, 2 |")
        assert f"{statistics.fmean(means):.4f} ± {statistics.stdev(means):.4f}" in r
        assert f"site-a {statistics.fmean(a):.4f} ± {statistics.stdev(a):.4f}" in r
        assert r.endswith("| 2.0 KiB | 3 |")


def test_no_grouped_table_without_seeds(tmp_path):
    runs = [load_run(write_run(tmp_path, n, {"a": 0.5})) for n in ("x", "y")]
    assert "std over seeds" not in markdown_table(runs, "macro_f1")


@pytest.mark.parametrize(
    "metrics,expected",
    [
        (("macro_f1", "accuracy", "eval_loss"), "macro_f1"),
        (("rouge_l", "accuracy"), "rouge_l"),
        (("accuracy",), "accuracy"),
        ((), "eval_loss"),
    ],
)
def test_auto_metric(tmp_path, metrics, expected):
    d = write_run(tmp_path, "r", {"a": 0.5}, metric=metrics[0] if metrics else "perplexity")
    for m in metrics[1:]:
        for f in d.glob("*/metrics.jsonl"):
            f.write_text(f.read_text().replace('"round_s"', f'"{m}": 0.1, "round_s"'))
    assert resolve_metric([load_run(d)], "auto") == expected


def test_lower_is_better_is_said(tmp_path):
    run = load_run(write_run(tmp_path, "r", {"a": 0.5}))
    assert "eval_loss (lower is better)" in markdown_table([run], "eval_loss")


@pytest.mark.parametrize("plot", [plot_metric_vs_round, plot_metric_vs_bytes])
def test_plots_are_png(bench, tmp_path, plot):
    runs = [load_run(d) for d in bench] + [load_run(write_run(tmp_path, "lone", {"a": 0.4}))]
    path = plot(runs, "macro_f1", tmp_path / "plots" / "p.png")
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_build_report_writes_markdown_and_plots(bench, tmp_path):
    path = build_report([tmp_path / "bench"], tmp_path / "out")  # a folder of run directories
    text = path.read_text()
    assert path.name == "report.md" and "| dual | ring | 0, 1, 2 |" in text
    for png in ("macro_f1_vs_round.png", "macro_f1_vs_bytes.png"):
        assert f"]({png})" in text
        assert (tmp_path / "out" / png).read_bytes().startswith(PNG_MAGIC)


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_cli_prints_the_table_and_the_files(bench, tmp_path):
    r = invoke("report", *bench, "--out", tmp_path / "out", "--metric", "eval_loss")
    assert r.exit_code == 0, r.output
    assert "| dual ring seed 0 |" in r.output and "eval_loss (lower is better)" in r.output
    assert "report.md" in r.output and "eval_loss_vs_bytes.png" in r.output
    assert (tmp_path / "out" / "eval_loss_vs_round.png").exists()


def test_cli_errors_are_one_readable_line(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    good = write_run(tmp_path, "good", {"a": 0.5})
    cases = [
        ([empty], "has no metrics"),
        ([good, "--metric", "bleu"], "unknown metric 'bleu'"),
    ]
    for args, message in cases:
        r = invoke("report", *args, "--out", tmp_path / "out")
        assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output
    for mod in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, mod, None)  # import raises ImportError
    r = invoke("report", good, "--out", tmp_path / "out")
    assert r.exit_code == 2 and "pip install 'fedpeer[report]'" in r.output
    assert not (tmp_path / "out").exists()  # failed before writing anything


def test_bad_run_json_names_the_file(tmp_path):
    d = write_run(tmp_path, "r", {"a": 0.5})
    (d / "run.json").write_text("[1, 2]")
    with pytest.raises(ReportError, match="run.json must hold one JSON object"):
        load_run(d)


def test_consensus_plot_with_the_spectral_gap_rate(tmp_path):
    """A run whose run.json holds the topology's spectral gap (as `scenario run` writes it) gets a
    consensus plot with the (1 - gap)^t rate; runs without one do not."""
    d = write_run(tmp_path, "ring8", {"node0": 0.5, "node1": 0.5}, {"spectral_gap": 0.1206})
    for node in ("node0", "node1"):
        recs = [json.loads(x) for x in (d / node / "metrics.jsonl").read_text().splitlines()]
        for r in recs:
            r["consensus_distance"] = 0.9 ** r["round"]
        (d / node / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    report = build_report([d], tmp_path / "out").read_text()
    assert "consensus_vs_round.png" in report and "spectral gap ring8 0.1206" in report
    assert (tmp_path / "out" / "consensus_vs_round.png").read_bytes().startswith(PNG_MAGIC)
    plain = write_run(tmp_path, "nogap", {"node0": 0.5})
    assert "consensus_vs_round" not in build_report([plain], tmp_path / "out2").read_text()
