"""End-to-end tests. Imported before conftest: the runners package chooses grpc's core
experiments (runners/grpc_core.py) before anything here imports grpc, so the servers
the tests run in this process serve as the gateway's do."""

import runners  # noqa: F401
