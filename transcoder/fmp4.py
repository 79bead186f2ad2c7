"""CMAF fragmented MP4 writer (ISO/IEC 14496-12 + 23000-19): one track per file, an init
segment (ftyp + moov) and media segments (styp + moof + mdat). Bytes out, no I/O."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

_MATRIX: Final = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)
# sample_depends_on=2 (depends on nothing): a sync sample.
SYNC_SAMPLE_FLAGS: Final = 0x02000000
# sample_depends_on=1, sample_is_non_sync_sample=1.
NON_SYNC_SAMPLE_FLAGS: Final = 0x01010000


def box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I", 8 + len(body)) + kind + body


def full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return box(kind, struct.pack(">I", (version << 24) | flags), *payload)


@dataclass(frozen=True, slots=True)
class TrackSpec:
    track_id: int
    kind: str  # "video" | "audio"
    timescale: int
    extradata: bytes  # avcC record (video) or AudioSpecificConfig (audio)
    width: int = 0
    height: int = 0
    sample_rate: int = 0
    channels: int = 0
    avg_bitrate: int = 0


@dataclass(frozen=True, slots=True)
class Sample:
    data: bytes
    duration: int
    keyframe: bool
    cts_offset: int = 0  # pts - dts, in the track timescale


def _descriptor(tag: int, body: bytes) -> bytes:
    # Four-byte size form: what most muxers write, and always long enough.
    n = len(body)
    size = bytes([0x80 | (n >> 21) & 0x7F, 0x80 | (n >> 14) & 0x7F, 0x80 | (n >> 7) & 0x7F])
    return bytes([tag]) + size + bytes([n & 0x7F]) + body


def _esds(asc: bytes, avg_bitrate: int) -> bytes:
    decoder_config = _descriptor(
        0x04,
        bytes([0x40, 0x15])  # MPEG-4 audio; streamType 5 (audio) << 2 | reserved 1
        + (0).to_bytes(3, "big")
        + struct.pack(">II", avg_bitrate, avg_bitrate)
        + _descriptor(0x05, asc),
    )
    es = _descriptor(0x03, b"\x00\x01\x00" + decoder_config + _descriptor(0x06, b"\x02"))
    return full_box(b"esds", 0, 0, es)


def _sample_entry(track: TrackSpec) -> bytes:
    if track.kind == "video":
        visual = (
            bytes(6)
            + struct.pack(">H", 1)  # data_reference_index
            + bytes(16)
            + struct.pack(">HH", track.width, track.height)
            + struct.pack(">II", 0x00480000, 0x00480000)  # 72 dpi
            + bytes(4)
            + struct.pack(">H", 1)  # frame_count
            + bytes(32)  # compressorname
            + struct.pack(">Hh", 0x18, -1)
        )
        return box(b"avc1", visual, box(b"avcC", track.extradata))
    audio = (
        bytes(6)
        + struct.pack(">H", 1)
        + bytes(8)
        + struct.pack(">HH", track.channels, 16)
        + bytes(4)
        + struct.pack(">I", (track.sample_rate & 0xFFFF) << 16)
    )
    return box(b"mp4a", audio, _esds(track.extradata, track.avg_bitrate))


def init_segment(track: TrackSpec) -> bytes:
    video = track.kind == "video"
    ftyp = box(b"ftyp", b"iso6", struct.pack(">I", 0), b"iso6cmfcmp41dash")
    mvhd = full_box(
        b"mvhd",
        0,
        0,
        struct.pack(">IIII", 0, 0, 1000, 0),
        struct.pack(">IH", 0x00010000, 0x0100),
        bytes(10),
        _MATRIX,
        bytes(24),
        struct.pack(">I", track.track_id + 1),
    )
    tkhd = full_box(
        b"tkhd",
        0,
        3,  # enabled | in movie
        struct.pack(">IIII", 0, 0, track.track_id, 0),
        struct.pack(">I", 0),  # duration: unknown (fragmented)
        bytes(8),
        struct.pack(">HHHH", 0, 0, 0 if video else 0x0100, 0),
        _MATRIX,
        struct.pack(">II", track.width << 16, track.height << 16),
    )
    mdhd = full_box(
        b"mdhd", 0, 0, struct.pack(">IIII", 0, 0, track.timescale, 0), struct.pack(">HH", 0x55C4, 0)
    )
    handler, name = (b"vide", b"VideoHandler\x00") if video else (b"soun", b"SoundHandler\x00")
    hdlr = full_box(b"hdlr", 0, 0, bytes(4), handler, bytes(12), name)
    media_header = full_box(b"vmhd", 0, 1, bytes(8)) if video else full_box(b"smhd", 0, 0, bytes(4))
    dinf = box(b"dinf", full_box(b"dref", 0, 0, struct.pack(">I", 1), full_box(b"url ", 0, 1)))
    stbl = box(
        b"stbl",
        full_box(b"stsd", 0, 0, struct.pack(">I", 1), _sample_entry(track)),
        full_box(b"stts", 0, 0, struct.pack(">I", 0)),
        full_box(b"stsc", 0, 0, struct.pack(">I", 0)),
        full_box(b"stsz", 0, 0, struct.pack(">II", 0, 0)),
        full_box(b"stco", 0, 0, struct.pack(">I", 0)),
    )
    mdia = box(b"mdia", mdhd, hdlr, box(b"minf", media_header, dinf, stbl))
    trex = full_box(b"trex", 0, 0, struct.pack(">IIIII", track.track_id, 1, 0, 0, 0))
    moov = box(b"moov", mvhd, box(b"trak", tkhd, mdia), box(b"mvex", trex))
    return ftyp + moov


def media_segment(
    track_id: int, sequence_number: int, base_decode_time: int, samples: Sequence[Sample]
) -> bytes:
    if not samples:
        raise ValueError("a media segment needs at least one sample")
    with_cts = any(s.cts_offset for s in samples)
    # data-offset, sample-duration, sample-size, sample-flags (+ composition offsets)
    flags = 0x000001 | 0x000100 | 0x000200 | 0x000400 | (0x000800 if with_cts else 0)
    per_sample = b"".join(
        struct.pack(
            ">III",
            s.duration,
            len(s.data),
            SYNC_SAMPLE_FLAGS if s.keyframe else NON_SYNC_SAMPLE_FLAGS,
        )
        + (struct.pack(">i", s.cts_offset) if with_cts else b"")
        for s in samples
    )

    def moof(data_offset: int) -> bytes:
        trun = full_box(
            b"trun", 1, flags, struct.pack(">Ii", len(samples), data_offset), per_sample
        )
        traf = box(
            b"traf",
            full_box(b"tfhd", 0, 0x020000, struct.pack(">I", track_id)),  # default-base-is-moof
            full_box(b"tfdt", 1, 0, struct.pack(">Q", base_decode_time)),
            trun,
        )
        return box(b"moof", full_box(b"mfhd", 0, 0, struct.pack(">I", sequence_number)), traf)

    size = len(moof(0))
    styp = box(b"styp", b"msdh", struct.pack(">I", 0), b"msdhmsixcmfs")
    return styp + moof(size + 8) + box(b"mdat", *(s.data for s in samples))
