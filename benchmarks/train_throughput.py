"""Local training speed: fedpeer's two adapters against plain peft with one and with two adapters.

The same Llama-shaped causal LM (random weights, built from a config), the same batch (rows of
exactly --seq tokens), LoRA of rank --rank on q_proj and v_proj, AdamW. Paths:

- peft_single:     plain peft, one adapter, a plain torch loop: what a peft user gets (the anchor);
- peft_dual:       plain peft, two adapters active (both A and B of both train);
- fedpeer_unfused: fedpeer's LocalTrainer with adapter.fused = false (peft's two passes);
- fedpeer:         fedpeer's LocalTrainer as a site runs it (fused dual LoRA, A_g frozen, tokenizing
                   its JSONL examples, its batch order and RNG handling included).

Timing: --repeats rounds of --steps optimizer steps per path, the paths taking turns within each
repeat (a shared, noisy machine slows them alike); one warm-up round per path first. tokens/s is
the median over repeats; `vs_anchor` is the median over repeats of a path's speed over peft_single's
in the same repeat, with a bootstrap 95 % interval. On a shared CPU, --threads 1 gives steadier
figures (two paths never fight over the cores). On CUDA: peak memory of
each path (its own weights and optimizer state plus its peak working memory) and MFU (4 * params
FLOPs per token, frozen base: forward plus the backward's input gradients, against --peak-tflops).

The codec part encodes and decodes a global-adapter-shaped update of --codec-params parameters on the
training device: int8, int4 and the factorized int4 pipeline, MB/s of fp32 input.

    python benchmarks/train_throughput.py                   # CPU: a small Llama (hidden 256, 4 layers)
    python benchmarks/train_throughput.py --json            # ... and one JSON object as the last line
    python benchmarks/train_throughput.py --hidden 2048 --layers 16 --seq 512   # ~1 B (CUDA default)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from fedpeer.codec import DecodeLimits, get_codec, manifest_of
from fedpeer.config import AdapterConfig, ModelConfig, TrainConfig
from fedpeer.model.dual_lora import load_dual_lora
from fedpeer.model.tiny import build_tiny_model
from fedpeer.train.loop import LocalTrainer

TARGETS = ("q_proj", "v_proj")
PATHS = ("peft_single", "peft_dual", "fedpeer_unfused", "fedpeer")
VOCAB = 4000
CODECS = {
    "int8": ("pipeline", {"bits": 8, "rank_fraction": 1.0}),
    "int4": ("pipeline", {"bits": 4, "rank_fraction": 1.0}),
    "int4-factorized": ("pipeline", {"bits": 4, "rank_fraction": 0.5}),
}


@dataclasses.dataclass
class Shape:
    hidden: int
    layers: int
    heads: int
    intermediate: int
    seq: int
    batch: int
    rank: int


def defaults(device: torch.device) -> Shape:
    if device.type == "cuda":  # about 1 B parameters with a 32 k vocabulary; here the vocabulary is small
        return Shape(hidden=2048, layers=16, heads=16, intermediate=5632, seq=512, batch=8, rank=16)
    return Shape(hidden=256, layers=4, heads=4, intermediate=688, seq=128, batch=8, rank=16)


def build(root: Path, s: Shape, rows: int, seed: int) -> tuple[Path, Path]:
    """The model directory and a JSONL file of `rows` texts of more than s.seq words each."""
    rng = random.Random(seed)
    words = [f"w{i}" for i in range(VOCAB)]
    corpus = [" ".join(words[i : i + 50]) for i in range(0, VOCAB, 50)]
    model = build_tiny_model(
        root / "model",
        arch="llama",
        task="causal-lm",
        corpus=corpus,
        hidden_size=s.hidden,
        num_layers=s.layers,
        num_heads=s.heads,
        intermediate_size=s.intermediate,
        max_position=s.seq + 8,
        seed=seed,
    )
    data = root / "train.jsonl"
    with data.open("w") as fh:
        for _ in range(rows):
            fh.write(json.dumps({"text": " ".join(rng.choices(words, k=s.seq + 8))}) + "\n")
    return model, data


class PeftPath:
    """A plain peft training loop on random token ids: the reference a peft user would write."""

    def __init__(self, model_dir: Path, s: Shape, adapters: int, device: torch.device, dtype: torch.dtype):
        base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        cfg = LoraConfig(r=s.rank, lora_alpha=2 * s.rank, target_modules=list(TARGETS), lora_dropout=0.0)
        self.model = get_peft_model(base, cfg)
        if adapters == 2:
            self.model.add_adapter("second", cfg)
            self.model.base_model.set_adapter(["default", "second"])
        self.model.to(device).train()
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optim = torch.optim.AdamW(params, lr=1e-4, fused=device.type == "cuda")
        gen = torch.Generator().manual_seed(0)
        self.ids = torch.randint(10, VOCAB, (s.batch, s.seq), generator=gen).to(device)
        self.mask = torch.ones_like(self.ids)

    def run(self, steps: int) -> None:
        for _ in range(steps):
            out = self.model(input_ids=self.ids, attention_mask=self.mask, labels=self.ids)
            self.optim.zero_grad(set_to_none=True)
            out.loss.backward()
            self.optim.step()


class FedpeerPath:
    """fedpeer's LocalTrainer on the JSONL file, one train_round of `steps` steps per call."""

    def __init__(self, model_dir: Path, data: Path, s: Shape, fused: bool, device: torch.device, dtype: str):
        self.model_cfg = ModelConfig(path=str(model_dir), task="causal-lm", dtype=dtype, dropout=False)
        adapter = AdapterConfig(rank=s.rank, alpha=2.0 * s.rank, target_modules=TARGETS, fused=fused)
        self.dual = load_dual_lora(self.model_cfg, adapter, device, local_seed=1)
        self.train_cfg = TrainConfig(
            data=str(data),
            eval_fraction=0.05,
            batch_size=s.batch,
            max_length=s.seq,
            lr=1e-4,
            device=str(device),
            frozen_cache_mb=0,
        )
        self.model = self.dual.model
        self.trainer = self._trainer(1)

    def _trainer(self, steps: int) -> LocalTrainer:
        cfg = dataclasses.replace(self.train_cfg, steps_per_round=steps)
        return LocalTrainer(self.dual, self.model_cfg, cfg)

    def run(self, steps: int) -> None:
        if self.trainer.cfg.steps_per_round != steps:
            self.trainer = self._trainer(steps)
        self.trainer.train_round()


