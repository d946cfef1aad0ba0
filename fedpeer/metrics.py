"""Per-round metrics: one JSON object per line in STATE_DIR/metrics.jsonl, flushed every round.

`RoundRecord` is one line: the node writes it, the scenario runner, `fedpeer report`, the scenario
summary, the benchmarks and scripts read it (`read_records`). `EVAL_METRICS` is the one list of the
evaluation metrics a round may carry, in display order, with their direction.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FILENAME = "metrics.jsonl"


# ================================================================ evaluation metrics
@dataclass(frozen=True)
class EvalMetric:
    name: str  # key in a metrics.jsonl line
    label: str  # column header of the scenario summary
    higher_is_better: bool
    every_task: bool = False  # measured whatever the task (eval_loss); else only by the task it fits
    # `metric=auto` of `fedpeer report` takes the measured metric of lowest rank; None: never picked.
    auto_rank: int | None = None


# Display order (summary table, summary.json rows): the loss, then what each task adds.
EVAL_METRICS: tuple[EvalMetric, ...] = (
    EvalMetric("eval_loss", "eval loss", higher_is_better=False, every_task=True, auto_rank=4),
    EvalMetric("perplexity", "perplexity", higher_is_better=False),  # causal-lm
    EvalMetric("rouge_l", "rouge-L", higher_is_better=True, auto_rank=2),  # causal-lm with prompts
    EvalMetric("accuracy", "accuracy", higher_is_better=True, auto_rank=3),  # seq-cls
    EvalMetric("macro_f1", "macro F1", higher_is_better=True, auto_rank=1),  # seq-cls
)
EVAL_METRIC_NAMES: tuple[str, ...] = tuple(m.name for m in EVAL_METRICS)
# The task metric before the loss: macro_f1, rouge_l, accuracy, eval_loss.
AUTO_METRICS: tuple[str, ...] = tuple(
    name for _, name in sorted((m.auto_rank, m.name) for m in EVAL_METRICS if m.auto_rank is not None)
)


# ================================================================ one round of one node
@dataclass(frozen=True)
class RoundRecord:
    """One line of metrics.jsonl. Field names are the JSON keys; `evaluation` (eval_loss, perplexity or
    accuracy and macro_f1, rouge_l: see EVAL_METRICS) is spread into the object after train_loss.

    None: not in the line (a run of an older fedpeer, a hand-written record) or not measured this
    round (e.g. consensus_distance when no neighbour was mixed). A node may hold NaN in memory for
    "not measured"; `to_json` writes it as null.
    """

    round: int
    time: float | None = None  # wall clock (time.time()) when the round ended
    node: str | None = None
    train_loss: float | None = None
    evaluation: dict[str, float | None] = field(default_factory=dict)
    # bytes: protobuf frames on the wire; raw: the update as fp32; payload: the codec's output
    bytes_sent: int | None = None
    bytes_received: int | None = None
    raw_bytes: int | None = None
    payload_bytes: int | None = None
    codec: str | None = None
    # seconds spent in each step of the round
    train_s: float | None = None
    encode_s: float | None = None
    transfer_s: float | None = None
    decode_s: float | None = None
    mix_s: float | None = None
    eval_s: float | None = None
    checkpoint_s: float | None = None
    round_s: float | None = None
    consensus_distance: float | None = None
    mix_weight: float | None = None
    global_norm: float | None = None
    neighbours_heard: list[str] | None = None
    neighbours_reached: list[str] | None = None
    resynced: list[str] | None = None
    frames_rejected: int | None = None
    # gossip.robust / gossip.norm_bound (keys only present when on): the clipping radius used (null:
    # none bounded the mix), the neighbours whose contribution was clipped, and those left out for
    # exceeding the bound
    clip_radius: float | None = None
    clipped: list[str] | None = None
    offenders: list[str] | None = None
    # gossip.dp (keys only present when on): privacy loss spent so far (all updates this site sent),
    # its delta, and this round's global update norm before clipping to gossip.dp_clip_norm
    dp_epsilon: float | None = None
    dp_delta: float | None = None
    dp_update_norm: float | None = None

    def to_json(self) -> dict[str, Any]:
        """The JSON object of this round, keys in the order the node has always written them."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "evaluation":
                out.update(value)
            elif value is not None or f.name not in _ONLY_WHEN_SET:
                out[f.name] = value
        return {k: _clean(v) for k, v in out.items()}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RoundRecord:
        """A record from one JSON object, old runs included: a missing key is None, an unknown key with
        a number (or null) is an evaluation metric, other unknown keys are dropped. ValueError when
        the object has no integer round."""
        rnd = data.get("round")
        if not isinstance(rnd, int) or isinstance(rnd, bool):
            raise ValueError(f"a metrics record needs an integer round, got {rnd!r}")
        known = {k: v for k, v in data.items() if k in _RECORD_KEYS}
        evaluation = {k: v for k, v in data.items() if k not in _RECORD_KEYS and _is_number_or_null(v)}
        return cls(**known, evaluation=evaluation)

    def value(self, key: str) -> Any:
        """The value of one JSON key (a field or an evaluation metric); None if not recorded."""
        if key in _RECORD_KEYS:
            return getattr(self, key)
        return self.evaluation.get(key)


_RECORD_KEYS = frozenset(f.name for f in dataclasses.fields(RoundRecord)) - {"evaluation"}
# Keys of optional features (robust mixing, DP): in the line only when the feature is on, so a node
# without them writes the same line as before they existed.
_ONLY_WHEN_SET = frozenset(
    {"clip_radius", "clipped", "offenders", "dp_epsilon", "dp_delta", "dp_update_norm"}
)


def _is_number_or_null(v: Any) -> bool:
    return v is None or (isinstance(v, int | float) and not isinstance(v, bool))


def _clean(v: Any) -> Any:
    # JSON has no NaN; null says "not measured this round".
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


# ================================================================ the file
class MetricsWriter:
    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / FILENAME
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: RoundRecord) -> None:
        line = json.dumps(record.to_json(), sort_keys=False)
        with open(self.path, "a") as f:
            f.write(line + "\n")
            f.flush()
            os.fsync(f.fileno())


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Records of a metrics file; a torn last line (crash mid-write) is skipped."""
    out: list[dict[str, Any]] = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def read_records(path: str | Path) -> list[RoundRecord]:
    """`read_metrics` as RoundRecords, in file order; a line that is no record (torn, no round) is skipped."""
    out: list[RoundRecord] = []
    for data in read_metrics(path):
        if isinstance(data, dict):
            try:
                out.append(RoundRecord.from_json(data))
            except ValueError:
                continue
    return out


def by_round(records: list[RoundRecord]) -> list[RoundRecord]:
    """Records ordered by round; a node restarted from a checkpoint logs some rounds twice: the later wins."""
    latest = {r.round: r for r in records}
    return [latest[k] for k in sorted(latest)]
