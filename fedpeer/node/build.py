"""Assembling a node: the one place that loads the model, the trainer and the codec, wires them into
a `Node` and resumes it from its checkpoint. Tests that need fakes build a `Node` from their own parts."""

from __future__ import annotations

import logging
import zlib

from fedpeer import checkpoint
from fedpeer.codec import codec_from_config
from fedpeer.config import NodeConfig
from fedpeer.model.dual_lora import load_dual_lora, resolve_device
from fedpeer.node import state
from fedpeer.node.loop import Node
from fedpeer.train.loop import LocalTrainer
from fedpeer.transport.base import Transport

log = logging.getLogger("fedpeer.node")


def build_node(cfg: NodeConfig, transport: Transport) -> Node:
    checkpoint.ensure_writable(cfg.state_dir)  # fail now, not after a round of training
    if stale := checkpoint.remove_stale_temps(cfg.state_dir) + checkpoint.remove_stale_temps(
        state.best_dir(cfg.state_dir)
    ):
        log.info("%s: removed %d temp file(s) of an interrupted checkpoint save", cfg.node_id, stale)
    dual = load_dual_lora(
        cfg.model, cfg.adapter, resolve_device(cfg.train.device), local_seed=local_seed(cfg)
    )
    node = Node(cfg, transport, dual, LocalTrainer(dual, cfg.model, cfg.train), codec_from_config(cfg.codec))
    state.resume(node)
    return node


def local_seed(cfg: NodeConfig) -> int:
    """Each site's private adapter starts from its own seed; stable across restarts."""
    return zlib.crc32(cfg.node_id.encode()) ^ cfg.train.seed
