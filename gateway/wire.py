"""Protobuf wire-format edits on serialized messages, for the forwarding fast path.

Protobuf merges concatenated messages and the last value of a singular field wins, so
appending one encoded field to a serialized request sets that field without parsing
and re-encoding the tensors. Same for wrapping a serialized message as a submessage.
"""

from __future__ import annotations


def _varint(value: int) -> bytes:
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
    """One encoded field of wire type 2 (string, bytes or submessage)."""
    return _varint((field_number << 3) | 2) + _varint(len(payload)) + payload


def with_string(message: bytes, field_number: int, value: str) -> bytes:
    """``message`` with the singular string field set to ``value``."""
    return message + length_delimited(field_number, value.encode())
