"""The committed generated code in fedpeer/proto must equal what protoc makes from proto/ now."""

import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(importlib.util.find_spec("grpc_tools") is None, reason="grpcio-tools not installed")
def test_generated_code_matches_proto(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from gen_proto import generate
    finally:
        sys.path.pop(0)
    fresh = generate(tmp_path)
    assert fresh, "no generated files"
    committed_root = ROOT / "fedpeer" / "proto"
    for f in fresh:
        rel = f.relative_to(tmp_path / "fedpeer" / "proto")
        committed = committed_root / rel
        assert committed.exists(), f"{rel} is generated but not committed: run python scripts/gen_proto.py"
        assert committed.read_bytes() == f.read_bytes(), (
            f"fedpeer/proto/{rel} is stale: run `python scripts/gen_proto.py` and commit the result"
        )
    committed_files = {p.relative_to(committed_root) for p in committed_root.rglob("*.py*")}
    fresh_files = {p.relative_to(tmp_path / "fedpeer" / "proto") for p in fresh}
    assert committed_files == fresh_files, f"extra committed files: {committed_files - fresh_files}"
