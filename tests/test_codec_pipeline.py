"""The pipeline codec end to end: round trips within bounds, decisions, budget mode, hostile payloads,
config, and CHOCO with the codec as compressor (convergence and error feedback)."""

from __future__ import annotations

import itertools
import time

import pytest
import torch
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from fedpeer.codec import (
    CodecError,
    DecodeLimits,
    PipelineCodec,
    TensorSpec,
    available_codecs,
    codec_from_config,
    get_codec,
    lora_fp32_bytes,
    manifest_of,
)
from fedpeer.codec.bytes import shuffle, zstd_compress
from fedpeer.codec.plan import allocate
from fedpeer.config import CodecConfig
from fedpeer.errors import ConfigError, FrameRejected
from fedpeer.gossip import choco
from fedpeer.gossip.topology import build_topology
from fedpeer.gossip.weights import mixing_matrix
from fedpeer.wire.frames import FrameKind, decode_frame, encode_frame

LIMITS = DecodeLimits()
FACTORS = ("svd", "tucker", "tt")
State = dict[str, torch.Tensor]


def _lora_update(layers: int = 4, out: int = 64, r: int = 8, true_rank: int = 0, seed: int = 0) -> State:
    """B_g-like update of q and v per layer (+ a seq-cls head); true_rank > 0 makes each B low-rank."""
    gen = torch.Generator().manual_seed(seed)
    t: State = {}
    for layer, proj in itertools.product(range(layers), ("q", "v")):
        if true_rank:
            b = torch.randn(out, true_rank, generator=gen) @ torch.randn(true_rank, r, generator=gen)
        else:
            b = torch.randn(out, r, generator=gen)
        t[f"layer.{layer}.{proj}.lora_B.global.weight"] = b * 1e-3
    t["classifier.weight"] = torch.randn(3, out, generator=gen) * 1e-3
    t["classifier.bias"] = torch.randn(3, generator=gen) * 1e-3
    return t


def _rel(out: State, ref: State) -> float:
    num = sum(float((out[k] - ref[k]).pow(2).sum()) for k in ref)
    return (num / sum(float(v.pow(2).sum()) for v in ref.values())) ** 0.5


def _round_trip(codec: PipelineCodec, tensors: State) -> State:
    enc = codec.encode(tensors)
    # A fresh default instance: the receiver has nothing but the header's params and the manifest.
    out = get_codec("pipeline").decode(enc.payload, manifest_of(tensors), enc.params, LIMITS)
    assert list(out) == list(tensors)
    for k, t in tensors.items():
        assert out[k].shape == t.shape and out[k].dtype == torch.float32 and out[k].device.type == "cpu"
    return out


# --- round trips and decisions -------------------------------------------------------------------

BOUNDS = [
    # bits, rank fraction, structure of the update, largest relative error allowed
    pytest.param(16, 1.0, 0, 3e-4, id="fp16-dense"),
    pytest.param(8, 1.0, 0, 8e-3, id="int8-dense"),
    pytest.param(4, 1.0, 0, 0.13, id="int4-dense"),
    pytest.param(8, 0.25, 2, 0.015, id="int8-svd-on-rank2"),
    pytest.param(4, 0.25, 2, 0.2, id="int4-svd-on-rank2"),
]


@pytest.mark.parametrize(("bits", "fraction", "true_rank", "bound"), BOUNDS)
def test_round_trip_within_bound(bits: int, fraction: float, true_rank: int, bound: float) -> None:
    t = _lora_update(true_rank=true_rank)
    codec = PipelineCodec(bits=bits, rank_fraction=fraction)
    out = _round_trip(codec, t)
    assert _rel(out, t) <= bound
    assert codec.last_stats is not None
    # The encoder's measured error is the receiver's error: it rebuilt exactly what the decoder does.
    assert codec.last_stats.rel_error == pytest.approx(_rel(out, t), rel=1e-3, abs=1e-7)


def test_low_rank_update_is_factorized_and_noise_is_not() -> None:
    codec = PipelineCodec(bits=8, rank_fraction=0.25)
    codec.encode(_lora_update(true_rank=2))
    assert codec.last_stats is not None
    b = codec.last_stats.groups[0]
    assert b.plan == "svd/2/8" and b.decision is not None and b.decision.factorize
    assert b.decision.factored_bytes < b.decision.dense_bytes / 3

    codec.encode(_lora_update(true_rank=0))
    b = codec.last_stats.groups[0]
    assert b.plan == "dense//8" and b.decision is not None and not b.decision.factorize
    assert b.decision.factored_rel_error > 0.5  # rank 2 of 8 loses most of an i.i.d. update
    assert {o[0] for o in b.options} == {"dense//8", "svd/2/8", "tucker/2,4,2/8"}


