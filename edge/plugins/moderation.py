"""Content moderation on the edge: keyframes of the lowest video rung through nudenet's
shipped detector, findings per stream, and a policy per stream.

- The ring owner of ``stream:NAME`` samples one keyframe every ``sample_every`` segments
  (segment numbers divisible by it, so a takeover keeps the same sampling grid), in a
  worker process behind a bounded queue (full: skipped and counted).
- Every sample becomes a finding with the detector's raw output (label, score, box per
  detection), kept in a per-stream ring buffer (and appended as a JSON line to ``file``
  when set). A finding is *flagged* when a detection's label is in ``labels`` with a score
  of at least ``threshold``; a flag emits ``moderation.flagged`` on the edge's bus (if any).
- Policy (``policy=NAME:POLICY`` per stream, ``default_policy`` otherwise):
  ``log`` records and logs; ``blur-poster`` also serves the stream's poster
  (``/api/moderation/NAME/poster.jpg``, the last sampled keyframe) blurred from then on;
  ``block`` makes every edge answer 451 for the stream's media, before the cache and on the
  FastPath. Other edges learn a block from the bus event or, without a bus, by polling the
  owner's findings while the stream is live.
- ``GET /api/moderation/NAME`` on any edge answers with the owner's findings.

VOD assets are moderated once, on first demand: a request for an asset's master playlist
or MPD on a moderation edge makes the ring owner of ``vod:ASSET`` sample the lowest video
rung (same ``sample_every`` grid) through the same worker pool; VOD samples wait for a
pool slot instead of being skipped (a skipped sample would be a permanent hole). Policies
are named ``vod/ASSET`` (``policy=vod/ASSET:block``; ``default_policy`` otherwise); a block
makes every edge answer 451 for the asset's media. ``GET /api/moderation/vod/ASSET`` on any
edge: the owner's scan (``state scanning | done | failed``) and findings. Edges that sent
viewers an asset under a ``block`` policy learn the owner's verdict from the bus event or
by polling the owner until its scan is done. ``blur-poster`` acts like ``log`` for VOD.

Blocks last for the edge's lifetime: lifting one is a moderator's decision, not a timer's.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from edge.plugins import EdgeHost, PluginContext, PluginOptionError, nsfw
from edge.plugins.assets import OwnedAssets, vod_key
from edge.plugins.live import OwnedStreams, follow, stream_key
from edge.plugins.workers import InferencePool, ModelPlugin, Timed, plugin_metrics
from meshcast.events import MODERATION_FLAGGED, ModerationFlagged
from meshcast.http import json_error
from meshcast.tokens import TOKEN_HEADER

log = logging.getLogger(__name__)

POLICIES: Final = ("log", "blur-poster", "block")
# nudenet labels that flag by default: exposed nudity (faces, feet, covered parts do not).
DEFAULT_LABELS: Final = (
    "FEMALE_BREAST_EXPOSED",
    "FEMALE_GENITALIA_EXPOSED",
    "MALE_GENITALIA_EXPOSED",
    "BUTTOCKS_EXPOSED",
    "ANUS_EXPOSED",
)
_LOWEST: Final = "#EXT-X-STREAM-INF:"
_SEGMENT_LINE: Final = re.compile(r"^(\d+)\.m4s$", re.M)
VOD_ASSETS: Final = 1000  # scanned assets remembered (oldest forgotten: scanned again)
VOD_RETRY_S: Final = 60.0  # a failed scan is not retried before this
VOD_NUDGE_S: Final = 30.0  # a non-owner asks the owner to scan at most this often
VOD_WATCH_S: Final = 600.0  # how long a non-owner polls for the verdict of a blocked asset


@dataclass(frozen=True, slots=True)
class ModerationConfig:
    sample_every: int = 2  # segments
    threshold: float = 0.5
    labels: tuple[str, ...] = DEFAULT_LABELS
    default_policy: str = "log"
    policies: tuple[tuple[str, str], ...] = ()
    queue: int = 2
    keep: int = 200  # findings per stream
    file: Path | None = None
    poll_s: float = 0.5

    @classmethod
    def from_context(cls, context: PluginContext) -> ModerationConfig:
        d = cls()
        policies = []
        for item in context.all("policy"):
            name, sep, policy = item.rpartition(":")
            if not sep or not name:
                raise PluginOptionError(f"moderation.policy={item!r} is not NAME:POLICY")
            policies.append((name, policy))
        default = context.get("default_policy", d.default_policy)
        for policy in [default, *(p for _, p in policies)]:
            if policy not in POLICIES:
                raise PluginOptionError(f"moderation policy {policy!r} not in {POLICIES}")
        labels = context.get("labels", "")
        file = context.get("file", "")
        return cls(
            sample_every=max(1, int(context.number("sample_every", d.sample_every))),
            threshold=context.number("threshold", d.threshold),
            labels=tuple(x for x in labels.split(",") if x) if labels else d.labels,
            default_policy=default,
            policies=tuple(policies),
            queue=int(context.number("queue", d.queue)),
            keep=int(context.number("keep", d.keep)),
            file=Path(file) if file else None,
            poll_s=context.number("poll_s", d.poll_s),
        )

    def policy(self, name: str) -> str:
        return dict(self.policies).get(name, self.default_policy)


@dataclass
class StreamModeration:
    findings: deque[dict[str, Any]]
    flagged: bool = False
    poster: bytes | None = None
    poster_blurred: bool = False


@dataclass
class VodModeration:
    findings: list[dict[str, Any]] = field(default_factory=list)
    flagged: bool = False
    segments: int = 0


def _finding(number: int, sample: nsfw.Sample) -> dict[str, Any]:
    return {
        "number": number,
        "media_time": sample.media_time,
        "ts": time.time(),
        "flagged": bool(sample.flagged),
        "detections": sample.detections,
    }


def lowest_rendition(master: str) -> str | None:
    """The rendition directory of the smallest video variant of a multivariant playlist."""
    best: tuple[int, str] | None = None
    lines = master.splitlines()
    for line, uri in itertools.pairwise(lines):
        if not line.startswith(_LOWEST) or "RESOLUTION=" not in line:
            continue
        width, _, height = line.split("RESOLUTION=")[1].split(",")[0].partition("x")
        pixels = int(width) * int(height)
        if best is None or pixels < best[0]:
            best = (pixels, uri.strip().rpartition("/")[0])
    return best[1] if best else None


class ModerationPlugin(ModelPlugin[VodModeration]):
    name = "moderation"

    def __init__(self, edge: EdgeHost) -> None:
        super().__init__()
        self.config = ModerationConfig.from_context(edge.options(self.name))
        self.streams: dict[str, StreamModeration] = {}
        self.blocked: dict[str, list[dict[str, Any]]] = {}  # stream -> the flagging detections
        self.vod = OwnedAssets(
            edge,
            "moderation",
            VodModeration,
            self._moderate_vod,
            self._nudge,
            keep=VOD_ASSETS,
            retry_s=VOD_RETRY_S,
            nudge_s=VOD_NUDGE_S,
        )
        self.blocked_vod: dict[str, list[dict[str, Any]]] = {}  # asset -> flagging detections
        self._vod_watch: dict[str, float] = {}  # asset -> until when to poll its owner
        self._edge = edge

    # ---- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        edge = self._edge
        self._pool = InferencePool(
            self.name,
            plugin_metrics(edge.registry),
            queue=self.config.queue,
            initializer=nsfw.load_detector,
        )
        self._pool.warm()
        self._owned = OwnedStreams(edge, self._moderate, self.name)
        self._tasks = [asyncio.create_task(self._owned.run())]
        if any(
            p == "block" for p in (self.config.default_policy, *dict(self.config.policies).values())
        ):
            self._tasks.append(asyncio.create_task(self._learn_blocks(edge)))

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/api/moderation/vod/{asset}", self._vod_findings),
            Route("/api/moderation/{name}", self._findings),
            Route("/api/moderation/{name}/poster.jpg", self._poster),
        ]

    # ---- request-path hook: block -------------------------------------------------------

    def check(self, path: str) -> Response | None:
        if path.startswith("/vod/"):
            return self._check_vod(path)
        if path.endswith("/poster.jpg") and path.startswith("/live/"):
            name = path.split("/")[2]
            if self.config.policy(name) == "blur-poster":
                # The origin's live poster is the raw picture: under blur-poster only this
                # plugin's (blurred once flagged) poster may be shown.
                return json_error(
                    404,
                    "poster withheld by the moderation policy blur-poster",
                    poster=f"/api/moderation/{name}/poster.jpg",
                )
        if not self.blocked:
            return None
        parts = path.split("/", 3)
        if len(parts) < 4 or parts[1] != "live" or parts[2] not in self.blocked:
            return None
        return json_error(
            451,
            "unavailable for legal reasons",
            stream=parts[2],
            reason="blocked by content moderation",
            labels=sorted({d["class"] for d in self.blocked[parts[2]]}),
        )

    def _check_vod(self, path: str) -> Response | None:
        parts = path.split("/", 3)
        if len(parts) < 4:
            return None
        asset = parts[2]
        if asset in self.blocked_vod:
            return json_error(
                451,
                "unavailable for legal reasons",
                asset=asset,
                reason="blocked by content moderation",
                labels=sorted({d["class"] for d in self.blocked_vod[asset]}),
            )
        return None

    def demand(self, path: str, token: str | None, from_peer: bool) -> None:
        """A request for a VOD asset's manifest (past the access check): scan the asset,
        reading it with the token that admitted the request (token-only assets)."""
        if not path.startswith("/vod/") or from_peer:
            return
        parts = path.split("/", 3)
        if len(parts) == 4 and parts[3] in ("master.m3u8", "manifest.mpd"):
            self.vod.demand(parts[2], token)

    def block_vod(self, asset: str, detections: list[dict[str, Any]]) -> None:
        if asset not in self.blocked_vod:
            log.warning("edge: VOD asset %s blocked by moderation (%s)", asset, detections)
        self.blocked_vod[asset] = detections
        self._vod_watch.pop(asset, None)

    def block(self, name: str, detections: list[dict[str, Any]]) -> None:
        if name not in self.blocked:
            log.warning("edge: stream %s blocked by moderation (%s)", name, detections)
        self.blocked[name] = detections

    # ---- API ----------------------------------------------------------------------------

    async def _findings(self, request: Request) -> Response:
        assert self._edge is not None
        name = request.path_params["name"]
        owner = self._edge.ring.owner(stream_key(name))
        if (relayed := await self._relay(request, owner, f"/api/moderation/{name}")) is not None:
            return relayed
        state = self.streams.get(name)
        if state is None:
            return json_error(404, f"no moderation findings for {name!r}", owner=owner)
        return JSONResponse(
            {
                "name": name,
                "policy": self.config.policy(name),
                "flagged": state.flagged,
                "blocked": name in self.blocked,
                "owner": self._edge.self_url,
                "findings": list(state.findings),
            }
        )

    async def _relay(self, request: Request, owner: str, path: str) -> Response | None:
        """A viewer asked a non-owner: the owner's answer (None: answer here ourselves,
        because we are the owner, a peer asked, or the owner did not answer)."""
        edge = self._edge
        if owner == edge.self_url or "x-meshcast-peer" in request.headers:
            return None
        try:
            response = await edge.client.get(
                owner + path, headers={"X-Meshcast-Peer": edge.self_url}, timeout=3.0
            )
        except Exception as exc:
            log.info("moderation: %s from %s failed: %s", path, owner, exc)
            return None
        return Response(response.content, response.status_code, media_type="application/json")

    async def _poster(self, request: Request) -> Response:
        state = self.streams.get(request.path_params["name"])
        if state is None or state.poster is None:
            return json_error(404, "no poster")
        headers = {"Cache-Control": "public, max-age=2",
                   "X-Poster-Blurred": "1" if state.poster_blurred else "0"}  # fmt: skip
        return Response(state.poster, 200, headers=headers, media_type="image/jpeg")

    async def _vod_findings(self, request: Request) -> Response:
        edge = self._edge
        asset = request.path_params["asset"]
        owner = edge.ring.owner(vod_key(asset))
        path = f"/api/moderation/vod/{asset}"
        if (relayed := await self._relay(request, owner, path)) is not None:
            return relayed
        if owner == edge.self_url:
            # Asking is demand (a non-owner's nudge lands here), with the viewer's token if
            # it verifies: the owner reads a token-only asset with it.
            token = request.headers.get(TOKEN_HEADER)
            if token is not None and not await edge.admits("vod", asset, token):
                token = None
            self.vod.demand(asset, token)
        job = self.vod.get(asset)
        if job is None:
            return json_error(404, f"no moderation of VOD asset {asset!r} here", owner=owner)
        state = job.value
        return JSONResponse(
            {
                "asset": asset,
                "state": "scanning" if job.state == "running" else job.state,
                "error": job.error,
                "policy": self.config.policy(f"vod/{asset}"),
                "flagged": state.flagged,
                "blocked": asset in self.blocked_vod,
                "owner": edge.self_url,
                "segments": state.segments,
                "findings": state.findings,
            }
        )

    # ---- VOD: one scan per asset, at the owner of vod:ASSET ------------------------------

    async def _nudge(self, owner: str, asset: str, token: str | None) -> None:
        """Asking the owner for its scan is the nudge (the next viewer's request nudges
        again on failure). Under a block policy, this edge then polls the owner for its
        verdict (without a bus, that is how it learns a block)."""
        if self.config.policy(f"vod/{asset}") == "block" and len(self._vod_watch) < 10_000:
            self._vod_watch[asset] = time.time() + VOD_WATCH_S
        await self._ask_owner(f"{owner}/api/moderation/vod/{asset}", token)

    async def _moderate_vod(self, asset: str, state: VodModeration, token: str | None) -> None:
        assert self._pool is not None
        edge, pool, config = self._edge, self._pool, self.config
        master = await edge.fetch(f"/vod/{asset}/master.m3u8", token=token)
        if master is None:
            raise LookupError("no such asset (or it is token-only and no valid token came)")
        rendition = lowest_rendition(master.decode())
        if rendition is None:
            raise ValueError("the asset has no video rendition")
        directory = f"/vod/{asset}/{rendition}/"
        playlist = await edge.fetch(f"{directory}index.m3u8", token=token)
        init = await edge.fetch(f"{directory}init.mp4", token=token)
        if playlist is None or init is None:
            raise LookupError(f"{directory} has no playlist or init segment")
        numbers = [int(n) for n in _SEGMENT_LINE.findall(playlist.decode())]
        state.segments = len(numbers)
        policy = config.policy(f"vod/{asset}")
        for number in numbers:
            if number % config.sample_every:
                continue
            segment = await edge.fetch(f"{directory}{number}.m4s", token=token)
            if segment is None:
                raise LookupError(f"segment {number} of {directory} is missing")
            args = (init, segment, config.labels, config.threshold, "never")
            future = await pool.submit_when_free(nsfw.moderate, *args)
            sample: nsfw.Sample = (await future).value
            state.findings.append(_finding(number, sample))
            if sample.flagged:
                state.flagged = True
                log.warning("moderation: VOD %s segment %d flagged (%s): %s", asset, number,
                            policy, sample.flagged)  # fmt: skip
                if policy == "block":
                    self.block_vod(asset, sample.flagged)
                self._publish_flag("vod", asset, number, sample, policy)

    def _publish_flag(
        self, kind: Literal["live", "vod"], name: str, number: int, sample: nsfw.Sample, policy: str
    ) -> None:
        if self._edge.bus is None:
            return
        self._edge.bus.emit(
            ModerationFlagged(
                kind=kind,
                name=name,
                number=number,
                media_time=sample.media_time,
                policy=policy,
                labels=[d["class"] for d in sample.flagged],
                scores=[d["score"] for d in sample.flagged],
                edge=self._edge.self_url,
            )
        )

    # ---- the owner's work ---------------------------------------------------------------

    async def _moderate(self, name: str) -> None:
        assert self._edge is not None and self._pool is not None
        edge, pool = self._edge, self._pool
        state = self.streams.setdefault(name, StreamModeration(deque(maxlen=self.config.keep)))
        master = None
        while master is None:
            body = await edge.fetch(f"/live/{name}/master.m3u8", refresh=True)
            master = lowest_rendition(body.decode()) if body else None
            if master is None:
                await asyncio.sleep(self.config.poll_s)
        directory = f"/live/{name}/{master}/"
        init: bytes | None = None
        pending: set[asyncio.Task[None]] = set()
        async for entry, _ in follow(edge, directory, self.config.poll_s, backlog=0):
            if entry.number % self.config.sample_every:
                continue
            init = init or await edge.fetch(f"{directory}init.mp4")
            segment = await edge.fetch(f"{directory}{entry.number}.m4s")
            if init is None or segment is None:
                continue
            policy = self.config.policy(name)
            blur = "never"
            if policy == "blur-poster":
                blur = "always" if state.flagged else "flagged"
            future = pool.submit(
                nsfw.moderate, init, segment, self.config.labels, self.config.threshold, blur
            )
            if future is not None:
                task = asyncio.create_task(self._record(name, state, entry.number, future))
                pending.add(task)
                task.add_done_callback(pending.discard)
        await asyncio.gather(*pending, return_exceptions=True)

    async def _record(
        self, name: str, state: StreamModeration, number: int, future: asyncio.Future[Timed]
    ) -> None:
        try:
            sample: nsfw.Sample = (await future).value
        except Exception:
            return  # counted as failed by the pool
        finding = _finding(number, sample)
        state.findings.append(finding)
        state.poster, state.poster_blurred = sample.poster, sample.poster_blurred
        if self.config.file is not None:
            line = json.dumps({"stream": name, **finding}) + "\n"
            await asyncio.to_thread(self._append, self.config.file, line)
        if not sample.flagged:
            return
        state.flagged = True
        policy = self.config.policy(name)
        log.warning("moderation: %s segment %d flagged (%s): %s", name, number, policy,
                    sample.flagged)  # fmt: skip
        if policy == "block":
            self.block(name, sample.flagged)
        self._publish_flag("live", name, number, sample, policy)

    @staticmethod
    def _append(path: Path, line: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.write(line)

    # ---- blocks decided on other edges --------------------------------------------------

    async def _learn_blocks(self, edge: EdgeHost) -> None:
        listen = asyncio.create_task(self._listen(edge)) if edge.bus is not None else None
        try:
            while True:
                await asyncio.sleep(max(self.config.poll_s, 1.0))
                for name in self._owned.live if self._owned else ():
                    owner = edge.ring.owner(stream_key(name))
                    if name in self.blocked or owner == edge.self_url:
                        continue
                    if self.config.policy(name) != "block":
                        continue
                    _, verdict = await self._ask_owner(f"{owner}/api/moderation/{name}")
                    if verdict is not None:
                        self.block(name, verdict)
                await self._learn_vod_blocks(edge)
        finally:
            if listen is not None:
                listen.cancel()

    async def _learn_vod_blocks(self, edge: EdgeHost) -> None:
        """Poll the owners of the assets this edge served under a block policy until their
        scan is done (without a bus, this is how a non-owner learns a VOD block)."""
        now = time.time()
        for asset, until in list(self._vod_watch.items()):
            owner = edge.ring.owner(vod_key(asset))
            if now > until or owner == edge.self_url:
                self._vod_watch.pop(asset, None)
                continue
            body, verdict = await self._ask_owner(f"{owner}/api/moderation/vod/{asset}")
            if verdict is not None:
                self.block_vod(asset, verdict)
            elif body.get("state") in ("done", "failed"):
                self._vod_watch.pop(asset, None)

    async def _ask_owner(
        self, url: str, token: str | None = None
    ) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
        """The owner's findings at ``url`` and, when it blocked, the detections that flag
        them (None otherwise); an owner that does not answer gives ({}, None). ``token``: a
        viewer's, for the owner to read a token-only asset with."""
        edge = self._edge
        headers = {"X-Meshcast-Peer": edge.self_url}
        if token is not None:
            headers[TOKEN_HEADER] = token
        try:
            response = await edge.client.get(url, headers=headers, timeout=2.0)
            body: dict[str, Any] = response.json() if response.status_code == 200 else {}
            if not body.get("blocked"):
                return body, None
            detections = [d for f in body["findings"] for d in f["detections"]]
        except Exception:  # the next poll asks again
            return {}, None
        return body, nsfw.flagged(detections, self.config.labels, self.config.threshold)

    async def _listen(self, edge: EdgeHost) -> None:
        assert edge.bus is not None
        with edge.bus.subscribe([MODERATION_FLAGGED]) as sub:
            async for event in sub:
                name = event.data.get("name")
                vod = event.data.get("kind") == "vod"
                if not isinstance(name, str):
                    continue
                if self.config.policy(f"vod/{name}" if vod else name) != "block":
                    continue
                labels = event.data.get("labels") or []
                scores = event.data.get("scores") or []
                hits = [{"class": c, "score": s} for c, s in zip(labels, scores, strict=False)]
                if vod:
                    self.block_vod(name, hits)
                else:
                    self.block(name, hits)
