"""Bitstream helpers shared by every ingest protocol: the few fields of H.264 and AAC
decoder configurations that ingest needs (dimensions, profile, level, sample rate).

Everything here is pure (bytes in, values out). Input comes straight off the network
from untrusted publishers, so every parser raises :class:`CodecError` on malformed data
and never lets an ``IndexError`` or similar escape.
"""

from __future__ import annotations

from dataclasses import dataclass

from meshcast.ingest import AudioConfig, VideoConfig

__all__ = [
    "AacConfig",
    "AvcDecoderConfig",
    "CodecError",
    "H264Sps",
    "h264_codec_string",
    "h264_level_name",
    "h264_profile_name",
    "parse_aac_audio_specific_config",
    "parse_avc_decoder_config",
    "parse_h264_sps",
    "split_length_prefixed",
]


class CodecError(ValueError):
    """A codec configuration or bitstream is truncated or malformed."""


# --------------------------------------------------------------------------- bit reader


class _BitReader:
    """MSB-first bit reader with exp-Golomb support (H.264 7.2, 9.1; ISO 14496-3)."""

    __slots__ = ("_data", "_pos", "_what")

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._pos = 0
        self._what = what  # names the structure in error messages

    @property
    def bits_left(self) -> int:
        return len(self._data) * 8 - self._pos

    def u(self, n: int) -> int:
        if n > self.bits_left:
            raise CodecError(
                f"{self._what} truncated: needed {n} more bits at bit {self._pos}, "
                f"only {self.bits_left} left"
            )
        value = 0
        for _ in range(n):
            byte = self._data[self._pos >> 3]
            value = (value << 1) | ((byte >> (7 - (self._pos & 7))) & 1)
            self._pos += 1
        return value

    def flag(self) -> bool:
        return self.u(1) == 1

    def ue(self) -> int:
        zeros = 0
        while self.u(1) == 0:
            zeros += 1
            # The spec caps every ue(v) at 2**32 - 2, i.e. 31 leading zeros; more means
            # garbage, and bounding it keeps a run of zero bytes from being slow.
            if zeros > 31:
                raise CodecError(f"{self._what}: exp-Golomb code longer than 32 bits")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        k = self.ue()
        return (k + 1) // 2 if k & 1 else -(k // 2)


def _ue_max(reader: _BitReader, limit: int, name: str) -> int:
    value = reader.ue()
    if value > limit:
        raise CodecError(f"{name} = {value} is out of range (max {limit})")
    return value


# --------------------------------------------------------------------------- H.264


@dataclass(frozen=True, slots=True)
class AvcDecoderConfig:
    """AVCDecoderConfigurationRecord (ISO 14496-15 5.3.3), the ``avcC`` box payload."""

    profile_idc: int
    profile_compat: int
    level_idc: int
    nal_length_size: int
    sps: list[bytes]
    pps: list[bytes]


@dataclass(frozen=True, slots=True)
class H264Sps:
    """The fields of an H.264 sequence parameter set that ingest cares about."""

    profile_idc: int
    level_idc: int
    width: int  # display size, i.e. after frame cropping
    height: int
    chroma_format_idc: int
    frame_mbs_only: bool
    fps: float | None  # from VUI timing info; None when absent
    constraint_flags: int = 0  # constraint_set0..5 in the top six bits, as in avcC