def test_tucker_pays_for_structure_shared_across_layers() -> None:
    """Every layer's B from one shared rank-2 basis: Tucker over the stack beats per-matrix SVD."""
    gen = torch.Generator().manual_seed(7)
    basis, mix = torch.randn(64, 2, generator=gen), torch.randn(2, 8, generator=gen)
    t = {f"l{i}.lora_B": basis @ (mix * torch.randn(2, 1, generator=gen)) for i in range(16)}
    codec = PipelineCodec(bits=8, rank_fraction=0.25, methods=("svd", "tucker"))
    out = _round_trip(codec, t)
    assert codec.last_stats is not None
    assert codec.last_stats.groups[0].plan.startswith("tucker/")
    assert _rel(out, t) < 0.02
    assert len(codec.encode(t).payload) < 0.1 * 4 * 16 * 64 * 8


def test_stats_summary_is_json_ready_and_params_are_small() -> None:
    codec = PipelineCodec()
    enc = codec.encode(_lora_update())
    assert codec.last_stats is not None
    summary = codec.last_stats.summary()
    assert summary["payload_bytes"] == len(enc.payload)
    assert [g["members"] for g in summary["groups"]] == [8, 1, 1]
    assert set(enc.params) == {"v", "block", "plan", "zstd_level"}
    assert sum(len(k) + len(v) for k, v in enc.params.items()) < 80


def test_stochastic_rounding_draws_fresh_noise_each_call() -> None:
    t = _lora_update()
    codec = PipelineCodec(bits=4, rank_fraction=1.0, stochastic=True, seed=1)
    a, b = codec.encode(t).payload, codec.encode(t).payload
    assert a != b
    assert PipelineCodec(bits=4, rank_fraction=1.0, stochastic=True, seed=1).encode(t).payload == a


def test_estimate_ratio() -> None:
    manifest = manifest_of(_lora_update())
    fp32 = 4 * sum(s.numel for s in manifest)
    assert PipelineCodec(bits=8).estimate_ratio(manifest) == pytest.approx(3.88, rel=0.02)
    assert PipelineCodec(budget_bytes=fp32 // 20).estimate_ratio(manifest) == pytest.approx(20, rel=0.01)


def test_lora_fp32_bytes_counts_the_frozen_a() -> None:
    manifest = [TensorSpec("x.lora_B.w", (384, 8)), TensorSpec("head", (6, 384)), TensorSpec("bias", (6,))]
    assert lora_fp32_bytes(manifest) == 4 * (384 * 8 + 8 * 384 + 6 * 384 + 6)
    assert lora_fp32_bytes(manifest, {"x.lora_B.w": 1536}) == 4 * (384 * 8 + 8 * 1536 + 6 * 384 + 6)
    with_a = [TensorSpec("x.lora_A.w", (8, 100)), *manifest]  # A travels: counted once, as sent
    assert lora_fp32_bytes(with_a) == 4 * (8 * 100 + 384 * 8 + 6 * 384 + 6)


@settings(max_examples=25, deadline=None)
@given(
    shapes=st.lists(
        st.one_of(
            st.tuples(st.integers(1, 24), st.integers(1, 12)),
            st.tuples(st.integers(1, 30)),
            st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4)),
        ),
        min_size=1,
        max_size=6,
    ),
    bits=st.sampled_from([4, 8, 16]),
    fraction=st.sampled_from([0.25, 0.5, 1.0]),
    methods=st.sampled_from([(), ("svd",), ("svd", "tucker", "tt")]),
    exponent=st.integers(-8, 3),
    seed=st.integers(0, 2**31 - 1),
)
def test_round_trip_property(
    shapes: list[tuple[int, ...]],
    bits: int,
    fraction: float,
    methods: tuple[str, ...],
    exponent: int,
    seed: int,
) -> None:
    gen = torch.Generator().manual_seed(seed)
    t = {f"t{i}": torch.randn(s, generator=gen) * 10.0**exponent for i, s in enumerate(shapes)}
    codec = PipelineCodec(bits=bits, rank_fraction=fraction, methods=methods)
    out = _round_trip(codec, t)
    assert codec.last_stats is not None
    assert codec.last_stats.rel_error == pytest.approx(_rel(out, t), rel=1e-3, abs=1e-6)
    # A factorization is only used where it pays, so never more bytes than dense (up to zstd noise).
    dense = _round_trip(PipelineCodec(bits=bits, rank_fraction=1.0), t)
    assert (
        len(codec.encode(t).payload)
        <= len(PipelineCodec(bits=bits, rank_fraction=1.0).encode(t).payload) + 64
    )
    assert _rel(out, t) <= 1.0 and _rel(dense, t) <= {4: 0.2, 8: 0.01, 16: 5e-4}[bits]


