"""Base model + dual LoRA adapters (global: gossiped, local: private), tiny test models, PEFT export."""

from fedpeer.model.base import resolve_device
from fedpeer.model.dual_lora import DualLora, load_dual_lora
from fedpeer.model.export import export_peft
from fedpeer.model.tiny import build_tiny_model

__all__ = ["DualLora", "build_tiny_model", "export_peft", "load_dual_lora", "resolve_device"]
