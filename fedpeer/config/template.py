"""The `fedpeer init` template, rendered from the config dataclasses' fields and `help` metadata.

`render_template` walks `NodeConfig` and writes the commented TOML that `fedpeer init` gives a
site: one `# help` block above each `name = value`, a section per table, a commented example for
an empty array of tables. Defaults, explanations and the file format therefore cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import textwrap
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fedpeer.config.dump import toml_value
from fedpeer.config.node import NodeConfig

WIDTH = 100  # columns of a help comment line

HEADER = """\
# fedpeer node config. Run with:  fedpeer node run --config {path}
# Every site of a mesh must use the same [model], [adapter] and protocol version: the handshake
# refuses neighbours whose model fingerprint differs.
"""


def help_of(f: dataclasses.Field[Any]) -> str:
    """The setting's explanation ("" when it has none)."""
    return str(f.metadata.get("help", ""))


def config_classes(root: type = NodeConfig) -> list[type]:
    """`root` and every config dataclass reachable from its fields, each once, parents first."""
    found = [root]
    for f in dataclasses.fields(root):
        sub = _table_type(typing.get_type_hints(root)[f.name])
        if sub is not None and sub not in found:
            found.extend(c for c in config_classes(sub) if c not in found)
    return found


def render_template(cfg: NodeConfig, path: str | Path = "node.toml") -> str:
    """`cfg` as a commented node config file, every setting preceded by its help."""
    hints = typing.get_type_hints(NodeConfig)
    tables = {f.name: _table_type(hints[f.name]) for f in dataclasses.fields(NodeConfig)}
    lines = [*HEADER.format(path=path).splitlines(), ""]
    for f in dataclasses.fields(cfg):  # TOML: top-level keys before the first table
        if tables[f.name] is None:
            lines.extend(_setting(f, getattr(cfg, f.name)))
    for f in dataclasses.fields(cfg):
        cls = tables[f.name]
        if cls is not None:
            lines.extend(["", *_table(f, cls, getattr(cfg, f.name))])
    return "\n".join(lines) + "\n"


def _table(f: dataclasses.Field[Any], cls: type, value: Any) -> Iterator[str]:
    """A `[section]`, the `[[tables]]` of a tuple, or a commented example when the tuple is empty."""
    yield from _comment(help_of(f))
    if dataclasses.is_dataclass(value):
        yield f"[{f.name}]"
        for sub in dataclasses.fields(value):
            yield from _setting(sub, getattr(value, sub.name))
    elif not value:
        yield f"# [[{f.name}]]"
        for sub in dataclasses.fields(cls):
            yield from _setting(sub, _example(sub), commented=True)
    else:
        for i, item in enumerate(value):
            yield from ([""] if i else [])
            yield f"[[{f.name}]]"
            for sub in dataclasses.fields(item):  # help on the first table only
                yield from _setting(sub, getattr(item, sub.name), with_help=i == 0)


def _setting(
    f: dataclasses.Field[Any], value: Any, commented: bool = False, with_help: bool = True
) -> Iterator[str]:
    yield from _comment(help_of(f)) if with_help else ()
    yield ("# " if commented else "") + f"{f.name} = {toml_value(value)}"


def _comment(text: str) -> list[str]:
    """`text` as `# ` lines of at most WIDTH columns; a newline in it starts a new line."""
    return [
        f"# {line}"
        for paragraph in text.splitlines()
        for line in textwrap.wrap(paragraph, WIDTH - 2, break_long_words=False, break_on_hyphens=False)
    ]


def _example(f: dataclasses.Field[Any]) -> Any:
    """A value to show for `f` in a commented example: its default, else its `example` metadata."""
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.metadata.get("example", "")


def _table_type(tp: Any) -> type | None:
    """The dataclass a field of type `tp` is written as a table of (itself, or a tuple's items)."""
    item = typing.get_args(tp)[0] if typing.get_origin(tp) is tuple else tp
    return item if isinstance(item, type) and dataclasses.is_dataclass(item) else None