def parse_avc_decoder_config(record: bytes) -> AvcDecoderConfig:
    """Parse an ``avcC`` record (what RTMP and MP4 carry as the AVC sequence header)."""
    if record and record[0] != 1:
        # Annex-B extradata starts with 00 00 00 01 / 00 00 01, so this is also what a
        # publisher sending start codes instead of an avcC record hits.
        raise CodecError(
            f"avcC configurationVersion is {record[0]}, expected 1 "
            "(Annex-B start codes instead of an avcC record?)"
        )
    if len(record) < 7:
        raise CodecError(f"avcC record truncated: {len(record)} bytes, need at least 7")
    length_size = (record[4] & 0x03) + 1
    if length_size == 3:
        raise CodecError("avcC lengthSizeMinusOne = 2 is reserved (NAL length size 3)")

    pos = 6
    sps, pos = _read_parameter_sets(record, pos, record[5] & 0x1F, "SPS")
    if pos >= len(record):
        raise CodecError("avcC record truncated before numOfPictureParameterSets")
    pps, pos = _read_parameter_sets(record, pos + 1, record[pos], "PPS")
    # High-profile records may carry chroma_format/bit-depth extension bytes after the
    # PPS; the SPS already says the same, and several muxers write them wrongly or
    # not at all, so they are ignored rather than validated.
    return AvcDecoderConfig(
        profile_idc=record[1],
        profile_compat=record[2],
        level_idc=record[3],
        nal_length_size=length_size,
        sps=sps,
        pps=pps,
    )


def _read_parameter_sets(record: bytes, pos: int, count: int, what: str) -> tuple[list[bytes], int]:
    out: list[bytes] = []
    for i in range(count):
        if pos + 2 > len(record):
            raise CodecError(f"avcC record truncated in the length of {what} #{i}")
        size = int.from_bytes(record[pos : pos + 2], "big")
        pos += 2
        if size == 0:
            raise CodecError(f"avcC {what} #{i} is empty")
        if pos + size > len(record):
            raise CodecError(
                f"avcC {what} #{i} truncated: length {size}, {len(record) - pos} bytes left"
            )
        out.append(record[pos : pos + size])
        pos += size
    return out, pos


def _unescape_rbsp(payload: bytes) -> bytes:
    """Drop emulation-prevention bytes (00 00 03 -> 00 00), H.264 7.4.1."""
    if b"\x00\x00\x03" not in payload:
        return payload
    out = bytearray()
    zeros = 0
    for byte in payload:
        if zeros >= 2 and byte == 3:
            zeros = 0
            continue
        out.append(byte)
        zeros = zeros + 1 if byte == 0 else 0
    return bytes(out)


# Profiles whose SPS carries chroma_format_idc, bit depths and scaling matrices (7.3.2.1.1).
_HIGH_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})