# --- budget mode ---------------------------------------------------------------------------------


def test_budget_is_met_and_error_falls_as_it_grows() -> None:
    t = _lora_update(layers=6, out=96)
    fp32 = 4 * sum(v.numel() for v in t.values())
    errors = []
    for fraction in (0.01, 0.03, 0.06, 0.12, 0.25, 0.6):
        budget = int(fp32 * fraction)
        codec = PipelineCodec(budget_bytes=budget)
        out = _round_trip(codec, t)
        assert codec.last_stats is not None and codec.last_stats.budget_met
        assert len(codec.encode(t).payload) <= budget
        errors.append(_rel(out, t))
    assert errors == sorted(errors, reverse=True)
    assert errors[0] > 0.5 and errors[-1] < 1e-3  # tight: most is left for later; loose: fp16


def test_budget_between_rank_2_and_rank_4_sends_rank_3() -> None:
    """Four full-rank 384×8 B's at 4 bits: rank 2 takes about 1.7 kB, rank 4 about 3.3 kB. A 3 kB
    budget must buy rank 3; a ladder of halvings had no rung there and sent rank 2 (0.80 relative
    error against 0.72)."""
    t = _lora_update(layers=2, out=384)
    codec = PipelineCodec(budget_bytes=3000, methods=("svd",))
    out = _round_trip(codec, t)
    assert codec.last_stats is not None and codec.last_stats.budget_met
    assert codec.last_stats.groups[0].plan == "svd/3/4"
    assert _rel(out, t) < 0.76


def test_budget_too_small_for_anything_sends_nothing_and_says_so() -> None:
    t = _lora_update()
    codec = PipelineCodec(budget_bytes=1)
    out = _round_trip(codec, t)
    assert codec.last_stats is not None and not codec.last_stats.budget_met
    assert all(g.plan.startswith("zero/") for g in codec.last_stats.groups)
    assert all(float(v.abs().max()) == 0.0 for v in out.values())


def test_allocate_is_exact_for_one_group() -> None:
    menu = [(0, 9.0), (10, 5.0), (40, 4.0), (60, 1.0), (100, 0.0)]
    for budget, pick in ((5, 0), (10, 1), (59, 2), (60, 3), (99, 3), (1000, 4)):
        assert allocate([menu], budget) == ([pick], True)


def test_allocate_is_within_one_step_of_brute_force() -> None:
    """On convex menus the price relaxation is off in at most one group, by one step of its menu."""
    gen = torch.Generator().manual_seed(8)
    for trial in range(40):
        menus = []
        for _ in range(3):
            sizes = torch.cumsum(torch.randint(5, 80, (4,), generator=gen), 0).tolist()
            scale = 20 + 60 * float(torch.rand(1, generator=gen))
            menus.append([(0, 1.0), *[(b, float(torch.exp(torch.tensor(-b / scale)))) for b in sizes]])
        budget = 30 + 10 * trial
        picks, met = allocate(menus, budget)
        assert met and sum(m[p][0] for m, p in zip(menus, picks, strict=True)) <= budget
        best = min(
            sum(m[p][1] for m, p in zip(menus, combo, strict=True))
            for combo in itertools.product(range(5), repeat=3)
            if sum(m[p][0] for m, p in zip(menus, combo, strict=True)) <= budget
        )
        step = max(m[k][1] - m[k + 1][1] for m in menus for k in range(4))
        got = sum(m[p][1] for m, p in zip(menus, picks, strict=True))
        assert best <= got <= best + step


# --- hostile payloads ----------------------------------------------------------------------------

