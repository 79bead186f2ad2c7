"""Live ladder: decode once, scale once per rung, encode every rung with keyframes forced
at the same instants, one shared AAC audio rendition, packaged as CMAF + HLS + DASH.

Runs inside a worker process (see ``worker``); it is plain synchronous code driven by
ingest messages, so tests can drive it directly too.
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction

import av
from av.audio.codeccontext import AudioCodecContext
from av.audio.resampler import AudioResampler
from av.packet import Packet
from av.stream import Stream
from av.video.codeccontext import VideoCodecContext
from av.video.frame import PictureType, VideoFrame
from av.video.reformatter import VideoReformatter

from meshcast import codecs
from meshcast.config import TranscodeConfig
from meshcast.ingest import AudioConfig, MediaKind, MediaPacket, VideoConfig
from meshcast.store import SegmentStore
from transcoder.encoders import (
    Backend,
    EncoderSettings,
    audio_context,
    open_encoder,
    select_backend,
    video_context,
)
from transcoder.fmp4 import TrackSpec
from transcoder.ladder import Rung, RungSpec, plan_ladder
from transcoder.packager import StreamPackager
from transcoder.recording import Recorder, RecordingTarget
from transcoder.segments import RenditionState

log = logging.getLogger(__name__)

VIDEO_TIMESCALE = 90_000
AUDIO_RATE = 48_000
AAC_FRAME = 1024
DECODERS = {"h264": "h264", "hevc": "hevc", "av1": "libdav1d", "vp8": "vp8", "vp9": "vp9"}


class PipelineError(RuntimeError):
    pass


@dataclass
class VideoRung:
    rung: Rung
    encoder: VideoCodecContext
    rendition: RenditionState
    # One scaler per rung, reused: PyAV would otherwise rebuild it for every frame.
    scaler: VideoReformatter = field(default_factory=VideoReformatter)

    def encode(self, frame: VideoFrame) -> list[Packet[Stream]]:
        """Scale and encode one frame whose pts/time_base/pict_type are already set
        (the rung at the source size gets the decoded frame itself)."""
        scaled = self.scaler.reformat(
            frame, width=self.rung.width, height=self.rung.height, format="yuv420p", threads=1
        )
        if scaled is not frame:
            scaled.pts, scaled.time_base = frame.pts, frame.time_base
            scaled.pict_type = frame.pict_type
        return self.encoder.encode(scaled)


def open_video_rung(
    backend: Backend, rung: Rung, settings: EncoderSettings
) -> tuple[VideoCodecContext, TrackSpec, str]:
    """An encoder for one rung, its CMAF track and its RFC 6381 codec string (live and
    VOD chunk workers open rungs the same way, so their init segments match)."""
    encoder = open_encoder(backend, rung, settings)
    record = codecs.avc_decoder_config_from_annexb(bytes(encoder.extradata or b""))
    avcc = codecs.parse_avc_decoder_config(record)
    track = TrackSpec(
        1,
        "video",
        VIDEO_TIMESCALE,
        record,
        rung.width,
        rung.height,
        avg_bitrate=rung.video_kbps * 1000,
    )
    codec_string = codecs.h264_codec_string(avcc.profile_idc, avcc.profile_compat, avcc.level_idc)
    return encoder, track, codec_string


def open_aac_encoder(kbps: int) -> tuple[AudioCodecContext, TrackSpec]:
    """The shared audio rendition's encoder: AAC-LC, 48 kHz stereo."""
    encoder = audio_context("aac", "w")
    encoder.sample_rate = AUDIO_RATE
    encoder.layout = "stereo"
    encoder.format = "fltp"
    encoder.time_base = Fraction(1, AUDIO_RATE)
    encoder.bit_rate = kbps * 1000
    encoder.open()
    asc = bytes(encoder.extradata or b"")
    track = TrackSpec(
        2, "audio", AUDIO_RATE, asc, sample_rate=AUDIO_RATE, channels=2, avg_bitrate=kbps * 1000
    )
    return encoder, track


