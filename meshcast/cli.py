"""``meshcast`` command line (its flags are contracts: README.md, docs/).

Defaults are the config dataclasses' own (meshcast/config.py). Modules that load PyAV,
aiortc, numpy or an event loop are imported by the commands that need them, so key and
rewards commands start fast.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final, get_args

from meshcast import config as cfg
from meshcast.logs import LogLevel, setup_logging
from meshcast.paths import player_url, rtmp_publish_url
from meshcast.rewards import RewardParams
from meshcast.sizes import parse_size
from transcoder.ladder import parse_ladder

ORIGIN: Final = cfg.OriginConfig()
EDGE: Final = cfg.EdgeConfig(origin="")
TRANSCODE: Final = ORIGIN.transcode
NETWORK: Final = ORIGIN.network
REWARDS: Final = NETWORK.rewards
TRANSCODER_NODE: Final = cfg.TranscoderNodeConfig(bus="")


def _add_transcode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--store",
        default="",
        metavar="URL",
        help="segment store: s3://BUCKET[/PREFIX]?endpoint=http://HOST:PORT/s3 (credentials "
        "from AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY); default: DATA/live on disk",
    )
    p.add_argument(
        "--encoder",
        choices=get_args(cfg.Encoder),
        default=TRANSCODE.encoder,
        help="H.264 encoder: auto (NVENC if it opens, else libx264) or force one",
    )
    p.add_argument(
        "--segment-duration",
        type=float,
        default=TRANSCODE.segment_duration,
        help="seconds per segment",
    )
    p.add_argument(
        "--source-rung",
        action="store_true",
        help="also offer the source H.264 as a 'source' rendition (no re-encode)",
    )
    p.add_argument(
        "--dvr-window",
        type=int,
        default=TRANSCODE.window_segments,
        help="segments listed in live playlists",
    )
    ladder = ",".join(f"{height}:{kbps}" for height, kbps in TRANSCODE.ladder)
    p.add_argument(
        "--ladder",
        type=parse_ladder,
        default=None,
        help=f"rungs as HEIGHT:KBPS,... (default {ladder})",
    )


def _add_origin_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--data", type=Path, default=ORIGIN.data_dir, help="data directory (keys, media)"
    )
    p.add_argument("--host", default=ORIGIN.host, help="address to listen on")
    p.add_argument("--http-port", type=int, default=ORIGIN.http_port)
    p.add_argument("--rtmp-port", type=int, default=ORIGIN.rtmp_port)
    p.add_argument("--demo", action="store_true", help="publish the synthetic stream 'demo'")
    p.add_argument("--bus", default=None, metavar="URL", help="NATS event bus, nats://HOST:4222")
    _add_transcode_args(p)
    _add_http_limit_args(p)
    _add_vod_limit_args(p)
    p.add_argument(
        "--transcoders",
        choices=get_args(cfg.Transcoders),
        default=ORIGIN.transcoders,
        help="transcode in local workers, on transcoder nodes found on --bus, or auto",
    )
    p.add_argument(
        "--transcoder-secret",
        default=ORIGIN.transcoder_secret,
        help="shared with `meshcast transcoder`",
    )
    p.add_argument(
        "--no-recording",
        dest="recording",
        action="store_false",
        help="never record live streams (default: per stream key, see keys create --no-record)",
    )
    p.add_argument(
        "--record-budget",
        type=parse_size,
        default=None,
        help="cap one owner's recordings and clips lower than its VOD quota (--vod-quota)",
    )
    p.add_argument(
        "--record-dvr",
        type=float,
        default=cfg.RecordingConfig().dvr_window,
        metavar="SECONDS",
        help="seconds viewers can seek back in a recorded live stream (default 7200)",
    )
    p.add_argument(
        "--epoch",
        type=float,
        default=REWARDS.epoch_seconds,
        metavar="SECONDS",
        help="contributor network: rewards epoch length",
    )
    p.add_argument(
        "--reward-pool", type=int, default=REWARDS.base_pool, help="reward units per epoch"
    )
    p.add_argument(
        "--beacon-sample-rate",
        type=float,
        default=REWARDS.beacon_sample_rate,
        help="share of players sending beacons",
    )
    p.add_argument(
        "--spot-check-rate",
        type=float,
        default=NETWORK.spot_check_rate,
        help="inference marketplace: share of done jobs re-executed on another node",
    )
    p.add_argument(
        "--ice-server",
        action="append",
        default=[],
        metavar="URL",
        help="STUN/TURN URL offered to WHIP publishers (repeatable), e.g. stun:stun.example:3478",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="meshcast", description=__doc__)
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=get_args(LogLevel),
        default=None,
        help="default INFO, or $MESHCAST_LOG_LEVEL",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="origin + RTMP + edges in one process")
    _add_origin_args(up)
    up.add_argument("--edges", type=int, default=2, help="edges on http-port+1 ... +N")
    up.add_argument("--plugin", action="append", default=[], help="edge plugin to enable")
    up.add_argument(
        "--plugin-option",
        action="append",
        default=[],
        metavar="PLUGIN.KEY=VALUE",
        help="edge plugin option, e.g. moderation.policy=NAME:block (repeatable)",
    )
    _add_edge_cache_args(up)
    _add_storage_args(up)
    up.add_argument(
        "--network",
        action="store_true",
        help="join the edges to the origin's contributor network (node keys in DATA/edge-PORT)",
    )

    origin = sub.add_parser("origin", help="origin only (HTTP + RTMP)")
    _add_origin_args(origin)

    edge = sub.add_parser("edge", help="one edge")
    edge.add_argument("--origin", required=True, help="origin base URL")
    edge.add_argument("--host", default=EDGE.host)
    edge.add_argument("--port", type=int, required=True)
    edge.add_argument("--peer", action="append", default=[], help="peer edge base URL")
    edge.add_argument("--cache-mem", type=parse_size, default=EDGE.cache_mem)
    edge.add_argument("--cache-disk", type=parse_size, default=EDGE.cache_disk)
    _add_edge_cache_args(edge)
    _add_http_limit_args(edge)
    _add_storage_args(edge)
    edge.add_argument(
        "--cache-dir", type=Path, default=None, help="disk tier and access log (data/edge-PORT)"
    )
    edge.add_argument("--plugin", action="append", default=[], help="edge plugin to enable")
    edge.add_argument("--plugin-option", action="append", default=[], metavar="PLUGIN.KEY=VALUE")
    edge.add_argument(
        "--data", type=Path, default=EDGE.data_dir, help="data directory (S3 keys for storage)"
    )
    edge.add_argument("--bus", default=None, metavar="URL", help="NATS event bus: peers, streams")
    edge.add_argument("--advertise", default=None, metavar="URL", help="URL peers reach us at")
    edge.add_argument(
        "--join", default=None, metavar="URL", help="contributor network coordinator (origin URL)"
    )
    edge.add_argument(
        "--node-dir", type=Path, default=None, help="node.key and receipts (default: cache dir)"
    )
    edge.add_argument(
        "--receipt-interval",
        type=float,
        default=EDGE.receipt_interval,
        help="seconds between usage receipts",
    )
    edge.add_argument(
        "--bandwidth", type=parse_size, default=EDGE.bandwidth, help="advertised bytes per second"
    )

    node = sub.add_parser("node", help="contributor network node identity")
    nsub = node.add_subparsers(dest="node_command", required=True)
    ninit = nsub.add_parser("init", help="create the node's Ed25519 key pair")
    ninit.add_argument("--data", type=Path, default=cfg.DEFAULT_DATA_DIR)
    ninit.add_argument("--force", action="store_true", help="replace an existing key")
    nshow = nsub.add_parser("show", help="print the node id and public key")
    nshow.add_argument("--data", type=Path, default=cfg.DEFAULT_DATA_DIR)

    rewards = sub.add_parser("rewards", help="contributor rewards ledger")
    rewards.add_argument("--coordinator", default=None, metavar="URL", help="origin URL")
    rewards.add_argument("--data", type=Path, default=None, help="coordinator data directory")
    rewards.add_argument("--node", default=None, help="one node id")
    rsub = rewards.add_subparsers(dest="rewards_command")
    rverify = rsub.add_parser("verify", help="verify a signed epoch export with public keys")
    rverify.add_argument("file", type=Path)
    rverify.add_argument(
        "--pubkeys", type=Path, default=None, help='JSON {"node_…": "base64 key"} to pin'
    )
    rverify.add_argument("--coordinator-key", default=None, help="coordinator public key")

    tr = sub.add_parser("transcoder", help="a transcoder node: takes live streams from origins")
    tr.add_argument("--bus", required=True, metavar="URL", help="NATS event bus")
    node_defaults = TRANSCODER_NODE
    tr.add_argument(
        "--data", type=Path, default=node_defaults.data_dir, help="segment store directory"
    )
    tr.add_argument("--host", default=node_defaults.host, help="address to listen on")
    tr.add_argument("--port", type=int, default=node_defaults.port, help="port origins connect to")
    tr.add_argument(
        "--http-port", type=int, default=node_defaults.http_port, help="/healthz and /metrics"
    )
    tr.add_argument("--advertise", default=None, metavar="URL", help="tcp://HOST:PORT for origins")
    tr.add_argument(
        "--secret",
        default=node_defaults.secret,
        help="shared with the origins' --transcoder-secret",
    )
    _add_transcode_args(tr)

    bench = sub.add_parser("bench", help="offline benchmarks")
    bsub = bench.add_subparsers(dest="bench_command", required=True)
    bcache = bsub.add_parser("cache", help="replay an access trace through each cache policy")
    bcache.add_argument("--trace", type=Path, required=True, help="CSV ts,client,path,bytes")
    bcache.add_argument(
        "--cache-size", default="10%", help="percent of the trace's distinct bytes, or bytes"
    )
    bcache.add_argument("--json", action="store_true", help="machine-readable output")

    gen = bsub.add_parser("gen-trace", help="write a synthetic, seeded video access trace")
    gen.add_argument("--out", type=Path, required=True)
    # Unset: edge/tracegen.py's Workload defaults.
    gen.add_argument("--seed", type=int)
    gen.add_argument("--duration", type=float, help="seconds of trace")
    gen.add_argument("--arrivals", type=float, help="viewer arrivals per second")
    gen.add_argument("--vod-share", type=float, help="share of VOD sessions")

    vod = sub.add_parser("vod", help="on-demand assets")
    vsub = vod.add_subparsers(dest="vod_command", required=True)
    vadd = vsub.add_parser(
        "add", help="upload a video file (tus, resumable), wait for the transcode, print URLs"
    )
    vadd.add_argument("file", type=Path)
    vadd.add_argument("--origin", default=f"http://{ORIGIN.host}:{ORIGIN.http_port}")
    vadd.add_argument(
        "--key",
        default=None,
        help="API key (a stream key from `meshcast keys create`); default $MESHCAST_API_KEY",
    )
    vadd.add_argument("--resume", default=None, help="upload URL to resume (else remembered)")
    vadd.add_argument("--chunk-size", type=parse_size, help="bytes per PATCH")
    vadd.add_argument("--no-wait", action="store_true", help="print the id after the upload")

    from meshcast.keys import KINDS, STREAM_KIND

    keys = sub.add_parser("keys", help="stream, API and admin keys")
    ksub = keys.add_subparsers(dest="keys_command", required=True)
    for name, help_text in (
        ("create", "create a key and print it"),
        ("list", "list keys (never the secrets)"),
        ("revoke", "revoke a key"),
    ):
        k = ksub.add_parser(name, help=help_text)
        if name != "list":
            k.add_argument("name")
        k.add_argument("--data", type=Path, default=cfg.DEFAULT_DATA_DIR)
        if name != "list":
            k.add_argument(
                "--kind",
                choices=KINDS,
                # revoke: NAME's only key when there is one kind
                default=STREAM_KIND if name == "create" else None,
                help="stream (publish NAME), s3 (prints ACCESS_KEY_ID SECRET_ACCESS_KEY), "
                "api (manage creator NAME's streams), admin",
            )
        if name == "create":
            k.add_argument("--owner", default=None, help="creator owning the stream (default NAME)")
            k.add_argument(
                "--no-record",
                dest="record",
                action="store_false",
                help="stream keys: do not record publications as VOD assets",
            )
    return parser


def _add_http_limit_args(parser: argparse.ArgumentParser) -> None:
    limits = ORIGIN.http
    parser.add_argument(
        "--max-connections-per-ip",
        type=int,
        default=limits.max_per_address,
        metavar="N",
        help="HTTP connections one client address may hold (docs/hardening.md)",
    )


def _http_limits(args: argparse.Namespace) -> cfg.HttpLimits:
    return dataclasses.replace(ORIGIN.http, max_per_address=args.max_connections_per_ip)


def _add_vod_limit_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--vod-quota",
        type=parse_size,
        default=ORIGIN.vod.max_owner_bytes,
        metavar="SIZE",
        help="bytes of uploads one owner may keep",
    )
    parser.add_argument(
        "--vod-max-jobs",
        type=int,
        default=ORIGIN.vod.max_owner_jobs,
        metavar="N",
        help="unfinished uploads one owner may have",
    )


def _add_storage_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--s3-region",
        default=EDGE.storage.region,
        metavar="REGION",
        help="storage plugin: the region S3 clients must sign for",
    )


def _add_edge_cache_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-policy",
        choices=get_args(cfg.CachePolicy),
        default=EDGE.cache_policy,
        help="eviction",
    )
    parser.add_argument(
        "--prefetch-budget",
        type=parse_size,
        default=EDGE.prefetch_budget,
        help="prefetch next segments, at most SIZE bytes per second (0: off)",
    )


def _transcode_config(args: argparse.Namespace) -> cfg.TranscodeConfig:
    if args.store:
        from meshcast.s3store import S3Location

        try:
            S3Location.parse(args.store)
        except ValueError as exc:
            raise SystemExit(f"meshcast: --store: {exc}") from None
    transcode = cfg.TranscodeConfig(
        segment_duration=args.segment_duration,
        window_segments=args.dvr_window,
        encoder=args.encoder,
        source_rung=args.source_rung,
        segment_store=args.store,
    )
    if args.ladder:
        ladder = tuple((spec.height, spec.video_kbps) for spec in args.ladder)
        transcode = dataclasses.replace(transcode, ladder=ladder)
    return transcode


def _origin_config(args: argparse.Namespace) -> cfg.OriginConfig:
    transcode = _transcode_config(args)
    return cfg.OriginConfig(
        data_dir=args.data,
        host=args.host,
        http_port=args.http_port,
        rtmp_port=args.rtmp_port,
        demo=args.demo,
        transcode=transcode,
        whip=cfg.WhipConfig(ice_servers=tuple(args.ice_server)),
        bus=args.bus,
        transcoders=args.transcoders,
        transcoder_secret=args.transcoder_secret,
        recording=cfg.RecordingConfig(
            enabled=args.recording, owner_budget=args.record_budget, dvr_window=args.record_dvr
        ),
        network=cfg.NetworkConfig(
            rewards=RewardParams(
                epoch_seconds=args.epoch,
                base_pool=args.reward_pool,
                beacon_sample_rate=args.beacon_sample_rate,
            ),
            spot_check_rate=args.spot_check_rate,
        ),
        vod=dataclasses.replace(
            ORIGIN.vod, max_owner_bytes=args.vod_quota, max_owner_jobs=args.vod_max_jobs
        ),
        http=_http_limits(args),
    )


def _cmd_keys(args: argparse.Namespace) -> int:
    from meshcast.keys import KeyError_, KeyStore

    store = KeyStore(args.data)
    try:
        if args.keys_command == "create":
            print(store.create(args.name, args.kind, args.owner, args.record))
        elif args.keys_command == "revoke":
            store.revoke(args.name, args.kind)
            print(f"revoked {args.name}", file=sys.stderr)
        else:
            for record in store.list():
                state = "active" if record.active else "revoked"
                extra = "\tno-record" if record.kind == "stream" and not record.record else ""
                print(f"{record.name}\t{record.kind}\t{state}\tid={record.key_id}{extra}")
    except KeyError_ as exc:
        print(f"meshcast: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_vod(args: argparse.Namespace) -> int:
    import os

    from meshcast.vod_client import AddOptions, add

    key = args.key or os.environ.get("MESHCAST_API_KEY")
    if not key:
        print("meshcast: no API key: pass --key or set MESHCAST_API_KEY", file=sys.stderr)
        return 2
    if not args.file.is_file():
        print(f"meshcast: {args.file}: no such file", file=sys.stderr)
        return 2
    options = AddOptions(
        file=args.file,
        origin=args.origin,
        key=key,
        resume=args.resume,
        wait=not args.no_wait,
        **_given(chunk_size=args.chunk_size),
    )
    return add(options)


def _cmd_node(args: argparse.Namespace) -> int:
    from meshcast.signing import NODE_KEY_FILE, KeyFileExists, NodeKey

    path = args.data / NODE_KEY_FILE
    try:
        if args.node_command == "init":
            key = NodeKey.create(path, force=args.force)
        else:
            key = NodeKey.load(path)
    except (KeyFileExists, OSError, ValueError) as exc:
        print(f"meshcast: {exc}", file=sys.stderr)
        return 1
    print(f"node_id {key.node_id}")
    print(f"public_key {key.public_key}")
    return 0


def _cmd_rewards(args: argparse.Namespace) -> int:
    import json

    if args.rewards_command == "verify":
        from meshcast.rewards import ExportInvalid, verify_export

        try:
            doc = json.loads(args.file.read_text())
            pins = json.loads(args.pubkeys.read_text()) if args.pubkeys else None
            summary = verify_export(doc, args.coordinator_key, pins)
        except (OSError, ValueError, ExportInvalid) as exc:
            print(f"meshcast: export does not verify: {exc}", file=sys.stderr)
            return 1
        print(
            f"epoch {summary.epoch} verifies: {summary.nodes} nodes, {summary.receipts} "
            f"receipts, pool {summary.pool}, paid {sum(summary.rewards.values())}"
        )
        return 0
    try:
        rows = _reward_rows(args)
    except (OSError, ValueError, RuntimeError) as exc:
        print(f"meshcast: {exc}", file=sys.stderr)
        return 1
    print(
        f"{'epoch':>8} {'node':<38} {'claimed B':>14} {'verified B':>14} "
        f"{'stored B*s':>16} {'infer s':>8} {'reward':>10}  flags"
    )
    none = {"claimed": 0, "verified": 0, "flags": []}
    for row in rows:
        kinds = row["kinds"]
        bw = kinds.get("bandwidth", none)
        stored = kinds.get("storage", none)["verified"]
        inferred = kinds.get("inference", none)["verified"]
        flags = sorted({f for k in kinds.values() for f in k["flags"]})
        print(
            f"{row['epoch']:>8} {row['node']:<38} {bw['claimed']:>14} {bw['verified']:>14} "
            f"{stored:>16} {inferred:>8} {row['reward']:>10}  {','.join(flags) or '-'}"
        )
    return 0


def _reward_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.coordinator:
        import httpx

        params = {"node": args.node} if args.node else {}
        try:
            r = httpx.get(f"{args.coordinator.rstrip('/')}/api/rewards", params=params, timeout=10)
        except httpx.HTTPError as exc:
            raise RuntimeError(f"coordinator {args.coordinator}: {exc}") from exc
        if r.status_code != 200:
            raise RuntimeError(f"coordinator answered {r.status_code}: {r.text[:200]}")
        rows: list[dict[str, Any]] = r.json()["epochs"]
        return rows
    from origin.coordinator import read_only_rewards

    return read_only_rewards(args.data or ORIGIN.data_dir, args.node)


def _cmd_gen_trace(args: argparse.Namespace) -> int:
    from edge.tracegen import Workload, write_trace

    workload = Workload(
        **_given(
            seed=args.seed,
            duration_s=args.duration,
            arrivals_per_s=args.arrivals,
            vod_share=args.vod_share,
        )
    )
    lines = write_trace(workload, args.out)
    print(f"wrote {lines} requests to {args.out}", file=sys.stderr)
    return 0


def _cmd_bench_cache(args: argparse.Namespace) -> int:
    import json

    from edge.simulate import TraceError, parse_cache_size, run_all

    try:
        capacity = parse_cache_size(args.cache_size, args.trace)
        report = run_all(args.trace, capacity)
    except (OSError, TraceError, ValueError) as exc:
        print(f"meshcast: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"trace {args.trace}, cache {capacity} bytes")
    print(f"{'policy':<8} {'byte miss':>10} {'object miss':>12} {'origin bytes':>14} {'p99 us':>8}")
    for name, r in report["policies"].items():
        print(
            f"{name:<8} {r['byte_miss_ratio']:>10.4f} {r['object_miss_ratio']:>12.4f} "
            f"{r['origin_bytes']:>14} {r['decision_us_p99']:>8.2f}"
        )
    return 0


async def _up(args: argparse.Namespace) -> None:
    from edge.service import EdgeService
    from meshcast.signing import NODE_KEY_FILE, NodeKey
    from meshcast.supervisor import run_services
    from origin.service import OriginService

    origin = OriginService(_origin_config(args))
    origin_url = f"http://{args.host}:{args.http_port}"
    edge_ports = [args.http_port + i for i in range(1, args.edges + 1)]
    if args.network:
        for port in edge_ports:
            NodeKey.load_or_create(args.data / f"edge-{port}" / NODE_KEY_FILE)
    edges = [
        EdgeService(
            cfg.EdgeConfig(
                origin=origin_url,
                host=args.host,
                port=port,
                # every edge knows the others: one ring
                peers=tuple(f"http://{args.host}:{p}" for p in edge_ports if p != port),
                cache_dir=args.data / f"edge-{port}",
                cache_policy=args.cache_policy,
                prefetch_budget=args.prefetch_budget,
                plugins=tuple(args.plugin),
                plugin_options=tuple(args.plugin_option),
                bus=args.bus,
                data_dir=args.data,
                join=origin_url if args.network else None,  # node key in cache_dir
                storage=dataclasses.replace(EDGE.storage, region=args.s3_region),
                http=_http_limits(args),
            )
        )
        for port in edge_ports
    ]
    viewer_base = f"http://{args.host}:{args.http_port + 1 if edges else args.http_port}"
    lines = [
        "meshcast is up",
        f"  publish:  {rtmp_publish_url(args.host, args.rtmp_port)}  "
        f"(stream key: meshcast keys create NAME --data {args.data})",
        f"  origin:   http://{args.host}:{args.http_port}",
        *(f"  edge:     http://{args.host}:{args.http_port + i}" for i in range(1, len(edges) + 1)),
        f"  player:   {player_url(viewer_base, 'demo' if args.demo else 'NAME')}",
        f"  studio:   http://{args.host}:{args.http_port}/studio/  "
        f"(API key: meshcast keys create NAME --kind api --data {args.data})",
        "ready",
    ]
    await run_services([origin, *edges], on_ready=lambda: "\n".join(lines))


async def _origin(args: argparse.Namespace) -> None:
    from meshcast.supervisor import run_services
    from origin.service import OriginService

    origin = OriginService(_origin_config(args))
    await run_services(
        [origin],
        on_ready=lambda: (
            f"origin ready: {origin.url}  publish: {rtmp_publish_url(args.host, origin.rtmp.port)}"
        ),
    )


async def _edge(args: argparse.Namespace) -> None:
    from edge.service import EdgeService
    from meshcast.supervisor import run_services

    edge = EdgeService(
        cfg.EdgeConfig(
            origin=args.origin,
            host=args.host,
            port=args.port,
            peers=tuple(args.peer),
            cache_mem=args.cache_mem,
            cache_disk=args.cache_disk,
            cache_dir=args.cache_dir or EDGE.data_dir / f"edge-{args.port}",
            cache_policy=args.cache_policy,
            prefetch_budget=args.prefetch_budget,
            plugins=tuple(args.plugin),
            plugin_options=tuple(args.plugin_option),
            bus=args.bus,
            advertise=args.advertise,
            join=args.join,
            node_dir=args.node_dir,
            receipt_interval=args.receipt_interval,
            bandwidth=args.bandwidth,
            data_dir=args.data,
            storage=dataclasses.replace(EDGE.storage, region=args.s3_region),
            http=_http_limits(args),
        )
    )
    await run_services([edge], on_ready=lambda: f"edge ready: {edge.url}")


async def _transcoder(args: argparse.Namespace) -> None:
    from meshcast.supervisor import run_services
    from transcoder.node import TranscoderNode

    node = TranscoderNode(
        cfg.TranscoderNodeConfig(
            bus=args.bus,
            data_dir=args.data,
            host=args.host,
            port=args.port,
            http_port=args.http_port,
            advertise=args.advertise,
            secret=args.secret,
            transcode=_transcode_config(args),
        )
    )
    await run_services([node], on_ready=lambda: f"transcoder ready: {node.ingest_url}")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    setup_logging(args.log_level)
    if args.command == "keys":
        return _cmd_keys(args)
    if args.command == "vod":
        return _cmd_vod(args)
    if args.command == "node":
        return _cmd_node(args)
    if args.command == "rewards":
        return _cmd_rewards(args)
    if args.command == "bench":
        return _cmd_bench_cache(args) if args.bench_command == "cache" else _cmd_gen_trace(args)
    import uvloop

    from edge.plugins import PluginOptionError, UnknownPlugin
    from transcoder.encoders import EncoderUnavailable

    runner = {"up": _up, "origin": _origin, "edge": _edge, "transcoder": _transcoder}[args.command]
    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as loop_runner:
            loop_runner.run(runner(args))
    except (OSError, EncoderUnavailable, UnknownPlugin, PluginOptionError) as exc:
        # OSError covers TimeoutError (a service that did not become ready in time).
        print(f"meshcast: {exc}", file=sys.stderr)
        return 1
    return 0


def _given(**values: Any) -> dict[str, Any]:
    """The options given on the command line; the rest keep their dataclass defaults."""
    return {name: value for name, value in values.items() if value is not None}


if __name__ == "__main__":
    sys.exit(main())
