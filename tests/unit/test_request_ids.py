"""Request ids: UUIDv7 (time-ordered), written as the uuid module writes them, their age readable."""

from __future__ import annotations

import uuid

from driftloop.service.serving import new_request_id, request_id_age


def test_a_request_id_is_a_canonical_uuid7_that_carries_its_time() -> None:
    now = 1_796_000_000.123
    ids = [new_request_id(now) for _ in range(1000)]
    for rid in ids:
        parsed = uuid.UUID(rid)
        assert str(parsed) == rid and parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert parsed.int >> 80 == int(now * 1000)
    assert len(set(ids)) == 1000  # 74 random bits each
    assert abs(request_id_age(ids[0], now + 2.5) - 2.5) < 0.002
    assert request_id_age("not-a-uuid", now) is None
