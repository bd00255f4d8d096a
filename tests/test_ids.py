"""Generated request ids are canonical version-4 UUIDs, and distinct."""

from __future__ import annotations

import uuid

from gateway.ids import request_id


def test_ids_are_version_4_uuids_in_canonical_form() -> None:
    for _ in range(2000):
        text = request_id()
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text


def test_ids_do_not_repeat() -> None:
    made = [request_id() for _ in range(100_000)]
    assert len(set(made)) == len(made)
