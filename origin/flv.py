"""FLV tag bodies as RTMP carries them: the payload of an audio (type 8) or video (type 9)
message, turned into ingest messages.

Covers legacy FLV (AVC + AAC) and Enhanced RTMP (Veovera v1/v2: HEVC, AV1, Opus and
the FourCC forms of AVC/AAC). The functions are stateless: RTMP timestamps are already
absolute milliseconds, and the packet data stays in MP4 sample form, so nothing here
needs the sequence header to interpret a frame.
"""

from __future__ import annotations

from meshcast.codecs import CodecError, aac_audio_config, h264_video_config
from meshcast.ingest import AudioConfig, MediaKind, MediaPacket, VideoConfig

__all__ = [
    "FlvError",
    "audio_tag",
    "parse_audio_tag",
    "parse_video_tag",
    "playable_over_rtmp",
    "video_tag",
]


class FlvError(ValueError):
    """An FLV audio/video tag body is malformed or uses a codec we do not ingest."""


# --------------------------------------------------------------------------- video

_FRAME_KEY = 1
_FRAME_COMMAND = 5  # "video info/command frame": seek markers, no picture

_LEGACY_VIDEO_CODECS = {
    2: "Sorenson H.263",
    3: "Screen Video",
    4: "On2 VP6",
    5: "On2 VP6 with alpha",
    6: "Screen Video v2",
    7: "AVC",
    # Not in the Adobe spec, but widely deployed by Chinese CDNs/encoders before
    # Enhanced RTMP existed; named so the error tells the publisher what to change.
    12: "HEVC (non-standard CodecID 12)",
}
_CODEC_AVC = 7

_AVC_SEQUENCE_HEADER = 0
_AVC_NALU = 1
_AVC_END_OF_SEQUENCE = 2

# Enhanced RTMP VideoPacketType.
_V_SEQUENCE_START = 0
_V_CODED_FRAMES = 1
_V_SEQUENCE_END = 2
_V_CODED_FRAMES_X = 3  # CodedFrames with the composition time implied to be 0
_V_METADATA = 4
_V_MPEG2TS_SEQUENCE_START = 5
_V_MULTITRACK = 6
_V_MODEX = 7

_VIDEO_PACKET_TYPE_NAMES = {
    _V_SEQUENCE_START: "SequenceStart",
    _V_CODED_FRAMES: "CodedFrames",
    _V_SEQUENCE_END: "SequenceEnd",
    _V_CODED_FRAMES_X: "CodedFramesX",
    _V_METADATA: "Metadata",
    _V_MPEG2TS_SEQUENCE_START: "MPEG2TSSequenceStart",
    _V_MULTITRACK: "Multitrack",
    _V_MODEX: "ModEx",
}

_SUPPORTED_VIDEO_PACKET_TYPES = frozenset(
    {_V_SEQUENCE_START, _V_CODED_FRAMES, _V_SEQUENCE_END, _V_CODED_FRAMES_X, _V_METADATA}
)

_VIDEO_FOURCCS = {b"avc1": "h264", b"hvc1": "hevc", b"av01": "av1"}
_SUPPORTED_VIDEO = "legacy AVC (CodecID 7) or Enhanced RTMP avc1, hvc1, av01"


def parse_video_tag(payload: bytes, timestamp_ms: int) -> VideoConfig | MediaPacket | None:
    """Parse an RTMP video message body.

    Returns the track configuration for a sequence header, a packet for coded frames,
    and None for messages that carry nothing to decode (end of sequence, metadata,
    command frames, empty frames).
    """
    if not payload:
        raise FlvError("empty video tag")
    if payload[0] & 0x80:
        return _parse_enhanced_video(payload, timestamp_ms)

    frame_type = payload[0] >> 4
    codec_id = payload[0] & 0x0F
    if frame_type == _FRAME_COMMAND:
        return None
    if codec_id != _CODEC_AVC:
        name = _LEGACY_VIDEO_CODECS.get(codec_id, "unknown")
        raise FlvError(
            f"unsupported video codec {name} (FLV CodecID {codec_id}); "
            f"supported: {_SUPPORTED_VIDEO}"
        )
    _check_frame_type(frame_type)
    if len(payload) < 5:
        raise FlvError(f"AVC video tag truncated: {len(payload)} bytes, header needs 5")
    packet_type = payload[1]
    if packet_type == _AVC_SEQUENCE_HEADER:
        return _avc_config(payload[5:])
    if packet_type == _AVC_NALU:
        return _video_packet(payload[5:], timestamp_ms, _si24(payload, 2), frame_type == _FRAME_KEY)
    if packet_type == _AVC_END_OF_SEQUENCE:
        return None
    raise FlvError(f"unknown AVCPacketType {packet_type}; expected 0, 1 or 2")


