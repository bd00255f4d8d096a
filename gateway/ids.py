"""Request ids for requests that came without one: time-ordered UUIDs (version 7, RFC
9562), made cheaply.

Time-ordered, because the ledger indexes every answer by (model, request id) to join the
feedback that arrives later: random ids (version 4) land all over that B-tree, so as the
ledger grows each insert touches pages no cache holds. With the time first, new ids
land at the index's right edge. Measured with the writer's own insert (SQLite, batches of
125 answers): into a ledger of 1,000,000 answers 22.2 µs of CPU per answer with random
ids, 5.9 with these (6.7 against 11.0 at 10,000 answers).

Cheap, because ``uuid.uuid4`` reads ``os.urandom``, a system call that costs about 15 µs
on the virtual machines this runs on: an id only has to be unique, not unpredictable, so
the 74 random bits come from ``random``'s Mersenne Twister (seeded from the OS once, and
reseeded in a forked child by ``random`` itself). Ids made in the same millisecond, by
one gateway or by its ``--workers``, differ in those bits.
"""

from __future__ import annotations

import random
import time

_VERSION_7 = 0x7 << 76
_VARIANT_RFC4122 = 0x2 << 62


def request_id() -> str:
    """A version-7 UUID in its canonical text form: 48 bits of Unix time in milliseconds,
    then 74 random bits around the version and variant."""
    millis = time.time_ns() // 1_000_000
    bits = (millis & 0xFFFF_FFFF_FFFF) << 80 | random.getrandbits(76)
    bits = bits & ~(0xF << 76) & ~(0x3 << 62) | _VERSION_7 | _VARIANT_RFC4122
    text = f"{bits:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"
