"""A fedpeer node: `build_node(cfg, transport).run()`. See loop.py for the round, and
docs/architecture.md for the rooms."""

from fedpeer.errors import FedpeerError
from fedpeer.node.build import build_node
from fedpeer.node.loop import Node

__all__ = ["FedpeerError", "Node", "build_node"]
