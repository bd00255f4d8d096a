"""Generated request ids are canonical version-7 UUIDs: distinct, and ordered by time."""

from __future__ import annotations

import time
import uuid

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


def test_ids_made_later_sort_later() -> None:
    first = request_id()
    time.sleep(0.002)
    second = request_id()
    assert first < second  # the text sorts as the time does: fixed-width lower-case hex


def test_ids_do_not_repeat() -> None:
    made = [request_id() for _ in range(100_000)]
    assert len(set(made)) == len(made)
