"""The consensus-distance watch: it warns when CHOCO diverges, and not when a mesh converges."""

import itertools
import logging
import math

from fedpeer.gossip import choco
from fedpeer.gossip.watch import GROWTH_ROUNDS, DistanceWatch
from fedpeer.transport.memory import MemoryNetwork, MemoryTransport
from tests.meshutil import make_nodes, prepared_memory, run_threads, tiny_spec

# Node 0's distance in every round of two benchmark runs (MTSamples, seed 0, 32 rounds at lr 1.2e-2,
# the pipeline codec at 2,600 bytes): gamma = 0.8 diverged, gamma = 0.5 converged.
DIVERGED = (
    "5.15 6.19 6.76 7.2 7.11 7.11 7.12 7.24 7.48 8.09 8.14 8.56 9.08 9.78 10.38 10.97 11.39 11.95 12.59 "
    "13.5 14.53 14.42 15.14 15.34 16.17 16.92 17.51 18.19 19.63 21.17 22.57 24.19"
)
CONVERGED = (
    "5.79 7.6 8.44 8.92 8.83 8.65 8.25 7.91 7.43 7.33 6.92 6.74 6.57 6.53 6.49 6.29 5.92 5.62 5.54 5.49 "
    "5.31 5.13 5.1 4.91 4.78 4.78 4.67 4.73 4.62 4.56 4.52 4.51"
)


def series(text: str) -> list[float]:
    return [float(d) for d in text.split()]


def warnings_of(watch: DistanceWatch, distances: list[float]) -> list[tuple[int, str]]:
    return [(i, w) for i, d in enumerate(distances) if (w := watch.observe(d))]


def test_growth_for_the_set_number_of_rounds_warns_then_again_after_as_many():
    distances = [float(d) for d in range(1, 2 * GROWTH_ROUNDS + 2)]  # grows every round
    got = warnings_of(DistanceWatch(lossy=True, gamma=0.8), distances)
    assert [i for i, _ in got] == [GROWTH_ROUNDS, 2 * GROWTH_ROUNDS]
    first = got[0][1]
    assert f"grown {GROWTH_ROUNDS} rounds in a row (1 -> {GROWTH_ROUNDS + 1})" in first
    assert "gossip.gamma = 0.8" in first and "codec.budget_bytes" in first


def test_a_diverging_run_warns_and_a_converging_one_does_not():
    diverged = warnings_of(DistanceWatch(lossy=True, gamma=0.8), series(DIVERGED))
    # Growth from round 6 (7.11) to round 21 (14.53), then from round 22 (14.42) to the end.
    assert [i for i, _ in diverged] == [13, 29]
    assert "(7.11 -> 9.78)" in diverged[0][1] and "(14.4 -> 21.2)" in diverged[1][1]
    assert warnings_of(DistanceWatch(lossy=True, gamma=0.5), series(CONVERGED)) == []


def test_a_round_without_neighbours_or_a_dip_starts_the_count_again():
    almost = [float(d) for d in range(1, GROWTH_ROUNDS + 1)]  # one increase short
    watch = DistanceWatch(lossy=True, gamma=0.5)
    assert warnings_of(watch, almost + [math.nan] + almost) == []
    assert warnings_of(watch, almost + [1.0] + almost[1:]) == []
    assert warnings_of(watch, [100.0]) != []  # the last run of growth counted from its start


def test_without_a_lossy_codec_it_points_at_training_not_the_codec():
    watch = DistanceWatch(lossy=False, gamma=1.0)
    [(_, warning)] = warnings_of(watch, [float(d) for d in range(GROWTH_ROUNDS + 1)])
    assert "train.lr" in warning and "codec" not in warning


def test_a_node_logs_the_warning_when_its_distance_keeps_growing(tmp_path, monkeypatch, caplog):
    """Wiring: a 2-node mesh whose measured distance grows every round logs the warning once per node."""
    growing = itertools.count(1.0)
    monkeypatch.setattr(choco, "consensus_distance", lambda x, x_hats: next(growing))
    rounds = GROWTH_ROUNDS + 1
    spec = tiny_spec(
        nodes=2, topology="ring", gossip={"rounds": rounds, "gamma": 0.5}, codec={"name": "pipeline"}
    )
    net = MemoryNetwork()
    nodes = make_nodes(prepared_memory(spec, tmp_path), lambda: MemoryTransport(net))
    with caplog.at_level(logging.WARNING, logger="fedpeer.node"):
        run_threads(nodes)
    said = [r.getMessage() for r in caplog.records if "CHOCO is diverging" in r.getMessage()]
    assert sorted(m.split(":")[0] for m in said) == ["node0", "node1"]
    assert all("gossip.gamma = 0.5" in m for m in said)