def parse_h264_sps(nal: bytes) -> H264Sps:
    """Parse an H.264 SPS NAL unit (including its one-byte NAL header)."""
    if not nal:
        raise CodecError("SPS NAL unit is empty")
    if nal[0] & 0x80:
        raise CodecError("SPS NAL unit has forbidden_zero_bit set")
    if nal[0] & 0x1F != 7:
        raise CodecError(f"NAL unit type is {nal[0] & 0x1F}, expected 7 (SPS)")
    r = _BitReader(_unescape_rbsp(nal[1:]), "H.264 SPS")

    profile_idc = r.u(8)
    constraint_flags = r.u(8)
    level_idc = r.u(8)
    _ue_max(r, 31, "seq_parameter_set_id")

    chroma_format_idc = 1  # implied 4:2:0 for profiles without the field
    separate_colour_plane = False
    if profile_idc in _HIGH_PROFILES:
        chroma_format_idc = _ue_max(r, 3, "chroma_format_idc")
        if chroma_format_idc == 3:
            separate_colour_plane = r.flag()
        _ue_max(r, 6, "bit_depth_luma_minus8")
        _ue_max(r, 6, "bit_depth_chroma_minus8")
        r.u(1)  # qpprime_y_zero_transform_bypass_flag
        if r.flag():  # seq_scaling_matrix_present_flag
            for i in range(8 if chroma_format_idc != 3 else 12):
                if r.flag():  # seq_scaling_list_present_flag[i]
                    _skip_scaling_list(r, 16 if i < 6 else 64)

    _ue_max(r, 12, "log2_max_frame_num_minus4")
    poc_type = _ue_max(r, 2, "pic_order_cnt_type")
    if poc_type == 0:
        _ue_max(r, 12, "log2_max_pic_order_cnt_lsb_minus4")
    elif poc_type == 1:
        r.u(1)  # delta_pic_order_always_zero_flag
        r.se()  # offset_for_non_ref_pic
        r.se()  # offset_for_top_to_bottom_field
        for _ in range(_ue_max(r, 255, "num_ref_frames_in_pic_order_cnt_cycle")):
            r.se()  # offset_for_ref_frame[i]

    r.ue()  # max_num_ref_frames
    r.u(1)  # gaps_in_frame_num_value_allowed_flag
    # Capped so a garbage SPS cannot claim a billion-pixel picture; 8192 macroblocks
    # (131072 px) is far beyond any level in the spec.
    width_mbs = _ue_max(r, 8191, "pic_width_in_mbs_minus1") + 1
    height_map_units = _ue_max(r, 8191, "pic_height_in_map_units_minus1") + 1
    frame_mbs_only = r.flag()
    if not frame_mbs_only:
        r.u(1)  # mb_adaptive_frame_field_flag
    r.u(1)  # direct_8x8_inference_flag

    width = width_mbs * 16
    # With field coding a map unit is a pair of macroblocks stacked vertically.
    height = height_map_units * 16 * (2 - frame_mbs_only)

    if r.flag():  # frame_cropping_flag
        crop_left, crop_right, crop_top, crop_bottom = (r.ue() for _ in range(4))
        # Crop offsets count chroma samples, and for field coding field lines (7.4.2.1.1).
        chroma_array_type = 0 if separate_colour_plane else chroma_format_idc
        if chroma_array_type == 0:
            unit_x, unit_y = 1, 2 - frame_mbs_only
        else:
            sub_width_c = 1 if chroma_array_type == 3 else 2
            sub_height_c = 2 if chroma_array_type == 1 else 1
            unit_x, unit_y = sub_width_c, sub_height_c * (2 - frame_mbs_only)
        cropped_w = width - unit_x * (crop_left + crop_right)
        cropped_h = height - unit_y * (crop_top + crop_bottom)
        if cropped_w <= 0 or cropped_h <= 0:
            raise CodecError(
                f"SPS frame cropping ({crop_left}, {crop_right}, {crop_top}, {crop_bottom}) "
                f"leaves nothing of the {width}x{height} coded picture"
            )
        width, height = cropped_w, cropped_h

    fps = _read_vui_fps(r) if r.flag() else None  # vui_parameters_present_flag
    return H264Sps(
        profile_idc=profile_idc,
        level_idc=level_idc,
        width=width,
        height=height,
        chroma_format_idc=chroma_format_idc,
        frame_mbs_only=frame_mbs_only,
        fps=fps,
        constraint_flags=constraint_flags,
    )


def _skip_scaling_list(r: _BitReader, size: int) -> None:
    # Nothing of it is kept, but it is variable length (7.3.2.1.1.1), so it has to be
    # walked to find the fields after it.
    last_scale = next_scale = 8
    for _ in range(size):
        if next_scale != 0:
            delta = r.se()
            if not -128 <= delta <= 127:
                raise CodecError(f"SPS delta_scale = {delta} is out of range")
            next_scale = (last_scale + delta + 256) % 256
        last_scale = next_scale if next_scale != 0 else last_scale


def _read_vui_fps(r: _BitReader) -> float | None:
    # FFmpeg and most decoders accept an SPS whose VUI is cut short (some old
    # encoders wrote them that way), so a truncated VUI only loses the frame rate
    # instead of rejecting a stream whose dimensions are already known.
    try:
        # aspect_ratio_info_present_flag, then aspect_ratio_idc == Extended_SAR
        if r.flag() and r.u(8) == 255:
            r.u(32)  # sar_width, sar_height
        if r.flag():  # overscan_info_present_flag
            r.u(1)  # overscan_appropriate_flag
        if r.flag():  # video_signal_type_present_flag
            r.u(4)  # video_format, video_full_range_flag
            if r.flag():  # colour_description_present_flag
                r.u(24)  # colour_primaries, transfer_characteristics, matrix_coefficients
        if r.flag():  # chroma_loc_info_present_flag
            r.ue()
            r.ue()
        if not r.flag():  # timing_info_present_flag
            return None
        num_units_in_tick = r.u(32)
        time_scale = r.u(32)
    except CodecError:
        return None
    if num_units_in_tick == 0 or time_scale == 0:
        return None
    # A frame is two ticks (one per field) in H.264's timing model (E.2.1).
    return time_scale / (2 * num_units_in_tick)


