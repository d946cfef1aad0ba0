from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FrameKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FRAME_KIND_UNSPECIFIED: _ClassVar[FrameKind]
    FRAME_KIND_UPDATE: _ClassVar[FrameKind]
    FRAME_KIND_SNAPSHOT: _ClassVar[FrameKind]
FRAME_KIND_UNSPECIFIED: FrameKind
FRAME_KIND_UPDATE: FrameKind
FRAME_KIND_SNAPSHOT: FrameKind

class Hello(_message.Message):
    __slots__ = ("node_id", "protocol_version", "fingerprint", "fingerprint_fields", "codecs", "round", "degree", "epoch", "address")
    class FingerprintFieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    FINGERPRINT_FIELDS_FIELD_NUMBER: _ClassVar[int]
    CODECS_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    DEGREE_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    protocol_version: int
    fingerprint: str
    fingerprint_fields: _containers.ScalarMap[str, str]
    codecs: _containers.RepeatedScalarFieldContainer[str]
    round: int
    degree: int
    epoch: str
    address: str
    def __init__(self, node_id: _Optional[str] = ..., protocol_version: _Optional[int] = ..., fingerprint: _Optional[str] = ..., fingerprint_fields: _Optional[_Mapping[str, str]] = ..., codecs: _Optional[_Iterable[str]] = ..., round: _Optional[int] = ..., degree: _Optional[int] = ..., epoch: _Optional[str] = ..., address: _Optional[str] = ...) -> None: ...

class HelloReply(_message.Message):
    __slots__ = ("node",)
    NODE_FIELD_NUMBER: _ClassVar[int]
    node: Hello
    def __init__(self, node: _Optional[_Union[Hello, _Mapping]] = ...) -> None: ...

class FrameHeader(_message.Message):
    __slots__ = ("sender", "epoch", "kind", "round", "seq", "codec", "codec_params", "payload_length", "payload_crc32", "raw_bytes", "mix_weight", "manifest_digest")
    class CodecParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SENDER_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    CODEC_FIELD_NUMBER: _ClassVar[int]
    CODEC_PARAMS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_LENGTH_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_CRC32_FIELD_NUMBER: _ClassVar[int]
    RAW_BYTES_FIELD_NUMBER: _ClassVar[int]
    MIX_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    sender: str
    epoch: str
    kind: FrameKind
    round: int
    seq: int
    codec: str
    codec_params: _containers.ScalarMap[str, str]
    payload_length: int
    payload_crc32: int
    raw_bytes: int
    mix_weight: float
    manifest_digest: bytes
    def __init__(self, sender: _Optional[str] = ..., epoch: _Optional[str] = ..., kind: _Optional[_Union[FrameKind, str]] = ..., round: _Optional[int] = ..., seq: _Optional[int] = ..., codec: _Optional[str] = ..., codec_params: _Optional[_Mapping[str, str]] = ..., payload_length: _Optional[int] = ..., payload_crc32: _Optional[int] = ..., raw_bytes: _Optional[int] = ..., mix_weight: _Optional[float] = ..., manifest_digest: _Optional[bytes] = ...) -> None: ...

class Chunk(_message.Message):
    __slots__ = ("header", "data")
    HEADER_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    header: FrameHeader
    data: bytes
    def __init__(self, header: _Optional[_Union[FrameHeader, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("accepted", "error", "applied_seq")
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    APPLIED_SEQ_FIELD_NUMBER: _ClassVar[int]
    accepted: bool
    error: str
    applied_seq: int
    def __init__(self, accepted: _Optional[bool] = ..., error: _Optional[str] = ..., applied_seq: _Optional[int] = ...) -> None: ...

class SnapshotRequest(_message.Message):
    __slots__ = ("requester", "max_round")
    REQUESTER_FIELD_NUMBER: _ClassVar[int]
    MAX_ROUND_FIELD_NUMBER: _ClassVar[int]
    requester: str
    max_round: int
    def __init__(self, requester: _Optional[str] = ..., max_round: _Optional[int] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class NeighbourStatus(_message.Message):
    __slots__ = ("node_id", "address", "connected", "last_round_heard", "applied_seq")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    LAST_ROUND_HEARD_FIELD_NUMBER: _ClassVar[int]
    APPLIED_SEQ_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    address: str
    connected: bool
    last_round_heard: int
    applied_seq: int
    def __init__(self, node_id: _Optional[str] = ..., address: _Optional[str] = ..., connected: _Optional[bool] = ..., last_round_heard: _Optional[int] = ..., applied_seq: _Optional[int] = ...) -> None: ...

class StatusReply(_message.Message):
    __slots__ = ("node", "phase", "rounds_total", "neighbours", "last_train_loss", "consensus_distance", "privacy_epsilon", "privacy_delta")
    NODE_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    ROUNDS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    NEIGHBOURS_FIELD_NUMBER: _ClassVar[int]
    LAST_TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    CONSENSUS_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_EPSILON_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_DELTA_FIELD_NUMBER: _ClassVar[int]
    node: Hello
    phase: str
    rounds_total: int
    neighbours: _containers.RepeatedCompositeFieldContainer[NeighbourStatus]
    last_train_loss: float
    consensus_distance: float
    privacy_epsilon: float
    privacy_delta: float
    def __init__(self, node: _Optional[_Union[Hello, _Mapping]] = ..., phase: _Optional[str] = ..., rounds_total: _Optional[int] = ..., neighbours: _Optional[_Iterable[_Union[NeighbourStatus, _Mapping]]] = ..., last_train_loss: _Optional[float] = ..., consensus_distance: _Optional[float] = ..., privacy_epsilon: _Optional[float] = ..., privacy_delta: _Optional[float] = ...) -> None: ...
