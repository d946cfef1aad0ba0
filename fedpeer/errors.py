"""Error types. Each one says what was wrong and, where a person can act, what to do."""

from __future__ import annotations


class FedpeerError(Exception):
    """Base class: a user-facing error whose message is one readable line."""


class ConfigError(FedpeerError):
    """A config or scenario file is wrong; the message names the file, the field and the reason."""


class ModelError(FedpeerError):
    """The base model or adapter setup cannot be built as configured."""


class DataError(FedpeerError):
    """A site's JSONL data is missing or malformed."""


class CodecError(FedpeerError):
    """A frame failed to encode or was rejected while decoding (untrusted input)."""


class FrameRejected(FedpeerError):
    """A peer's frame was dropped: bad codec payload, replay, wrong round, unknown sender, ..."""


class HandshakeError(FedpeerError):
    """A peer refused us, or we refused a peer (protocol version or model fingerprint mismatch)."""


class PeerUnavailable(FedpeerError):
    """A neighbour could not be reached within its deadline."""


class PeerBusy(PeerUnavailable):
    """A neighbour is up but has no stream slot free for us right now: try again shortly."""


class CheckpointError(FedpeerError):
    """A checkpoint is missing, corrupt or does not fit the configured model."""


class TrainedAlone(FedpeerError):
    """A node finished its rounds without ever hearing from a neighbour (and solo runs were not asked for)."""
