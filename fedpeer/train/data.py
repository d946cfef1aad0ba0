"""A site's JSONL data: reading with errors that name file:line, a seeded eval split, and batching.

One JSON object per line: `{"text": ...}` for causal-lm, `{"text": ..., "label": ...}` for seq-cls, the
label being one of ModelConfig.labels or its integer index. Blank lines are skipped.

Causal-lm lines may instead hold `{"prompt": ..., "completion": ...}` (and optionally `"text"`, which
must then equal prompt + completion; nothing is inserted between them). The loss of such a line covers
only the completion's tokens, and evaluation can generate from the prompt and score the continuation.
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
    prompt: str = ""  # causal-lm: text starts with this prompt; the loss covers only the rest

    @property
    def completion(self) -> str:
        return self.text[len(self.prompt) :]


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
    if task != "seq-cls" and ("prompt" in row or "completion" in row):
        return _prompt_completion(row, where)
    text = row.get("text")
    if not isinstance(text, str) or not text.strip():
        raise DataError(f'{where}: "text" must be a non-empty string')
    if task != "seq-cls":
        return Example(text)
    return Example(text, _label_index(row.get("label"), labels, where))


def _prompt_completion(row: dict, where: str) -> Example:
    prompt, completion = row.get("prompt"), row.get("completion")
    if not isinstance(prompt, str) or not isinstance(completion, str) or not completion.strip():
        raise DataError(f'{where}: "prompt" must be a string and "completion" a non-empty string')
    text = prompt + completion
    if "text" in row and row["text"] != text:
        raise DataError(f'{where}: "text" differs from "prompt" + "completion" (drop "text" or fix it)')
    return Example(text, prompt=prompt)


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


@dataclass(frozen=True)
class Tokenized:
    """One example's token ids (truncated to max_length) and its training target."""

    ids: tuple[int, ...]
    targets: tuple[int, ...] | None = None  # per-token labels of a completion batch (prompt: IGNORE_INDEX)
    label: int | None = None  # seq-cls class


class TokenCache:
    """Each example tokenized once, then only padded into batches (a training run sees an example many
    times). Keyed by the example and by the batch's mode: a causal-lm batch with a prompt/completion
    example windows every row by its completion (see `make_batch`)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, task: str, max_length: int) -> None:
        self.tokenizer, self.task, self.max_length = tokenizer, task, max_length
        self._rows: dict[tuple[Example, bool], Tokenized] = {}

    def rows(self, examples: Sequence[Example]) -> tuple[list[Tokenized], bool]:
        completion = self.task != "seq-cls" and any(e.prompt for e in examples)
        out = []
        for e in examples:
            row = self._rows.get((e, completion))
            if row is None:
                row = self._rows[(e, completion)] = self._tokenize(e, completion)
            out.append(row)
        return out, completion

    def _tokenize(self, example: Example, completion: bool) -> Tokenized:
        if not completion:
            enc = self.tokenizer(example.text, truncation=True, max_length=self.max_length)
            return Tokenized(tuple(enc["input_ids"]), label=example.label)
        ids, start = split_prompt(self.tokenizer, example)
        eos = self.tokenizer.eos_token_id
        if eos is not None and ids[-1:] != [eos]:
            # The completion ends with eos, learned like its words, also where the tokenizer adds none
            # (GPT-2 style BPE, SmolLM2): a model fine-tuned without it never learns where to stop.
            ids = [*ids, eos]
        # Keep the whole completion when it fits, else its beginning; drop what precedes the window.
        lo = max(0, min(len(ids) - self.max_length, start))
        ids = ids[lo : lo + self.max_length]
        n_prompt = max(0, start - lo)
        return Tokenized(tuple(ids), tuple([IGNORE_INDEX] * n_prompt + ids[n_prompt:]))


def make_batch(
    examples: Sequence[Example],
    tokenizer: PreTrainedTokenizerBase,
    task: str,
    max_length: int,
    input_names: Sequence[str] = ("input_ids", "attention_mask"),
    cache: TokenCache | None = None,
) -> dict[str, torch.Tensor]:
    """Tokenize (or take from `cache`) and pad to the longest example of this batch; add `labels`.

    Causal-lm batches with prompt/completion examples take the loss on completion tokens only, and an
    example longer than `max_length` loses the start of its prompt rather than its completion; they
    are padded on the right. Other batches are padded on the tokenizer's padding side.
    """
    cache = cache or TokenCache(tokenizer, task, max_length)
    rows, completion = cache.rows(examples)
    left = not completion and tokenizer.padding_side == "left"
    ids = [r.ids for r in rows]
    batch = {
        "input_ids": pad_rows(ids, pad_id(tokenizer), left=left),
        "attention_mask": pad_rows([[1] * len(r) for r in ids], 0, left=left),
    }
    # One segment per example; as the tokenizer gives them (a completion batch: as the model takes them).
    if "token_type_ids" in input_names and (completion or "token_type_ids" in tokenizer.model_input_names):
        batch["token_type_ids"] = torch.zeros_like(batch["input_ids"])
    batch = {k: v for k, v in batch.items() if k in input_names}
    if task == "seq-cls":
        batch["labels"] = torch.tensor([r.label for r in rows], dtype=torch.long)
    elif completion:
        batch["labels"] = pad_rows([r.targets or r.ids for r in rows], IGNORE_INDEX)
    else:
        # Padding is found by the mask, not by id: the pad token is often the eos token.
        mask = pad_rows([[1] * len(r) for r in ids], 0, left=left)
        batch["labels"] = pad_rows(ids, 0, left=left).masked_fill(mask == 0, IGNORE_INDEX)
    return batch


def split_prompt(tokenizer: PreTrainedTokenizerBase, example: Example) -> tuple[list[int], int]:
    """Token ids of `example.text` (special tokens included) and the index of its first completion token.

    The index is 0 for an example without a prompt. The ids before it are the generation context.
    """
    if not example.prompt:
        return list(tokenizer(example.text)["input_ids"]), 0
    if not tokenizer.is_fast:
        # No offsets: count the prompt's own tokens without its trailing special tokens (eos), which
        # assumes tokenizing the prompt alone gives a prefix of the whole text's tokens.
        ids = list(tokenizer(example.text)["input_ids"])
        alone = tokenizer(example.prompt, return_special_tokens_mask=True)
        n = len(alone["input_ids"])
        while n and alone["special_tokens_mask"][n - 1]:
            n -= 1
        return ids, n
    enc = tokenizer(example.text, return_offsets_mapping=True, return_special_tokens_mask=True)
    ids, cut = list(enc["input_ids"]), len(example.prompt)
    # A token that straddles the boundary counts as completion: its prediction needs the completion.
    marks = zip(enc["offset_mapping"], enc["special_tokens_mask"], strict=True)
    start = next((i for i, ((_, end), special) in enumerate(marks) if not special and end > cut), len(ids))
    return ids, start


def pad_rows(rows: Sequence[Sequence[int]], value: int, *, left: bool = False) -> torch.Tensor:
    """A (len(rows), longest) tensor of `rows` padded with `value` on the right (or the left)."""
    width = max(len(r) for r in rows)
    fill = [[value] * (width - len(r)) for r in rows]
    padded = [f + list(r) if left else list(r) + f for r, f in zip(rows, fill, strict=True)]
    return torch.tensor(padded, dtype=torch.long)


def pad_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The tokenizer's pad id (load_dual_lora makes sure there is one)."""
    if tokenizer.pad_token_id is None:
        raise DataError("the tokenizer has no pad token to pad batches with")
    return int(tokenizer.pad_token_id)
