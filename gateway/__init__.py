"""The Greenroom gateway."""

from runners import grpc_core

grpc_core.choose()  # before any module of the package imports grpc (see runners.grpc_core)
