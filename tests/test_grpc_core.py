"""The gateway and the runners choose grpc's core experiments before grpc is imported, and
leave a choice already in the environment alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from runners import grpc_core

# Records GRPC_EXPERIMENTS at the moment grpc is first imported (grpc's core reads it then),
# imports one entry module, and prints what grpc saw.
PROBE = """
import importlib, importlib.abc, json, os, sys

seen = []

class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "grpc" and not seen:
            seen.append(os.environ.get("GRPC_EXPERIMENTS"))
        return None

sys.meta_path.insert(0, Watch())
importlib.import_module(sys.argv[1])
print(json.dumps({"imported_grpc": "grpc" in sys.modules, "seen": seen}))
"""


def _grpc_saw(module: str, **env: str) -> str | None:
    environ = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}
    environ.update(env)
    done = subprocess.run(
        [sys.executable, "-c", PROBE, module],
        env=environ, capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["imported_grpc"], f"{module} did not import grpc: the probe proves nothing"
    seen: list[str | None] = result["seen"]
    return seen[0]


@pytest.mark.parametrize("module", ["gateway.cli", "runners.__main__", "gateway.worker"])
def test_entry_modules_choose_the_experiments_before_grpc_is_imported(module: str) -> None:
    assert _grpc_saw(module) == grpc_core.EXPERIMENTS


def test_a_choice_in_the_environment_is_left_alone() -> None:
    assert _grpc_saw("gateway.cli", GRPC_EXPERIMENTS="") == ""
    assert _grpc_saw("gateway.cli", GRPC_EXPERIMENTS="tcp_rcv_lowat") == "tcp_rcv_lowat"


def test_this_grpc_knows_the_experiments() -> None:
    """A grpc that no longer knows a name only logs it and serves with its defaults: the
    choice would do nothing, silently, after an upgrade."""
    code = (
        "import gateway, grpc\n"
        "from concurrent import futures\n"
        "server = grpc.server(futures.ThreadPoolExecutor(1))\n"
        "server.add_insecure_port('127.0.0.1:0')\n"
        "server.start(); server.stop(0)\n"
    )
    environ = {k: v for k, v in os.environ.items() if k != "GRPC_EXPERIMENTS"}

    def stderr(env: dict[str, str]) -> str:
        done = subprocess.run(
            [sys.executable, "-c", code],
            env=env, capture_output=True, text=True, timeout=120, check=True,
        )  # fmt: skip
        return done.stderr

    assert "Unknown experiment" not in stderr(environ)
    assert "Unknown experiment" in stderr({**environ, "GRPC_EXPERIMENTS": "no_such_thing"})


def test_choosing_after_grpc_is_imported_says_so() -> None:
    assert "grpc" in sys.modules  # imported by this test process
    with pytest.warns(RuntimeWarning, match="keeps grpc's default experiments"):
        grpc_core.choose({})


def test_choose_sets_only_what_is_unset() -> None:
    empty: dict[str, str] = {}
    with pytest.warns(RuntimeWarning):  # grpc is imported in this process
        assert grpc_core.choose(empty) == grpc_core.EXPERIMENTS
    assert empty == {"GRPC_EXPERIMENTS": grpc_core.EXPERIMENTS}
    mine = {"GRPC_EXPERIMENTS": "-event_engine_client"}
    assert grpc_core.choose(mine) == "-event_engine_client"
    assert mine == {"GRPC_EXPERIMENTS": "-event_engine_client"}
