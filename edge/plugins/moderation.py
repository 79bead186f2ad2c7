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

Blocks last for the edge's lifetime: lifting one is a moderator's decision, not a timer's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from edge.plugins import PluginContext, PluginOptionError, nsfw
from edge.plugins.live import OwnedStreams, follow, stream_key
from edge.plugins.workers import InferencePool, Timed, plugin_metrics
from meshcast.http import json_error

if TYPE_CHECKING:
    from edge.app import Edge

log = logging.getLogger(__name__)

MODERATION_FLAGGED: Final = "moderation.flagged"
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


class ModerationPlugin:
    name = "moderation"

    def __init__(self, edge: Edge) -> None:
        self.config = ModerationConfig.from_context(edge.plugin_options.context(self.name))
        self.streams: dict[str, StreamModeration] = {}
        self.blocked: dict[str, list[dict[str, Any]]] = {}  # stream -> the flagging detections
        self._edge = edge
        self._pool: InferencePool | None = None
        self._owned: OwnedStreams | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # ---- lifecycle ----------------------------------------------------------------------

    async def start(self) -> None:
        edge = self._edge
        self._pool = InferencePool(
            self.name,
            plugin_metrics(edge.metrics.registry),
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

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._owned is not None:
            await self._owned.close()
        if self._pool is not None:
            await self._pool.close()

    @property
    def pool(self) -> InferencePool | None:
        """The worker pool, once started: marketplace jobs run here too (edge/inference.py)."""
        return self._pool

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/api/moderation/{name}", self._findings),
            Route("/api/moderation/{name}/poster.jpg", self._poster),
        ]

    # ---- request-path hook: block -------------------------------------------------------

    def check(self, path: str) -> Response | None:
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

    def block(self, name: str, detections: list[dict[str, Any]]) -> None:
        if name not in self.blocked:
            log.warning("edge: stream %s blocked by moderation (%s)", name, detections)
        self.blocked[name] = detections

    # ---- API ----------------------------------------------------------------------------

    async def _findings(self, request: Request) -> Response:
        assert self._edge is not None
        name = request.path_params["name"]
        owner = self._edge.ring.owner(stream_key(name))
        if owner != self._edge.self_url and "x-meshcast-peer" not in request.headers:
            try:
                response = await self._edge.client.get(
                    f"{owner}/api/moderation/{name}",
                    headers={"X-Meshcast-Peer": self._edge.self_url},
                    timeout=3.0,
                )
                return Response(response.content, response.status_code,
                                media_type="application/json")  # fmt: skip
            except Exception as exc:
                log.info("moderation findings of %s from %s failed: %s", name, owner, exc)
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

    async def _poster(self, request: Request) -> Response:
        state = self.streams.get(request.path_params["name"])
        if state is None or state.poster is None:
            return json_error(404, "no poster")
        headers = {"Cache-Control": "public, max-age=2",
                   "X-Poster-Blurred": "1" if state.poster_blurred else "0"}  # fmt: skip
        return Response(state.poster, 200, headers=headers, media_type="image/jpeg")

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
        finding = {
            "number": number,
            "media_time": sample.media_time,
            "ts": time.time(),
            "flagged": bool(sample.flagged),
            "detections": sample.detections,
        }
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
        assert self._edge is not None
        if self._edge.bus is not None:
            self._edge.bus.publish(
                MODERATION_FLAGGED,
                name=name,
                number=number,
                media_time=sample.media_time,
                policy=policy,
                labels=[d["class"] for d in sample.flagged],
                scores=[d["score"] for d in sample.flagged],
                edge=self._edge.self_url,
            )

    @staticmethod
    def _append(path: Path, line: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as f:
            f.write(line)

    # ---- blocks decided on other edges --------------------------------------------------

    async def _learn_blocks(self, edge: Edge) -> None:
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
                    with contextlib.suppress(Exception):
                        response = await edge.client.get(
                            f"{owner}/api/moderation/{name}",
                            headers={"X-Meshcast-Peer": edge.self_url},
                            timeout=2.0,
                        )
                        body = response.json() if response.status_code == 200 else {}
                        if body.get("blocked"):
                            detections = [d for f in body["findings"] for d in f["detections"]]
                            labels, threshold = self.config.labels, self.config.threshold
                            self.block(name, nsfw.flagged(detections, labels, threshold))
        finally:
            if listen is not None:
                listen.cancel()

    async def _listen(self, edge: Edge) -> None:
        assert edge.bus is not None
        with edge.bus.subscribe([MODERATION_FLAGGED]) as sub:
            async for event in sub:
                name = event.data.get("name")
                if not isinstance(name, str) or self.config.policy(name) != "block":
                    continue
                labels = event.data.get("labels") or []
                scores = event.data.get("scores") or []
                hits = [{"class": c, "score": s} for c, s in zip(labels, scores, strict=False)]
                self.block(name, hits)
