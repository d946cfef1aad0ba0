"""The frozen prefix of a model whose adapters sit on its last blocks: computed once, then replayed.

With LoRA only on the last k transformer blocks (`adapter.last_k_blocks`), the embeddings and the
blocks below them are frozen and, with dropout off, deterministic: their output for an example never
changes. `FrozenPrefix` finds that prefix, computes its output for a batch (the model's forward,
stopped after the last frozen block), and replays stored outputs: while `replay(hidden)` is active
the frozen blocks are replaced by stand-ins that return `hidden`, so the model's own forward runs
only the embeddings (cheap) and the adapted blocks and head. The results are those of the full
forward to float tolerance (the stored rows were computed in other batches, with other padding).

Replaying needs right-padded batches (rows keep their real tokens at the same positions whatever the
batch's width) and a block forward that returns the hidden states (transformers >= 5) or a tuple
that starts with them (older versions).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch

__all__ = ["FrozenPrefix", "find_blocks"]


class _Stop(Exception):
    """Raised by the hook on the last frozen block: the rest of the forward is not needed."""


class _Replay(torch.nn.Module):
    """Stands in for a frozen block: returns the stored output of the last frozen block."""

    def __init__(self, block: torch.nn.Module, hidden: torch.Tensor, as_tuple: bool) -> None:
        super().__init__()
        # Not registered as a submodule: the stand-in holds no parameters of its own.
        self.__dict__["_block"] = block
        self.__dict__["_hidden"] = hidden
        self.__dict__["_as_tuple"] = as_tuple

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return (self._hidden,) if self._as_tuple else self._hidden

    def __getattr__(self, name: str) -> Any:
        # Some models read attributes of their blocks in the loop (e.g. attention_type): the block's.
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_block"], name)


def find_blocks(model: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The ModuleList of transformer blocks (one entry per layer of the config), or None."""
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if config is not None else None
    n = getattr(text_config, "num_hidden_layers", None)
    if not n:
        return None
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n]
    return lists[0] if lists else None


class FrozenPrefix:
    """Blocks [0, n_frozen) of `blocks` and everything before them: frozen, cacheable.

    Build it with `FrozenPrefix.find(model, allowed)`, which says whether the model has such a prefix.
    """

    def __init__(self, blocks: torch.nn.ModuleList, n_frozen: int) -> None:
        self.blocks = blocks
        self.n_frozen = n_frozen
        self._as_tuple = False

    @classmethod
    def find(cls, model: torch.nn.Module, extra_trainable: tuple[str, ...] = ()) -> FrozenPrefix | None:
        """The frozen prefix of `model`, or None when there is none worth caching.

        Every trainable parameter must sit in a block, or under one of the `extra_trainable` module
        names (the seq-cls head, which comes after the blocks); the prefix ends at the first block
        with a trainable parameter. None when a trainable parameter sits elsewhere (e.g. the
        embeddings), the first block is already trainable, or a dropout in the prefix is active.
        """
        base = getattr(model, "get_base_model", lambda: model)()
        blocks = find_blocks(base)
        if blocks is None:
            return None
        block_of = {id(p): i for i, block in enumerate(blocks) for p in block.parameters()}
        extra = {id(p) for name in extra_trainable for p in base.get_submodule(name).parameters()}
        first = len(blocks)
        for p in model.parameters():
            if not p.requires_grad:
                continue
            if id(p) in block_of:
                first = min(first, block_of[id(p)])
            elif id(p) not in extra:
                return None
        if first == 0:
            return None
        prefix_dropout = any(
            isinstance(m, torch.nn.Dropout) and m.p > 0 for b in blocks[:first] for m in b.modules()
        )
        return None if prefix_dropout else cls(blocks, first)

    @torch.no_grad()
    def compute(self, model: torch.nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Output of the last frozen block for `batch` (model inputs), shape (rows, width, hidden)."""
        captured: list[torch.Tensor] = []

        def hook(_module: torch.nn.Module, _args: Any, output: Any) -> None:
            self._as_tuple = isinstance(output, tuple)
            captured.append(output[0] if self._as_tuple else output)
            raise _Stop

        handle = self.blocks[self.n_frozen - 1].register_forward_hook(hook)
        try:
            model(**batch)
        except _Stop:
            pass
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError("the model's forward did not run its transformer blocks")
        return captured[0].detach()

    @contextlib.contextmanager
    def replay(self, hidden: torch.Tensor) -> Iterator[None]:
        """Within the block, the frozen blocks return `hidden` instead of computing."""
        originals = [self.blocks[i] for i in range(self.n_frozen)]
        try:
            for i, block in enumerate(originals):
                self.blocks[i] = _Replay(block, hidden, self._as_tuple)
            yield
        finally:
            for i, block in enumerate(originals):
                self.blocks[i] = block
