"""What the pipeline codec decided and why (`PipelineCodec.last_stats`; not on the wire, it would cost
bytes), and the plain fp32 LoRA exchange that ratios are reported against."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fedpeer.codec.base import FP32_BYTES, fp32_bytes
from fedpeer.codec.factorize import Decision, Group, rel_error
from fedpeer.codec.plan import Option
from fedpeer.tensors import Manifest

__all__ = ["EncodeStats", "GroupStats", "encode_stats", "lora_fp32_bytes"]


@dataclass(frozen=True)
class GroupStats:
    """What the encoder did with one tensor group, and the options it measured (plan, bytes, rel. error)."""

    first: str
    members: int
    dims: tuple[int, int, int]
    plan: str
    nbytes: int
    rel_error: float
    decision: Decision | None
    options: tuple[tuple[str, int, float], ...]


@dataclass(frozen=True)
class EncodeStats:
    groups: tuple[GroupStats, ...]
    payload_bytes: int
    fp32_bytes: int
    rel_error: float  # ||q - decode(encode(q))|| / ||q|| over the whole update
    budget_bytes: int
    budget_met: bool
    encode_s: float

    def summary(self) -> dict[str, Any]:
        """JSON-ready: totals and the plan and decision of each group."""
        return {
            "payload_bytes": self.payload_bytes,
            "fp32_bytes": self.fp32_bytes,
            "rel_error": self.rel_error,
            "budget_bytes": self.budget_bytes,
            "budget_met": self.budget_met,
            "encode_s": self.encode_s,
            "groups": [
                {
                    "first": g.first,
                    "members": g.members,
                    "dims": list(g.dims),
                    "plan": g.plan,
                    "bytes": g.nbytes,
                    "rel_error": g.rel_error,
                    "factorized": g.decision.factorize if g.decision else None,
                }
                for g in self.groups
            ],
        }


def encode_stats(
    manifest: Manifest,
    groups: Sequence[Group],
    menus: Sequence[Sequence[Option]],
    chosen: Sequence[Option],
    decisions: Sequence[Decision | None],
    energies: Sequence[float],
    payload: bytes,
    met: bool,
    budget: int,
    seconds: float,
) -> EncodeStats:
    """Per group: the chosen plan, the measured options and the decision; totals over the update."""
    per_group = tuple(
        GroupStats(
            first=manifest[g.members[0]].name,
            members=len(g.members),
            dims=g.dims,
            plan=str(c.plan),
            nbytes=c.nbytes,
            rel_error=rel_error(c.sq_error, e),
            decision=d,
            options=tuple((str(o.plan), o.nbytes, rel_error(o.sq_error, e)) for o in menu),
        )
        for g, menu, c, d, e in zip(groups, menus, chosen, decisions, energies, strict=True)
    )
    total_err, total_energy = sum(c.sq_error for c in chosen), sum(energies)
    return EncodeStats(
        per_group,
        len(payload),
        fp32_bytes(manifest),
        rel_error(total_err, total_energy),
        budget,
        met,
        seconds,
    )


def lora_fp32_bytes(manifest: Manifest, in_features: Mapping[str, int] | None = None) -> int:
    """Bytes of the plain fp32 LoRA exchange (A and B of every adapted layer) for this update.

    Every tensor of the manifest counts at 4 bytes per value. A `lora_B` [out, r] whose `lora_A`
    (same name with lora_A) is not in the manifest (FFA-LoRA: A frozen, not sent) adds its A,
    [r, in], with `in` from `in_features[name of B]`, or out when absent (square projections such as
    attention q/v; pass the real in_features for MLP projections).
    """
    names = {spec.name for spec in manifest}
    total = 0
    for spec in manifest:
        total += FP32_BYTES * spec.numel
        if (
            "lora_B" in spec.name
            and len(spec.shape) == 2
            and spec.name.replace("lora_B", "lora_A") not in names
        ):
            out, r = spec.shape
            total += FP32_BYTES * r * (in_features or {}).get(spec.name, out)
    return total
