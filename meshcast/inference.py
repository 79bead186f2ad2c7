"""Inference marketplace contracts (sans-IO): job requests, the signed messages between the
coordinator and the node that runs a job, placement scoring, and how two runs of one job
are compared in a spot check. ``origin/inference.py`` (scheduler, dispatcher, verifier) and
``edge/inference.py`` (the node's executor) do the I/O.

Messages (``{"body": {...}, "sig": base64 Ed25519}``, ``meshcast/signing.py``):

- order, signed by the coordinator: ``{"kind": "inference.order", "job", "exec", "node",
  "model", "input": {"path"}, "ts"}`` (``path``: a media segment, or ``/ipfs/CID`` for
  pinned content). ``exec`` names one execution of the job
  (``JOB.N``): retries and spot checks are new executions, so a node's receipt claims
  seconds per execution and the coordinator can tell every one apart.
- result, signed by the node: ``{"kind": "inference.result", "exec", "job", "node",
  "output", "output_hash", "wall", "seconds", "ts"}``; ``output_hash`` is the sha256 of the
  canonical JSON of ``output``; ``seconds`` is what the node will claim (billed seconds:
  every started second counts, so a 50 ms detection bills 1 s).

Inputs: a media segment (``/live|vod/NAME/RENDITION/N.m4s``, with its ``init.mp4``) or
content pinned on the network's storage (``{"cid": CID}``, an image, video or audio file;
run by nodes that also have the ``storage`` plugin, which verify it against its CID).

Outputs: ``moderation`` ``{"media_time", "detections": [{"class", "score", "box"}]}`` (the
nudenet detector's own output for the segment's, video's first frame or the image);
``captions`` ``{"text", "words": [[start, end, word], ...]}`` (Whisper on the audio).

Spot-check comparison (two honest nodes differ only by float noise, thread scheduling and
library builds): moderation agrees when the detected classes are the same multiset and,
paired by class and score order, scores differ by at most ``SCORE_TOLERANCE`` and boxes by
at most ``BOX_TOLERANCE_PX`` per coordinate; captions agree when the normalized word
sequences are at least ``TEXT_SIMILARITY`` similar (difflib ratio).
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from meshcast.cid import BadCid, cid_digest
from meshcast.paths import parse_media_path
from meshcast.refused import Refused
from meshcast.rendezvous import rendezvous_owner, rendezvous_score
from meshcast.signing import canonical_json, sha256_hex

ORDER: Final = "inference.order"
RESULT: Final = "inference.result"
MAX_REQUEST: Final = 16 * 1024
MAX_OUTPUT: Final = 512 * 1024  # a result body (captions of a segment are a few KiB)
SCORE_TOLERANCE: Final = 0.02
BOX_TOLERANCE_PX: Final = 4
TEXT_SIMILARITY: Final = 0.8
# Placement score: a GPU is worth more than locality (fetching one segment from a peer
# costs milliseconds, running a detector on a CPU costs far more), locality more than an
# idle core.
GPU_BONUS: Final = 2.0
LOCALITY_BONUS: Final = 1.0
_JOB_ID: Final = re.compile(r"j[0-9a-f]{16}")
_EXEC_ID: Final = re.compile(r"(j[0-9a-f]{16})\.([1-9][0-9]{0,2})")


class JobRejected(Refused):
    """A job request, order or result that is refused."""


@dataclass(frozen=True, slots=True)
class Model:
    name: str
    plugin: str  # the edge plugin whose worker pool runs it
    audio: bool  # input is the audio rendition (else a video rendition)


MODELS: Final = {
    "moderation": Model("moderation", "moderation", audio=False),
    "captions": Model("captions", "captions", audio=True),
}


IPFS_PREFIX: Final = "/ipfs/"
# Pinned content is read whole into a worker: bigger inputs are refused by the node.
MAX_OBJECT: Final = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class JobSpec:
    model: str
    path: str  # /live/NAME/RENDITION/N.m4s, /vod/ASSET/RENDITION/N.m4s or /ipfs/CID

    @property
    def init_path(self) -> str:
        return self.path.rpartition("/")[0] + "/init.mp4"

    @property
    def cid(self) -> str | None:
        return self.path.removeprefix(IPFS_PREFIX) if self.path.startswith(IPFS_PREFIX) else None

    @property
    def plugins(self) -> tuple[str, ...]:
        """The edge plugins a node needs to run this job."""
        plugin = MODELS[self.model].plugin
        return (plugin, "storage") if self.cid is not None else (plugin,)

    def to_json(self) -> dict[str, Any]:
        return {"model": self.model, "input": {"path": self.path}}


def parse_job_request(raw: Any) -> JobSpec:
    """A client's ``{"model", "input": {"path"}}``, strictly: unknown keys, models and
    anything but a media segment of the right kind of rendition are refused."""
    if not isinstance(raw, dict):
        raise JobRejected(400, "body must be a JSON object")
    if extra := set(raw) - {"model", "input"}:
        raise JobRejected(400, f"unknown fields: {', '.join(sorted(map(str, extra)))}")
    model = raw.get("model")
    if not isinstance(model, str) or model not in MODELS:
        raise JobRejected(400, f"model must be one of: {', '.join(sorted(MODELS))}")
    source = raw.get("input")
    if isinstance(source, dict) and set(source) == {"cid"}:
        source = {
            "path": f"{IPFS_PREFIX}{source['cid']}" if isinstance(source["cid"], str) else None
        }
    if not isinstance(source, dict) or set(source) != {"path"}:
        raise JobRejected(
            400, "input must be {'path': '/live|vod/NAME/RENDITION/N.m4s'} or {'cid': CID}"
        )
    path = source["path"]
    if isinstance(path, str) and path.startswith(IPFS_PREFIX):
        try:
            cid_digest(path.removeprefix(IPFS_PREFIX))
        except BadCid as exc:
            raise JobRejected(400, f"input cid: {exc}") from None
        return JobSpec(model, path)
    media = parse_media_path(path) if isinstance(path, str) and len(path) <= 200 else None
    if media is None or media.rendition is None or not media.relative.endswith(".m4s"):
        raise JobRejected(400, "input.path must be a media segment: /live|vod/NAME/RENDITION/N.m4s")
    spec = MODELS[model]
    if spec.audio != (media.rendition == "audio") or media.rendition in ("source", "captions"):
        want = "the audio rendition" if spec.audio else "a video rendition (e.g. 360p)"
        raise JobRejected(400, f"model {model} takes a segment of {want}")
    return JobSpec(model, path)


def valid_job_id(job: str) -> bool:
    return _JOB_ID.fullmatch(job) is not None


def exec_id(job: str, n: int) -> str:
    return f"{job}.{n}"


def job_of_exec(execution: str) -> str | None:
    match = _EXEC_ID.fullmatch(execution)
    return match[1] if match else None


def billed_seconds(wall: float) -> int:
    """Every started second counts (integer units, like the receipts' other counters)."""
    return max(1, math.ceil(wall)) if math.isfinite(wall) and wall >= 0 else 1


def output_hash(output: Any) -> str:
    return sha256_hex(canonical_json(output))


# ---- signed messages ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Order:
    job: str
    exec: str
    node: str
    spec: JobSpec
    ts: float

    def body(self) -> dict[str, Any]:
        return {
            "kind": ORDER,
            "job": self.job,
            "exec": self.exec,
            "node": self.node,
            **self.spec.to_json(),
            "ts": round(self.ts, 3),
        }


def parse_order(body: Any, node: str, now: float, max_skew: float) -> Order:
    """An order's body (its signature checked by the caller) for this ``node``."""
    if not isinstance(body, dict) or body.get("kind") != ORDER:
        raise JobRejected(400, "expected a signed inference.order")
    job, execution, ts = body.get("job"), body.get("exec"), body.get("ts")
    if not isinstance(job, str) or not isinstance(execution, str) or job_of_exec(execution) != job:
        raise JobRejected(400, "job and exec ids do not match")
    if body.get("node") != node:
        raise JobRejected(409, "order is for another node")
    if not isinstance(ts, int | float) or isinstance(ts, bool) or abs(ts - now) > max_skew:
        raise JobRejected(400, f"order ts must be within {max_skew:.0f} s of our clock")
    spec = parse_job_request({"model": body.get("model"), "input": body.get("input")})
    return Order(job, execution, node, spec, float(ts))


@dataclass(frozen=True, slots=True)
class Result:
    exec: str
    job: str
    node: str
    output: Any
    output_hash: str
    wall: float
    seconds: int
    ts: float

    def body(self) -> dict[str, Any]:
        return {
            "kind": RESULT,
            "exec": self.exec,
            "job": self.job,
            "node": self.node,
            "output": self.output,
            "output_hash": self.output_hash,
            "wall": round(self.wall, 6),
            "seconds": self.seconds,
            "ts": round(self.ts, 3),
        }


def make_result(order: Order, output: Any, wall: float, ts: float) -> Result:
    return Result(
        order.exec,
        order.job,
        order.node,
        output,
        output_hash(output),
        wall,
        billed_seconds(wall),
        ts,
    )


def parse_result(body: Any, order: Order) -> Result:
    """A result body (its signature checked by the caller) answering ``order``."""
    if not isinstance(body, dict) or body.get("kind") != RESULT:
        raise JobRejected(400, "expected a signed inference.result")
    for name in ("exec", "job", "node"):
        if body.get(name) != getattr(order, name):
            raise JobRejected(400, f"result answers another {name}")
    output, digest = body.get("output"), body.get("output_hash")
    wall, seconds, ts = body.get("wall"), body.get("seconds"), body.get("ts")
    if not isinstance(digest, str) or output_hash(output) != digest:
        raise JobRejected(400, "output_hash is not the hash of the output")
    if not _valid_output(order.spec.model, output):
        raise JobRejected(400, f"output is not a {order.spec.model} output")
    if type(seconds) is not int or seconds < 0:
        raise JobRejected(400, "seconds must be a non-negative integer")
    if not _number(wall) or not _number(ts):
        raise JobRejected(400, "wall and ts must be numbers")
    assert isinstance(wall, int | float) and isinstance(ts, int | float)
    return Result(
        order.exec, order.job, order.node, output, digest, float(wall), seconds, float(ts)
    )


def _valid_output(model: str, output: Any) -> bool:
    if not isinstance(output, dict):
        return False
    if model == "moderation":
        detections = output.get("detections")
        return isinstance(detections, list) and all(
            isinstance(d, dict)
            and isinstance(d.get("class"), str)
            and _number(d.get("score"))
            and isinstance(d.get("box"), list)
            and len(d["box"]) == 4
            and all(_number(x) for x in d["box"])
            for d in detections
        )
    if model == "captions":
        return isinstance(output.get("text"), str)
    return False


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


# ---- placement --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Candidate:
    node: str
    url: str
    cpus: int
    gpu: bool
    running: int  # this coordinator's executions in flight on the node


def placement_score(c: Candidate, owner: str | None) -> float:
    load = c.running / max(1, c.cpus)
    return GPU_BONUS * c.gpu + LOCALITY_BONUS * (c.url == owner) - load


def rank(
    candidates: Iterable[Candidate], ring: Iterable[str], path: str, job: str
) -> list[Candidate]:
    """Capable nodes best first. ``ring`` is every live node's URL: the edges' peer ring
    is made of them, and its rendezvous owner of ``path`` is the node that fetches and
    caches that segment (locality). Ties spread by a per-job hash."""
    owner = rendezvous_owner(path, ring)
    return sorted(
        candidates,
        key=lambda c: (placement_score(c, owner), rendezvous_score(c.node, job)),
        reverse=True,
    )


# ---- spot checks --------------------------------------------------------------------------


def outputs_agree(model: str, a: Any, b: Any) -> bool:
    if model == "moderation":
        return _detections_agree(a.get("detections", []), b.get("detections", []))
    if model == "captions":
        return text_similarity(str(a.get("text", "")), str(b.get("text", ""))) >= TEXT_SIMILARITY
    return bool(a == b)


def _detections_agree(a: Sequence[Mapping[str, Any]], b: Sequence[Mapping[str, Any]]) -> bool:
    def ordered(ds: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        return sorted(ds, key=lambda d: (str(d["class"]), -float(d["score"])))

    if sorted(str(d["class"]) for d in a) != sorted(str(d["class"]) for d in b):
        return False
    for x, y in zip(ordered(a), ordered(b), strict=True):
        if abs(float(x["score"]) - float(y["score"])) > SCORE_TOLERANCE:
            return False
        boxes = zip(x["box"], y["box"], strict=True)
        if any(abs(float(p) - float(q)) > BOX_TOLERANCE_PX for p, q in boxes):
            return False
    return True


def normalize_text(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def text_similarity(a: str, b: str) -> float:
    wa, wb = normalize_text(a), normalize_text(b)
    if not wa and not wb:
        return 1.0
    return difflib.SequenceMatcher(None, wa, wb, autojunk=False).ratio()


def verdict(model: str, original: Any, check: Any, third: Any | None) -> str:
    """A spot check's outcome: ``passed`` (the re-execution agrees), ``original_failed`` /
    ``check_failed`` (a third run sides with the other), or ``disputed`` (no third run, or
    it agrees with neither)."""
    if outputs_agree(model, original, check):
        return "passed"
    if third is None:
        return "disputed"
    if outputs_agree(model, check, third):
        return "original_failed"
    if outputs_agree(model, original, third):
        return "check_failed"
    return "disputed"