class LadderPipeline:
    def __init__(
        self,
        name: str,
        store: SegmentStore,
        config: TranscodeConfig,
        *,
        recording: RecordingTarget | None = None,
    ) -> None:
        self.name = name
        self.config = config
        self.segment_duration = Fraction(config.segment_duration).limit_denominator(1000)
        window = max(config.window_segments, recording.window if recording else 0)
        self.packager = StreamPackager(store, f"live/{name}", self.segment_duration, window)
        if recording is not None:
            self.packager.recorder = Recorder(
                store, recording, self.segment_duration, self.packager.prefix
            )
        self.backend: Backend | None = None
        self._decoder: VideoCodecContext | None = None
        self._decoder_time_base = Fraction(1, 1000)
        self._video_config: VideoConfig | None = None
        self._rungs: list[VideoRung] = []
        self._t0: Fraction | None = None  # media time that maps to 0 on our timeline
        self._last_video_pts = -1
        self._slot = -1
        self._audio: RenditionState | None = None
        self._source: RenditionState | None = None
        self._source_shift: int | None = None
        self._audio_config: AudioConfig | None = None
        self._audio_decoder: AudioCodecContext | None = None
        self._audio_encoder: AudioCodecContext | None = None
        self._resampler: AudioResampler | None = None
        self._audio_next: int | None = None
        self.frames_in = 0
        self.frames_dropped = 0
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"rung-{name}")

    # ---- ingest ---------------------------------------------------------------------

    def on_video_config(self, config: VideoConfig) -> None:
        if config == self._video_config:
            return
        decoder_name = DECODERS.get(config.codec)
        if decoder_name is None:
            raise PipelineError(f"no decoder for video codec {config.codec!r}")
        decoder = video_context(decoder_name, "r")
        decoder.extradata = config.extradata
        decoder.thread_type = "AUTO"
        decoder.open()
        self._decoder = decoder
        self._video_config = config

    def on_audio_config(self, config: AudioConfig) -> None:
        if config == self._audio_config:
            return
        self._audio_config = config
        if self._audio is not None:
            if config.codec != "aac":
                self._open_audio_transcoder(config)
            return
        if config.codec == "aac" and config.sample_rate and config.channels:
            # AAC in, AAC out: the source frames are the audio rendition (no re-encode).
            track = TrackSpec(
                2,
                "audio",
                config.sample_rate,
                config.extradata,
                sample_rate=config.sample_rate,
                channels=config.channels,
            )
            aot = codecs.parse_aac_audio_specific_config(config.extradata).object_type
            self._audio = self.packager.add_rendition("audio", track, f"mp4a.40.{aot}")
        else:
            self._open_audio_transcoder(config)

    def on_packet(self, packet: MediaPacket) -> None:
        if self._t0 is None:
            # Zero of our timeline: the first video frame's presentation time (not its
            # decode time, which B-frames put earlier), so segment boundaries fall on the
            # frames players show. Audio before it is dropped (a few frames at most).
            if packet.kind is MediaKind.VIDEO or self._video_config is None:
                self._t0 = Fraction(packet.pts) * packet.time_base
            else:
                return
        if packet.kind is MediaKind.VIDEO:
            self._video_packet(packet)
        else:
            self._audio_packet(packet)

    def on_end(self) -> None:
        if self._decoder is not None and self._video_config is not None:
            try:
                for frame in self._decoder.decode(None):
                    self._video_frame(frame, self._decoder_time_base)
            except av.error.FFmpegError as exc:
                log.warning("stream %s: decoder flush failed: %s", self.name, exc)
        for vr in self._rungs:
            for out in vr.encoder.encode(None):
                self._package_video(vr, out)
        if self._audio_encoder is not None:
            for out in self._audio_encoder.encode(None):
                self._package_audio_packet(out)
        self.packager.finish()
        self._pool.shutdown()
        log.info(
            "stream %s: transcode finished, %d frames in, %d dropped, %s segments",
            self.name,
            self.frames_in,
            self.frames_dropped,
            {r.name: len(r.segments) for r in self.packager.renditions},
        )

    # ---- video ----------------------------------------------------------------------

    def _video_packet(self, packet: MediaPacket) -> None:
        if self._decoder is None:
            return  # no sequence header yet: nothing decodable
        if self.config.source_rung and self._video_config and self._video_config.codec == "h264":
            self._source_packet(packet, self._video_config)
        avpkt = av.Packet(packet.data)
        avpkt.pts, avpkt.dts = packet.pts, packet.dts
        avpkt.time_base = packet.time_base
        try:
            frames = self._decoder.decode(avpkt)
        except av.error.FFmpegError as exc:
            log.warning("stream %s: video decode error (%s); continuing", self.name, exc)
            return
        self._decoder_time_base = packet.time_base
        for frame in frames:
            self._video_frame(frame, packet.time_base)

    def _video_frame(self, frame: VideoFrame, time_base: Fraction) -> None:
        assert self._t0 is not None
        self.frames_in += 1
        if frame.pts is None:
            self.frames_dropped += 1
            return
        pts = math.floor((Fraction(frame.pts) * time_base - self._t0) * VIDEO_TIMESCALE)
        if pts <= self._last_video_pts:
            self.frames_dropped += 1  # repeated or backwards timestamp: not representable
            return
        self._last_video_pts = pts
        if not self._rungs:
            self._open_ladder(frame)
        slot = int(Fraction(pts, VIDEO_TIMESCALE) // self.segment_duration)
        force_key = slot > self._slot
        self._slot = max(slot, self._slot)
        # Rungs scale and encode in parallel threads (PyAV releases the GIL in swscale
        # and in the encoders); packaging stays in rung order on this thread.
        frame.pts = pts
        frame.time_base = Fraction(1, VIDEO_TIMESCALE)
        frame.pict_type = PictureType.I if force_key else PictureType.NONE
        results = self._pool.map(lambda vr: vr.encode(frame), self._rungs)
        for vr, packets in zip(self._rungs, results, strict=True):
            for out in packets:
                self._package_video(vr, out)

    def _source_packet(self, packet: MediaPacket, config: VideoConfig) -> None:
        """The source rung: the publisher's H.264 samples, repackaged (no re-encode)."""
        assert self._t0 is not None
        if self._source is None:
            if not packet.keyframe or not config.width or not config.height:
                return
            avcc = codecs.parse_avc_decoder_config(config.extradata)
            track = TrackSpec(
                3, "video", VIDEO_TIMESCALE, config.extradata, config.width, config.height
            )
            codec_string = codecs.h264_codec_string(
                avcc.profile_idc, avcc.profile_compat, avcc.level_idc
            )
            self._source = self.packager.add_rendition(
                "source", track, codec_string, config.fps or 0.0, passthrough=True
            )
        base = self._t0 * VIDEO_TIMESCALE
        dts = math.floor(Fraction(packet.dts) * packet.time_base * VIDEO_TIMESCALE - base)
        pts = math.floor(Fraction(packet.pts) * packet.time_base * VIDEO_TIMESCALE - base)
        if self._source_shift is None:
            # B-frames put the first decode time before our zero; fragment decode times
            # are unsigned, so the source rung starts that much later (a frame or two).
            self._source_shift = max(0, -dts)
        self.packager.add(
            self._source,
            dts + self._source_shift,
            pts + self._source_shift,
            packet.data,
            packet.keyframe,
        )

    def _package_video(self, vr: VideoRung, out: Packet[Stream]) -> None:
        if out.pts is None or out.dts is None:
            return
        self.packager.add(
            vr.rendition,
            out.dts,
            out.pts,
            codecs.annexb_to_length_prefixed(bytes(out)),
            out.is_keyframe,
        )

    def _open_ladder(self, frame: VideoFrame) -> None:
        assert self._video_config is not None
        width = self._video_config.width or frame.width
        height = self._video_config.height or frame.height
        specs = [RungSpec(h, kbps) for h, kbps in self.config.ladder]
        rungs = plan_ladder(width, height, specs)
        fps = Fraction(self._video_config.fps or 30).limit_denominator(1001)
        settings = EncoderSettings(fps=fps)
        self.backend = select_backend(self.config.encoder, rungs[0], settings)
        log.info(
            "stream %s: %dx%d -> %s with %s",
            self.name,
            width,
            height,
            ", ".join(f"{r.name} {r.width}x{r.height}@{r.video_kbps}k" for r in rungs),
            self.backend.value,
        )
        for rung in rungs:
            encoder, track, codec_string = open_video_rung(self.backend, rung, settings)
            rendition = self.packager.add_rendition(rung.name, track, codec_string, float(fps))
            self._rungs.append(VideoRung(rung, encoder, rendition))

    # ---- audio ----------------------------------------------------------------------

    def _open_audio_transcoder(self, config: AudioConfig) -> None:
        decoder = audio_context(config.codec, "r")
        if config.extradata:
            decoder.extradata = config.extradata
        decoder.open()
        self._audio_decoder = decoder
        if self._audio_encoder is None:
            self._audio_encoder, track = open_aac_encoder(self.config.audio_kbps)
            self._resampler = av.AudioResampler(format="fltp", layout="stereo", rate=AUDIO_RATE)
            self._audio = self.packager.add_rendition("audio", track, "mp4a.40.2")

    def _audio_packet(self, packet: MediaPacket) -> None:
        if self._audio is None:
            return
        assert self._t0 is not None
        rate = self._audio.track.timescale
        t = math.floor((Fraction(packet.dts) * packet.time_base - self._t0) * rate)
        if t < 0:
            return  # before the first video/audio instant of the timeline
        if self._audio_decoder is not None:
            self._transcode_audio(packet, t)
            return
        # Millisecond timestamps jitter by up to 1 ms around the true sample clock:
        # snap to the expected position unless there is a real gap.
        if self._audio_next is not None and abs(t - self._audio_next) < AAC_FRAME // 2:
            t = self._audio_next
        self._audio_next = t + AAC_FRAME
        self.packager.add(self._audio, t, t, packet.data, True)

    def _transcode_audio(self, packet: MediaPacket, t: int) -> None:
        decoder, resampler = self._audio_decoder, self._resampler
        encoder = self._audio_encoder
        assert decoder is not None and resampler is not None and encoder is not None
        avpkt = av.Packet(packet.data)
        try:
            frames = decoder.decode(avpkt)
        except av.error.FFmpegError as exc:
            log.warning("stream %s: audio decode error (%s); continuing", self.name, exc)
            return
        if self._audio_next is None:
            self._audio_next = math.floor(t * AUDIO_RATE / decoder.sample_rate)
        for frame in frames:
            frame.pts = None
            for resampled in resampler.resample(frame):
                resampled.pts = self._audio_next
                self._audio_next += resampled.samples
                for out in encoder.encode(resampled):
                    self._package_audio_packet(out)

    def _package_audio_packet(self, out: Packet[Stream]) -> None:
        # The AAC encoder's priming puts its first packet 1024 samples before the first
        # input sample: when that input starts right at our zero (WHIP, Opus), the packet
        # would fall before the timeline, which fragments cannot express.
        if self._audio is not None and out.pts is not None and out.pts >= 0:
            self.packager.add(self._audio, out.pts, out.pts, bytes(out), True)
