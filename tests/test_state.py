"""What a kill can leave on disk, and what a restarted node makes of it."""

import json

from fedpeer.metrics import read_records
from fedpeer.node import build_node
from fedpeer.transport.memory import MemoryNetwork, MemoryTransport
from tests.meshutil import prepared_memory, tiny_spec

SOLO = {"rounds": 2, "join_timeout_s": 0.2, "linger_s": 0.0, "allow_solo": True}


def test_temp_files_of_an_interrupted_save_are_removed_at_start(tmp_path):
    cfg = prepared_memory(tiny_spec(nodes=2, gossip=SOLO), tmp_path).nodes[0]
    build_node(cfg, MemoryTransport(MemoryNetwork())).run()
    stale = tmp_path / "node0" / ".checkpoint-abc123.tmp"  # a kill inside checkpoint.save leaves this
    stale.write_bytes(b"\0" * 4096)
    build_node(cfg, MemoryTransport(MemoryNetwork())).close()
    assert not stale.exists()
    assert (tmp_path / "node0" / "checkpoint.safetensors").exists()


def test_a_metrics_line_lost_between_checkpoint_and_write_is_restored(tmp_path):
    cfg = prepared_memory(tiny_spec(nodes=2, gossip=SOLO), tmp_path).nodes[0]
    build_node(cfg, MemoryTransport(MemoryNetwork())).run()
    path = tmp_path / "node0" / "metrics.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:-1]))  # killed after the checkpoint of round 2, before its line
    before = read_records(path)
    build_node(cfg, MemoryTransport(MemoryNetwork())).close()
    after = read_records(path)
    assert [r.round for r in before] == [1] and [r.round for r in after] == [1, 2]
    # The same round, as it was measured (the checkpoint's own duration is known only after it).
    restored, original = after[-1].to_json(), json.loads(lines[-1])
    for key in (
        "train_loss",
        "eval_loss",
        "global_norm",
        "bytes_sent",
        "neighbours_heard",
        "frames_rejected",
    ):
        assert restored[key] == original[key], key
    build_node(cfg, MemoryTransport(MemoryNetwork())).close()
    assert [r.round for r in read_records(path)] == [1, 2], "written once only"
