"""Model runners: separate processes that answer the Open Inference Protocol."""

from runners import grpc_core

grpc_core.choose()  # before any module of the package imports grpc (see grpc_core)
