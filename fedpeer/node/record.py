"""What a round leaves behind: its timings (`Timer`), its typed record (`RoundRecord`, one line of
metrics.jsonl) and its one log line."""

from __future__ import annotations

import dataclasses
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field

from fedpeer.gossip.dp import PrivacyReport
from fedpeer.gossip.robust import ClipReport
from fedpeer.metrics import AUTO_METRICS, RoundRecord
from fedpeer.node.neighbours import SendReport
from fedpeer.node.service import RoundIO
from fedpeer.wire.frames import Frame


@dataclass
class Timer:
    """Seconds spent per step of a round (train, encode, transfer, mix, eval, checkpoint)."""

    spans: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    start: float = field(default_factory=time.perf_counter)

    def span(self, name: str) -> _Span:
        return _Span(self, name)


class _Span:
    def __init__(self, timer: Timer, name: str) -> None:
        self.timer, self.name = timer, name

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timer.spans[self.name] += time.perf_counter() - self.t0


@dataclass(frozen=True)
class RoundOutcome:
    """What the round loop knows at the end of round t, before it becomes a record."""

    node: str
    round: int
    train_loss: float
    evaluation: dict[str, float]
    frame: Frame
    sent: SendReport
    heard: list[str]
    resynced: list[str]
    consensus_distance: float
    mix_weight: float
    global_norm: float  # of the mixed global state
    clip: ClipReport | None = None  # gossip.robust / norm_bound on
    privacy: PrivacyReport | None = None  # gossip.dp on


def round_record(r: RoundOutcome, timer: Timer, io: RoundIO) -> RoundRecord:
    s = timer.spans
    return RoundRecord(
        round=r.round,
        time=time.time(),
        node=r.node,
        train_loss=r.train_loss,
        evaluation=dict(r.evaluation),
        bytes_sent=r.sent.bytes,
        bytes_received=io.bytes_received,
        raw_bytes=r.sent.raw,
        payload_bytes=len(r.frame.payload),
        codec=r.frame.codec,
        train_s=s["train"],
        encode_s=s["encode"],
        transfer_s=s["transfer"],
        decode_s=io.decode_s,
        mix_s=s["mix"],
        eval_s=s["eval"],
        checkpoint_s=s["checkpoint"],
        round_s=time.perf_counter() - timer.start,
        consensus_distance=r.consensus_distance,
        mix_weight=r.mix_weight,
        global_norm=r.global_norm,
        neighbours_heard=r.heard,
        neighbours_reached=r.sent.reached,
        resynced=r.resynced,
        frames_rejected=io.frames_rejected,
        clip_radius=r.clip.radius if r.clip else None,
        clipped=list(r.clip.clipped) if r.clip else None,
        offenders=list(r.clip.offenders) if r.clip else None,
        dp_epsilon=r.privacy.epsilon if r.privacy else None,
        dp_delta=r.privacy.delta if r.privacy else None,
        dp_update_norm=r.privacy.update_norm if r.privacy else None,
    )


def finish(record: RoundRecord, timer: Timer) -> RoundRecord:
    """The record with what is known only after the checkpoint: its time and the round's end."""
    return dataclasses.replace(
        record,
        time=time.time(),
        checkpoint_s=timer.spans["checkpoint"],
        round_s=time.perf_counter() - timer.start,
    )


def round_line(total: int, degree: int, r: RoundRecord) -> str:
    """`node0 round 3/8: loss 4.21 eval_loss 4.19 | heard 2/2 reached 2/2 | sent 8.4 kB | ...`"""
    ev = next((f"{k} {v:.4f}" for k in AUTO_METRICS if (v := r.evaluation.get(k)) is not None), "")
    if (tau := r.evaluation.get("prior")) is not None:  # train.prior_choices: the τ this round chose
        ev += f" prior {tau:g}"
    distance = r.consensus_distance
    consensus = f"{distance:.3g}" if distance is not None and math.isfinite(distance) else "-"
    heard, reached = len(r.neighbours_heard or ()), len(r.neighbours_reached or ())
    extra = ""  # robust mixing and DP, when on
    if r.clipped:
        extra += f"clipped {','.join(r.clipped)} | "
    if r.offenders:
        extra += f"left out {','.join(r.offenders)} | "
    if r.dp_epsilon is not None:
        extra += f"eps {r.dp_epsilon:.3g} (delta {r.dp_delta:g}) | "
    return (
        f"{r.node} round {r.round}/{total}: loss {r.train_loss:.4f} {ev} | heard {heard}/{degree} "
        f"reached {reached}/{degree} | sent {(r.bytes_sent or 0) / 1e3:.1f} kB | consensus {consensus} "
        f"| {extra}{r.round_s or 0.0:.1f} s"
    )