_H264_PROFILE_NAMES = {
    44: "CAVLC 4:4:4 Intra",
    66: "Baseline",
    77: "Main",
    83: "Scalable Baseline",
    86: "Scalable High",
    88: "Extended",
    100: "High",
    110: "High 10",
    118: "Multiview High",
    122: "High 4:2:2",
    128: "Stereo High",
    134: "MFC High",
    135: "MFC Depth High",
    138: "Multiview Depth High",
    139: "Enhanced Multiview Depth High",
    244: "High 4:4:4 Predictive",
}

# constraint_set<N>_flag as it sits in the profile_compatibility byte.
_CONSTRAINT_SET1 = 0x40
_CONSTRAINT_SET3 = 0x10
_CONSTRAINT_SET4 = 0x08
_CONSTRAINT_SET5 = 0x04


def h264_profile_name(profile_idc: int, constraint_flags: int = 0) -> str:
    """Human-readable profile ("Baseline", "Main", "High", ...), as FFmpeg names them.

    ``constraint_flags`` (the avcC profile_compatibility byte) refines the name where
    the spec defines a constrained variant, e.g. "Constrained Baseline".
    """
    name = _H264_PROFILE_NAMES.get(profile_idc)
    if name is None:
        return f"Unknown ({profile_idc})"
    if profile_idc == 66 and constraint_flags & _CONSTRAINT_SET1:
        return "Constrained Baseline"
    if profile_idc == 100 and constraint_flags & _CONSTRAINT_SET4:
        return "Constrained High" if constraint_flags & _CONSTRAINT_SET5 else "Progressive High"
    if profile_idc in (110, 122, 244) and constraint_flags & _CONSTRAINT_SET3:
        return "High 4:4:4 Intra" if profile_idc == 244 else f"{name} Intra"
    return name


def h264_level_name(level_idc: int, profile_idc: int = 0, constraint_flags: int = 0) -> str:
    """Level as written in the spec: 31 -> "3.1", with the special level "1b"."""
    # Level 1b is signalled as level_idc 11 plus constraint_set3 in the Baseline, Main
    # and Extended profiles, and as level_idc 9 in the others (A.3.1, A.3.2).
    if level_idc == 9 or (
        level_idc == 11 and profile_idc in (66, 77, 88) and constraint_flags & _CONSTRAINT_SET3
    ):
        return "1b"
    return f"{level_idc // 10}.{level_idc % 10}"


def h264_codec_string(profile_idc: int, compat: int, level_idc: int) -> str:
    """RFC 6381 ``codecs`` value for H.264, e.g. ``avc1.64001f`` (High, level 3.1)."""
    for name, value in (("profile_idc", profile_idc), ("compat", compat), ("level", level_idc)):
        if not 0 <= value <= 0xFF:
            raise CodecError(f"H.264 {name} must be one byte, got {value}")
    return f"avc1.{profile_idc:02x}{compat:02x}{level_idc:02x}"


# --------------------------------------------------------------------------- AAC


@dataclass(frozen=True, slots=True)
class AacConfig:
    """The fields of an MPEG-4 AudioSpecificConfig (ISO 14496-3 1.6.2.1) ingest needs."""

    object_type: int  # 2 = AAC-LC, 5 = SBR (HE-AAC), 29 = PS (HE-AACv2), ...
    sample_rate: int  # output rate: the SBR rate when SBR is signalled explicitly
    channels: int | None  # None when only a PCE could say and it is not one we can read


_AAC_SAMPLE_RATES = (
    96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000, 7350,
)  # fmt: skip

# channelConfiguration -> channel count (ISO 14496-3 table 1.19, incl. amendments).
_AAC_CHANNELS = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6, 7: 8, 11: 7, 12: 8, 13: 24, 14: 8}

