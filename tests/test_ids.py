"""Generated request ids are canonical version-7 UUIDs: distinct, and ordered by time."""

from __future__ import annotations

import time
import uuid

import pytest

from gateway.ids import request_id


def test_ids_are_version_7_uuids_in_canonical_form() -> None:
    for _ in range(2000):
        text = request_id()
        parsed = uuid.UUID(text)
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text


def test_ids_carry_the_time_they_were_made() -> None:
    before = time.time_ns() // 1_000_000
    made = uuid.UUID(request_id())
    after = time.time_ns() // 1_000_000
    assert before <= made.int >> 80 <= after


def test_ids_made_later_sort_later(monkeypatch: pytest.MonkeyPatch) -> None:
    made = []
    for millis in (999, 1_000, 1_001, 2**40):
        monkeypatch.setattr(time, "time_ns", lambda m=millis: m * 1_000_000)
        made.append(request_id())
    assert made == sorted(made)  # the text sorts as the time does: fixed-width lower-case hex
    assert [uuid.UUID(text).int >> 80 for text in made] == [999, 1_000, 1_001, 2**40]


def test_ids_do_not_repeat() -> None:
    made = [request_id() for _ in range(100_000)]
    assert len(set(made)) == len(made)
