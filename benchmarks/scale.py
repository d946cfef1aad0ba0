"""How the simulation runner scales: 16 -> 4096 nodes of the demo's tiny model in ONE process.

For each topology (ring, random 3-regular, one-peer exponential) and each size (doubling), a child
process prepares the scenario (scenarios/ring4.toml with overrides), loads the shared base model,
builds the nodes around it and runs the rounds. Measured:

- round_s: wall seconds per simulated round (median over rounds 2..k; round 1 warms up), and
  node_ms = round_s / nodes, the cost per node;
- mem_per_node_mb: (peak RSS of the child - RSS once the shared base is loaded) / nodes: adapters,
  public copies, optimizer moments, data, RNG, everything a node adds;
- bytes_per_node_round: protobuf bytes a node sends per round (metrics' bytes_sent, mean);
- consensus_distance: after each round, sqrt(mean_i ||x_i - mean x||^2) over the global adapters
  (nodes start from random global adapters, so the topology's mixing speed shows).

- round_cpu_s: CPU seconds of the child per round (median), steadier than wall time on a shared
  machine.

A fixed number of nodes trains per round (--trainers, i.e. sim.participation = trainers / nodes), so
training costs the same at every size and the per-node costs of gossip show; every node gossips
every round. Each child uses --threads torch threads (1: no spinning thread pools on a busy box).
One-peer exponential is directed and mixed by push-sum, which sends whole states: all topologies
use the lossless codec here, for comparable bytes.

    python benchmarks/scale.py                                  # 16 .. 4096, three topologies
    python benchmarks/scale.py --max-nodes 256 --json           # last line: one JSON object
    python benchmarks/scale.py --compare 8                      # sim vs process runner, 8 nodes
    python benchmarks/scale.py --runner ray --actors 2 --min-nodes 64 --max-nodes 256 --topologies ring

--runner ray runs the same rounds with the nodes in blocks on --actors Ray actors (a local Ray with
one CPU per actor, started in the child): round_s is then the driver's wall time per round, and
mem_per_node_mb and round_cpu_s count the driver process only (the actors hold the nodes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TOPOLOGIES = ("ring", "random-regular", "one-peer-exponential")


def overrides(nodes: int, topology: str, rounds: int, trainers: int, steps: int) -> dict[str, Any]:
    return {
        "nodes": nodes,
        "topology": topology,
        "gossip.rounds": rounds,
        "gossip.gamma": 1.0,
        "codec.name": "lossless",
        "train.steps_per_round": steps,
        "train.batch_size": 8,
        "data.n_train": 32,
        "data.n_eval": 8,
        "sim.participation": min(1.0, trainers / nodes),
    }


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def run_one(
    nodes: int,
    topology: str,
    rounds: int,
    trainers: int,
    steps: int,
    out: Path,
    threads: int,
    runner: str = "sim",
    actors: int = 2,
) -> dict[str, Any]:
    """One (nodes, topology) run in this process (the parent starts a fresh child for each)."""
    import torch

    torch.set_num_threads(threads)
    from fedpeer.model.dual_lora import load_dual_lora, resolve_device
    from fedpeer.node.build import local_seed
    from fedpeer.scenario.spec import load_scenario, with_overrides
    from fedpeer.sim.mesh import SimMesh
    from fedpeer.sim.runner import prepare_for_sim, run_prepared

    say = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    spec = with_overrides(
        load_scenario(ROOT / "scenarios" / "ring4.toml"), overrides(nodes, topology, rounds, trainers, steps)
    )
    prepared = prepare_for_sim(spec, out, echo=say)
    cfg = prepared.nodes[0]
    blocks = None
    if runner == "ray":
        from fedpeer.sim.ray_blocks import ray_blocks, start_local_ray

        start_local_ray(actors, say, object_store_memory=200 * 2**20)
        blocks, dual = ray_blocks(actors, say), None
    else:
        dual = load_dual_lora(cfg.model, cfg.adapter, resolve_device(cfg.train.device), local_seed(cfg))
    base_rss = rss_mb()
    t0 = time.perf_counter()
    mesh = SimMesh(prepared, echo=say, dual=dual, blocks=blocks)
    build_s = time.perf_counter() - t0
    mesh.set_global_states(0.1 * torch.randn(mesh.x.shape, generator=torch.Generator().manual_seed(0)))
    distances: list[float] = []
    walls: list[float] = []
    cpus: list[float] = []
    original = mesh.run_round

    def measured_round(t: int) -> Any:
        cpu0 = time.process_time()
        result = original(t)
        cpus.append(time.process_time() - cpu0)
        walls.append(result.wall_s)
        x = mesh.x.double()
        distances.append(float((x - x.mean(dim=0)).pow(2).sum(dim=1).mean().sqrt()))
        return result

    mesh.run_round = measured_round  # type: ignore[method-assign]
    rows, _ = run_prepared(prepared, echo=say, mesh=mesh)
    mesh.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    sent = [r["bytes_sent_per_round"] for r in rows if r["bytes_sent_per_round"] is not None]
    round_s = statistics.median(walls[1:] or walls)
    return {
        "nodes": nodes,
        "topology": topology,
        "runner": runner,
        "actors": actors if runner == "ray" else 0,
        "rounds": rounds,
        "trained_per_round": len(mesh.participants(1)),
        "round_s": round_s,
        "node_ms": 1000 * round_s / nodes,
        "round_cpu_s": statistics.median(cpus[1:] or cpus),
        "build_s": build_s,
        "mem_per_node_mb": (peak - base_rss) / nodes,
        "base_rss_mb": base_rss,
        "peak_rss_mb": peak,
        "bytes_per_node_round": statistics.mean(sent) if sent else 0.0,
        "consensus_distance": distances,
    }


def child(nodes: int, topology: str, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    cmd = [
        sys.executable,
        __file__,
        "--one",
        f"{nodes}:{topology}",
        "--rounds",
        str(args.rounds),
        "--trainers",
        str(args.trainers),
        "--steps",
        str(args.steps),
        "--threads",
        str(args.threads),
        "--runner",
        args.runner,
        "--actors",
        str(args.actors),
        "--out",
        str(out),
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    stderr = None if args.verbose else subprocess.DEVNULL
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env, check=False)
    if p.returncode != 0:
        raise SystemExit(f"run {nodes} nodes / {topology} failed (rerun with --verbose to see why)")
    return json.loads(p.stdout.strip().splitlines()[-1])


def table(runs: list[dict[str, Any]]) -> str:
    head = (
        f"{'runner topology':<28}{'nodes':>6}{'trained':>8}{'round s':>9}{'cpu s':>7}{'ms/node':>9}"
        f"{'MB/node':>9}"
        f"{'kB/node/rd':>11}  consensus distance per round"
    )
    lines = [head, "-" * len(head)]
    for r in runs:
        dist = " ".join(f"{d:.2e}" for d in r["consensus_distance"])
        lines.append(
            f"{r.get('runner', 'sim') + ' ' + r['topology']:<28}{r['nodes']:>6}{r['trained_per_round']:>8}"
            f"{r['round_s']:>9.2f}"
            f"{r['round_cpu_s']:>7.2f}"
            f"{r['node_ms']:>9.2f}{r['mem_per_node_mb']:>9.3f}"
            f"{r['bytes_per_node_round'] / 1e3:>11.1f}  {dist}"
        )
    return "\n".join(lines)


# ================================================================ sim vs process, same scenario
def compare(nodes: int, out: Path, lrs: tuple[float, ...] = (0.0, 3e-3)) -> list[dict[str, Any]]:
    """The same scenario (lossless, dropout off, random starting global adapters) under the sim and
    the process runner: the largest difference of any adapter value and of any loss."""
    import torch

    from fedpeer import checkpoint
    from fedpeer.metrics import read_records
    from fedpeer.node import build_node, state
    from fedpeer.scenario.runner import ProcessRunner, prepare_for_processes
    from fedpeer.scenario.spec import load_scenario, with_overrides
    from fedpeer.sim.mesh import SimMesh
    from fedpeer.sim.runner import prepare_for_sim, run_prepared
    from fedpeer.transport.memory import MemoryNetwork, MemoryTransport

    results = []
    for lr in lrs:
        spec = with_overrides(
            load_scenario(ROOT / "scenarios" / "ring4.toml"),
            {
                "nodes": nodes,
                "topology": "random-regular",
                "codec.name": "lossless",
                "model.dropout": False,
                "train.lr": lr,
                "train.steps_per_round": 2,
                "data.n_train": 32,
                "data.n_eval": 8,
                "gossip.rounds": 3,
            },
        )
        where = out / f"compare-lr{lr:g}"
        sim = prepare_for_sim(spec, where / "sim")
        mesh = SimMesh(sim)
        x0 = 0.1 * torch.randn(mesh.x.shape, generator=torch.Generator().manual_seed(1))
        mesh.set_global_states(x0)
        t0 = time.perf_counter()
        run_prepared(sim, echo=lambda _: None, mesh=mesh)
        sim_s = time.perf_counter() - t0
        proc = prepare_for_processes(spec, where / "proc")
        for i, cfg in enumerate(proc.nodes):
            node = build_node(cfg, MemoryTransport(MemoryNetwork()))
            node.dual.set_global_state({k: v.clone() for k, v in mesh.g.views(x0[i]).items()})
            state.save(node)
            node.close()
        t0 = time.perf_counter()
        ProcessRunner(proc, echo=lambda line: print(line, file=sys.stderr)).run()
        proc_s = time.perf_counter() - t0
        adapter_diff = loss_diff = 0.0
        for i, cfg in enumerate(proc.nodes):
            adapter = checkpoint.load(cfg.state_dir).group("adapter")
            for k, v in {**mesh.global_state(i), **mesh.local_state(i)}.items():
                adapter_diff = max(adapter_diff, float((adapter[k] - v).abs().max()))
            for a, b in zip(
                read_records(where / "sim" / cfg.node_id / "metrics.jsonl"),
                read_records(f"{cfg.state_dir}/metrics.jsonl"),
                strict=True,
            ):
                for key in ("train_loss", "eval_loss"):
                    loss_diff = max(loss_diff, abs(float(a.value(key)) - float(b.value(key))))
        results.append(
            {
                "nodes": nodes,
                "lr": lr,
                "max_adapter_diff": adapter_diff,
                "max_loss_diff": loss_diff,
                "sim_s": sim_s,
                "process_s": proc_s,
            }
        )
        print(
            f"{nodes} nodes, lr {lr:g}: max |adapter diff| {adapter_diff:.2e}, "
            f"max |loss diff| {loss_diff:.2e} (sim {sim_s:.1f} s, processes {proc_s:.1f} s)",
            flush=True,
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--min-nodes", type=int, default=16)
    parser.add_argument("--max-nodes", type=int, default=4096)
    parser.add_argument("--topologies", default=",".join(TOPOLOGIES), help="comma-separated kinds")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--trainers", type=int, default=8, help="nodes that train per round")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--steps", type=int, default=1, help="optimizer steps per round of a trained node")
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="end with one JSON object on its own line")
    parser.add_argument("--verbose", action="store_true", help="show each run's progress lines")
    parser.add_argument("--compare", type=int, default=0, metavar="N", help="only: sim vs process on N nodes")
    parser.add_argument(
        "--runner", choices=("sim", "ray"), default="sim", help="sim: one process; ray: actors"
    )
    parser.add_argument("--actors", type=int, default=2, help="--runner ray: Ray actors (one CPU each)")
    parser.add_argument("--one", default="", help=argparse.SUPPRESS)  # NODES:TOPOLOGY, in a child
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        if args.one:
            nodes, topology = args.one.split(":", 1)
            result = run_one(
                int(nodes),
                topology,
                args.rounds,
                args.trainers,
                args.steps,
                out,
                args.threads,
                args.runner,
                args.actors,
            )
            print(json.dumps(result))
            return
        if args.compare:
            results = compare(args.compare, out)
            if args.json:
                print(json.dumps({"compare": results}))
            return
        sizes = [2**e for e in range(int(math.log2(args.min_nodes)), int(math.log2(args.max_nodes)) + 1)]
        runs = []
        for topology in args.topologies.split(","):
            for n in sizes:
                t0 = time.perf_counter()
                runs.append(child(n, topology, args, out / f"{topology}-{n}"))
                r = runs[-1]
                print(
                    f"{args.runner}: {topology} {n} nodes: {r['round_s']:.2f} s/round, "
                    f"{r['mem_per_node_mb']:.3f} MB/node "
                    f"({time.perf_counter() - t0:.0f} s with preparing)",
                    file=sys.stderr,
                    flush=True,
                )
        print(table(runs))
        if args.json:
            print(json.dumps({"runs": runs}))


if __name__ == "__main__":
    main()
