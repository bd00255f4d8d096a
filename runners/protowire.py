"""Protobuf's wire format, the piece the answer paths write by hand: a length-delimited
field (a string, bytes or a submessage). Kept free of imports, for ``gateway.wire`` too."""

from __future__ import annotations

_ONE_BYTE = [bytes((value,)) for value in range(0x80)]


def _varint(value: int) -> bytes:
    if value < 0x80:  # tags and short lengths: the usual case, on every answer
        return _ONE_BYTE[value]
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def length_delimited(field_number: int, payload: bytes) -> bytes:
    """One encoded protobuf field of wire type 2 (string, bytes or submessage)."""
    return _varint((field_number << 3) | 2) + _varint(len(payload)) + payload
