"""Many nodes' states as rows of one tensor: node i's adapter is row i, its tensors are views into it.

The simulation runner keeps every node's global adapter, public copy and local adapter this way, so
that mixing is one sparse product over all rows and a node costs its parameters and nothing more.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedpeer.tensors import State


class Layout:
    """Where each named tensor of a state lies in a flat row (keys in the state's order)."""

    def __init__(self, example: Mapping[str, torch.Tensor]) -> None:
        self.keys = tuple(example)
        self.shapes = {k: tuple(example[k].shape) for k in self.keys}
        self.offsets: dict[str, tuple[int, int]] = {}
        pos = 0
        for k in self.keys:
            n = example[k].numel()
            self.offsets[k] = (pos, pos + n)
            pos += n
        self.size = pos

    def zeros(self, rows: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.zeros(rows, self.size, dtype=dtype)

    def views(self, row: torch.Tensor) -> State:
        """The state in `row` (a 1-D tensor) as named views: writing to them writes the row."""
        return {k: row[a:b].view(self.shapes[k]) for k, (a, b) in self.offsets.items()}

    def pack(self, state: Mapping[str, torch.Tensor], row: torch.Tensor) -> None:
        """Copy `state` into `row`."""
        if set(state) != set(self.keys):
            raise ValueError(
                f"state keys differ from the layout's: {sorted(set(state) ^ set(self.keys))[:3]}"
            )
        for k, (a, b) in self.offsets.items():
            row[a:b].copy_(state[k].reshape(-1))