# Object types whose GASpecificConfig carries a program_config_element when
# channelConfiguration is 0.
_AAC_GA_OBJECT_TYPES = frozenset({1, 2, 3, 4, 6, 7, 17, 19, 20, 21, 22, 23})

_AOT_SBR = 5
_AOT_PS = 29


def parse_aac_audio_specific_config(asc: bytes) -> AacConfig:
    """Parse an AAC AudioSpecificConfig, as carried in the RTMP/MP4 sequence header."""
    r = _BitReader(asc, "AAC AudioSpecificConfig")
    object_type = _read_aac_object_type(r)
    sample_rate = _read_aac_sample_rate(r)
    channel_config = r.u(4)
    if channel_config != 0 and channel_config not in _AAC_CHANNELS:
        raise CodecError(f"AAC channelConfiguration {channel_config} is reserved")

    core_object_type = object_type
    if object_type in (_AOT_SBR, _AOT_PS):
        # Explicit hierarchical SBR/PS signalling: the rate read so far is the core's,
        # the one after it is what the decoder outputs, then comes the core type.
        sample_rate = _read_aac_sample_rate(r)
        core_object_type = _read_aac_object_type(r)

    channels: int | None = _AAC_CHANNELS.get(channel_config)
    if channel_config == 0 and core_object_type in _AAC_GA_OBJECT_TYPES:
        r.u(1)  # frameLengthFlag
        if r.flag():  # dependsOnCoreCoder
            r.u(14)  # coreCoderDelay
        r.u(1)  # extensionFlag
        channels = _read_aac_pce_channels(r)
    if object_type == _AOT_PS and channels == 1:
        # Parametric stereo decodes a mono core into two output channels.
        channels = 2
    return AacConfig(object_type=object_type, sample_rate=sample_rate, channels=channels)


def _read_aac_object_type(r: _BitReader) -> int:
    object_type = r.u(5)
    if object_type == 31:  # escape: the real type is 32 + the next six bits
        object_type = 32 + r.u(6)
    if object_type == 0:
        raise CodecError("AAC audioObjectType 0 (null) is not a valid object type")
    return object_type


def _read_aac_sample_rate(r: _BitReader) -> int:
    index = r.u(4)
    if index == 15:  # escape: explicit 24-bit frequency
        rate = r.u(24)
        if rate == 0:
            raise CodecError("AAC explicit samplingFrequency is 0")
        return rate
    if index >= len(_AAC_SAMPLE_RATES):
        raise CodecError(f"AAC samplingFrequencyIndex {index} is reserved")
    return _AAC_SAMPLE_RATES[index]


def _read_aac_pce_channels(r: _BitReader) -> int:
    """Count the output channels of a program_config_element (ISO 14496-3 4.4.1.1)."""
    r.u(4 + 2 + 4)  # element_instance_tag, object_type, sampling_frequency_index
    num_front, num_side, num_back = r.u(4), r.u(4), r.u(4)
    num_lfe = r.u(2)
    r.u(3 + 4)  # num_assoc_data_elements, num_valid_cc_elements
    for mixdown_bits in (4, 4, 3):  # mono / stereo / matrix mixdown
        if r.flag():
            r.u(mixdown_bits)
    channels = num_lfe
    for _ in range(num_front + num_side + num_back):
        channels += 2 if r.flag() else 1  # *_element_is_cpe: a pair is two channels
        r.u(4)  # *_element_tag_select
    r.u(4 * num_lfe)  # lfe_element_tag_select; read so a PCE cut short here is caught
    if channels == 0:
        raise CodecError("AAC program_config_element declares no channels")
    return channels


# --------------------------------------------------------------------------- framing


def split_length_prefixed(data: bytes, length_size: int) -> list[bytes]:
    """Split MP4-style length-prefixed NAL units (avcC/hvcC ``lengthSizeMinusOne + 1``)."""
    if length_size not in (1, 2, 4):
        raise CodecError(f"NAL length size must be 1, 2 or 4, got {length_size}")
    units: list[bytes] = []
    pos = 0
    while pos < len(data):
        if pos + length_size > len(data):
            raise CodecError(
                f"NAL length prefix truncated at byte {pos}: "
                f"{len(data) - pos} of {length_size} bytes"
            )
        size = int.from_bytes(data[pos : pos + length_size], "big")
        pos += length_size
        if size == 0:
            raise CodecError(f"zero-length NAL unit at byte {pos - length_size}")
        if pos + size > len(data):
            raise CodecError(
                f"NAL unit at byte {pos - length_size} truncated: "
                f"length {size}, {len(data) - pos} bytes left"
            )
        units.append(data[pos : pos + size])
        pos += size
    return units