BASE = _lora_update(layers=2, out=16)
MANIFEST = manifest_of(BASE)
GOOD = PipelineCodec(bits=8, rank_fraction=0.5).encode(BASE)


def _params(**changes: str) -> dict[str, str]:
    return {**GOOD.params, **changes}


HOSTILE_PARAMS = [
    pytest.param(_params(plan="svd/9/8;dense//8;dense//8"), "outside 1..8", id="inflated-svd-rank"),
    pytest.param(_params(plan="tucker/5,16,8/8;dense//8;dense//8"), "outside", id="inflated-tucker-rank"),
    pytest.param(_params(plan="svd/999999999/8;dense//8;dense//8"), "outside", id="huge-rank"),
    pytest.param(_params(plan="dense//3;dense//8;dense//8"), "bits", id="bits-3"),
    pytest.param(_params(plan="dense//8;dense//8"), "2 entries.*3 groups", id="too-few-entries"),
    pytest.param(_params(plan="dense//8;dense//8;svd/1/8"), "not allowed", id="svd-on-bias"),
    pytest.param(_params(plan="dense//8;tucker/1,1,1/8;dense//8"), "at least two", id="tucker-on-one-matrix"),
    pytest.param(_params(plan="cp/2/8;dense//8;dense//8"), "unknown", id="unknown-method"),
    pytest.param(_params(plan="dense/ /8;dense//8;dense//8"), "malformed", id="malformed-entry"),
    pytest.param(_params(plan="dense//8;" * 10_000), "too long", id="plan-too-long"),
    pytest.param(_params(block="4"), "block", id="block-too-small"),
    pytest.param(_params(block="1" * 40), "block", id="block-huge-int"),
    pytest.param(_params(v="2"), "version", id="unknown-version"),
    pytest.param({**GOOD.params, "extra": "1"}, "params", id="unknown-key"),
    pytest.param({k: v for k, v in GOOD.params.items() if k != "plan"}, "params", id="missing-plan"),
    pytest.param(_params(plan="dense//16;dense//8;dense//8"), "declares", id="payload-for-other-plan"),
]


@pytest.mark.parametrize(("params", "message"), HOSTILE_PARAMS)
def test_hostile_params_refused(params: dict[str, str], message: str) -> None:
    with pytest.raises(CodecError, match=message):
        get_codec("pipeline").decode(GOOD.payload, MANIFEST, params, LIMITS)


def _hand_built(codes: bytes, halfs: list[float], scales: list[float]) -> bytes:
    import numpy as np

    raw = codes + shuffle(np.array(halfs, dtype="<f2"), 2) + shuffle(np.array(scales, dtype="<f4"), 4)
    return zstd_compress(raw, 3)


ONE = [TensorSpec("v", (16,))]
HOSTILE_PAYLOADS = [
    pytest.param(_hand_built(b"\x01" * 16, [1.0, 1.0], [float("nan")]), "scale", id="nan-part-scale"),
    pytest.param(_hand_built(b"\x01" * 16, [1.0, 1.0], [-1.0]), "scale", id="negative-part-scale"),
    pytest.param(_hand_built(b"\x01" * 16, [float("nan"), 1.0], [1.0]), "NaN", id="nan-block-scale"),
    pytest.param(_hand_built(b"\x7f" * 16, [65504.0, 1.0], [3e38]), "NaN or Inf", id="overflow-to-inf"),
    pytest.param(_hand_built(b"\x01" * 16, [1.0, 1.0], [1.0])[:-3], "corrupt", id="truncated"),
    pytest.param(_hand_built(b"\x01" * 16, [1.0, 1.0], [1.0]) + b"\x00", "corrupt", id="trailing-bytes"),
    pytest.param(_hand_built(b"\x01" * 15, [1.0, 1.0], [1.0]), "declares", id="short-codes"),
    pytest.param(
        zstandard.ZstdCompressor(write_content_size=False).compress(b"\x00" * 24), "declare", id="no-size"
    ),
]


@pytest.mark.parametrize(("payload", "message"), HOSTILE_PAYLOADS)
def test_hostile_payloads_refused(payload: bytes, message: str) -> None:
    params = {"v": "1", "block": "8", "plan": "dense//8"}
    with pytest.raises(CodecError, match=message):
        get_codec("pipeline").decode(payload, ONE, params, LIMITS)


