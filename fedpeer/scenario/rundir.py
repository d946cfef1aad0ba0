"""What a scenario run leaves under its OUT directory: the files each node's state_dir holds, an earlier
run found there (resumed, or shown when complete), and `--fresh`, which clears it.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

from fedpeer.checkpoint import FILENAME as CHECKPOINT_FILE
from fedpeer.metrics import FILENAME as METRICS_FILE
from fedpeer.scenario.spec import ScenarioSpec, node_names
from fedpeer.scenario.summary import SUMMARY_FILE

NODE_CONFIG_FILE = "node.toml"
NODE_LOG_FILE = "node.log"
# Everything a run writes into a node's state_dir (the runner: config, log; the node: the rest).
NODE_FILES = (NODE_CONFIG_FILE, NODE_LOG_FILE, METRICS_FILE, CHECKPOINT_FILE)


@dataclass(frozen=True)
class PreviousRun:
    """What an earlier run left under OUT: the round of each node's checkpoint (0: none)."""

    rounds: dict[str, int]
    total: int  # the rounds this scenario asks for

    @property
    def low(self) -> int:
        return min(self.rounds.values(), default=0)

    @property
    def high(self) -> int:
        return max(self.rounds.values(), default=0)

    @property
    def complete(self) -> bool:
        """Every node checkpointed the final round: starting the nodes again would do nothing."""
        return bool(self.rounds) and self.low >= self.total

    @property
    def partial(self) -> bool:
        return self.high > 0 and not self.complete


def previous_run(spec: ScenarioSpec, out_dir: str | Path) -> PreviousRun:
    out = Path(out_dir).resolve()
    return PreviousRun({n: checkpoint_round(out / n) for n in node_names(spec)}, spec.gossip.rounds)


def checkpoint_round(state_dir: Path) -> int:
    """The round of a node's checkpoint, read from the file's header (no tensor is loaded); 0 without one.

    An unreadable checkpoint also gives 0: the node reports it when it starts."""
    from safetensors import SafetensorError, safe_open

    path = state_dir / CHECKPOINT_FILE
    if not path.is_file():
        return 0
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("fedpeer") or "{}")
    except (SafetensorError, OSError, ValueError):
        return 0
    rnd = meta.get("round") if isinstance(meta, dict) else None
    return rnd if isinstance(rnd, int) and not isinstance(rnd, bool) else 0


def previous_run_line(out: str | Path, prev: PreviousRun) -> str | None:
    """What `scenario run` does with an earlier run under OUT (None: there is none)."""
    if prev.complete:
        rounds = f"{prev.low}/{prev.total} rounds" if prev.low == prev.total else f"{prev.low} rounds"
        return (
            f"{out} already holds a complete run ({rounds}): showing its summary; pass --fresh to start over"
        )
    if prev.partial:
        spread = "" if prev.low == prev.high else f" (node checkpoints at rounds {prev.low}–{prev.high})"
        return (
            f"{out} holds an unfinished run: resuming from round {prev.low}/{prev.total}{spread}; "
            "pass --fresh to start over"
        )
    return None


def clear_run(spec: ScenarioSpec, out_dir: str | Path) -> list[Path]:
    """`--fresh`: delete what a run of SPEC wrote under OUT: each node's NODE_FILES (and checkpoint temp
    files), node directories left empty, summary.json. Nothing else: not files the run did not write,
    nothing outside OUT (links are not followed), not the model and data (rebuilt as needed)."""
    out = Path(out_dir).resolve()
    removed: list[Path] = []
    for name in node_names(spec):
        node_dir = out / name
        files = [node_dir / f for f in NODE_FILES] + sorted(node_dir.glob(".checkpoint-*.tmp"))
        removed += [f for f in files if _remove_inside(f, out)]
        if not node_dir.is_symlink() and node_dir.resolve().parent == out:
            with contextlib.suppress(OSError):  # only when nothing else is left in it
                node_dir.rmdir()
    if _remove_inside(out / SUMMARY_FILE, out):
        removed.append(out / SUMMARY_FILE)
    return removed


def _remove_inside(path: Path, root: Path) -> bool:
    """Unlink PATH if it is a plain file (not a link) inside ROOT."""
    if path.is_symlink() or not path.is_file() or not path.resolve().is_relative_to(root):
        return False
    path.unlink()
    return True
