"""Old home of the gRPC client, now :mod:`atp_proto.adapters.grpc`.

compat: removed at merge — tests/router/test_e2e_adapter_faults.py (not in the adapters
branch) still imports ``GrpcAdapter`` from here.
"""

from .grpc import GRPC_TO_ATP, GrpcAdapter, GrpcStatus, grpc_error  # compat: removed at merge

__all__ = ["GRPC_TO_ATP", "GrpcAdapter", "GrpcStatus", "grpc_error"]
