"""MLServer, the peer `make bench-peers` measures the gateway against.

MLServer 1.7.1 and its scikit-learn runtime live in their own virtualenv
(bench/.venv-mlserver, made by bench/install_mlserver.sh), serving the same joblib file
the gateway serves, under the same model name, so that ghz sends both the same request
bytes. MLServer takes its ports from settings.json (no port 0, no LISTENING line): the
harness picks free ones and waits until V2 ModelReady says the model is ready.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path

import grpc

from greenroom_proto.inference import grpc_service_pb2 as pb
from greenroom_proto.inference import grpc_service_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "bench" / ".venv-mlserver"
MLSERVER = VENV / "bin" / "mlserver"
INSTALL_SCRIPT = ROOT / "bench" / "install_mlserver.sh"
VERSION = "1.7.1"
HOST = "127.0.0.1"
# Server-wide settings. debug off: on, MLServer logs every gRPC call (an access log), which
# no one serving for speed keeps. Everything else is MLServer's default, including one
# parallel inference worker process (like the gateway's one runner process) and metrics.
SETTINGS = {"debug": False}
# The gateway and its runner allow 64 MiB requests; MLServer's default is grpc's 4 MiB.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class InstallError(RuntimeError):
    """install_mlserver.sh failed (the tail of its output is the message)."""


def ensure_installed() -> Path:
    """Make bench/.venv-mlserver (idempotent) and return the ``mlserver`` command."""
    done = subprocess.run(
        ["bash", str(INSTALL_SCRIPT)], cwd=ROOT, capture_output=True, text=True, check=False
    )
    if done.returncode != 0 or not MLSERVER.exists():
        raise InstallError((done.stdout + done.stderr).strip()[-1500:] or "no output")
    return MLSERVER


def free_port() -> int:
    """A port free now on the loopback (MLServer cannot be asked to take port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def write_repository(directory: Path, model_name: str, joblib_file: Path) -> str:
    """settings.json and <model>/model-settings.json for ``mlserver start directory``;
    returns the gRPC address it will listen on."""
    grpc_port = free_port()
    settings = {
        **SETTINGS,
        "host": HOST,
        "http_port": free_port(),
        "grpc_port": grpc_port,
        "metrics_port": free_port(),
        "grpc_max_message_length": MAX_MESSAGE_BYTES,
        # By default both go to the current directory (the project root).
        "metrics_dir": str(directory / ".metrics"),
        "environments_dir": str(directory / ".envs"),
    }
    model_dir = directory / model_name
    model_dir.mkdir(parents=True)
    shutil.copy(joblib_file, model_dir / "model.joblib")
    model_settings = {
        "name": model_name,
        "implementation": "mlserver_sklearn.SKLearnModel",
        "parameters": {"uri": "./model.joblib"},
    }
    (directory / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
    (model_dir / "model-settings.json").write_text(json.dumps(model_settings, indent=2) + "\n")
    return f"{HOST}:{grpc_port}"


def argv(directory: Path) -> list[str]:
    return [str(MLSERVER), "start", str(directory)]


def model_ready(address: str, model_name: str) -> bool:
    """V2 ModelReady (MLServer has no grpc.health.v1 service)."""
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        try:
            answer = stub.ModelReady(pb.ModelReadyRequest(name=model_name), timeout=1.0)
        except grpc.RpcError:
            return False
        ready: bool = answer.ready
        return ready
