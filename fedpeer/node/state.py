"""A node's state on disk: one atomic checkpoint per round (fedpeer/checkpoint.py), and resuming
from it. Everything a round changes is in it: both adapters, x̂_self and its seq, every public copy,
the optimizer, the RNG, the round. With train.keep_best, STATE_DIR/best holds the adapters of the
best-evaluated round as a second checkpoint of the same format."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fedpeer import checkpoint
from fedpeer.errors import CheckpointError
from fedpeer.metrics import FILENAME as METRICS_FILE
from fedpeer.metrics import RoundRecord, read_records

if TYPE_CHECKING:
    from fedpeer.config import TrainConfig
    from fedpeer.node.loop import Node

log = logging.getLogger("fedpeer.node")


def save(node: Node, record: RoundRecord | None = None) -> None:
    """Checkpoint the node after its round; `record` (that round's metrics line) goes in too, so that
    a kill between the checkpoint and the metrics write loses no line (`resume` writes it)."""
    copies, copies_meta = node.copies.export()
    x_hat_self, sender_meta = node.sender.export()
    groups: dict[str, dict[str, torch.Tensor]] = {
        "adapter": node.dual.adapter_state(),
        "self": x_hat_self,
        "train": node.trainer.state_tensors(),
        "rng": {"torch": torch.get_rng_state()},
    }
    groups.update({f"copy.{j}": s for j, s in copies.items()})
    meta = {
        "node_id": node.cfg.node_id,
        "round": node.completed_round,
        **sender_meta,  # seq, sent_round, pi
        # JSON has no NaN: None until the first evaluation.
        "last_eval_loss": node.last_eval_loss if math.isfinite(node.last_eval_loss) else None,
        "fingerprint": node.dual.fingerprint(),
        # Readable, so that a refused resume can say what differs (the fingerprint is their hash).
        "fingerprint_fields": node.dual.fingerprint_fields(),
        "copies": copies_meta,
        "trainer": node.trainer.state_meta(),
        "record": record.to_json() if record is not None else None,
    }
    checkpoint.save(node.cfg.state_dir, checkpoint.flatten(groups), meta)


BEST_DIR = "best"


@dataclass(frozen=True)
class Best:
    round: int
    criterion: str
    value: float

    def beaten_by(self, value: float) -> bool:
        """Strictly better (a tie keeps the earlier round)."""
        return value < self.value if self.criterion == "eval_loss" else value > self.value


def best_dir(state_dir: str | Path) -> Path:
    return Path(state_dir) / BEST_DIR


def keep_if_best(node: Node, round_: int, evaluation: dict[str, float]) -> bool:
    """With train.keep_best: if this round's evaluation beats every earlier round's, write the
    adapters to STATE_DIR/best (before the round's checkpoint: a crash in between reruns the round,
    which then finds itself no better and keeps what it wrote). True when it did."""
    criterion = node.cfg.train.keep_best
    value = evaluation.get(criterion, math.nan)
    if criterion == "off" or not math.isfinite(value):
        return False
    if node.best is not None and not node.best.beaten_by(value):
        return False
    node.best = Best(round_, criterion, value)
    meta = {
        "node_id": node.cfg.node_id,
        "round": round_,
        "criterion": criterion,
        "value": value,
        "prior": node.trainer.prior,  # train.prior, or the one train.prior_choices chose this round
        "fingerprint": node.dual.fingerprint(),
    }
    checkpoint.save(
        best_dir(node.cfg.state_dir), checkpoint.flatten({"adapter": node.dual.adapter_state()}), meta
    )
    log.info(
        "%s: round %d is the best so far (%s %.4f): kept in %s",
        node.cfg.node_id,
        round_,
        criterion,
        value,
        best_dir(node.cfg.state_dir),
    )
    return True


def prior_of(train: TrainConfig, meta: dict[str, Any]) -> float:
    """The τ of train.prior the site predicted with at a checkpoint (latest or best): the config's,
    or with train.prior_choices the one chosen then (the config's if none was chosen yet)."""
    chosen = meta.get("prior", (meta.get("trainer") or {}).get("prior"))
    return float(chosen) if train.prior_choices and chosen is not None else train.prior


def load_best(state_dir: str | Path) -> checkpoint.Checkpoint | None:
    """STATE_DIR/best's checkpoint (train.keep_best), or None if no round was kept."""
    return checkpoint.load(best_dir(state_dir))


def _resume_best(node: Node) -> None:
    """Compare the coming rounds with the kept best, if it was kept by the same criterion."""
    criterion = node.cfg.train.keep_best
    ck = load_best(node.cfg.state_dir) if criterion != "off" else None
    if ck is None:
        return
    if ck.meta.get("criterion") != criterion or ck.meta.get("fingerprint") != node.dual.fingerprint():
        log.warning(
            "%s: %s was kept by another criterion or adapter config (%s): the next round replaces it",
            node.cfg.node_id,
            best_dir(node.cfg.state_dir),
            ck.meta.get("criterion"),
        )
        return
    node.best = Best(int(ck.meta["round"]), criterion, float(ck.meta["value"]))


def resume(node: Node) -> None:
    """Continue from STATE_DIR's checkpoint, if there is one (with a new epoch)."""
    ck = checkpoint.load(node.cfg.state_dir)
    if ck is None:
        return
    if ck.meta.get("fingerprint") != node.dual.fingerprint():
        theirs = ck.meta.get("fingerprint_fields") or {}
        ours = node.dual.fingerprint_fields()
        differ = [
            f"{k}: checkpoint {theirs.get(k, '?')!r}, this node {ours.get(k, '?')!r}"
            for k in sorted(set(ours) | set(theirs))
            if theirs.get(k) != ours.get(k)
        ]
        raise CheckpointError(
            f"{node.cfg.state_dir} holds a checkpoint of another model, adapter config or fedpeer "
            f"protocol ({'; '.join(differ) if theirs else 'written before checkpoints named the fields'}): "
            "point state_dir at a new directory, or move the old one away"
        )
    node.dual.load_adapter_state(ck.group("adapter"))
    node.sender.restore(ck.group("self"), ck.meta)
    node.trainer.load_state(ck.group("train"), ck.meta["trainer"])
    torch.set_rng_state(ck.group("rng")["torch"])
    node.copies.restore({j: ck.group(f"copy.{j}") for j in node.neighbours.peers}, ck.meta["copies"])
    node.completed_round = int(ck.meta["round"])
    node.trainer.skip_to_round(node.completed_round)  # a checkpoint from before catch-ups moved the clock
    node.last_eval_loss = float(ck.meta.get("last_eval_loss") or math.nan)
    node.copies.set_round(node.completed_round)
    _restore_record(node, ck.meta.get("record"))
    _resume_best(node)
    log.info(
        "%s: resumed from %s at round %d (seq %d)",
        node.cfg.node_id,
        node.cfg.state_dir,
        node.completed_round,
        node.sender.seq,
    )


def _restore_record(node: Node, saved: dict | None) -> None:
    """The checkpointed round's metrics line, if the process died before it reached metrics.jsonl."""
    if not saved:
        return
    record = RoundRecord.from_json(saved)
    if all(r.round != record.round for r in read_records(Path(node.cfg.state_dir) / METRICS_FILE)):
        node.metrics.write(record)
        log.info("%s: wrote round %d's metrics, lost by the last stop", node.cfg.node_id, record.round)