def _parse_enhanced_video(payload: bytes, timestamp_ms: int) -> VideoConfig | MediaPacket | None:
    frame_type = (payload[0] >> 4) & 0x07
    packet_type = payload[0] & 0x0F
    # ModEx prefixes come before everything else in the v2 header, the command-frame
    # check included, so they are refused first.
    if packet_type == _V_MODEX:
        raise _unsupported_video_packet(packet_type)
    if frame_type == _FRAME_COMMAND and packet_type != _V_METADATA:
        # A command frame's body is a one-byte VideoCommand and has no FourCC.
        if len(payload) < 2:
            raise FlvError("enhanced video command frame truncated: no command byte")
        return None
    if packet_type not in _SUPPORTED_VIDEO_PACKET_TYPES:
        raise _unsupported_video_packet(packet_type)
    if len(payload) < 5:
        raise FlvError(f"enhanced video tag truncated: {len(payload)} bytes, header needs 5")
    fourcc = payload[1:5]
    codec = _VIDEO_FOURCCS.get(fourcc)
    if codec is None:
        raise FlvError(
            f"unsupported video codec FourCC {_fourcc_text(fourcc)}; supported: {_SUPPORTED_VIDEO}"
        )
    _check_frame_type(frame_type)
    body = payload[5:]

    if packet_type == _V_SEQUENCE_START:
        if codec == "h264":
            return _avc_config(body)
        return _opaque_video_config(codec, body)
    if packet_type in (_V_SEQUENCE_END, _V_METADATA):
        return None
    keyframe = frame_type == _FRAME_KEY
    # The AV1 mapping has no composition time field (AV1 frames are sent in
    # presentation order), and CodedFramesX omits it for any codec to mean 0.
    if packet_type == _V_CODED_FRAMES_X or codec == "av1":
        return _video_packet(body, timestamp_ms, 0, keyframe)
    if len(body) < 3:
        raise FlvError(f"{codec} CodedFrames truncated: no room for the composition time")
    return _video_packet(body[3:], timestamp_ms, _si24(body, 0), keyframe)


def _unsupported_video_packet(packet_type: int) -> FlvError:
    name = _VIDEO_PACKET_TYPE_NAMES.get(packet_type, "unknown")
    return FlvError(
        f"unsupported Enhanced RTMP video packet type {name} ({packet_type}); "
        "supported: SequenceStart, CodedFrames, CodedFramesX, SequenceEnd, Metadata"
    )


def _check_frame_type(frame_type: int) -> None:
    if not 1 <= frame_type <= 5:
        raise FlvError(f"invalid video frame type {frame_type}; expected 1-5")


def _si24(data: bytes, pos: int) -> int:
    return int.from_bytes(data[pos : pos + 3], "big", signed=True)


def _video_packet(
    data: bytes, timestamp_ms: int, composition_ms: int, keyframe: bool
) -> MediaPacket | None:
    if not data:
        # Some encoders send header-only frames; there is nothing to decode in them,
        # and failing the stream over one would be worse than skipping it.
        return None
    return MediaPacket(
        kind=MediaKind.VIDEO,
        data=data,
        dts=timestamp_ms,
        pts=timestamp_ms + composition_ms,
        keyframe=keyframe,
    )


def _avc_config(record: bytes) -> VideoConfig:
    try:
        return h264_video_config(record)
    except CodecError as exc:
        raise FlvError(f"invalid AVC sequence header: {exc}") from exc


