"""Paths in a node config: relative ones resolved against the config file, and the model path
checked at once (a local directory, or a Hugging Face hub id `org/name`)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from fedpeer.config.node import NodeConfig
from fedpeer.errors import ConfigError


def hub_id_shaped(path: str) -> bool:
    """Whether `path` reads as a Hugging Face hub id `org/name`: exactly one '/', nothing path-like."""
    return re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", path) is not None


def missing_model_dir(path: str, base: Path) -> Path | None:
    """Where model path `path` (relative to `base`) was looked for, when it is neither an existing
    path nor a hub id `org/name`; None otherwise. `org/name` whose `org` is a local directory is a
    local path too (models/base with models/ present), unless the Hugging Face cache holds it; so
    does a bare legacy id (gpt2), which passes only when cached."""
    local = base / Path(path).expanduser()
    if local.exists():
        return None
    if hub_id_shaped(path) and not (base / path.split("/")[0]).is_dir():
        return None
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", path) and in_hub_cache(path):
        return None
    return local.resolve()


def in_hub_cache(model_id: str) -> bool:
    """Whether the local Hugging Face cache holds model `model_id` (its config.json)."""
    try:
        from huggingface_hub import try_to_load_from_cache  # no torch behind it
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(model_id, "config.json"), str)


def resolve_paths(cfg: NodeConfig, base: Path) -> NodeConfig:
    """Make file paths absolute relative to `base` (model.path only when it is an existing dir).

    A model.path that exists nowhere and is no hub id `org/name` is refused at once (rather than
    tried on the hub, which retries for a minute before saying it cannot connect)."""

    def fix(p: str) -> str:
        return str((base / p).resolve()) if p and not Path(p).is_absolute() else p

    model_path = cfg.model.path
    missing = missing_model_dir(model_path, base) if model_path else None
    if missing is not None:
        raise ConfigError(
            f"model.path {model_path!r}: no such directory: {missing} (relative paths are relative to "
            "the config file; a Hugging Face model id is org/name)"
        )
    if model_path and (base / model_path).exists():
        model_path = fix(model_path)
    return dataclasses.replace(
        cfg,
        state_dir=fix(cfg.state_dir),
        model=dataclasses.replace(cfg.model, path=model_path),
        train=dataclasses.replace(cfg.train, data=fix(cfg.train.data), eval_data=fix(cfg.train.eval_data)),
        tls=dataclasses.replace(cfg.tls, ca=fix(cfg.tls.ca), cert=fix(cfg.tls.cert), key=fix(cfg.tls.key)),
    )
