"""The CLI's own input checks: bad values and settings get `error: CODE: message`, never a
traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import _parse_inputs, main
from tests.conftest import GatewayProcess


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('input=[[1, 2, 3, "x"]]', "not FP32 values (could not convert string to float"),
        ("input=[[1, 2, 3, 4], [1, 2]]", "not FP32 values (setting an array element"),
        ('input={"a": 1}', "expected a (nested) list, got an object"),
        ("input=[[1, 2", "not JSON"),
        ("input", "expected NAME=JSON"),
    ],
)
def test_bad_input_values_are_refused_by_name(
    text: str, words: str, gateway: GatewayProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["infer", "iris", "--input", text, "--target", gateway.target]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and "Traceback" not in err
    assert _parse_inputs(["input=[[1, 2]]"], {"input": "FP32"})["input"].dtype == "float32"


def test_settings_out_of_range_are_an_error_not_a_trace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Above what the runners accept, a message limit would fail requests later with
    UNAVAILABLE; it is refused at start instead."""
    argv = ["serve", "--repo", str(tmp_path), "--port", "0", "--data-dir", str(tmp_path / "d")]
    assert main([*argv, "--max-message-bytes", str(300 * 1024 * 1024)]) == 1
    err = capsys.readouterr().err
    assert "error: INVALID_ARGUMENT: invalid settings: max_message_bytes:" in err
    assert "less than or equal to 251658240" in err