def test_hand_built_payload_decodes_when_valid() -> None:
    """The payloads above are well formed except for their poison."""
    out = get_codec("pipeline").decode(
        _hand_built(b"\x7f" * 16, [1.0, 0.5], [2.0]),
        ONE,
        {"v": "1", "block": "8", "plan": "dense//8"},
        LIMITS,
    )
    assert out["v"].tolist() == [2.0] * 8 + [1.0] * 8


@pytest.mark.parametrize("limit", [1 << 20, 1 << 62])
def test_huge_declared_sizes_refused_before_allocation(limit: int) -> None:
    start = time.perf_counter()
    # Refused by the manifest bound, or (limit above the manifest) by the zstd header's size.
    with pytest.raises(CodecError, match="exceeds|declares 595 bytes but"):
        get_codec("pipeline").decode(
            GOOD.payload,
            [TensorSpec("a", (2**40, 8))],
            {"v": "1", "block": "64", "plan": "dense//8"},
            DecodeLimits(limit),
        )
    # A plan whose parts are larger than the tensors (full-rank SVD of square matrices) and the
    # limit, for a manifest within it: refused from the sizes, before zstd allocates.
    manifest = [TensorSpec(f"m{i}", (512, 512)) for i in range(2)]
    with pytest.raises(CodecError, match="more than the 2097152-byte payload limit"):
        get_codec("pipeline").decode(
            GOOD.payload,
            manifest,
            {"v": "1", "block": "64", "plan": "svd/512/16"},
            DecodeLimits(2 * 512 * 512 * 4),
        )
    assert time.perf_counter() - start < 0.5


def test_decode_frame_maps_pipeline_errors_to_frame_rejected() -> None:
    frame = encode_frame(BASE, PipelineCodec(), sender="a", epoch="e", kind=FrameKind.UPDATE, round=1, seq=1)
    out = decode_frame(frame, MANIFEST, LIMITS, available_codecs())
    assert _rel(out, BASE) < 0.6
    bad = encode_frame(BASE, PipelineCodec(), sender="a", epoch="e", kind=FrameKind.UPDATE, round=1, seq=1)
    object.__setattr__(bad, "codec_params", {**bad.codec_params, "plan": "svd/64/8;dense//8;dense//8"})
    with pytest.raises(FrameRejected, match="undecodable pipeline payload"):
        decode_frame(bad, MANIFEST, LIMITS, available_codecs())


# --- encode-side refusals and options ------------------------------------------------------------

BAD_OPTIONS = [
    pytest.param({"bits": 2}, "bits", id="bits"),
    pytest.param({"block": 2}, "block", id="block"),
    pytest.param({"rank_fraction": 0.0}, "rank_fraction", id="rank-zero"),
    pytest.param({"rank_fraction": 1.5}, "rank_fraction", id="rank-above-one"),
    pytest.param({"methods": ("svd", "cp")}, "methods", id="unknown-method"),
    pytest.param({"methods": "svd"}, "methods", id="methods-string"),
    pytest.param({"budget_bytes": -1}, "budget", id="negative-budget"),
    pytest.param({"zstd_level": 0}, "zstd_level", id="zstd-level"),
    pytest.param({"stochastic": 1}, "stochastic", id="stochastic-int"),
]


@pytest.mark.parametrize(("options", "message"), BAD_OPTIONS)
def test_bad_options_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(CodecError, match=message):
        get_codec("pipeline", **options)


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        pytest.param({"n": torch.tensor([1.0, float("nan")])}, "'n'.*NaN", id="nan"),
        pytest.param({"e": torch.ones(0, 3)}, "'e'.*empty", id="empty"),
        pytest.param({"i": torch.ones(3, dtype=torch.int64)}, "'i'.*floating", id="int"),
    ],
)
def test_encode_refuses(tensors: State, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        PipelineCodec().encode(tensors)


# --- config --------------------------------------------------------------------------------------


def test_codec_from_config() -> None:
    cfg = CodecConfig(
        name="pipeline", bits=4, block=128, rank_fraction=0.25, methods=("svd",), budget_bytes=999
    )
    codec = codec_from_config(cfg)
    assert isinstance(codec, PipelineCodec)
    assert (codec.bits, codec.block, codec.rank_fraction, codec.methods, codec.budget_bytes) == (
        4,
        128,
        0.25,
        ("svd",),
        999,
    )
    assert codec_from_config(CodecConfig(name="lossless")).name == "lossless"
    assert codec_from_config(CodecConfig()).name == "fp16"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"bits": 3}, "codec.bits"),
        ({"block": 4}, "codec.block"),
        ({"rank_fraction": 0.0}, "codec.rank_fraction"),
        ({"methods": ("svd", "cp")}, "codec.methods"),
        ({"budget_bytes": -5}, "codec.budget_bytes"),
        ({"name": "int3"}, "codec.name"),
    ],
)
def test_codec_config_validation_names_the_field(changes: dict[str, object], field: str) -> None:
    with pytest.raises(ConfigError, match=field):
        CodecConfig(**changes).validate()  # type: ignore[arg-type]


