"""Tiny randomly initialized models with a word-level tokenizer, saved like any Hugging Face model.

Tests, demos and benchmarks cannot download models, so they build one here from a corpus and load it
through `load_dual_lora` exactly as a user's model directory would be loaded.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertLMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)
from transformers.utils import logging as hf_logging

ARCHS = ("llama", "bert")
TASKS = ("causal-lm", "seq-cls")
SPECIALS = {"pad": "[PAD]", "unk": "[UNK]", "bos": "[BOS]", "eos": "[EOS]", "cls": "[CLS]", "sep": "[SEP]"}
_INFO_FILE = "fedpeer_tiny.json"
_INFO_VERSION = 1


def build_tiny_model(
    out_dir: str | Path,
    *,
    arch: str,
    task: str,
    corpus: Iterable[str],
    labels: Sequence[str] = (),
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int = 128,
    max_position: int = 256,
    seed: int = 0,
) -> Path:
    """Build and save (safetensors) a tiny `arch` model for `task` with a tokenizer fitted on `corpus`.

    Idempotent: when `out_dir` already holds a model built with the same settings and corpus, it is kept.
    """
    if arch not in ARCHS or task not in TASKS:
        raise ValueError(f"arch must be one of {ARCHS} and task one of {TASKS}, got {arch!r}, {task!r}")
    if task == "seq-cls" and len(labels) < 2:
        raise ValueError("seq-cls needs at least two labels")
    out = Path(out_dir)
    lines = list(corpus)
    info = {
        "version": _INFO_VERSION,
        "arch": arch,
        "task": task,
        "labels": list(labels),
        "hidden_size": hidden_size,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "intermediate_size": intermediate_size,
        "max_position": max_position,
        "seed": seed,
        "corpus_sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
    }
    if _is_built(out, info):
        return out
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _build_tokenizer(lines, arch, max_position)
    config = _model_config(arch, tokenizer, info)
    torch.manual_seed(seed)
    model = _model_class(arch, task)(config)
    with _no_progress_bars():
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
    # Written last: its presence marks a complete build.
    (out / _INFO_FILE).write_text(json.dumps(info, indent=1, sort_keys=True))
    return out


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Without transformers' tqdm bars ("Writing model shards"): noise in a scenario's output. The
    caller's setting is restored after."""
    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


def _is_built(out: Path, info: dict[str, Any]) -> bool:
    try:
        return json.loads((out / _INFO_FILE).read_text()) == info and (out / "config.json").is_file()
    except (OSError, ValueError):
        return False


def _build_tokenizer(lines: list[str], arch: str, max_length: int) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel(unk_token=SPECIALS["unk"]))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()  # splits punctuation off words as well
    trainer = trainers.WordLevelTrainer(
        min_frequency=1, special_tokens=list(SPECIALS.values()), show_progress=False
    )
    tok.train_from_iterator(lines, trainer=trainer)
    first, last = ("[CLS]", "[SEP]") if arch == "bert" else ("[BOS]", "[EOS]")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{first} $A {last}",
        pair=f"{first} $A {last} $B:1 {last}:1",
        special_tokens=[(first, tok.token_to_id(first)), (last, tok.token_to_id(last))],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        **{f"{role}_token": token for role, token in SPECIALS.items()},
        model_max_length=max_length,
    )


def _model_config(arch: str, tokenizer: PreTrainedTokenizerFast, info: dict[str, Any]) -> Any:
    labels = info["labels"]
    common: dict[str, Any] = {
        "vocab_size": len(tokenizer),
        "hidden_size": info["hidden_size"],
        "num_hidden_layers": info["num_layers"],
        "num_attention_heads": info["num_heads"],
        "intermediate_size": info["intermediate_size"],
        "max_position_embeddings": info["max_position"],
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }
    if labels:
        common["id2label"] = dict(enumerate(labels))
        common["label2id"] = {name: i for i, name in enumerate(labels)}
    if arch == "llama":
        return LlamaConfig(**common, num_key_value_heads=info["num_heads"], tie_word_embeddings=False)
    return BertConfig(**common, is_decoder=info["task"] == "causal-lm")


def _model_class(arch: str, task: str) -> type[PreTrainedModel]:
    return {
        ("llama", "causal-lm"): LlamaForCausalLM,
        ("llama", "seq-cls"): LlamaForSequenceClassification,
        ("bert", "causal-lm"): BertLMHeadModel,
        ("bert", "seq-cls"): BertForSequenceClassification,
    }[(arch, task)]
