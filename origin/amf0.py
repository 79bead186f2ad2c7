"""AMF0 (Action Message Format 0) encoder/decoder, as used by RTMP commands and data.

Values map to Python as: number -> float, boolean -> bool, string/long string -> str,
object -> dict, ECMA array -> EcmaArray (a dict that remembers its wire type so that
``encode(decode(x)) == x``), strict array -> list, null -> None, undefined -> UNDEFINED,
date -> AmfDate, typed object -> TypedObject.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any, Final

NUMBER: Final = 0x00
BOOLEAN: Final = 0x01
STRING: Final = 0x02
OBJECT: Final = 0x03
NULL: Final = 0x05
UNDEFINED_MARKER: Final = 0x06
REFERENCE: Final = 0x07
ECMA_ARRAY: Final = 0x08
OBJECT_END: Final = 0x09
STRICT_ARRAY: Final = 0x0A
DATE: Final = 0x0B
LONG_STRING: Final = 0x0C
UNSUPPORTED: Final = 0x0D
XML_DOCUMENT: Final = 0x0F
TYPED_OBJECT: Final = 0x10
AVMPLUS: Final = 0x11

# Nesting and element counts are attacker-controlled: bound them so that a few bytes of
# garbage cannot make us recurse deeply or preallocate huge lists.
MAX_DEPTH: Final = 32
MAX_ELEMENTS: Final = 65_536


@dataclass(frozen=True, slots=True)
class AmfLimits:
    """Bounds on one decode: the input size, the values decoded (every value counts, nested
    or not: a megabyte of NULL markers is a million values), the nesting depth and the
    length of each string. Checked as decoding goes, so the work done is bounded by them,
    not by what the peer sent."""

    max_bytes: int = 1024 * 1024
    max_values: int = MAX_ELEMENTS
    max_depth: int = MAX_DEPTH
    max_string: int = 1024 * 1024


DEFAULT_LIMITS: Final = AmfLimits()


class AmfError(ValueError):
    """Malformed or unsupported AMF0 data."""


class _Undefined:
    _instance: _Undefined | None = None

    def __new__(cls) -> _Undefined:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNDEFINED"


UNDEFINED: Final = _Undefined()


class EcmaArray(dict[str, Any]):
    """An AMF0 ECMA array (associative array, e.g. onMetaData), kept apart from objects."""


@dataclass(frozen=True, slots=True)
class AmfDate:
    milliseconds: float
    timezone: int = 0


@dataclass(slots=True)
class TypedObject:
    class_name: str
    properties: dict[str, Any] = field(default_factory=dict)


class _Reader:
    __slots__ = ("data", "limits", "pos", "values")

    def __init__(self, data: bytes, limits: AmfLimits) -> None:
        if len(data) > limits.max_bytes:
            raise AmfError(f"AMF0 data of {len(data)} bytes exceeds the {limits.max_bytes} limit")
        self.data = data
        self.pos = 0
        self.values = 0
        self.limits = limits

    def value(self) -> None:
        self.values += 1
        if self.values > self.limits.max_values:
            raise AmfError(f"more than {self.limits.max_values} AMF0 values")

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise AmfError(f"truncated AMF0 data: need {n} bytes at offset {self.pos}")
        chunk = self.data[self.pos : end]
        self.pos = end
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return int.from_bytes(self.take(2), "big")

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def utf8(self, n: int) -> str:
        if n > self.limits.max_string:
            raise AmfError(f"AMF0 string of {n} bytes exceeds the {self.limits.max_string} limit")
        raw = self.take(n)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise AmfError(f"invalid UTF-8 in AMF0 string at offset {self.pos - n}") from exc


def decode(data: bytes, limits: AmfLimits = DEFAULT_LIMITS) -> list[Any]:
    """Decode a sequence of AMF0 values (a whole command or data message body)."""
    reader = _Reader(data, limits)
    values = []
    while reader.pos < len(data):
        values.append(_decode_value(reader, 0))
    return values


def decode_head(data: bytes, count: int, limits: AmfLimits = DEFAULT_LIMITS) -> list[Any]:
    """The first ``count`` values only (fewer if the data ends): a command's name and
    transaction id, to decide whether the rest is worth decoding."""
    reader = _Reader(data, limits)
    values: list[Any] = []
    while reader.pos < len(data) and len(values) < count:
        values.append(_decode_value(reader, 0))
    return values


def decode_value(data: bytes, limits: AmfLimits = DEFAULT_LIMITS) -> Any:
    return _decode_value(_Reader(data, limits), 0)


def _decode_properties(reader: _Reader, depth: int, into: dict[str, Any]) -> None:
    for _ in range(reader.limits.max_values):
        reader.value()  # a key costs as much as a value: count it as one
        key = reader.utf8(reader.u16())
        if key == "" and reader.data[reader.pos : reader.pos + 1] == bytes([OBJECT_END]):
            reader.pos += 1
            return
        into[key] = _decode_value(reader, depth + 1)
    raise AmfError(f"AMF0 object has more than {reader.limits.max_values} properties")


def _decode_value(reader: _Reader, depth: int) -> Any:
    if depth > reader.limits.max_depth:
        raise AmfError(f"AMF0 nesting deeper than {reader.limits.max_depth}")
    reader.value()
    marker = reader.u8()
    if marker == NUMBER:
        return struct.unpack(">d", reader.take(8))[0]
    if marker == BOOLEAN:
        return reader.u8() != 0
    if marker == STRING:
        return reader.utf8(reader.u16())
    if marker in (LONG_STRING, XML_DOCUMENT):
        return reader.utf8(reader.u32())
    if marker == NULL:
        return None
    if marker in (UNDEFINED_MARKER, UNSUPPORTED):
        return UNDEFINED
    if marker == OBJECT:
        obj: dict[str, Any] = {}
        _decode_properties(reader, depth, obj)
        return obj
    if marker == ECMA_ARRAY:
        reader.u32()  # the count is only a hint and encoders get it wrong; the end marker rules
        arr = EcmaArray()
        _decode_properties(reader, depth, arr)
        return arr
    if marker == STRICT_ARRAY:
        count = reader.u32()
        if count > reader.limits.max_values:
            raise AmfError(f"strict array of {count}: more than {reader.limits.max_values} values")
        if count > len(reader.data) - reader.pos:
            raise AmfError(f"AMF0 strict array count {count} exceeds the data")
        return [_decode_value(reader, depth + 1) for _ in range(count)]
    if marker == DATE:
        ms = struct.unpack(">d", reader.take(8))[0]
        tz = struct.unpack(">h", reader.take(2))[0]
        return AmfDate(ms, tz)
    if marker == TYPED_OBJECT:
        typed = TypedObject(reader.utf8(reader.u16()))
        _decode_properties(reader, depth, typed.properties)
        return typed
    if marker == REFERENCE:
        raise AmfError("AMF0 references are not supported")
    if marker == AVMPLUS:
        raise AmfError("AMF3 values inside AMF0 are not supported")
    raise AmfError(f"unknown AMF0 type marker 0x{marker:02x}")


def encode(*values: Any) -> bytes:
    out = bytearray()
    for value in values:
        _encode_value(out, value)
    return bytes(out)


def _encode_key(out: bytearray, key: str) -> None:
    raw = key.encode("utf-8")
    out += len(raw).to_bytes(2, "big")
    out += raw


def _encode_properties(out: bytearray, props: dict[str, Any]) -> None:
    for key, item in props.items():
        _encode_key(out, key)
        _encode_value(out, item)
    out += b"\x00\x00" + bytes([OBJECT_END])


def _encode_value(out: bytearray, value: Any) -> None:
    if value is None:
        out.append(NULL)
    elif value is UNDEFINED:
        out.append(UNDEFINED_MARKER)
    elif isinstance(value, bool):
        out += bytes([BOOLEAN, 1 if value else 0])
    elif isinstance(value, int | float):
        out.append(NUMBER)
        out += struct.pack(">d", float(value))
    elif isinstance(value, str):
        raw = value.encode("utf-8")
        if len(raw) > 0xFFFF:
            out.append(LONG_STRING)
            out += len(raw).to_bytes(4, "big")
        else:
            out.append(STRING)
            out += len(raw).to_bytes(2, "big")
        out += raw
    elif isinstance(value, EcmaArray):
        out.append(ECMA_ARRAY)
        out += len(value).to_bytes(4, "big")
        _encode_properties(out, value)
    elif isinstance(value, dict):
        out.append(OBJECT)
        _encode_properties(out, value)
    elif isinstance(value, list | tuple):
        out.append(STRICT_ARRAY)
        out += len(value).to_bytes(4, "big")
        for item in value:
            _encode_value(out, item)
    elif isinstance(value, AmfDate):
        out.append(DATE)
        out += struct.pack(">dh", value.milliseconds, value.timezone)
    elif isinstance(value, TypedObject):
        out.append(TYPED_OBJECT)
        _encode_key(out, value.class_name)
        _encode_properties(out, value.properties)
    else:
        raise AmfError(f"cannot encode {type(value).__name__} as AMF0")
