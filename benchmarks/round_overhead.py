"""Where a round's time goes: train / encode / transfer / decode / mix, for meshes of N nodes.

Every node is its own process talking gRPC on 127.0.0.1 (the process runner), with a Llama-shaped
tiny model whose global adapter (B_g of all seven projections) has about one million parameters.
Round 1 is warm-up and left out; figures are medians over the remaining node-rounds.

    python benchmarks/round_overhead.py                  # 4 and 8 nodes, ring
    python benchmarks/round_overhead.py --nodes 4 --json # last line: one JSON object
    python benchmarks/round_overhead.py --nodes 4 --tls both   # mutual TLS vs plaintext, same run

Nodes talk over mutual TLS (as every runner sets up by default); `--tls off` runs plaintext, and
`--tls both` runs each mesh both ways, alternating, and prints the ratio TLS / plaintext of the
round time. Bytes are what fedpeer puts on the wire (protobuf); TLS adds its record framing (about
22 bytes per 16 kB record) and one handshake per channel, which are not counted.

`transfer` is the send plus the wait for the neighbours' updates, so it also holds the time a
node waits for slower neighbours to finish training (the synchronous-round barrier). `decode` runs
on the server threads while the node waits and so overlaps `transfer`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fedpeer.metrics import read_records
from fedpeer.scenario.runner import ProcessRunner, prepare_for_processes
from fedpeer.scenario.spec import parse_scenario

PHASES = ("train", "encode", "transfer", "decode", "mix")


def scenario(nodes: int, rounds: int, codec: str, topology: str, tls: bool = True) -> dict[str, Any]:
    # hidden 256, intermediate 688, 4 blocks, rank 96 on q,k,v,o,gate,up,down:
    # B_g = 4 x (4*256 + 2*688 + 256) x 96 = 1.02 M parameters.
    return {
        "name": f"overhead{nodes}",
        "nodes": nodes,
        "topology": topology,
        "tiny_model": {
            "arch": "llama",
            "hidden_size": 256,
            "num_layers": 4,
            "num_heads": 4,
            "intermediate_size": 688,
        },
        "data": {"n_train": 64, "n_eval": 8},
        "model": {"task": "causal-lm"},
        "adapter": {
            "rank": 96,
            "alpha": 96.0,
            "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        },
        "train": {"steps_per_round": 2, "batch_size": 8, "max_length": 32, "lr": 1e-3, "device": "cpu"},
        "gossip": {"rounds": rounds, "round_timeout_s": 120.0, "join_timeout_s": 120.0, "linger_s": 1.0},
        "codec": {"name": codec},
        "tls": tls,
    }


def run_one(
    nodes: int, rounds: int, codec: str, topology: str, out: Path, tls: bool = True
) -> dict[str, Any]:
    spec = parse_scenario(scenario(nodes, rounds, codec, topology, tls))
    prepared = prepare_for_processes(spec, out / f"n{nodes}-{'tls' if tls else 'plain'}")
    t0 = time.perf_counter()
    ProcessRunner(prepared, echo=lambda line: print(f"  [{nodes} nodes] {line}", file=sys.stderr)).run()
    wall = time.perf_counter() - t0
    recs = [
        r
        for cfg in prepared.nodes
        for r in read_records(Path(cfg.state_dir) / "metrics.jsonl")
        if r.round > 1
    ]
    if not recs:
        raise SystemExit(f"no rounds completed with {nodes} nodes; see {prepared.out_dir}/*/node.log")
    med = lambda key: statistics.median(r.value(key) for r in recs)  # noqa: E731
    return {
        "nodes": nodes,
        "topology": topology,
        "codec": codec,
        "tls": tls,
        "rounds_measured": len(recs),
        "median_round_s": med("round_s"),
        "bytes_per_node_round": med("bytes_sent"),
        "raw_fp32_bytes_per_node_round": med("raw_bytes"),
        "split_s": {p: med(f"{p}_s") for p in PHASES},
        # Evaluation and the checkpoint write, the rest of a round.
        "eval_checkpoint_s": med("eval_s") + med("checkpoint_s"),
        "global_params": int(recs[0].raw_bytes / 4 / max(1, len(recs[0].neighbours_reached or ()))),
        "wall_s": wall,
    }


def print_table(runs: list[dict[str, Any]]) -> None:
    head = f"{'nodes':>5} {'tls':>5} {'params':>9} {'round s':>8} " + " ".join(
        f"{p + ' s':>10}" for p in PHASES
    )
    head += f" {'kB/node/rnd':>12} {'vs fp32':>8} {'comm share':>10}"
    print(head)
    for r in runs:
        s = r["split_s"]
        comm = (s["encode"] + s["decode"] + s["mix"]) / r["median_round_s"]
        print(
            f"{r['nodes']:>5} {'on' if r['tls'] else 'off':>5} {r['global_params']:>9,} "
            f"{r['median_round_s']:>8.3f} "
            + " ".join(f"{s[p]:>10.4f}" for p in PHASES)
            + f" {r['bytes_per_node_round'] / 1e3:>12.1f}"
            + f" {r['raw_fp32_bytes_per_node_round'] / max(1, r['bytes_per_node_round']):>7.2f}x"
            + f" {comm:>10.1%}"
        )
    print(
        "vs fp32: raw fp32 bytes of the same update / bytes on the wire (same run). comm share: "
        "(encode + decode + mix) / round time."
    )
    for r in tls_ratios(runs):
        print(
            f"TLS / plaintext, {r['nodes']} nodes: round time {r['round_s_ratio']:.3f}x, "
            f"transfer {r['transfer_s_ratio']:.3f}x, bytes {r['bytes_ratio']:.3f}x"
        )


def tls_ratios(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each mesh size run both ways: TLS / plaintext of median round and transfer time, bytes."""
    out = []
    for n in sorted({r["nodes"] for r in runs}):
        on = [r for r in runs if r["nodes"] == n and r["tls"]]
        off = [r for r in runs if r["nodes"] == n and not r["tls"]]
        if not on or not off:
            continue

        def med(rs: list[dict[str, Any]], key: str) -> float:
            return statistics.median(r["split_s"][key] if key in PHASES else r[key] for r in rs)

        out.append(
            {
                "nodes": n,
                "round_s_ratio": med(on, "median_round_s") / med(off, "median_round_s"),
                "transfer_s_ratio": med(on, "transfer") / max(1e-9, med(off, "transfer")),
                "bytes_ratio": med(on, "bytes_per_node_round") / med(off, "bytes_per_node_round"),
            }
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--codec", default="fp16")
    ap.add_argument("--topology", default="ring")
    ap.add_argument(
        "--tls", choices=("on", "off", "both"), default="on", help="mutual TLS (default), plaintext, or both"
    )
    ap.add_argument(
        "--repeats", type=int, default=1, help="with --tls both: alternate TLS and plaintext this many times"
    )
    ap.add_argument("--out", type=Path, default=None, help="keep node logs and metrics here")
    ap.add_argument("--json", action="store_true", help="end with one JSON object")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fedpeer-overhead-") as tmp:
        out = a.out or Path(tmp)
        modes = {"on": [True], "off": [False], "both": [True, False]}[a.tls]
        runs = [
            run_one(n, a.rounds, a.codec, a.topology, out / f"rep{i}", tls)
            for n in a.nodes
            for i in range(a.repeats if a.tls == "both" else 1)
            for tls in modes
        ]
    print_table(runs)
    if a.json:
        print(json.dumps({"runs": runs, "tls_vs_plaintext": tls_ratios(runs)}))


if __name__ == "__main__":
    main()
