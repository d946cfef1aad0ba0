"""Where a node's run begins and ends: joining the mesh (and, after a restart, replaying the rounds
it missed or catching up), and what it says at the end."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from fedpeer.errors import TrainedAlone
from fedpeer.node import state

if TYPE_CHECKING:
    from fedpeer.node.loop import Node

log = logging.getLogger("fedpeer.node")


def join(node: Node) -> int:
    """Meet the neighbours; returns the round to continue after. A node up to max_rounds_ahead
    behind (a restarted mesh, a quick restart) replays the rounds it missed: its neighbours kept
    their public copies of those rounds and send them as snapshots, so mixing stays exact. One
    further behind catches up: it jumps to the mesh's round and takes the mesh's adapter."""
    node.phase = "joining"
    done, mesh_round = node.completed_round, node.neighbours.join()
    total = node.cfg.gossip.rounds
    if mesh_round > done + node.copies.max_ahead or mesh_round >= total > done:
        log.info(
            "%s: the mesh is at round %d, we completed %d: catching up",
            node.cfg.node_id,
            mesh_round,
            done,
        )
        catch_up(node, min(mesh_round, total))
        if node.completed_round >= total:
            log.info("%s: the mesh finished its %d rounds while this node was away", node.cfg.node_id, total)
    elif mesh_round > done:
        log.info(
            "%s: the mesh is at round %d, we completed %d: replaying rounds %d-%d with our neighbours'"
            " copies of them",
            node.cfg.node_id,
            mesh_round,
            done,
            done + 1,
            mesh_round,
        )
    node.copies.set_round(node.completed_round)
    return node.completed_round


def catch_up(node: Node, to_round: int) -> None:
    """We missed more rounds than the protocol can replay: jump to `to_round`, and rejoin the
    consensus by taking the mesh's global adapter, the mean of our neighbours' public copies as of
    that round (snapshots, which also resync our copies of them). Our local adapter is kept. With
    train.keep_best the model as taken is a candidate too: a site that joins late with little data
    may do no better than the mesh's model by training on its own."""
    node.copies.set_round(to_round)
    fetched = [j for j, p in node.neighbours.peers.items() if p.info is not None and node.resync(j, to_round)]
    if fetched:
        x_hats = list(node.copies.x_hats(fetched).values())
        mean = {k: torch.stack([x[k] for x in x_hats]).mean(dim=0) for k in x_hats[0]}
        node.dual.set_global_state(mean)
        log.info(
            "%s: took the mesh's global adapter at round %d (mean of %s)",
            node.cfg.node_id,
            to_round,
            ", ".join(fetched),
        )
    node.completed_round = to_round
    node.trainer.skip_to_round(to_round)
    if fetched and node.cfg.train.keep_best != "off":
        state.keep_if_best(node, to_round, node.trainer.evaluate())
    state.save(node)


def finished_line(node: Node) -> str:
    total, ran = node.cfg.gossip.rounds, node.rounds_run
    if ran == total:
        return f"{node.cfg.node_id} finished: ran all {total} rounds"
    return (
        f"{node.cfg.node_id} finished at round {node.completed_round}/{total}: ran {ran} rounds "
        f"in this run ({node.completed_round - ran} done before a restart or skipped catching up)"
    )


def check_not_alone(node: Node) -> None:
    """A node that ran rounds but never heard from a neighbour trained alone: a mesh that did not
    form must not pass for a working one (unless gossip.allow_solo asks for it)."""
    peers = node.neighbours.peers
    if node.rounds_run == 0 or node.heard_any or not peers:
        return
    why = "; ".join(f"{p.id}: {p.problem or 'never sent an update'}" for p in peers.values())
    msg = f"{node.cfg.node_id} trained alone: it never heard from any neighbour ({why})"
    if node.cfg.gossip.allow_solo:
        log.warning("%s (allowed by gossip.allow_solo)", msg)
        return
    raise TrainedAlone(
        f"{msg}. Check the neighbours' addresses, that they run, and that they use the same model "
        "config; pass --allow-solo (gossip.allow_solo = true) to train without a mesh on purpose"
    )
