"""The Open Inference Protocol over gRPC (`inference.GRPCInferenceService`), beside the REST routes.

grpc_service_pb2*.py and model_config_pb2.py are generated from Triton's own .proto files
(protos/, from triton-inference-server/common) by `make grpc-stubs`; they are identical to
tritonclient's, so both load in one process. The generated modules import each other by their
bare names, which are registered here before they load.
"""
import sys

from . import model_config_pb2

sys.modules.setdefault("model_config_pb2", model_config_pb2)
from . import grpc_service_pb2  # noqa: E402  (after the name it imports is registered)

sys.modules.setdefault("grpc_service_pb2", grpc_service_pb2)
from . import grpc_service_pb2_grpc  # noqa: E402

__all__ = ["grpc_service_pb2", "grpc_service_pb2_grpc", "model_config_pb2"]
