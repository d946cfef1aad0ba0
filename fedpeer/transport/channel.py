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
SERVER_WORKERS = 16


def make_channel(address: str) -> grpc.Channel:
    return grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
