"""Differential privacy of the global adapter (fedpeer/gossip/dp.py): clipping and noise, the
accounting against the closed form of the Gaussian mechanism, the settings, and a real in-process
mesh whose public copies stay bit-identical with the noise on."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from fedpeer.config import GossipConfig
from fedpeer.errors import ConfigError
from fedpeer.gossip import dp
from fedpeer.metrics import read_records
from fedpeer.transport.memory import MemoryNetwork, MemoryTransport
from tests.meshutil import make_nodes, prepared_memory, run_threads, tiny_spec


def _state(seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"a": scale * torch.randn(300, 40, generator=g), "b": scale * torch.randn(7, generator=g)}


def test_without_noise_an_update_is_clipped_to_c_and_keeps_its_direction():
    q = _state(0)
    norm = dp.update_norm(q)
    out, seen = dp.clip_and_noise(q, 2.0, 0.0, torch.Generator().manual_seed(0))
    assert seen == pytest.approx(norm) and norm > 2.0
    assert dp.update_norm(out) == pytest.approx(2.0, rel=1e-6)
    for k in q:
        torch.testing.assert_close(out[k], q[k] * (2.0 / norm), rtol=1e-6, atol=1e-7)
    small = _state(1, scale=1e-4)
    out, _ = dp.clip_and_noise(small, 2.0, 0.0, torch.Generator().manual_seed(0))
    for k in small:
        torch.testing.assert_close(out[k], small[k], rtol=0, atol=0)


def test_noise_is_gaussian_with_std_sigma_c():
    q = {k: torch.zeros_like(v) for k, v in _state(0).items()}
    n = sum(v.numel() for v in q.values())  # 12007 values
    out, _ = dp.clip_and_noise(q, 0.5, 3.0, torch.Generator().manual_seed(7))
    values = torch.cat([v.reshape(-1) for v in out.values()]).double()
    # std of the sample std ~ sigma / sqrt(2n): 0.65 % here; 4 % is > 6 of them.
    assert float(values.std()) == pytest.approx(1.5, rel=0.04)
    assert abs(float(values.mean())) < 5 * 1.5 / math.sqrt(n)
    assert all(v.dtype == torch.float32 for v in out.values())


def _gaussian_delta(eps: float, mu: float) -> float:
    """delta(eps) of a Gaussian mechanism with sensitivity / sigma = mu (Balle and Wang 2018)."""

    def phi(z: float) -> float:
        return 0.5 * math.erfc(-z / math.sqrt(2))

    return phi(-eps / mu + mu / 2) - math.exp(eps) * phi(-eps / mu - mu / 2)


@pytest.mark.parametrize("sigma,releases", [(1.0, 1), (2.0, 10), (5.0, 100)])
def test_epsilon_is_an_upper_bound_close_to_the_exact_gaussian_one(sigma, releases):
    """k Gaussian releases of noise multiplier sigma compose to one of sigma / sqrt(k) exactly; the
    accountant (Renyi DP) must never report less than its exact epsilon, and not much more."""
    delta = 1e-5
    eps = dp.epsilon_after(sigma, releases, delta)
    mu = math.sqrt(releases) / sigma
    lo, hi = 0.0, 200.0
    for _ in range(200):  # exact epsilon at delta by bisection: delta(eps) decreases in eps
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _gaussian_delta(mid, mu) > delta else (lo, mid)
    exact = hi
    assert exact <= eps <= 1.2 * exact, (eps, exact)
    assert dp.epsilon_after(sigma, releases + 1, delta) > eps
    assert dp.epsilon_after(sigma, 0, delta) == 0.0


@pytest.mark.parametrize("target", [1.0, 8.0])
def test_calibrated_noise_spends_at_most_the_target(target):
    sigma = dp.calibrate_noise_multiplier(target, 1e-5, 20)
    assert 0.99 * target <= dp.epsilon_after(sigma, 20, 1e-5) <= target
    priv = dp.from_config(GossipConfig(rounds=20, dp=True, dp_epsilon=target), seed=0)
    assert priv is not None and priv.noise_multiplier == pytest.approx(sigma)
    assert priv.epsilon(20) <= target


def test_settings_are_checked_with_clear_errors():
    GossipConfig(dp=True, dp_noise_multiplier=1.0).validate()
    GossipConfig(dp=True, dp_epsilon=8.0).validate()
    with pytest.raises(ConfigError, match="both 0"):
        GossipConfig(dp=True).validate()
    # Both: the epsilon is a budget the multiplier must fit, checked when the node starts.
    budget = GossipConfig(rounds=10, dp=True, dp_noise_multiplier=1.0, dp_epsilon=8.0)
    budget.validate()
    with pytest.raises(
        ConfigError, match=r"spends epsilon .* above gossip.dp_epsilon 8: raise it to at least"
    ):
        dp.from_config(budget)
    assert (
        dp.from_config(GossipConfig(rounds=10, dp=True, dp_noise_multiplier=3.0, dp_epsilon=8.0)) is not None
    )
    with pytest.raises(ConfigError, match="gossip.dp_delta"):
        GossipConfig(dp=True, dp_epsilon=8.0, dp_delta=0.0).validate()
    with pytest.raises(ConfigError, match="gossip.dp_clip_norm"):
        GossipConfig(dp_clip_norm=0.0).validate()
    with pytest.raises(ConfigError, match="gossip.robust"):
        GossipConfig(robust="krum").validate()
    with pytest.raises(ConfigError, match="gossip.byzantine_fraction"):
        GossipConfig(byzantine_fraction=1.0).validate()
    with pytest.raises(ConfigError, match="gossip.norm_bound"):
        GossipConfig(norm_bound=-1.0).validate()
    assert dp.from_config(GossipConfig()) is None


def test_missing_dp_accounting_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "dp_accounting", None)  # import now raises ImportError
    with pytest.raises(ConfigError, match=r"fedpeer\[dp\]"):
        dp.from_config(GossipConfig(dp=True, dp_noise_multiplier=1.0))


def test_public_copies_stay_bit_identical_with_dp_on(tmp_path):
    """The noise is added before encoding, so the sender's own x_hat gets the same decoded noisy update
    as every neighbour's copy of it: bit for bit, with the lossy fp16 codec too."""
    rounds, clip, sigma = 3, 0.05, 1.0
    spec = tiny_spec(
        nodes=3,
        topology="ring",
        train={"steps_per_round": 1, "lr": 1e-2},
        gossip={"rounds": rounds, "dp": True, "dp_clip_norm": clip, "dp_noise_multiplier": sigma},
        codec={"name": "fp16"},
    )
    net = MemoryNetwork()
    nodes = make_nodes(prepared_memory(spec, tmp_path), lambda: MemoryTransport(net))
    locals_before = [{k: v.clone() for k, v in n.dual.local_state().items()} for n in nodes]
    run_threads(nodes)
    by_id = {n.cfg.node_id: n for n in nodes}
    n_values = sum(v.numel() for v in nodes[0].sender.x_hat.values())
    for n in nodes:
        for j in n.neighbours.peers:
            theirs = by_id[j].sender.x_hat
            mine = n.copies.x_hats([j])[j]
            for k in theirs:
                assert torch.equal(mine[k], theirs[k]), (n.cfg.node_id, j, k)
        # The noise is really there: x_hat_self is the sum of `rounds` noisy updates, each with noise
        # of norm ~ sigma * C * sqrt(values) (1.13 here); clipped updates alone sum to <= rounds * C.
        noise_norm = sigma * clip * math.sqrt(n_values)
        assert dp.update_norm(n.sender.x_hat) > max(0.5 * noise_norm, 2 * rounds * clip)
        records = read_records(f"{n.cfg.state_dir}/metrics.jsonl")
        assert [r.round for r in records] == list(range(1, rounds + 1))
        for r in records:
            assert r.dp_delta == 1e-5
            assert r.dp_epsilon == pytest.approx(dp.epsilon_after(sigma, r.round, 1e-5))
            assert r.dp_update_norm is not None and r.dp_update_norm > 0
        # `fedpeer status` reports what was spent, as of the last release.
        status = n.service.on_status()
        assert status.privacy_delta == 1e-5 and status.privacy_epsilon == pytest.approx(
            records[-1].dp_epsilon
        )
    # The local adapters trained (lr > 0) but were never noised or clipped: DP sees the global one only.
    for n, before in zip(nodes, locals_before, strict=True):
        assert any(not torch.equal(n.dual.local_state()[k], v) for k, v in before.items())


def test_records_carry_the_new_keys_only_when_the_features_are_on():
    from fedpeer.metrics import RoundRecord
    from fedpeer.node.record import round_line

    plain = RoundRecord(round=1, node="n", train_loss=1.0)
    assert not {"dp_epsilon", "clip_radius", "offenders"} & set(plain.to_json())
    on = RoundRecord(
        round=2,
        node="n",
        train_loss=1.0,
        clip_radius=math.inf,
        clipped=["b"],
        offenders=["c"],
        dp_epsilon=2.5,
        dp_delta=1e-5,
        dp_update_norm=0.3,
    )
    data = on.to_json()
    assert data["clip_radius"] is None and data["offenders"] == ["c"] and data["dp_epsilon"] == 2.5
    assert RoundRecord.from_json(data) == RoundRecord(**{**on.__dict__, "clip_radius": None})
    line = round_line(3, 2, on)
    assert "clipped b | left out c | eps 2.5 (delta 1e-05) | " in line
    assert "eps" not in round_line(3, 2, plain)
