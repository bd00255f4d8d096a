"""Protobuf wire-format edits on serialized messages, for the forwarding fast path.

Protobuf merges concatenated messages and the last value of a singular field wins, so
appending one encoded field to a serialized request sets that field without parsing
and re-encoding the tensors. Same for wrapping a serialized message as a submessage.
"""

from __future__ import annotations

from runners.protowire import length_delimited

__all__ = ["leading_string", "length_delimited", "with_string"]


def with_string(message: bytes, field_number: int, value: str) -> bytes:
    """``message`` with the singular string field set to ``value``."""
    return message + length_delimited(field_number, value.encode())


def leading_string(message: bytes, field_number: int, limit: int = 1024) -> str | None:
    """The string field ``field_number`` when it is the message's first field (as every
    serializer writes a request's model name) and at most ``limit`` bytes; else None.
    Reads only the message's first bytes: for error paths that must not parse it all."""
    tag = (field_number << 3) | 2
    if not message or message[0] != tag or tag > 0x7F:
        return None
    length, shift, index = 0, 0, 1
    while index < len(message) and shift < 35:
        byte = message[index]
        length |= (byte & 0x7F) << shift
        index += 1
        if not byte & 0x80:
            if length > limit or index + length > len(message):
                return None
            try:
                return message[index : index + length].decode()
            except UnicodeDecodeError:
                return None
        shift += 7
    return None
