"""Typed configuration objects, built once by the CLI and passed down."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from meshcast.rewards import RewardParams


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """Per-server limits on request heads and connections (see docs/hardening.md)."""

    # The request line plus headers, in all; one header line; header count (nginx refuses
    # lines above 8 kB: large_client_header_buffers 4 8k).
    max_head_bytes: int = 32 * 1024
    max_header_line: int = 8 * 1024
    max_headers: int = 100
    # Open connections plus running requests above which only RESERVED_PREFIXES are served
    # (503 for the rest), and the extra room they get before they are refused too.
    max_connections: int = 1024
    reserve: int = 256
    # Open connections of one client address: one host cannot take every slot. As many as
    # an edge's own pool towards its origin and peers (edge/app.py), so an edge is never
    # refused by its origin for its own traffic.
    max_per_address: int = 512


DEFAULT_HTTP_PORT = 8080
DEFAULT_RTMP_PORT = 1935
DEFAULT_DATA_DIR = Path("data")

# H.264 encoder: NVENC when it opens, else libx264 (auto), or one forced.
Encoder = Literal["auto", "nvenc", "x264"]
# Where live streams are transcoded (OriginConfig.transcoders).
Transcoders = Literal["auto", "local", "remote"]
# Edge cache eviction (edge/policies.py, edge/ml_policy.py).
CachePolicy = Literal["lru", "s3fifo", "sieve", "ml"]


@dataclass(frozen=True, slots=True)
class TranscodeConfig:
    segment_duration: float = 2.0
    # Segments listed in live playlists/MPDs: the DVR depth (6 x 2 s = 12 s by default).
    window_segments: int = 6
    # (height, video kbps) per rung; rungs above the source height are skipped.
    ladder: tuple[tuple[int, int], ...] = ((1080, 5000), (720, 2800), (480, 1400), (360, 800))
    encoder: Encoder = "auto"
    audio_kbps: int = 128
    # Add the source H.264 as a "source" rendition, repackaged without re-encoding.
    source_rung: bool = False
    # Packets queued for a stream's worker before the ingest side starts dropping.
    queue_packets: int = 2000
    # Where segments and manifests go: "" = DATA/live on local disk; "s3://BUCKET[/PREFIX]
    # ?endpoint=URL" = any S3 API (meshcast/s3store.py), read back by the origin from there.
    segment_store: str = ""


@dataclass(frozen=True, slots=True)
class WhipConfig:
    # A WHIP session without any media for this long (ICE never completed, the publisher
    # vanished without DELETE) is closed and its stream ended, like the RTMP idle timeout.
    idle_timeout: float = 15.0
    # No video frame for this long is logged as a freeze (and a keyframe is requested).
    freeze_after: float = 1.0
    max_offer_bytes: int = 64 * 1024
    max_sessions: int = 64
    # STUN/TURN URLs advertised to publishers (Link rel="ice-server") and used by our own
    # ICE agent; none by default (loopback and LAN need none).
    ice_servers: tuple[str, ...] = ()


# Decoders an upload may need (FFmpeg codec names); anything else is refused before a
# frame is decoded: rare decoders are where decoder bugs live.
VIDEO_CODECS = frozenset(
    {"h264", "hevc", "vp8", "vp9", "av1", "mpeg4", "mpeg2video", "mpeg1video", "prores",
     "dnxhd", "mjpeg", "theora"}
)  # fmt: skip
AUDIO_CODECS = frozenset(
    {"aac", "mp3", "mp2", "opus", "vorbis", "flac", "alac", "ac3", "eac3", "pcm_s16le",
     "pcm_s16be", "pcm_s24le", "pcm_s32le", "pcm_f32le"}
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ProbeLimits:
    """What an upload may ask of the transcoder, checked by the probe before any chunk is
    planned (refusals answer 422 with the reason)."""

    max_width: int = 4096
    max_height: int = 4096
    max_frame_pixels: int = 4096 * 2304
    # Width x height x output frame rate: 4096x2160 at 60 fps.
    max_pixel_rate: int = 4096 * 2160 * 60
    max_duration: float = 6 * 3600.0
    # Output frames per frame in the file: a file whose timestamps spread a few frames
    # over hours would otherwise become hours of duplicated frames.
    max_duplication: float = 60.0
    video_codecs: frozenset[str] = VIDEO_CODECS
    audio_codecs: frozenset[str] = AUDIO_CODECS


@dataclass(frozen=True, slots=True)
class VodConfig:
    # Uploads above this many bytes are refused (413) before a byte is stored.
    max_upload: int = 20 * 1024**3
    # Chunk-transcode processes; 0 = one per CPU core.
    workers: int = 0
    # Segments per chunk: 5 x 2 s = 10 s of video per chunk job.
    chunk_segments: int = 5
    probe: ProbeLimits = field(default_factory=ProbeLimits)
    # Per owner: bytes of uploads kept (every state), and uploads not yet ready or failed.
    max_owner_bytes: int = 100 * 1024**3
    max_owner_jobs: int = 8
    # Jobs transcoding at once (each gets a fair share of the workers; the rest queue).
    max_active_jobs: int = 8
    # A job whose worker process died (crash, OOM kill) runs again this many times.
    max_crashes: int = 2
    # The upload-time probe (container headers) must answer within this many seconds.
    probe_timeout: float = 30.0


@dataclass(frozen=True, slots=True)
class RecordingConfig:
    """Live recording to VOD (origin/recordings.py); per stream key unless disabled here."""

    enabled: bool = True
    # An owner's disk budget is the VOD storage quota (VodConfig.max_owner_bytes, uploads,
    # recordings and clips together); this optionally caps recordings and clips lower. A
    # recording stops (keeping what it has) when it would pass it; none starts when full.
    owner_budget: int | None = None
    # While recording, live playlists list this many seconds (viewers seek back: DVR).
    dvr_window: float = 7200.0
    # Longest clip (seconds) POST /api/streams/NAME/clips accepts.
    max_clip: float = 6 * 3600.0


@dataclass(frozen=True, slots=True)
class NetworkConfig:
    """The origin as contributor-network coordinator (origin/coordinator.py)."""

    enabled: bool = True
    rewards: RewardParams = field(default_factory=RewardParams)
    # An epoch closes this long after its end, so receipts of its last period can arrive.
    close_grace: float = 60.0
    # Signed timestamps and receipt periods may be this far ahead of our clock.
    max_skew: float = 30.0
    # A node is live while it heartbeats at least this often.
    node_ttl: float = 10.0
    beacon_rate: float = 20.0  # beacons per second per client address
    beacon_burst: float = 100.0
    beacon_max_bytes: int = 1 << 30
    # Bytes per second one client address may report over an epoch (16 viewers at
    # 8 Mbit/s): what a node forging beacons from one address can add at most.
    beacon_address_rate: float = 16_000_000.0
    # Storage proofs: each live storing node gets this many random chunk challenges this
    # often, each answered within the timeout (origin/storage_challenges.py).
    challenge_interval: float = 60.0
    challenges_per_round: int = 2
    challenge_timeout: float = 10.0
    # Inference marketplace (origin/inference.py): share of done jobs re-executed on
    # another node and compared; executions of a job before it fails; seconds a node has
    # to answer one; executions in flight in all and per node (a plugin pool's queue); how
    # long a job waits for a capable node; jobs waiting at most.
    spot_check_rate: float = 0.1
    inference_attempts: int = 3
    inference_timeout: float = 60.0
    inference_concurrency: int = 16
    inference_per_node: int = 2
    inference_queue_timeout: float = 300.0
    inference_max_queued: int = 1000


@dataclass(frozen=True, slots=True)
class OriginConfig:
    data_dir: Path = DEFAULT_DATA_DIR
    host: str = "127.0.0.1"
    http_port: int = DEFAULT_HTTP_PORT
    rtmp_port: int = DEFAULT_RTMP_PORT
    demo: bool = False
    # Seconds without any bytes from a publisher before we drop it (dead TCP peers
    # would otherwise hold the stream name forever).
    rtmp_idle_timeout: float = 15.0
    rtmp_handshake_timeout: float = 10.0
    # After the handshake, a publish must be accepted within this long (an unauthenticated
    # connection holds a slot until then).
    rtmp_publish_timeout: float = 10.0
    max_rtmp_connections: int = 256
    # Per client IP: one host cannot take every slot.
    max_rtmp_connections_per_ip: int = 16
    # Failed stream/API key checks per IP per minute before RTMP/WHIP/API refuse it (429).
    key_failures_per_minute: int = 10
    # A stream that ended stays listed (state "ended") for this long.
    ended_stream_ttl: float = 300.0
    whip: WhipConfig = field(default_factory=WhipConfig)
    transcode: TranscodeConfig = field(default_factory=TranscodeConfig)
    vod: VodConfig = field(default_factory=VodConfig)
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    # Event bus: None = in-process; "nats://host:4222" = NATS (meshcast/nats_bus.py).
    bus: str | None = None
    # Where live streams are transcoded: "local" worker processes, "remote" transcoder
    # nodes found on the bus (refuse to publish when none is alive), or "auto" (remote
    # when one is alive, else local).
    transcoders: Transcoders = "auto"
    transcoder_secret: str = ""
    network: NetworkConfig = field(default_factory=NetworkConfig)
    http: HttpLimits = field(default_factory=HttpLimits)


@dataclass(frozen=True, slots=True)
class StorageConfig:
    """The edge plugin ``storage`` (S3 API, pinning): see README, Storage."""

    # Copies of every chunk and manifest, on the first k nodes by rendezvous hashing.
    replicas: int = 2
    chunk_size: int = 4 * 1024 * 1024
    max_object: int = 5 * 1024**3
    # How often each edge pushes what it holds to the owners that lack it.
    repair_interval: float = 10.0
    # How often each edge re-hashes every chunk it holds (bit rot, tampering).
    scrub_interval: float = 3600.0
    # Garbage collection of chunks that no object, pin or upload refers to any more
    # (deleted or overwritten objects, aborted uploads): how often, and the minimum age.
    gc_interval: float = 3600.0
    gc_grace: float = 3600.0
    # Memory for recently read, verified chunks (0: every read goes to disk and re-hashes).
    chunk_cache: int = 64 * 1024 * 1024
    # Objects larger than this are streamed from /ipfs/ without entering the edge cache.
    ipfs_cache_max: int = 64 * 1024 * 1024
    # The region of the S3 API: SigV4 credential scopes must name it (clients sign with it).
    region: str = "us-east-1"


@dataclass(frozen=True, slots=True)
class EdgeConfig:
    origin: str
    host: str = "127.0.0.1"
    port: int = DEFAULT_HTTP_PORT + 1
    peers: tuple[str, ...] = ()
    cache_mem: int = 256 * 1024 * 1024
    cache_disk: int = 0
    # Disk tier objects and the access log (access.csv, rotated).
    cache_dir: Path = DEFAULT_DATA_DIR / "edge"
    cache_policy: CachePolicy = "lru"
    # Byte budget per second of the prefetcher (edge/prefetch.py); 0 turns it off.
    prefetch_budget: int = 0
    # Viewer requests between refits of the ml policy's demand model.
    ml_retrain_every: int = 20_000
    # A cached manifest may be served STALE this long after it expired, while the
    # upstream fails; immutable segments are served until evicted.
    stale_grace: float = 60.0
    max_url: int = 2048
    # Seconds an edge trusts its copy of a stream's access policy (public|token): how long
    # a switch to token takes to reach every edge, and one policy fetch per stream per TTL.
    access_policy_ttl: float = 5.0
    # Off only in front of an upstream that is not a meshcast origin (no /api/access, no
    # token keys): every object is then served as public.
    access_control: bool = True
    plugins: tuple[str, ...] = field(default_factory=tuple)
    # "PLUGIN.KEY=VALUE" strings (edge/plugins/__init__.py), e.g. moderation.policy=NAME:block
    plugin_options: tuple[str, ...] = field(default_factory=tuple)
    # NATS URL: the edge announces itself and learns its peers and streams from the bus.
    bus: str | None = None
    # The URL other nodes reach this edge at (default http://HOST:PORT).
    advertise: str | None = None
    # Seconds between membership heartbeats; a peer silent for 4 of them leaves the ring.
    heartbeat: float = 2.0
    # Contributor network: the coordinator (origin) URL to register with, sign heartbeats
    # and usage receipts for; the node key lives in node_dir (default: cache_dir).
    join: str | None = None
    node_dir: Path | None = None
    receipt_interval: float = 10.0
    # Advertised upload capacity in bytes per second (the coordinator's supply estimate).
    bandwidth: int = 12_500_000
    # Shared data directory: S3 access keys (keys.json) and the peers' storage secret.
    data_dir: Path = DEFAULT_DATA_DIR
    storage: StorageConfig = field(default_factory=StorageConfig)
    http: HttpLimits = field(default_factory=HttpLimits)


@dataclass(frozen=True, slots=True)
class TranscoderNodeConfig:
    """A transcoder node (``meshcast transcoder``, transcoder/node.py)."""

    bus: str
    data_dir: Path = DEFAULT_DATA_DIR
    host: str = "127.0.0.1"
    port: int = 7000  # ingest (TCP) from origins
    http_port: int = 7001  # /healthz, /metrics
    advertise: str | None = None  # tcp://HOST:PORT origins connect to
    secret: str = ""
    capacity: int = field(default_factory=lambda: os.cpu_count() or 1)
    heartbeat: float = 2.0
    transcode: TranscodeConfig = field(default_factory=TranscodeConfig)