def own_bytes(model: torch.nn.Module, optim_state: dict[int, dict[str, Any]] | None = None) -> int:
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    return total + sum(
        t.numel() * t.element_size()
        for st in (optim_state or {}).values()
        for t in st.values()
        if isinstance(t, torch.Tensor)
    )


def time_paths(
    paths: dict[str, Any], steps: int, repeats: int, device: torch.device, tokens: int, say: Callable
) -> dict[str, dict[str, Any]]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for name, path in paths.items():  # warm-up: allocator, kernels, lazy initialisation
        say(f"warming up {name}")
        path.run(1)
    sync()
    times: dict[str, list[float]] = {name: [] for name in paths}
    peaks: dict[str, int] = {}
    for r in range(repeats):
        for name, path in paths.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                before = torch.cuda.memory_allocated(device)
            t0 = time.perf_counter()
            path.run(steps)
            sync()
            times[name].append(time.perf_counter() - t0)
            if device.type == "cuda":
                optim = path.optim if isinstance(path, PeftPath) else path.trainer._optim
                working = torch.cuda.max_memory_allocated(device) - before
                peaks[name] = max(peaks.get(name, 0), working + own_bytes(path.model, optim.state))
        say(
            f"repeat {r + 1}/{repeats}: "
            + ", ".join(f"{n} {tokens * steps / times[n][-1]:,.0f}" for n in paths)
        )
    out = {}
    anchor = times["peft_single"]
    for name in paths:
        # Paired: a path against the anchor of the same repeat, under the same load.
        ratios = [a / t for a, t in zip(anchor, times[name], strict=True)]
        out[name] = {
            "path": name,
            "tokens_s": tokens * steps / statistics.median(times[name]),
            "vs_anchor": statistics.median(ratios),
            "vs_anchor_ci95": bootstrap_median_ci(ratios),
            "peak_mem_gib": peaks[name] / 2**30 if name in peaks else None,
        }
    return out


def bootstrap_median_ci(values: list[float], draws: int = 2000) -> list[float]:
    """Percentile bootstrap 95 % interval of the median."""
    rng = random.Random(0)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(draws))
    return [medians[int(0.025 * draws)], medians[int(0.975 * draws) - 1]]