# ---- Annex-B (start-code) H.264, as encoders and RTP depacketizers produce it ----------


def split_annexb(data: bytes) -> list[bytes]:
    """Split an Annex-B byte stream at 3- or 4-byte start codes into NAL units."""
    nals: list[bytes] = []
    start = data.find(b"\x00\x00\x01")
    if start < 0:
        raise CodecError("no Annex-B start code found")
    pos = start + 3
    while True:
        nxt = data.find(b"\x00\x00\x01", pos)
        end = len(data) if nxt < 0 else nxt
        nal = data[pos:end]
        if nxt >= 0 and nal.endswith(b"\x00"):
            nal = nal[:-1]  # the leading zero of a 4-byte start code belongs to the next one
        if nal:
            nals.append(nal)
        if nxt < 0:
            return nals
        pos = nxt + 3


def annexb_to_length_prefixed(data: bytes, length_size: int = 4) -> bytes:
    """Rewrite an Annex-B access unit as MP4 samples carry it (big-endian lengths)."""
    return b"".join(len(n).to_bytes(length_size, "big") + n for n in split_annexb(data))


def avc_decoder_config_from_annexb(data: bytes) -> bytes:
    """Build an avcC (AVCDecoderConfigurationRecord) from Annex-B SPS/PPS NAL units."""
    nals = split_annexb(data)
    sps = [n for n in nals if n[0] & 0x1F == 7]
    pps = [n for n in nals if n[0] & 0x1F == 8]
    if not sps or not pps:
        raise CodecError("Annex-B parameter sets need at least one SPS and one PPS")
    first = sps[0]
    if len(first) < 4:
        raise CodecError("SPS too short for an avcC record")
    record = bytearray([1, first[1], first[2], first[3], 0xFC | 3, 0xE0 | len(sps)])
    for nal in sps:
        record += len(nal).to_bytes(2, "big") + nal
    record.append(len(pps))
    for nal in pps:
        record += len(nal).to_bytes(2, "big") + nal
    if first[1] in (100, 110, 122, 244):
        # High profiles carry chroma format and bit depths after the PPS list.
        parsed = parse_h264_sps(first)
        record += bytes([0xFC | parsed.chroma_format_idc, 0xF8, 0xF8, 0])
    return bytes(record)


# ---- ingest configs from codec records (shared by RTMP, WHIP and the demo source) ------


def h264_video_config(record: bytes) -> VideoConfig:
    """VideoConfig from an avcC record; dimensions come from its first SPS."""
    avcc = parse_avc_decoder_config(record)
    if not avcc.sps:
        # The record header repeats profile/level, so a record without an SPS still
        # names them; the dimensions have to wait for in-band parameter sets.
        return VideoConfig(
            codec="h264",
            extradata=record,
            profile=h264_profile_name(avcc.profile_idc, avcc.profile_compat),
            level=h264_level_name(avcc.level_idc, avcc.profile_idc, avcc.profile_compat),
        )
    sps = parse_h264_sps(avcc.sps[0])
    return VideoConfig(
        codec="h264",
        extradata=record,
        width=sps.width,
        height=sps.height,
        profile=h264_profile_name(sps.profile_idc, sps.constraint_flags),
        level=h264_level_name(sps.level_idc, sps.profile_idc, sps.constraint_flags),
        fps=sps.fps,
    )


def aac_audio_config(asc: bytes) -> AudioConfig:
    config = parse_aac_audio_specific_config(asc)
    return AudioConfig(
        codec="aac", extradata=asc, sample_rate=config.sample_rate, channels=config.channels
    )
