"""Atomic node checkpoints in safetensors: adapters, public copies, optimizer, round, RNG.

One file, `STATE_DIR/checkpoint.safetensors`, replaced atomically after every round (write a temp
file in the same directory, fsync it, rename over the old one, fsync the directory): a crash at any
point leaves either the previous round's checkpoint or this one, never a torn file.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from fedpeer.errors import CheckpointError

FILENAME = "checkpoint.safetensors"
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    tensors: dict[str, torch.Tensor]  # flat namespace: "<group>/<name>"
    meta: dict[str, Any]  # JSON-able

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        p = prefix + "/"
        return {k[len(p) :]: v for k, v in self.tensors.items() if k.startswith(p)}


def flatten(groups: Mapping[str, Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {f"{g}/{k}": v.detach().contiguous().cpu() for g, ts in groups.items() for k, v in ts.items()}


def ensure_writable(state_dir: str | Path) -> Path:
    """Create `state_dir` if needed and check that this process can write there, before any work
    is done that a checkpoint would have to keep."""
    path = Path(state_dir).expanduser().absolute()
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=path)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise CheckpointError(
            f"state_dir {path} is not writable ({exc.strerror or exc}): point state_dir at a "
            "directory this user can write, or fix its permissions"
        ) from None
    return path


def remove_stale_temps(state_dir: str | Path) -> int:
    """Delete temp files left by a save that was killed before its rename (each as big as a
    checkpoint); returns how many. Only while no node runs on `state_dir`: call it at start."""
    stale = list(Path(state_dir).glob(".checkpoint-*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def save(state_dir: str | Path, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> Path:
    state_dir = Path(state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    final = state_dir / FILENAME
    fd, tmp = tempfile.mkstemp(prefix=".checkpoint-", suffix=".tmp", dir=state_dir)
    os.close(fd)
    try:
        # safetensors refuses tensors sharing storage; clones make the dict self-contained.
        save_file(
            {k: v.clone() for k, v in tensors.items()},
            tmp,
            metadata={"fedpeer": json.dumps({"format": FORMAT_VERSION, **meta})},
        )
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
        dir_fd = os.open(state_dir, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return final


def load(state_dir: str | Path) -> Checkpoint | None:
    """The last completed round's checkpoint, or None if the directory has none."""
    path = Path(state_dir) / FILENAME
    if not path.exists():
        return None
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            raw_meta = (f.metadata() or {}).get("fedpeer")
        tensors = load_file(str(path))
        meta = json.loads(raw_meta) if raw_meta else None
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is unreadable ({exc}); move it away to start this node afresh"
        ) from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path} is not a fedpeer checkpoint of format {FORMAT_VERSION}")
    return Checkpoint(tensors=tensors, meta=meta)
