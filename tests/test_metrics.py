"""metrics.jsonl: the RoundRecord of one round, its JSON line, and reading old runs."""

import json

import pytest

from fedpeer.metrics import (
    AUTO_METRICS,
    EVAL_METRICS,
    MetricsWriter,
    RoundRecord,
    by_round,
    read_metrics,
    read_records,
)

# The keys a node writes per round, in order, before RoundRecord (Node.round_record's dict literal);
# the evaluation metrics of a seq-cls task sit after train_loss.
NODE_KEYS = [
    "round",
    "time",
    "node",
    "train_loss",
    "eval_loss",
    "accuracy",
    "macro_f1",
    "bytes_sent",
    "bytes_received",
    "raw_bytes",
    "payload_bytes",
    "codec",
    "train_s",
    "encode_s",
    "transfer_s",
    "decode_s",
    "mix_s",
    "eval_s",
    "checkpoint_s",
    "round_s",
    "consensus_distance",
    "mix_weight",
    "global_norm",
    "neighbours_heard",
    "neighbours_reached",
    "resynced",
    "frames_rejected",
]


def node_dict(**changes):
    """A round as the node built it before RoundRecord: a dict in NODE_KEYS order."""
    d = {
        "round": 3,
        "time": 1712345678.25,
        "node": "node1",
        "train_loss": 0.6931,
        "eval_loss": 0.7,
        "accuracy": 0.5,
        "macro_f1": 0.4,
        "bytes_sent": 16384,
        "bytes_received": 16200,
        "raw_bytes": 65536,
        "payload_bytes": 16000,
        "codec": "fp16",
        "train_s": 1.5,
        "encode_s": 0.01,
        "transfer_s": 0.2,
        "decode_s": 0.02,
        "mix_s": 0.003,
        "eval_s": 0.4,
        "checkpoint_s": 0.05,
        "round_s": 2.25,
        "consensus_distance": 0.125,
        "mix_weight": 0.5,
        "global_norm": 2.0,
        "neighbours_heard": ["node0", "node2"],
        "neighbours_reached": ["node0", "node2"],
        "resynced": [],
        "frames_rejected": 0,
    }
    d.update(changes)
    return d


def record(**changes):
    d = node_dict(**changes)
    ev = {k: d.pop(k) for k in ("eval_loss", "accuracy", "macro_f1")}
    return RoundRecord(**d, evaluation=ev)


def test_key_order_is_the_nodes():
    assert list(record().to_json()) == NODE_KEYS
    assert list(node_dict()) == NODE_KEYS


def test_the_line_is_byte_identical_to_the_dict_the_node_wrote(tmp_path):
    nan = float("nan")  # no train steps, no neighbour mixed: written as null
    MetricsWriter(tmp_path).write(record(train_loss=nan, consensus_distance=nan))
    line = (tmp_path / "metrics.jsonl").read_bytes()
    # What the node's dict writer produced: json.dumps with NaN as null.
    old = {
        k: None if isinstance(v, float) and v != v else v
        for k, v in node_dict(train_loss=nan, consensus_distance=nan).items()
    }
    assert line == (json.dumps(old) + "\n").encode()
    assert b'"train_loss": null' in line and b'"consensus_distance": null' in line


def test_to_json_from_json_round_trip(tmp_path):
    r = record(consensus_distance=None)
    assert RoundRecord.from_json(r.to_json()) == r
    assert RoundRecord.from_json(json.loads(json.dumps(r.to_json()))) == r
    w = MetricsWriter(tmp_path)
    w.write(r)
    w.write(record(round=4))
    assert read_records(tmp_path / "metrics.jsonl") == [r, record(round=4)]
    assert read_metrics(tmp_path / "metrics.jsonl")[0] == r.to_json()


def test_generation_metrics_keep_their_order():
    ev = {"eval_loss": 2.1, "perplexity": 8.17, "rouge_l": 0.3}  # causal-lm with prompts
    r = RoundRecord(round=1, train_loss=2.0, evaluation=ev)
    keys = list(r.to_json())
    assert keys[3:7] == ["train_loss", "eval_loss", "perplexity", "rouge_l"] and keys[7] == "bytes_sent"
    assert RoundRecord.from_json(r.to_json()) == r


def test_a_record_of_an_old_run():
    # a hand-written or older line: some keys missing, a metric this version does not know, a NaN
    # cleaned to null, and a non-numeric key nothing reads
    line = (
        '{"round": 2, "train_loss": 0.5, "eval_loss": 0.75, "macro_f1": null, "bleu": 12.5, '
        '"bytes_sent": 0, "round_s": 1.25, "note": "warm-up", "neighbours_heard": ["node0"]}'
    )
    r = RoundRecord.from_json(json.loads(line))
    assert (r.round, r.train_loss, r.bytes_sent, r.round_s) == (2, 0.5, 0, 1.25)
    assert r.evaluation == {"eval_loss": 0.75, "macro_f1": None, "bleu": 12.5}
    assert r.neighbours_heard == ["node0"]
    assert r.node is None and r.time is None and r.consensus_distance is None
    assert r.neighbours_reached is None and r.frames_rejected is None
    assert r.value("bleu") == 12.5 and r.value("round_s") == 1.25 and r.value("note") is None
    out = r.to_json()
    assert list(out) == NODE_KEYS[:4] + ["eval_loss", "macro_f1", "bleu"] + NODE_KEYS[7:]
    assert out["codec"] is None and "note" not in out


def test_lines_without_a_round_are_skipped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = ['{"round": 1, "train_loss": 1.0}', '{"train_loss": 2.0}', '{"round": "2"}', "[1, 2]"]
    path.write_text("\n".join(lines) + '\n{"round": 3, "train_lo')  # torn last line
    assert [r.round for r in read_records(path)] == [1]
    with pytest.raises(ValueError, match="integer round"):
        RoundRecord.from_json({"round": True})


def test_by_round_keeps_the_later_record_of_a_round():
    recs = [RoundRecord(round=2, train_loss=0.1), RoundRecord(round=1), RoundRecord(round=2, train_loss=0.2)]
    assert [(r.round, r.train_loss) for r in by_round(recs)] == [(1, None), (2, 0.2)]


def test_the_one_list_of_evaluation_metrics():
    assert [m.name for m in EVAL_METRICS] == ["eval_loss", "perplexity", "rouge_l", "accuracy", "macro_f1"]
    assert AUTO_METRICS == ("macro_f1", "rouge_l", "accuracy", "eval_loss")
    lower = {m.name for m in EVAL_METRICS if not m.higher_is_better}
    assert lower == {"eval_loss", "perplexity"}
    assert len({m.label for m in EVAL_METRICS}) == len(EVAL_METRICS)
