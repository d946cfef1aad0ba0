"""A site's JSONL data: reading with errors that name file:line, a seeded eval split, and batching.

One JSON object per line: `{"text": ...}` for causal-lm, `{"text": ..., "label": ...}` for seq-cls, the
label being one of ModelConfig.labels or its integer index. Blank lines are skipped.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from fedpeer.config import ModelConfig, TrainConfig
from fedpeer.errors import DataError

# Label value of positions the causal-lm loss ignores (padding); the convention of transformers.
IGNORE_INDEX = -100


@dataclass(frozen=True)
class Example:
    text: str
    label: int | None = None  # class index for seq-cls


def read_jsonl(path: str | Path, task: str, labels: Sequence[str] = ()) -> list[Example]:
    """Read and check one JSONL file; DataError names file:line of the first bad line."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file (train.data / train.eval_data must name a JSONL file)")
    examples = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, start=1):
            if line.strip():
                examples.append(_parse_line(line, task, labels, f"{path}:{lineno}"))
    if not examples:
        raise DataError(f"{path}: the file has no examples (one JSON object per line expected)")
    return examples


def _parse_line(line: str, task: str, labels: Sequence[str], where: str) -> Example:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(row, dict):
        raise DataError(f'{where}: expected a JSON object with a "text" field')
    text = row.get("text")
    if not isinstance(text, str) or not text.strip():
        raise DataError(f'{where}: "text" must be a non-empty string')
    if task != "seq-cls":
        return Example(text)
    return Example(text, _label_index(row.get("label"), labels, where))


def _label_index(value: object, labels: Sequence[str], where: str) -> int:
    if isinstance(value, str) and value in labels:
        return labels.index(value)
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(labels):
        return value
    if value is None:
        raise DataError(f'{where}: seq-cls lines need a "label" field (one of {", ".join(labels)})')
    raise DataError(
        f"{where}: unknown label {value!r}; model.labels are {', '.join(labels)} "
        f"(or their index 0..{len(labels) - 1})"
    )


def split_examples(
    examples: Sequence[Example], eval_fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """Hold out round(eval_fraction * n) examples (at least one), chosen by `seed`."""
    if len(examples) < 2:
        raise DataError(
            f"need at least 2 examples to hold out an eval set, got {len(examples)}; "
            "add data or set train.eval_data"
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(examples) - 1, max(1, round(eval_fraction * len(examples))))
    held = set(order[:n_eval])
    train = [e for i, e in enumerate(examples) if i not in held]
    return train, [e for i, e in enumerate(examples) if i in held]


def load_site_data(model_cfg: ModelConfig, train_cfg: TrainConfig) -> tuple[list[Example], list[Example]]:
    """(train, eval) examples: eval from train.eval_data, else a seeded split of train.data."""
    examples = read_jsonl(train_cfg.data, model_cfg.task, model_cfg.labels)
    if train_cfg.eval_data:
        return examples, read_jsonl(train_cfg.eval_data, model_cfg.task, model_cfg.labels)
    return split_examples(examples, train_cfg.eval_fraction, train_cfg.seed)


def make_batch(
    examples: Sequence[Example],
    tokenizer: PreTrainedTokenizerBase,
    task: str,
    max_length: int,
    input_names: Sequence[str] = ("input_ids", "attention_mask"),
) -> dict[str, torch.Tensor]:
    """Tokenize and pad to the longest example of this batch; add `labels` for the task."""
    enc = tokenizer(
        [e.text for e in examples],
        truncation=True,
        max_length=max_length,
        padding="longest",
        return_tensors="pt",
    )
    batch = {k: v for k, v in enc.items() if k in input_names}
    if task == "seq-cls":
        batch["labels"] = torch.tensor([e.label for e in examples], dtype=torch.long)
    else:
        # Padding is found by the mask, not by id: the pad token is often the eos token.
        batch["labels"] = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, IGNORE_INDEX)
    return batch
