"""Docker HEALTHCHECK of a node: exit 0 when its gRPC health service says SERVING, else 1.

Standalone (grpcio + grpcio-health-checking only) so that a probe every few seconds does not
import torch. Address: argv[1], else $FEDPEER_HEALTH_ADDR, else localhost:50051.
"""

import os
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main() -> int:
    address = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("FEDPEER_HEALTH_ADDR", "localhost:50051")
    try:
        with grpc.insecure_channel(address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="fedpeer.v1.Mesh"), timeout=3
            )
    except grpc.RpcError as exc:
        print(f"unhealthy: {address}: {exc.code().name}", file=sys.stderr)
        return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{address}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


if __name__ == "__main__":
    sys.exit(main())