def codec_speed(params: int, device: torch.device, repeats: int = 3) -> list[dict[str, Any]]:
    """Encode/decode MB/s (fp32 input) of a global-adapter-shaped update (B's of [out, 16]) on `device`."""
    gen = torch.Generator().manual_seed(0)
    per = 2048 * 16
    update = {
        f"layers.{i}.lora_B.weight": (torch.randn(2048, 2, generator=gen) @ torch.randn(2, 16, generator=gen))
        .add_(0.05 * torch.randn(2048, 16, generator=gen))
        .to(device)
        for i in range(max(1, params // per))
    }
    manifest = manifest_of(update)
    fp32 = 4 * sum(t.numel() for t in update.values())
    rows = []
    for name, (codec_name, options) in CODECS.items():
        codec = get_codec(codec_name, **options)
        enc_s, dec_s = [], []
        for _ in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            enc = codec.encode(update)
            enc_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            out = get_codec(codec_name).decode(enc.payload, manifest, enc.params, DecodeLimits())
            next(iter(out.values())).to(device)
            dec_s.append(time.perf_counter() - t0)
        rows.append(
            {
                "name": name,
                "encode_mb_s": fp32 / 1e6 / statistics.median(enc_s[1:]),
                "decode_mb_s": fp32 / 1e6 / statistics.median(dec_s[1:]),
                "ratio": fp32 / len(enc.payload),
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda")
    for name in ("hidden", "layers", "heads", "intermediate", "seq", "batch", "rank"):
        ap.add_argument(f"--{name}", type=int, help="model/batch shape (default: by device, see above)")
    ap.add_argument(
        "--steps", type=int, default=0, help="optimizer steps per timed round (0: 3 CPU, 10 CUDA)"
    )
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds per path, paths interleaved")
    ap.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated subset of {', '.join(PATHS)}")
    ap.add_argument("--dtype", default="auto", help="base weights: auto (bfloat16 on CUDA, else float32)")
    ap.add_argument("--peak-tflops", type=float, default=790.0, help="the device's dense bf16 peak, for MFU")
    ap.add_argument("--codec-params", type=int, default=4 * 2**20, help="parameters of the codec's update")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--json", action="store_true", help="end with one JSON object on the last line")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        device = torch.device(args.device)
    shape = defaults(device)
    for f in dataclasses.fields(Shape):
        if getattr(args, f.name) is not None:
            setattr(shape, f.name, getattr(args, f.name))
    dtype_name = args.dtype if args.dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    steps = args.steps or (10 if device.type == "cuda" else 3)
    chosen = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = [p for p in chosen if p not in PATHS]
    if unknown:
        ap.error(f"--paths: unknown {unknown}; choose from {', '.join(PATHS)}")
    if "peft_single" not in chosen:
        chosen.insert(0, "peft_single")  # the anchor of every ratio

    def say(text: str) -> None:
        print(text, file=sys.stderr if args.json else sys.stdout, flush=True)

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        say(f"building a Llama of hidden {shape.hidden}, {shape.layers} layers on {device} ({dtype_name})")
        model_dir, data = build(Path(tmp), shape, rows=max(64, shape.batch * (steps + 2)), seed=0)
        dtype = getattr(torch, dtype_name)
        makers = {
            "peft_single": lambda: PeftPath(model_dir, shape, 1, device, dtype),
            "peft_dual": lambda: PeftPath(model_dir, shape, 2, device, dtype),
            "fedpeer_unfused": lambda: FedpeerPath(model_dir, data, shape, False, device, dtype_name),
            "fedpeer": lambda: FedpeerPath(model_dir, data, shape, True, device, dtype_name),
        }
        paths = {name: makers[name]() for name in chosen}
        n_params = sum(p.numel() for p in paths["peft_single"].model.get_base_model().parameters())
        tokens = shape.batch * shape.seq
        runs = time_paths(paths, steps, args.repeats, device, tokens, say)
        del paths
    for row in runs.values():
        row["mfu"] = (
            4 * n_params * row["tokens_s"] / (args.peak_tflops * 1e12) if device.type == "cuda" else None
        )
    say("codec speed")
    codec = codec_speed(args.codec_params, device)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(
        f"\n{name}, {n_params / 1e6:.1f} M parameters, batch {shape.batch} x {shape.seq} tokens, "
        f"LoRA r={shape.rank} on {'/'.join(TARGETS)}, {steps} steps x {args.repeats} repeats, {dtype_name}"
    )
    print(f"{'path':<17}{'tokens/s':>11}{'vs peft_single [95% CI]':>27}{'peak GiB':>10}{'MFU':>7}")
    for row in runs.values():
        peak = f"{row['peak_mem_gib']:.2f}" if row["peak_mem_gib"] is not None else "-"
        mfu = f"{100 * row['mfu']:.0f}%" if row["mfu"] is not None else "-"
        lo, hi = row["vs_anchor_ci95"]
        ratio = f"{100 * row['vs_anchor']:.1f}% [{100 * lo:.0f}, {100 * hi:.0f}]"
        print(f"{row['path']:<17}{row['tokens_s']:>11,.0f}{ratio:>27}{peak:>10}{mfu:>7}")
    print("(vs peft_single: median over repeats of the paired ratio, bootstrap interval of that median)")
    print(f"\ncodec on {device.type}, {args.codec_params / 1e6:.1f} M-parameter update (fp32 MB/s)")
    print(f"{'codec':<17}{'encode MB/s':>12}{'decode MB/s':>12}{'ratio':>8}")
    for row in codec:
        print(
            f"{row['name']:<17}{row['encode_mb_s']:>12,.0f}{row['decode_mb_s']:>12,.0f}{row['ratio']:>7.1f}x"
        )
    if args.json:
        print(
            json.dumps(
                {
                    "device": name,
                    "model_params": n_params,
                    "shape": dataclasses.asdict(shape),
                    "steps": steps,
                    "repeats": args.repeats,
                    "dtype": dtype_name,
                    "threads": torch.get_num_threads(),
                    "runs": list(runs.values()),
                    "codec": codec,
                }
            )
        )


if __name__ == "__main__":
    main()