def _opaque_video_config(codec: str, record: bytes) -> VideoConfig:
    # hvcC and av1C are passed through untouched; only their fixed first byte is
    # checked so that, say, Annex-B start codes are rejected here and not in a decoder.
    if codec == "hevc":
        if len(record) < 23 or record[0] != 1:
            raise FlvError(
                f"invalid HEVC sequence header: expected an hvcC record "
                f"(configurationVersion 1, at least 23 bytes), got {len(record)} bytes "
                f"starting {record[:4].hex() or 'with nothing'}"
            )
    elif len(record) < 4 or record[0] != 0x81:
        raise FlvError(
            f"invalid AV1 sequence header: expected an av1C record (marker+version 0x81, "
            f"at least 4 bytes), got {len(record)} bytes starting "
            f"{record[:4].hex() or 'with nothing'}"
        )
    return VideoConfig(codec=codec, extradata=record)


def _fourcc_text(fourcc: bytes) -> str:
    return repr(fourcc.decode("latin-1"))


# --------------------------------------------------------------------------- audio

_SOUND_FORMAT_NAMES = {
    0: "Linear PCM (platform endian)",
    1: "ADPCM",
    2: "MP3",
    3: "Linear PCM (little endian)",
    4: "Nellymoser 16 kHz mono",
    5: "Nellymoser 8 kHz mono",
    6: "Nellymoser",
    7: "G.711 A-law",
    8: "G.711 mu-law",
    10: "AAC",
    11: "Speex",
    14: "MP3 8 kHz",
    15: "device-specific sound",
}
_SOUND_AAC = 10
_SOUND_EX_HEADER = 9  # Enhanced RTMP: the low nibble is an AudioPacketType, then a FourCC

_AAC_SEQUENCE_HEADER = 0
_AAC_RAW = 1

# Enhanced RTMP AudioPacketType.
_A_SEQUENCE_START = 0
_A_CODED_FRAMES = 1
_A_SEQUENCE_END = 2
_A_MULTICHANNEL_CONFIG = 4
_A_MULTITRACK = 5
_A_MODEX = 7

_AUDIO_PACKET_TYPE_NAMES = {
    _A_SEQUENCE_START: "SequenceStart",
    _A_CODED_FRAMES: "CodedFrames",
    _A_SEQUENCE_END: "SequenceEnd",
    _A_MULTICHANNEL_CONFIG: "MultichannelConfig",
    _A_MULTITRACK: "Multitrack",
    _A_MODEX: "ModEx",
}

_AUDIO_FOURCCS = {b"mp4a": "aac", b"Opus": "opus"}
_SUPPORTED_AUDIO = "publish AAC (legacy SoundFormat 10 or Enhanced RTMP mp4a) or Opus"

_OPUS_HEAD_MAGIC = b"OpusHead"
_OPUS_HEAD_MIN_SIZE = 19  # RFC 7845 5.1, without a channel mapping table
_OPUS_SAMPLE_RATE = 48000  # Opus always decodes at 48 kHz; OpusHead's rate is informative


def parse_audio_tag(payload: bytes, timestamp_ms: int) -> AudioConfig | MediaPacket | None:
    """Parse an RTMP audio message body.

    Returns the track configuration for a sequence header, a packet for coded audio,
    and None for messages that carry nothing to decode.
    """
    if not payload:
        raise FlvError("empty audio tag")
    sound_format = payload[0] >> 4
    if sound_format == _SOUND_EX_HEADER:
        return _parse_enhanced_audio(payload, timestamp_ms)
    if sound_format != _SOUND_AAC:
        name = _SOUND_FORMAT_NAMES.get(sound_format, "reserved")
        raise FlvError(
            f"unsupported audio codec {name} (FLV SoundFormat {sound_format}); {_SUPPORTED_AUDIO}"
        )
    if len(payload) < 2:
        raise FlvError("AAC audio tag truncated: no AACPacketType")
    packet_type = payload[1]
    if packet_type == _AAC_SEQUENCE_HEADER:
        return _aac_config(payload[2:])
    if packet_type == _AAC_RAW:
        return _audio_packet(payload[2:], timestamp_ms)
    raise FlvError(f"unknown AACPacketType {packet_type}; expected 0 or 1")


