"""Reading a node config file (`load_node_config`) and changing settings of a loaded one
(`with_overrides`), both checked like the file's values."""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from pathlib import Path
from typing import Any

from fedpeer.config.convert import convert_value, from_dict
from fedpeer.config.node import NodeConfig
from fedpeer.config.paths import resolve_paths
from fedpeer.errors import ConfigError


def read_toml(path: Path, what: str, hint: str) -> dict[str, Any]:
    """A TOML file's table; ConfigError naming the file when it is missing (with `hint`) or invalid."""
    if not path.is_file():
        raise ConfigError(f"{path}: no such {what} ({hint})")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def load_node_config(path: str | Path) -> NodeConfig:
    """Read and validate a node config file; relative paths in it are relative to the file."""
    path = Path(path)
    data = read_toml(path, "config file", f"write one with `fedpeer init {path}`")
    try:
        cfg = from_dict(NodeConfig, data)
        cfg = resolve_paths(cfg, path.parent)
        cfg.validate()
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return cfg


def with_overrides(cfg: NodeConfig, changes: dict[str, Any]) -> NodeConfig:
    """`cfg` with dotted settings replaced ({"gossip.rounds": 3}), checked like the file's values:
    type first, then the whole config's validation (so --rounds 0 fails as `rounds = 0` would)."""
    for key, value in changes.items():
        section, _, name = key.rpartition(".")
        parent: Any = getattr(cfg, section, None) if section else cfg
        fields = {f.name for f in dataclasses.fields(parent)} if dataclasses.is_dataclass(parent) else set()
        if name not in fields:
            raise ConfigError(f"{key} is not a known setting")
        value = convert_value(typing.get_type_hints(type(parent))[name], value, key)
        parent = dataclasses.replace(parent, **{name: value})
        cfg = dataclasses.replace(cfg, **{section: parent}) if section else parent
    cfg.validate()
    return cfg
