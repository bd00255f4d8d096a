"""The Greenroom gateway."""

# The runners package chooses grpc's core experiments as it is imported, before any module
# of this package imports grpc (see runners.grpc_core).
import runners  # noqa: F401
