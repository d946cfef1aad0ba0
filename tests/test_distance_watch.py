"""The consensus-distance watch: it warns when CHOCO diverges, and not when a mesh converges."""

import itertools
import logging
import math

from fedpeer.gossip import choco
from fedpeer.gossip.watch import GROWTH_ROUNDS, DistanceWatch
from fedpeer.transport.memory import MemoryNetwork, MemoryTransport
from tests.meshutil import make_nodes, prepared_memory, run_threads, tiny_spec

# Node 0's distance and model norm in every round of two benchmark runs (MTSamples, seed 0, 32 rounds
# at lr 1.2e-2, the pipeline codec at 2,600 bytes): gamma = 0.8 diverged, gamma = 0.5 converged.
DIVERGED = (
    "5.147 6.194 6.76 7.202 7.105 7.115 7.12 7.236 7.477 8.092 8.136 8.557 9.077 9.784 10.379 10.972 11.389 "
    "11.954 12.591 13.503 14.527 14.422 15.139 15.336 16.167 16.923 17.508 18.19 19.628 21.169 22.574 24.191"
)
DIVERGED_NORM = (
    "4.74 7.615 10.197 12.372 14.019 15.005 15.823 16.911 17.754 18.608 19.372 20.044 20.617 21.37 22.009 "
    "22.577 23.119 24.105 25.042 25.772 26.225 26.197 26.724 27.212 28.134 29.147 29.713 30.166 30.747 "
    "31.379 32.527 33.319"
)
CONVERGED = (
    "5.792 7.601 8.435 8.916 8.828 8.654 8.248 7.906 7.432 7.333 6.919 6.743 6.573 6.534 6.486 6.294 5.917 "
    "5.62 5.54 5.486 5.313 5.127 5.1 4.907 4.782 4.779 4.669 4.73 4.622 4.555 4.523 4.505"
)
CONVERGED_NORM = (
    "5.208 8.344 10.925 12.842 14.082 15.015 15.654 16.361 16.974 17.705 18.288 18.749 19.396 19.976 20.49 "
    "20.778 21.09 21.475 21.891 22.24 22.605 22.926 23.235 23.518 23.789 24.091 24.421 24.705 24.963 25.211 "
    "25.462 25.703"
)
# A lossless run (MTSamples, seed 6, node2; lr 3e-3, prior 0.5): its distance grew 9 rounds in a row
# while training moved the model away from zero, then fell; relative to the norm it never grew long.
LOSSLESS = (
    "1.297 1.303 1.381 1.445 1.482 1.525 1.537 1.578 1.588 1.608 1.594 1.639 1.527 1.487 1.462 1.474 1.456 "
    "1.419 1.452 1.351 1.338 1.273 1.259 1.289 1.258 1.251 1.24 1.266 1.169 1.151 1.171 1.189"
)
LOSSLESS_NORM = (
    "1.643 2.401 3.414 4.434 5.397 6.315 7.221 8.055 8.797 9.426 9.993 10.499 10.941 11.383 11.799 12.199 "
    "12.533 12.881 13.183 13.49 13.778 14.045 14.314 14.564 14.807 15.041 15.245 15.464 15.68 15.878 16.079 "
    "16.27"
)


def series(text: str) -> list[float]:
    return [float(d) for d in text.split()]


def warnings_of(watch: DistanceWatch, distances: list[float], norms: list[float] | None = None):
    norms = norms or [1.0] * len(distances)
    return [
        (i, w) for i, (d, n) in enumerate(zip(distances, norms, strict=True)) if (w := watch.observe(d, n))
    ]


def test_growth_for_the_set_number_of_rounds_warns_then_again_after_as_many():
    distances = [float(d) for d in range(1, 2 * GROWTH_ROUNDS + 2)]  # grows every round
    got = warnings_of(DistanceWatch(lossy=True, gamma=0.8), distances)
    assert [i for i, _ in got] == [GROWTH_ROUNDS, 2 * GROWTH_ROUNDS]
    first = got[0][1]
    assert f"grown {GROWTH_ROUNDS} rounds in a row (1 -> {GROWTH_ROUNDS + 1})" in first
    assert "gossip.gamma = 0.8" in first and "codec.budget_bytes" in first


def test_a_diverging_run_warns_and_a_converging_one_does_not():
    diverged = warnings_of(DistanceWatch(lossy=True, gamma=0.8), series(DIVERGED), series(DIVERGED_NORM))
    # distance / norm grew from round 11 (0.420) to round 19 (0.503), and from round 24 to the end
    assert [i for i, _ in diverged] == [18, 31]
    assert "(0.42 -> 0.503)" in diverged[0][1] and "(0.564 -> 0.726)" in diverged[1][1]
    converged = warnings_of(DistanceWatch(lossy=True, gamma=0.5), series(CONVERGED), series(CONVERGED_NORM))
    assert converged == []


def test_a_distance_that_grows_with_the_model_is_not_taken_for_divergence():
    """The distance alone grew 9 rounds in a row in a lossless run that converged: a watch of the
    distance would have warned at round 9; relative to the model's norm it does not."""
    assert [i for i, _ in warnings_of(DistanceWatch(lossy=False, gamma=1.0), series(LOSSLESS))] == [8]
    assert warnings_of(DistanceWatch(lossy=False, gamma=1.0), series(LOSSLESS), series(LOSSLESS_NORM)) == []


def test_a_round_without_neighbours_a_zero_norm_or_a_dip_starts_the_count_again():
    almost = [float(d) for d in range(1, GROWTH_ROUNDS + 1)]  # one increase short
    watch = DistanceWatch(lossy=True, gamma=0.5)
    assert warnings_of(watch, almost + [math.nan] + almost) == []
    assert warnings_of(watch, almost * 2, [1.0] * GROWTH_ROUNDS + [0.0] + [1.0] * (GROWTH_ROUNDS - 1)) == []
    assert warnings_of(watch, almost + [1.0] + almost[1:]) == []
    assert warnings_of(watch, [100.0]) != []  # the last run of growth counted from its start


def test_without_a_lossy_codec_it_points_at_training_not_the_codec():
    watch = DistanceWatch(lossy=False, gamma=1.0)
    [(_, warning)] = warnings_of(watch, [float(d) for d in range(GROWTH_ROUNDS + 1)])
    assert "train.lr" in warning and "codec" not in warning


def test_a_node_logs_the_warning_when_its_distance_keeps_growing(tmp_path, monkeypatch, caplog):
    """Wiring: a 2-node mesh whose measured distance grows tenfold every round (far faster than its
    model) logs the warning once per node."""
    growing = (10.0**k for k in itertools.count())
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
