"""Every gRPC channel and server option in one place, each with its reason."""

from __future__ import annotations

import grpc

from fedpeer.wire.frames import CHUNK_BYTES

# A chunk is at most 1 MiB plus a small header; 4 MiB leaves room without inviting huge messages.
MAX_MESSAGE_BYTES = 4 * CHUNK_BYTES

CHANNEL_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    # A restarted neighbour should be found within a round, not after minutes of exponential backoff.
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
    # Rounds can be minutes apart; keepalive pings keep NATs and idle links from dropping the channel.
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    # Retries are decided by the round protocol (a missed update is resynced), not by gRPC.
    ("grpc.enable_retries", 0),
]

SERVER_OPTIONS: list[tuple[str, int | str]] = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    # Several neighbours stream at once; refuse rather than queue without bound.
    ("grpc.max_concurrent_streams", 64),
    # A restarted node must be able to bind the port of its previous process at once.
    ("grpc.so_reuseport", 0),
]

# Threads serving RPCs: a handful per neighbour is plenty (one stream per neighbour per round).
SERVER_WORKERS = 32
# Update and snapshot streams may hold at most this many workers together, so that health checks,
# handshakes and Status always find a free one; more are refused (RESOURCE_EXHAUSTED) at once.
STREAM_SLOTS = SERVER_WORKERS - 8
# With TLS, at most this many streams at once per authenticated neighbour (one a round is normal;
# a snapshot and a late update may overlap it).
STREAMS_PER_PEER = 4
# RPCs beyond this many in flight are refused by gRPC itself rather than queued without bound.
MAX_CONCURRENT_RPCS = 4 * SERVER_WORKERS
# A stream must send its first chunk within this many seconds and each next one within as many: a
# sender builds its frame before it opens the stream, so a legitimate one never pauses this long,
# and a stalled or silent stream is cut instead of holding a worker.
STALL_S = 10.0


def make_channel(
    address: str, credentials: grpc.ChannelCredentials | None = None, name: str = ""
) -> grpc.Channel:
    """A channel to `address`: plaintext without credentials; with them, mutual TLS in which the
    server must prove `name` (a node's `<id>.fedpeer`), or the address's host when `name` is empty."""
    if credentials is None:
        return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
    options = [*CHANNEL_OPTIONS, *([("grpc.ssl_target_name_override", name)] if name else [])]
    return grpc.secure_channel(address, credentials, options=options)
