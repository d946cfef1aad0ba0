"""fedpeer: serverless federated fine-tuning with dual LoRA adapters over a gRPC gossip mesh."""

__version__ = "0.1.0"
# Bumped on any incompatible change of proto/ or of the meaning of a frame.
PROTOCOL_VERSION = 2
