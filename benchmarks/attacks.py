"""Attack a running mesh as someone on its network would, and check that nothing gets through.

Two real node processes (`fedpeer node run`, mutual TLS as every runner sets up) train the tiny
model at lr 0, so that every global adapter stays exactly 0 unless something is injected. While
they run, this script plays the attacker with the generated gRPC stubs only, against node0:

- no client certificate, plaintext, a certificate from another CA;
- a valid mesh certificate (mallory's) that claims to be node1, or sends a frame as node1;
- a valid certificate of a node that is not node0's neighbour (mallory itself);
- with node1's own key (an insider, or a stolen key): a replay of an applied update, frames for
  round 10^9 and for a round inside the run but far ahead, a header declaring 256 MiB (three at
  once), 20 streams that send a header and go silent;
- then node0 must still answer Status, complete every round, exit 0, hold global adapters that are
  exactly 0 (nothing injected was applied), and peak at most 1.5x the memory of an unattacked run.

    python benchmarks/attacks.py            # table
    python benchmarks/attacks.py --json     # ... and one JSON object as the last line

Refusals are gRPC status codes (or an acknowledgement with accepted = false): a refused call is what
an attacker sees. The malformed-payload cases (zstd bombs, CRC and length mismatches, NaN/Inf, bad
manifests, garbage) are covered by tests/test_grpc.py, tests/test_codec*.py and tests/test_serde.py.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import torch

from fedpeer import checkpoint
from fedpeer.codec import get_codec
from fedpeer.model.dual_lora import load_dual_lora
from fedpeer.proto.v1 import mesh_pb2 as pb
from fedpeer.proto.v1 import mesh_pb2_grpc as pb_grpc
from fedpeer.scenario.runner import free_loopback_addresses, write_node_config
from fedpeer.scenario.spec import parse_scenario, prepare
from fedpeer.security import pki
from fedpeer.security.tls import TlsIdentity, load_identity, target_name
from fedpeer.tensors import manifest_digest
from fedpeer.transport.channel import STALL_S
from fedpeer.wire import serde
from fedpeer.wire.frames import FrameKind, encode_frame

ROUNDS = 40


def scenario() -> dict[str, Any]:
    return {
        "name": "attacks",
        "nodes": 2,
        "topology": "ring",
        "tiny_model": {
            "arch": "llama",
            "hidden_size": 32,
            "num_layers": 2,
            "num_heads": 2,
            "intermediate_size": 64,
        },
        "data": {"n_train": 40, "n_eval": 8},
        "model": {"task": "causal-lm"},
        "adapter": {"rank": 4, "alpha": 8.0},
        "train": {"steps_per_round": 1, "batch_size": 8, "max_length": 32, "lr": 0.0, "device": "cpu"},
        "gossip": {"rounds": ROUNDS, "round_timeout_s": 60.0, "join_timeout_s": 60.0, "linger_s": 0.5},
        "codec": {"name": "lossless"},
    }


class Mesh:
    """node0 and node1 as processes; peak memory of node0 sampled from /proc."""

    def __init__(self, out: Path) -> None:
        self.prepared = prepare(parse_scenario(scenario()), out, free_loopback_addresses(["node0", "node1"]))
        self.cfg = {c.node_id: c for c in self.prepared.nodes}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        for cfg in self.prepared.nodes:
            path = write_node_config(cfg)
            log = open(Path(cfg.state_dir) / "node.log", "wb")  # noqa: SIM115 - closed with the process
            self.procs[cfg.node_id] = subprocess.Popen(
                [sys.executable, "-m", "fedpeer_cli", "node", "run", "--config", str(path)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def peak_rss_mb(self, node: str = "node0") -> float:
        """VmHWM of the node's process (its peak resident memory so far)."""
        for line in Path(f"/proc/{self.procs[node].pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def wait(self) -> dict[str, int]:
        return {n: p.wait(timeout=600) for n, p in self.procs.items()}

    def stop(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.kill()


def ident(directory: Path, node: str, ca: Path | None = None) -> TlsIdentity:
    return load_identity(ca or directory / "ca.pem", directory / f"{node}.pem", directory / f"{node}.key")


def stub(address: str, creds: grpc.ChannelCredentials | None, name: str = "node0") -> pb_grpc.MeshStub:
    if creds is None:
        return pb_grpc.MeshStub(grpc.insecure_channel(address))
    options = [("grpc.ssl_target_name_override", target_name(name))]
    return pb_grpc.MeshStub(grpc.secure_channel(address, creds, options=options))


def outcome(call: Callable[[], Any]) -> str:
    """What the attacker sees: a gRPC status code, or the ack of a frame."""
    try:
        result = call()
    except grpc.RpcError as exc:
        return exc.code().name
    if isinstance(result, list) and result and isinstance(result[0], pb.Ack):
        ack = result[0]
        return "ACCEPTED" if ack.accepted else f"refused: {ack.error[:60]}"
    return "ANSWERED"


def hello(node_id: str) -> pb.Hello:
    return pb.Hello(node_id=node_id, protocol_version=1)


def wait_for_round(status: Callable[[], pb.StatusReply], at_least: int, timeout: float = 600) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = status().node.round
            if r >= at_least:
                return r
        except grpc.RpcError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"node0 did not reach round {at_least} within {timeout:.0f} s")


def attack(mesh: Mesh, work: Path) -> list[dict[str, Any]]:
    out = mesh.prepared.out_dir
    mesh_dir = out / "pki"
    pki.issue(mesh_dir, "mallory", ("127.0.0.1",), force=True)
    pki.issue(mesh_dir, "operator", force=True)
    foreign = work / "foreign"
    pki.init_ca(foreign, force=True)
    pki.issue(foreign, "node1", ("127.0.0.1",), force=True)
    address = mesh.cfg["node0"].listen
    ca_pem = (mesh_dir / "ca.pem").read_bytes()
    creds = {
        "node1": ident(mesh_dir, "node1").channel_credentials(),
        "mallory": ident(mesh_dir, "mallory").channel_credentials(),
        "operator": ident(mesh_dir, "operator").channel_credentials(),
        "foreign": grpc.ssl_channel_credentials(
            ca_pem, (foreign / "node1.key").read_bytes(), (foreign / "node1.pem").read_bytes()
        ),
        "no-cert": grpc.ssl_channel_credentials(ca_pem),
    }
    operator = stub(address, creds["operator"])

    def status() -> pb.StatusReply:
        return operator.Status(pb.StatusRequest(), timeout=5)

    wait_for_round(status, 2)
    # A frame node0 would accept from node1 but for its content: the mesh's global-adapter tensors
    # (an insider with node1's key has node1's config, and builds the same model) at 1e30 everywhere.
    # Frames carry only the digest of that manifest; a snapshot fetched with node1's key confirms it.
    node1 = mesh.cfg["node1"]
    dual = load_dual_lora(node1.model, node1.adapter, torch.device("cpu"), local_seed=0)
    poison = {s.name: torch.full(s.shape, 1e30) for s in dual.global_specs()}
    snap = serde.read_frame(
        iter(stub(address, creds["node1"]).GetSnapshot(pb.SnapshotRequest(requester="node1"), timeout=10)),
        1 << 30,
    )
    assert snap is not None and snap.manifest_digest == manifest_digest(dual.global_specs())

    # node1's epoch is in its Status reply (which any mesh certificate may ask for).
    epoch1 = (
        stub(mesh.cfg["node1"].listen, creds["operator"], "node1")
        .Status(pb.StatusRequest(), timeout=5)
        .node.epoch
    )

    def frame(sender: str, round: int, seq: int) -> list[pb.Chunk]:
        f = encode_frame(
            poison,
            get_codec("lossless"),
            sender=sender,
            epoch=epoch1,
            kind=FrameKind.UPDATE,
            round=round,
            seq=seq,
        )
        return list(serde.frame_to_chunks(f))

    def exchange(who: str, chunks: list[pb.Chunk]) -> Callable[[], Any]:
        return lambda: list(stub(address, creds[who]).Exchange(iter(chunks), timeout=10))

    now = status().node.round
    rows: list[dict[str, Any]] = []

    def row(name: str, who: str, call: Callable[[], Any], want: set[str]) -> None:
        got = outcome(call)
        rows.append(
            {"attack": name, "as": who, "outcome": got, "refused": got in want or got.startswith("refused")}
        )

    plain = stub(address, None)
    row(
        "no client certificate",
        "-",
        lambda: stub(address, creds["no-cert"]).Handshake(hello("node1"), timeout=5),
        {"UNAVAILABLE"},
    )
    row("plaintext", "-", lambda: plain.Handshake(hello("node1"), timeout=5), {"UNAVAILABLE"})
    row(
        "plaintext update as node1",
        "-",
        lambda: list(plain.Exchange(iter(frame("node1", now + 1, 10**6)), timeout=5)),
        {"UNAVAILABLE"},
    )
    row(
        "certificate of another CA",
        "node1 (foreign CA)",
        lambda: stub(address, creds["foreign"]).Handshake(hello("node1"), timeout=5),
        {"UNAVAILABLE"},
    )
    m = stub(address, creds["mallory"])
    row(
        "valid certificate, spoofed id",
        "mallory as node1",
        lambda: m.Handshake(hello("node1"), timeout=5),
        {"UNAUTHENTICATED"},
    )
    row(
        "spoofed update (1e30)",
        "mallory as node1",
        exchange("mallory", frame("node1", now + 1, 10**6)),
        {"PERMISSION_DENIED", "UNAUTHENTICATED"},
    )
    row(
        "valid certificate, not a neighbour",
        "mallory",
        lambda: m.Handshake(hello("mallory"), timeout=5),
        {"PERMISSION_DENIED"},
    )
    row(
        "snapshot by a non-neighbour",
        "mallory",
        lambda: list(m.GetSnapshot(pb.SnapshotRequest(requester="mallory"), timeout=5)),
        {"PERMISSION_DENIED"},
    )
    row(
        "replay of an applied update",
        "node1's key",
        exchange("node1", frame("node1", max(1, now - 1), 1)),
        set(),
    )
    row(
        "frame for round now + 10^9",
        "node1's key",
        exchange("node1", frame("node1", now + 10**9, 10**6)),
        {"INVALID_ARGUMENT"},
    )
    row(
        f"frame for round {ROUNDS} (in the run, far ahead)",
        "node1's key",
        exchange("node1", frame("node1", ROUNDS, 10**6)),
        set(),
    )

    # Three streams declaring 256 MiB each, sending 1 MiB chunks behind the header.
    def oversized(who: str) -> Callable[[], Any]:
        header = frame("node1", now + 1, 10**6)[0]
        header.header.payload_length = 256 << 20

        def chunks() -> Iterator[pb.Chunk]:
            yield header
            for _ in range(256):
                yield pb.Chunk(data=b"\0" * (1 << 20))

        return lambda: list(stub(address, creds[who]).Exchange(chunks(), timeout=30))

    results: list[str] = []
    threads = [threading.Thread(target=lambda: results.append(outcome(oversized("node1")))) for _ in range(3)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    rows.append(
        {
            "attack": "3 streams declaring 256 MiB",
            "as": "node1's key",
            "outcome": ", ".join(sorted(set(results))),
            "refused": set(results) == {"INVALID_ARGUMENT"},
        }
    )
    row("stream declaring 256 MiB", "mallory", oversized("mallory"), {"PERMISSION_DENIED"})

    # 20 silent streams (a header, then nothing), then Status while they are open.
    header = frame("node1", now + 1, 10**6)[0]
    for who in ("node1", "mallory"):
        rows.append(
            silent_streams(address, creds[who], header, status, "node1's key" if who == "node1" else who)
        )
    after = status().node.round
    rows.append(
        {
            "attack": "node0 keeps going",
            "as": "-",
            "outcome": f"round {now} -> {after} during the attacks",
            "refused": after > now,
        }
    )
    return rows


def silent_streams(
    address: str, creds: grpc.ChannelCredentials, header: pb.Chunk, status: Callable[[], Any], who: str
) -> dict[str, Any]:
    """20 streams that send a header and go silent; Status asked while they are open."""
    release = threading.Event()
    codes: list[str] = []

    def silent() -> Iterator[pb.Chunk]:
        yield header
        release.wait(STALL_S * 3)

    def one() -> None:
        codes.append(outcome(lambda: list(stub(address, creds).Exchange(silent(), timeout=STALL_S * 3))))

    threads = [threading.Thread(target=one) for _ in range(20)]
    for th in threads:
        th.start()
    time.sleep(1.0)  # let them all open (a benchmark measures; the tests drive this by events)
    t0 = time.perf_counter()
    status_ok = outcome(status) == "ANSWERED"
    status_ms = (time.perf_counter() - t0) * 1e3
    for th in threads:
        th.join()
    release.set()
    counts = {c: codes.count(c) for c in sorted(set(codes))}
    seen = ", ".join(f"{n}x {c}" for c, n in counts.items())
    return {
        "attack": "20 silent streams",
        "as": who,
        "outcome": f"{seen}; Status answered in {status_ms:.0f} ms",
        "refused": status_ok and "ACCEPTED" not in counts,
    }


def global_tensors_zero(state_dir: Path) -> bool:
    """node0's trained global tensors (B_g: A_g is frozen from the mesh seed), its public copy of
    itself and its copy of node1: all exactly 0 after a run at lr 0 unless something was injected."""
    ck = checkpoint.load(state_dir)
    assert ck is not None
    trained = {k: v for k, v in ck.group("adapter").items() if "lora_B.global" in k}
    parts = [trained, ck.group("self"), ck.group("copy.node1")]
    return all(len(p) > 0 for p in parts) and all(bool((t == 0).all()) for p in parts for t in p.values())


def run(out: Path, attacked: bool) -> dict[str, Any]:
    mesh = Mesh(out)
    rows: list[dict[str, Any]] = []
    peak_during = float("nan")
    try:
        mesh.start()
        if attacked:
            rows = attack(mesh, out)
            peak_during = mesh.peak_rss_mb()
        else:
            operator_dir = mesh.prepared.out_dir / "pki"
            pki.issue(operator_dir, "operator", force=True)
            o = stub(mesh.cfg["node0"].listen, ident(operator_dir, "operator").channel_credentials())
            wait_for_round(lambda: o.Status(pb.StatusRequest(), timeout=5), 10)
            peak_during = mesh.peak_rss_mb()
        codes = mesh.wait()
    finally:
        mesh.stop()
    state = Path(mesh.cfg["node0"].state_dir)
    done = checkpoint.load(state)
    return {
        "rows": rows,
        "exit_codes": codes,
        "rounds_completed": done.meta["round"] if done else 0,
        "global_adapter_zero": global_tensors_zero(state),
        "peak_rss_mb": peak_during,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="keep the runs (logs, pki, state) here")
    ap.add_argument("--json", action="store_true", help="end with one JSON object")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedpeer-attacks-") as tmp:
        out = a.out or Path(tmp)
        print("unattacked run ...", file=sys.stderr)
        base = run(out / "unattacked", attacked=False)
        print("attacked run ...", file=sys.stderr)
        hit = run(out / "attacked", attacked=True)
    ratio = hit["peak_rss_mb"] / base["peak_rss_mb"]
    print(f"{'attack':<42} {'as':<20} {'refused':<8} what the attacker saw")
    for r in hit["rows"]:
        print(f"{r['attack']:<42} {r['as']:<20} {'yes' if r['refused'] else 'NO':<8} {r['outcome']}")
    ok = (
        all(r["refused"] for r in hit["rows"])
        and set(hit["exit_codes"].values()) == {0}
        and hit["rounds_completed"] == ROUNDS
        and hit["global_adapter_zero"]
        and ratio <= 1.5
    )
    adapter = "exactly 0" if hit["global_adapter_zero"] else "CHANGED"
    print(
        f"node0: exit {hit['exit_codes']['node0']}, {hit['rounds_completed']}/{ROUNDS} rounds, global "
        f"adapter {adapter}, peak memory {hit['peak_rss_mb']:.0f} MB vs {base['peak_rss_mb']:.0f} MB "
        f"unattacked ({ratio:.2f}x)"
    )
    print("all refused, node unharmed" if ok else "SOMETHING GOT THROUGH")
    if a.json:
        print(json.dumps({"attacked": hit, "unattacked": base, "peak_memory_ratio": ratio, "ok": ok}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
