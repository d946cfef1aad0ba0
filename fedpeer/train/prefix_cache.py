"""Per-example outputs of the model's frozen prefix, stored as batches come and replayed afterwards.

With LoRA on the last k blocks only, most of a forward pass (embeddings and the blocks below) computes
the same thing for an example every time it is seen. The cache computes it the first time, keeps one
row per example (its real tokens only), and pads the stored rows back into each later batch; the
model then runs only the adapted blocks and the head (`fedpeer.model.prefix`). Results equal the
uncached forward to float tolerance.

A row is computed from its example alone (no padding, no neighbours in a batch), so it does not
depend on which batch first met the example: runs stay reproducible to the last digit whatever the
order. Rows live in a store shared by every trainer of the process whose frozen prefix computes the
same thing (same base weights and tokenizer, same cut, same max_length): nodes run as threads, or
several runs of a benchmark over the same texts, compute each row once. A store is bounded: past its
byte budget, new rows are computed each time they are needed, not kept.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import torch

from fedpeer.model.prefix import FrozenPrefix
from fedpeer.train.data import Example

__all__ = ["PrefixCache", "RowStore", "shared_store"]


class RowStore:
    """Prefix rows by example, at most `max_bytes` of them."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._rows: dict[Example, torch.Tensor] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, example: Example) -> torch.Tensor | None:
        return self._rows.get(example)

    def put(self, example: Example, row: torch.Tensor) -> None:
        with self._lock:
            if example not in self._rows and self.bytes + row.nbytes <= self.max_bytes:
                self._rows[example] = row
                self.bytes += row.nbytes


_STORES: dict[tuple[str, ...], RowStore] = {}
_STORES_LOCK = threading.Lock()


def shared_store(key: tuple[str, ...], max_bytes: int) -> RowStore:
    """The process's store for prefixes identified by `key` (created with `max_bytes` on first use)."""
    with _STORES_LOCK:
        return _STORES.setdefault(key, RowStore(max_bytes))


class PrefixCache:
    """Replays `prefix` from the rows of `store`; `forward` runs the model with them."""

    def __init__(self, prefix: FrozenPrefix, store: RowStore) -> None:
        self.prefix = prefix
        self.store = store

    def forward(
        self, model: torch.nn.Module, examples: Sequence[Example], batch: dict[str, torch.Tensor]
    ) -> Any:
        """model(**batch), the frozen prefix replayed from stored rows (computed for new examples)."""
        hidden = self.hidden(model, examples, batch)
        if hidden is None:
            return model(**batch)
        with self.prefix.replay(hidden):
            return model(**batch)

    def hidden(
        self, model: torch.nn.Module, examples: Sequence[Example], batch: dict[str, torch.Tensor]
    ) -> torch.Tensor | None:
        """The prefix's output for `batch`, (rows, width, hidden), zeros at padding; None when the batch
        is not right-padded (rows would not line up with stored ones)."""
        mask = batch.get("attention_mask")
        if mask is None:
            return None
        lengths = [int(n) for n in mask.sum(1)]
        width = mask.shape[1]
        expected = torch.arange(width, device=mask.device)[None, :] < mask.sum(1)[:, None]
        if not torch.equal(mask.bool(), expected):
            return None
        rows = [
            self._row(model, e, batch, i, n) for i, (e, n) in enumerate(zip(examples, lengths, strict=True))
        ]
        hidden = rows[0].new_zeros(len(rows), width, rows[0].shape[-1])
        for i, row in enumerate(rows):
            hidden[i, : row.shape[0]] = row
        return hidden

    def _row(
        self, model: torch.nn.Module, example: Example, batch: dict[str, torch.Tensor], i: int, length: int
    ) -> torch.Tensor:
        row = self.store.get(example)
        if row is None:
            inputs = {k: v[i : i + 1, :length] for k, v in batch.items() if k != "labels" and v.dim() == 2}
            row = self.prefix.compute(model, inputs)[0].clone()
            self.store.put(example, row)
        return row
