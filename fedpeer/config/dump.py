"""Writing config data as TOML (`tomllib` only reads it)."""

from __future__ import annotations

from typing import Any


def dump_toml(data: dict[str, Any]) -> str:
    """Minimal TOML writer for our config shapes (scalars, lists, tables, arrays of tables)."""
    lines: list[str] = []
    scalars = {k: v for k, v in data.items() if not isinstance(v, dict) and not _is_table_list(v)}
    for k, v in scalars.items():
        lines.append(f"{k} = {toml_value(v)}")
    for k, v in data.items():
        if _is_table_list(v):
            for item in v:
                lines.append(f"\n[[{k}]]")
                lines.extend(f"{ik} = {toml_value(iv)}" for ik, iv in item.items())
    for k, v in data.items():
        if isinstance(v, dict):
            lines.append(f"\n[{k}]")
            lines.extend(f"{ik} = {toml_value(iv)}" for ik, iv in v.items())
    return "\n".join(lines) + "\n"


def _is_table_list(v: Any) -> bool:
    return isinstance(v, list) and len(v) > 0 and all(isinstance(x, dict) for x in v)


def toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")
