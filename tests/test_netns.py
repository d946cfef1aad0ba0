"""The netns runner: nodes in network namespaces (root + iproute2), and real kernel bandwidth limits."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from fedpeer.errors import FedpeerError
from fedpeer.scenario.netns import NetnsLauncher, NetnsRunner, prepare_for_netns
from tests.meshutil import tiny_spec
from tests.test_scenario_faults import (
    ROUNDS,
    assert_same_run,
    check_partition_heals,
    partition_spec,
    records,
    reference,
)


def netns_missing() -> str:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    if shutil.which("ip") is None or shutil.which("tc") is None:
        return "needs iproute2 (ip, tc)"
    probe = subprocess.run(["ip", "netns", "add", "fp-probe"], capture_output=True, text=True)
    subprocess.run(["ip", "netns", "del", "fp-probe"], capture_output=True)
    if probe.returncode != 0:
        return f"cannot create network namespaces here: {probe.stderr.strip()}"
    return ""


needs_netns = pytest.mark.skipif(bool(netns_missing()), reason=netns_missing() or "-")


def test_refuses_without_root_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(FedpeerError, match="needs root: run it as root"):
        prepare_for_netns(tiny_spec(), tmp_path)


@pytest.mark.slow
@needs_netns
def test_partitioned_mesh_in_namespaces_heals_like_in_process(tmp_path):
    spec = partition_spec()
    lines: list[str] = []
    rows = NetnsRunner(prepare_for_netns(spec, tmp_path / "ns"), echo=lines.append).run(timeout_s=300)
    log = "\n".join(lines)
    assert all(r["last_round"] == ROUNDS for r in rows), log
    assert "netns: removed 4 namespaces" in log
    assert not [ns for ns in _namespaces() if ns.startswith("fp-") and ns != "fp-probe"], "left behind"
    got = check_partition_heals(tmp_path / "ns")
    ref = reference(spec, tmp_path / "ref")
    # Until the partition heals the runs are identical; healing resyncs at timing-dependent points.
    cut = {n: r[:3] for n, r in got.items()}
    assert_same_run(cut, {n: r[:3] for n, r in ref.items()})
    assert records(tmp_path / "ns", "node0")[0]["bytes_sent"] > 0


PROBE = textwrap.dedent(
    """
    import sys, time
    from fedpeer.transport.grpc_transport import GrpcTransport
    from fedpeer.wire.frames import AckInfo, Frame, FrameKind

    class Sink:  # accepts any frame without decoding it
        def authorized(self, node_id):
            return True

        def check_header(self, header, payload_length):
            pass

        def on_frame(self, f):
            return AckInfo(accepted=True, error="", applied_seq=f.seq)

    role, address, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
    t = GrpcTransport()
    if role == "server":
        t.serve(address, Sink())
        print("ready", flush=True)
        time.sleep(120)
    else:
        frame = Frame("a", "e", FrameKind.UPDATE, 1, 1, "lossless", {}, b"", b"\\x01" * size, size)
        # A tiny frame first: connection setup is not transfer time.
        small = Frame("a", "e", FrameKind.UPDATE, 1, 1, "lossless", {}, b"", b"\\x01", 1)
        t.send_frame(address, small, timeout=30)
        t0 = time.perf_counter()
        result = t.send_frame(address, frame, timeout=120)
        print(f"{result.wire_bytes} {time.perf_counter() - t0:.4f}", flush=True)
    """
)


def transfer(launcher: NetnsLauncher, src: str, dst: str, size: int) -> tuple[int, float]:
    """Send one frame of `size` payload bytes from namespace `src` to `dst` over real gRPC."""
    address = f"{launcher.ips[dst]}:50051"
    server = subprocess.Popen(
        ["ip", "netns", "exec", launcher.namespace(dst), sys.executable, "-c", PROBE, "server", address, "0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        out = subprocess.run(
            ["ip", "netns", "exec", launcher.namespace(src), sys.executable, "-c", PROBE, "client", address,
             str(size)],
            capture_output=True, text=True, timeout=180, check=True,
        ).stdout.split()  # fmt: skip
        return int(out[0]), float(out[1])
    finally:
        server.kill()
        server.wait()


@pytest.mark.slow
@needs_netns
def test_a_10_mbit_link_takes_bytes_over_bandwidth(tmp_path):
    """tc shapes node0-node1 to 10 Mbit/s; node0-node2 stays unshaped. One 2.5 MB update."""
    spec = tiny_spec(
        nodes=3,
        topology="complete",
        faults=[{"kind": "slow", "link": ["node0", "node1"], "bandwidth_mbit": 10.0}],
    )
    prepared = prepare_for_netns(spec, tmp_path)
    assert all(not cfg.links for cfg in prepared.nodes), "the kernel shapes it: no transport emulation"
    launcher = NetnsLauncher(prepared, echo=lambda _: None)
    try:
        launcher.setup()
        size = 2_500_000
        nbytes, shaped = transfer(launcher, "node0", "node1", size)
        back_bytes, back = transfer(launcher, "node1", "node0", size)
        _, free = transfer(launcher, "node0", "node2", size)
    finally:
        launcher.teardown()
    ideal = nbytes * 8 / 10e6  # 2.0 s
    print(f"\n10 Mbit/s link: {nbytes} B in {shaped:.3f} s (bytes/bandwidth {ideal:.3f} s), "
          f"reverse {back:.3f} s; unshaped link {free:.3f} s")  # fmt: skip
    assert 0.9 * ideal <= shaped <= 1.3 * ideal
    assert 0.9 * ideal <= back <= 1.3 * ideal  # shaped both ways
    assert free < 0.5 * ideal
    assert not [ns for ns in _namespaces() if ns.startswith(f"fp-{launcher.tag}")]


def _namespaces() -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def test_kernel_links_lists_both_directions():
    from fedpeer.scenario.netns import kernel_links

    spec = tiny_spec(
        nodes=3,
        faults=[
            {"kind": "slow", "link": ["node0", "node1"], "bandwidth_mbit": 10.0},
            {"kind": "slow", "link": ["node1", "node2"], "bandwidth_mbit": 5.0, "from_round": 3},
        ],
    )
    # The second one is limited to some rounds: it stays emulated in the transport.
    assert kernel_links(spec) == {("node0", "node1"): 10.0, ("node1", "node0"): 10.0}
