"""Shared CLI plumbing: readable errors instead of tracebacks, logging, key=value overrides, help."""

from __future__ import annotations

import functools
import logging
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

import typer
from typer.core import TyperArgument, TyperCommand

from fedpeer.errors import FedpeerError

F = TypeVar("F", bound=Callable[..., Any])

# Exit codes of a node stopped by a signal, as a shell reports them (128 + signal number).
EXIT_SIGINT, EXIT_SIGTERM = 130, 143


class Terminated(BaseException):
    """SIGTERM arrived (docker stop, the scenario runner, systemd). A BaseException like
    KeyboardInterrupt, so that it unwinds through `finally` blocks but no `except Exception`."""


def raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


def stop_on_sigterm() -> None:
    """SIGTERM ends the process like Ctrl-C (clean unwinding, the last checkpoint stays), with exit 143."""
    signal.signal(signal.SIGTERM, raise_terminated)


def friendly_errors(fn: F) -> F:
    """Turn fedpeer's own errors into one line on stderr and exit code 2 (no traceback);
    Ctrl-C exits 130 and SIGTERM (with `stop_on_sigterm`) 143."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except FedpeerError as exc:
            typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
            _to_log_file(logging.ERROR, f"error: {exc}")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            _to_log_file(logging.WARNING, "interrupted (Ctrl-C)")
            raise typer.Exit(EXIT_SIGINT) from None
        except Terminated:
            typer.echo("terminated", err=True)
            _to_log_file(logging.WARNING, "terminated (SIGTERM)")
            raise typer.Exit(EXIT_SIGTERM) from None

    return wrapper  # type: ignore[return-value]


_LOG_FORMAT = "%(asctime)s %(levelname)-7s %(message)s"
_log_file: logging.Handler | None = None  # --log-file's handler, once set up


def _to_log_file(level: int, text: str) -> None:
    """What the CLI says on stderr at the end (an error, a signal) into --log-file as well."""
    if _log_file is not None:
        record = logging.makeLogRecord({"name": "fedpeer", "msg": text, "levelno": level})
        record.levelname = logging.getLevelName(level)
        _log_file.handle(record)


def setup_logging(verbose: bool = False, log_file: Path | None = None) -> None:
    """Log to stderr, and to `log_file` as well when given (appended to, its folder created)."""
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(level=level, stream=sys.stderr, format=_LOG_FORMAT, datefmt="%H:%M:%S")
    for noisy in ("urllib3", "filelock", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if log_file is None:
        return
    try:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file, encoding="utf-8")
    except OSError as exc:
        raise FedpeerError(
            f"--log-file {log_file}: cannot write there ({exc.strerror or exc}); give a file path "
            "this user can write"
        ) from None
    handler.setFormatter(logging.Formatter(_LOG_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
    global _log_file
    _log_file = handler
    root = logging.getLogger()
    root.addHandler(handler)
    if root.getEffectiveLevel() > level:
        root.setLevel(level)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """["gossip.rounds=3", "train.lr=0"] -> {"gossip.rounds": 3, "train.lr": 0} (values parsed as TOML)."""
    import tomllib

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise FedpeerError(f"--set {item!r}: write KEY=VALUE, e.g. --set gossip.rounds=3")
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw  # a bare word is a string
    return out


# --- help --------------------------------------------------------------------------------------------
# Every Typer app of the CLI sets rich_markup_mode=None: help is printed as written, so `[[faults]]`
# and `<node>` stay literal (rich markup would eat brackets). Every option names its metavar.
class _Argument(TyperArgument):
    """An argument shown the click way: SCENARIO, [NAME] when optional, DIR... when repeatable, and
    no `<type>` after the name (its metavar says what it is)."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None

    def get_usage_pieces(self, ctx: Any) -> list[str]:
        name = self.metavar or (self.name or "").upper()
        name = name if self.required else f"[{name}]"
        return [name + ("..." if self.nargs != 1 else "")]


class Command(TyperCommand):
    """A command whose arguments print as plain metavars (see `_Argument`); use as `cls=Command`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if type(param) is TyperArgument:
                param.__class__ = _Argument