# --- CHOCO with the pipeline as compressor -------------------------------------------------------


def _compress_with(codec: PipelineCodec):  # type: ignore[no-untyped-def]
    def compress(q: State) -> State:
        enc = codec.encode(q)
        return get_codec("pipeline").decode(enc.payload, manifest_of(q), enc.params, LIMITS)

    return compress


def test_choco_with_pipeline_codec_reaches_the_average() -> None:
    """Ring of 5, int4 + rank-2 SVD where it pays; γ < 1 as CHOCO needs with a lossy compressor."""
    graph = build_topology("ring", 5)
    W, order = mixing_matrix(graph)
    pos = {node: p for p, node in enumerate(order)}
    weights = {i: {j: W[pos[i], pos[j]].item() for j in graph.neighbors(i)} for i in order}
    x = {i: _lora_update(layers=2, out=16, true_rank=0, seed=p) for p, i in enumerate(order)}
    average = {k: torch.stack([s[k] for s in x.values()]).mean(0) for k in x[order[0]]}
    start = sum(_rel(x[i], average) for i in order)
    compress = _compress_with(PipelineCodec(bits=4, rank_fraction=0.25, methods=("svd",)))
    x_hat = {i: choco.zeros_like(x[i]) for i in order}
    for _ in range(30):
        for i in order:
            choco.add_(x_hat[i], compress(choco.difference(x[i], x_hat[i])))
        x = {i: choco.mix(x[i], x_hat[i], {j: x_hat[j] for j in weights[i]}, weights[i], 0.5) for i in order}
    end = sum(_rel(x[i], average) for i in order)
    assert end < 1e-2 * start
    for k, v in average.items():  # the mean is preserved exactly by the mixing step
        torch.testing.assert_close(torch.stack([x[i][k] for i in order]).mean(0), v, rtol=0, atol=1e-8)


def test_error_feedback_sends_the_residual_later() -> None:
    """One sender, a new local update each round. With the public copy (error feedback) the
    receiver's sum of decoded q tracks the true sum; compressing each update alone drifts away."""
    codec = PipelineCodec(bits=4, rank_fraction=0.25, methods=("svd",))
    gen = torch.Generator().manual_seed(9)
    shapes = {"l0.lora_B": (32, 8), "l1.lora_B": (32, 8)}
    # Updates with a persistent direction (like gradients over rounds) plus noise.
    drift = {k: torch.randn(s, generator=gen) for k, s in shapes.items()}
    x = {k: torch.zeros(s) for k, s in shapes.items()}
    x_hat = choco.zeros_like(x)
    naive_sum = choco.zeros_like(x)
    for _ in range(40):
        update = {k: drift[k] + 0.5 * torch.randn(s, generator=gen) for k, s in shapes.items()}
        x = {k: x[k] + update[k] for k in x}
        choco.add_(x_hat, _compress_with(codec)(choco.difference(x, x_hat)))
        choco.add_(naive_sum, _compress_with(codec)(update))
    with_feedback, without = _rel(x_hat, x), _rel(naive_sum, x)
    assert with_feedback < 0.05
    assert without > 5 * with_feedback


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_encode_cuda_tensors() -> None:
    t = _lora_update(true_rank=2)
    gpu = {k: v.cuda() for k, v in t.items()}
    for options in ({"bits": 8, "rank_fraction": 0.25, "methods": FACTORS}, {"budget_bytes": 2000}):
        codec = PipelineCodec(**options)  # type: ignore[arg-type]
        out = _round_trip(codec, gpu)
        assert codec.last_stats is not None
        assert codec.last_stats.rel_error == pytest.approx(_rel(out, t), rel=1e-3, abs=1e-6)
        assert _rel(out, t) < (0.015 if "bits" in options else 0.9)
