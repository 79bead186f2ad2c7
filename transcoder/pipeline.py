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
# Audio segments without any video before a stream counts as audio-only.
AUDIO_ONLY_AFTER_SEGMENTS = 2
DECODERS = {"h264": "h264", "hevc": "hevc", "av1": "libdav1d", "vp8": "vp8", "vp9": "vp9"}


class PipelineError(RuntimeError):
    pass


class MediaChangeRefused(PipelineError):
    """The publisher changed its media mid-stream in a way this timeline cannot follow: the
    stream ends and the publisher is told to republish (not a transcoder failure)."""


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


def open_aac_encoder(
    kbps: int, rate: int = AUDIO_RATE, channels: int = 2
) -> tuple[AudioCodecContext, TrackSpec]:
    """The shared audio rendition's encoder: AAC-LC, 48 kHz stereo unless the rendition
    already has another format (a publisher's changed parameters are re-encoded to it)."""
    encoder = audio_context("aac", "w")
    encoder.sample_rate = rate
    encoder.layout = "stereo" if channels == 2 else "mono"
    encoder.format = "fltp"
    encoder.time_base = Fraction(1, rate)
    encoder.bit_rate = kbps * 1000
    encoder.open()
    asc = bytes(encoder.extradata or b"")
    track = TrackSpec(
        2, "audio", rate, asc, sample_rate=rate, channels=channels, avg_bitrate=kbps * 1000
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
        self.frames_retimed = 0
        self._pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix=f"rung-{name}")

    # ---- ingest ---------------------------------------------------------------------

    def on_video_config(self, config: VideoConfig) -> None:
        if config == self._video_config:
            return
        decoder_name = DECODERS.get(config.codec)
        if decoder_name is None:
            raise PipelineError(f"no decoder for video codec {config.codec!r}")
        if self._video_config is not None:
            self._video_changed(self._video_config, config)
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
            # New parameters mid-stream (no republish): the rendition keeps its init, so
            # players follow without a discontinuity; the new audio is decoded and
            # re-encoded to the rendition's own rate and channels.
            passthrough = self._audio_encoder is None
            if (
                not passthrough
                or config.codec != "aac"
                or config.extradata != self._audio.track.extradata
            ):
                log.info(
                    "stream %s: audio now %s %s Hz %s ch; re-encoded to the rendition's "
                    "%d Hz %d ch",
                    self.name,
                    config.codec,
                    config.sample_rate,
                    config.channels,
                    self._audio.track.sample_rate,
                    self._audio.track.channels,
                )
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

    def _check_audio_only(self) -> None:
        """No video after a few segments of audio: an audio-only publication (an RTMP
        radio feed). Its manifests list the audio rendition alone; video that starts
        later still gets its ladder (and the manifests list it from then on)."""
        if (
            self._video_config is None
            and self._audio is not None
            and not self.packager.audio_only
            and (len(self._audio.segments) >= AUDIO_ONLY_AFTER_SEGMENTS or self.packager.ended)
        ):
            log.info("stream %s: audio only (no video); manifests list the audio", self.name)
            self.packager.audio_only = True

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
        self.packager.ended = True
        self._check_audio_only()
        self.packager.finish()
        self._pool.shutdown()
        log.info(
            "stream %s: transcode finished, %d frames in, %d dropped, %d retimed, %s segments",
            self.name,
            self.frames_in,
            self.frames_dropped,
            self.frames_retimed,
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
            pts = self._retime(pts)
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

    def _retime(self, pts: int) -> int:
        """A repeated or backwards timestamp (an encoder with a coarse or stalled clock, a
        publisher's clock jump): the frame is kept, one nominal frame after the last one,
        until the publisher's timestamps move ahead again."""
        if not self.frames_retimed:
            log.warning(
                "stream %s: video timestamp %.3f s not after the previous frame's %.3f s; "
                "retiming such frames at the nominal frame rate",
                self.name,
                pts / VIDEO_TIMESCALE,
                self._last_video_pts / VIDEO_TIMESCALE,
            )
        self.frames_retimed += 1
        fps = (self._video_config.fps if self._video_config else None) or 30.0
        return self._last_video_pts + max(1, round(VIDEO_TIMESCALE / fps))

    def _video_changed(self, old: VideoConfig, new: VideoConfig) -> None:
        """New video parameters mid-stream (no republish). The ladder keeps its rungs: the
        old decoder's last frames are encoded, then new frames are scaled into the same
        sizes, so the renditions and their init segments do not change. The source rung
        repackages the publisher's own samples, which a new init would have to describe:
        that stream ends clearly instead (the publisher republishes)."""
        log.warning(
            "stream %s: video parameters changed mid-stream (%s %sx%s -> %s %sx%s)",
            self.name,
            old.codec,
            old.width,
            old.height,
            new.codec,
            new.width,
            new.height,
        )
        if self._source is not None:
            raise MediaChangeRefused(
                "video parameters changed mid-stream while the source rung passes them "
                "through; republish to start a new timeline"
            )
        if self._decoder is not None and self._t0 is not None:
            try:
                for frame in self._decoder.decode(None):
                    self._video_frame(frame, self._decoder_time_base)
            except av.error.FFmpegError as exc:
                log.warning("stream %s: decoder flush failed: %s", self.name, exc)

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
        if self._audio_encoder is not None:
            return
        if self._audio is None:
            self._audio_encoder, track = open_aac_encoder(self.config.audio_kbps)
            self._audio = self.packager.add_rendition("audio", track, "mp4a.40.2")
        else:
            # Was AAC passthrough: encode to the rendition's own format, or stop cleanly
            # when our encoder cannot produce it (HE-AAC without libfdk).
            track = self._audio.track
            self._audio_encoder, ours = open_aac_encoder(
                self.config.audio_kbps, track.sample_rate, track.channels
            )
            if ours.extradata != track.extradata:
                raise MediaChangeRefused(
                    "audio parameters changed mid-stream and the rendition's format "
                    f"({self._audio.codecs}) cannot be re-encoded; republish"
                )
        layout = "stereo" if self._audio.track.channels == 2 else "mono"
        self._resampler = av.AudioResampler(
            format="fltp", layout=layout, rate=self._audio.track.sample_rate
        )

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
        # snap to the expected position unless there is a real gap. A frame stamped
        # before that position (a repeated or backwards timestamp) is kept there too:
        # the sample count is audio's clock.
        if self._audio_next is not None and t - self._audio_next < AAC_FRAME // 2:
            t = self._audio_next
        self._audio_next = t + AAC_FRAME
        self.packager.add(self._audio, t, t, packet.data, True)
        self._check_audio_only()

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
            self._audio_next = t  # already in the rendition's timescale
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
            self._check_audio_only()