def _parse_enhanced_audio(payload: bytes, timestamp_ms: int) -> AudioConfig | MediaPacket | None:
    packet_type = payload[0] & 0x0F
    if packet_type not in _AUDIO_PACKET_TYPE_NAMES or packet_type in (
        _A_MULTITRACK,
        _A_MODEX,
    ):
        name = _AUDIO_PACKET_TYPE_NAMES.get(packet_type, "unknown")
        raise FlvError(
            f"unsupported Enhanced RTMP audio packet type {name} ({packet_type}); "
            "supported: SequenceStart, CodedFrames, SequenceEnd, MultichannelConfig"
        )
    if len(payload) < 5:
        raise FlvError(f"enhanced audio tag truncated: {len(payload)} bytes, header needs 5")
    fourcc = payload[1:5]
    codec = _AUDIO_FOURCCS.get(fourcc)
    if codec is None:
        raise FlvError(f"unsupported audio codec FourCC {_fourcc_text(fourcc)}; {_SUPPORTED_AUDIO}")
    body = payload[5:]
    if packet_type == _A_SEQUENCE_START:
        return _aac_config(body) if codec == "aac" else _opus_config(body)
    if packet_type == _A_CODED_FRAMES:
        return _audio_packet(body, timestamp_ms)
    # SequenceEnd, and MultichannelConfig: the channel layout is also in the
    # AudioSpecificConfig / OpusHead, which is what decoders use.
    return None


def _aac_config(asc: bytes) -> AudioConfig:
    try:
        return aac_audio_config(asc)
    except CodecError as exc:
        raise FlvError(f"invalid AAC sequence header: {exc}") from exc


def _opus_config(head: bytes) -> AudioConfig:
    if len(head) < _OPUS_HEAD_MIN_SIZE or not head.startswith(_OPUS_HEAD_MAGIC):
        raise FlvError(
            f"invalid Opus sequence header: expected an OpusHead of at least "
            f"{_OPUS_HEAD_MIN_SIZE} bytes, got {len(head)} bytes starting {head[:8]!r}"
        )
    channels = head[9]
    if channels == 0:
        raise FlvError("invalid Opus sequence header: OpusHead declares 0 channels")
    return AudioConfig(
        codec="opus", extradata=head, sample_rate=_OPUS_SAMPLE_RATE, channels=channels
    )


def _audio_packet(data: bytes, timestamp_ms: int) -> MediaPacket | None:
    if not data:
        return None  # header-only frame: nothing to decode (see _video_packet)
    # Every AAC/Opus frame decodes on its own, so each one is a sync point.
    return MediaPacket(
        kind=MediaKind.AUDIO, data=data, dts=timestamp_ms, pts=timestamp_ms, keyframe=True
    )


# --------------------------------------------------------------------------- writing
# Legacy FLV tag bodies (AVC + AAC), what every RTMP player understands (rtmpdump,
# FFmpeg 5, OBS media sources): RTMP playback re-frames the ingest messages with these.

_AAC_TAG_FLAGS = (_SOUND_AAC << 4) | 0x0F  # 44 kHz, 16-bit, stereo: fixed for AAC


def playable_over_rtmp(video: VideoConfig | None, audio: AudioConfig | None) -> str | None:
    """None when legacy FLV can carry the stream, else why not (a WHIP publisher's
    VP8/Opus, Enhanced RTMP's HEVC/AV1)."""
    if video is not None and video.codec != "h264":
        return f"video codec {video.codec} has no legacy FLV form (only H.264)"
    if video is None and (audio is None or audio.codec != "aac"):
        return "no H.264 video or AAC audio to play"
    return None


def video_tag(item: VideoConfig | MediaPacket) -> bytes:
    """AVC sequence header (from the avcC record) or one coded frame."""
    if isinstance(item, VideoConfig):
        return bytes([(_FRAME_KEY << 4) | _CODEC_AVC, _AVC_SEQUENCE_HEADER, 0, 0, 0]) + (
            item.extradata
        )
    frame_type = _FRAME_KEY if item.keyframe else 2  # 2: inter frame
    composition = (item.pts - item.dts).to_bytes(3, "big", signed=True)
    return bytes([(frame_type << 4) | _CODEC_AVC, _AVC_NALU]) + composition + item.data


def audio_tag(item: AudioConfig | MediaPacket) -> bytes:
    """AAC sequence header (the AudioSpecificConfig) or one raw AAC frame."""
    if isinstance(item, AudioConfig):
        return bytes([_AAC_TAG_FLAGS, _AAC_SEQUENCE_HEADER]) + item.extradata
    return bytes([_AAC_TAG_FLAGS, _AAC_RAW]) + item.data
