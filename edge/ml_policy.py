"""Learned cache admission on top of S3-FIFO: predict which objects will be requested again
within a horizon; an object leaving S3-FIFO's small (probationary) queue without a second
request is promoted to the main queue anyway when the model says it will be back.

(A first version evicted the least likely of 32 randomly sampled objects, LRB-style; on our
generated traces it was worse than LRU: it lost S3-FIFO's one-hit-wonder filter.)

Three parts, so the edge can keep training off its event loop:
- ``DemandTracker`` keeps per-object features and turns the request stream into labelled
  samples: an access is positive if the same object is requested again within the horizon
  (labels come from the log itself, no oracle).
- ``fit_model`` is a pure function (samples in, ``DemandModel`` out): the simulator calls it
  inline, the edge in a worker process (``edge/trainer.py``).
- ``DemandModel`` is the fitted logistic regression (scikit-learn), versioned and saved as
  JSON; inference is one dot product. Until a model exists the policy is plain S3-FIFO.

Features per object: size, time since last request, request count, previous inter-request
gap, age, kind (segment / manifest, live / VOD), rung, and the recent request rate of its
stream.
"""

from __future__ import annotations

import collections
import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np

from edge.policies import S3FifoPolicy
from meshcast.files import atomic_write
from meshcast.paths import parse_media_path

RUNG_INDEX: Final = {"audio": 0.0, "360p": 1.0, "480p": 2.0, "720p": 3.0, "1080p": 4.0}
FEATURES: Final = (
    "log_size",
    "log_recency",
    "log_count",
    "log_gap",
    "log_age",
    "is_segment",
    "is_manifest",
    "is_live",
    "rung",
    "log_stream_rate",
    "log_segment_distance",
)
# Bumped when FEATURES change: an edge ignores model files of another format.
MODEL_FORMAT: Final = 2


@dataclass(frozen=True, slots=True)
class DemandModel:
    """A fitted model: standardisation + logistic regression weights."""

    version: int
    coef: tuple[float, ...]
    intercept: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    samples: int
    positive_share: float
    train_seconds: float
    trained_at: float
    features: tuple[str, ...] = FEATURES
    format: int = MODEL_FORMAT

    def __post_init__(self) -> None:
        # Precomputed arrays: inference is one dot product on the hot path.
        object.__setattr__(self, "_w", np.asarray(self.coef) / np.asarray(self.std))
        object.__setattr__(
            self, "_b", self.intercept - float(np.dot(np.asarray(self.mean), self._w))
        )

    _w: Any = field(init=False, repr=False, compare=False)
    _b: Any = field(init=False, repr=False, compare=False)

    def probability(self, x: list[float]) -> float:
        z = float(np.dot(self._w, x)) + self._b
        return 1.0 / (1.0 + math.exp(-max(-50.0, min(50.0, z))))

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("_w", None)
        data.pop("_b", None)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DemandModel:
        if data.get("format") != MODEL_FORMAT or tuple(data.get("features", ())) != FEATURES:
            raise ValueError("model file of another feature format")
        return cls(
            version=int(data["version"]),
            coef=tuple(float(v) for v in data["coef"]),
            intercept=float(data["intercept"]),
            mean=tuple(float(v) for v in data["mean"]),
            std=tuple(float(v) for v in data["std"]),
            samples=int(data["samples"]),
            positive_share=float(data["positive_share"]),
            train_seconds=float(data["train_seconds"]),
            trained_at=float(data["trained_at"]),
        )

    def save(self, directory: Path) -> Path:
        """``model-v000007.json``, written atomically; older versions are kept (a few)."""
        path = directory / f"model-v{self.version:06d}.json"
        atomic_write(path, json.dumps(self.to_json()).encode())
        for old in sorted(directory.glob("model-v*.json"))[:-5]:
            old.unlink(missing_ok=True)
        return path


def load_latest_model(directory: Path) -> DemandModel | None:
    """The newest readable model file of our format, if any."""
    for path in sorted(directory.glob("model-v*.json"), reverse=True):
        try:
            return DemandModel.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def fit_model(xs: np.ndarray, ys: np.ndarray, version: int) -> DemandModel | None:
    """Fit on labelled samples; None when the labels have one class only. Pure and
    picklable: runs in a worker process at the edge."""
    if len(ys) == 0 or ys.min() == ys.max():
        return None
    from sklearn.linear_model import LogisticRegression

    start = time.perf_counter()
    mean, std = xs.mean(axis=0), xs.std(axis=0) + 1e-9
    clf = LogisticRegression(max_iter=200)
    clf.fit((xs - mean) / std, ys)
    return DemandModel(
        version=version,
        coef=tuple(float(v) for v in clf.coef_[0]),
        intercept=float(clf.intercept_[0]),
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        samples=len(ys),
        positive_share=float(ys.mean()),
        train_seconds=time.perf_counter() - start,
        trained_at=time.time(),
    )


@dataclass(slots=True)
class _Stats:
    size: int
    first: float
    last: float
    count: int = 1
    gap: float = 1e6
    static: tuple[float, float, float, float, str] = (0.0, 0.0, 0.0, 0.0, "")
    seq: int = -1  # segment number, -1 for manifests and init segments


# Called with (features, labels, next version) when a refit is due.
Trainer = Callable[[np.ndarray, np.ndarray, int], None]


@dataclass
class DemandTracker:
    """Features and labels from the request stream; holds the current model."""

    horizon_s: float = 60.0
    sample_every: int = 4  # label one access in N
    retrain_every: int = 50_000  # accesses between refits
    max_samples: int = 40_000
    min_samples: int = 1000  # labelled samples needed before the first fit
    max_tracked: int = 500_000  # objects with feature state (an edge runs for months)
    threshold: float = 0.6  # "will return" when P(requested again within the horizon) > this
    # None: fit inline (the simulator); the edge hands samples to a worker process.
    trainer: Trainer | None = None
    model: DemandModel | None = None
    fits: list[float] = field(default_factory=list)  # training seconds per fit

    def __post_init__(self) -> None:
        self._stats: dict[str, _Stats] = {}
        self._stream_rate: dict[str, float] = collections.defaultdict(float)
        self._stream_seen: dict[str, float] = {}
        self._newest_segment: dict[str, int] = {}  # per stream: the live edge
        self._pending: collections.deque[tuple[float, str, np.ndarray]] = collections.deque()
        self._seen_at: dict[str, float] = {}
        self._xs: collections.deque[np.ndarray] = collections.deque(maxlen=self.max_samples)
        self._ys: collections.deque[int] = collections.deque(maxlen=self.max_samples)
        self._accesses = 0
        self.decisions = 0
        self.decision_ns = 0

    def __contains__(self, key: str) -> bool:
        return key in self._stats

    def observe(self, key: str, size: int, now: float) -> None:
        """One request for ``key`` (hit or miss) at time ``now``."""
        st = self._stats.get(key)
        if st is None:
            media = parse_media_path(key)
            stream = f"{media.kind}/{media.name}" if media else key
            static = (
                1.0 if media and not media.is_manifest else 0.0,
                1.0 if media and media.is_manifest else 0.0,
                1.0 if media and media.kind == "live" else 0.0,
                RUNG_INDEX.get(media.rendition or "", 0.0) if media else 0.0,
                stream,
            )
            seq = -1
            if media is not None and media.relative.endswith(".m4s"):
                seq = int(media.relative.rsplit("/", 1)[1].removesuffix(".m4s"))
                if seq > self._newest_segment.get(stream, -1):
                    self._newest_segment[stream] = seq
            st = self._stats[key] = _Stats(size, now, now, static=static, seq=seq)
            if len(self._stats) > self.max_tracked:
                self._forget_oldest(now)
        else:
            st.gap, st.last = now - st.last, now
            st.count += 1
            st.size = max(st.size, size)
        # Exponentially decayed request rate per stream (~60 s memory).
        stream = st.static[4]
        prev = self._stream_seen.get(stream, now)
        self._stream_rate[stream] = self._stream_rate[stream] * math.exp(-(now - prev) / 60) + 1
        self._stream_seen[stream] = now
        self._learn(key, st, now)

    def _forget_oldest(self, now: float) -> None:
        # Objects not requested for two horizons carry no useful recency any more.
        cutoff = now - 2 * self.horizon_s
        stale = [k for k, st in self._stats.items() if st.last < cutoff]
        if len(stale) < len(self._stats) // 4:  # still too many: drop the oldest half
            by_age = sorted(self._stats, key=lambda k: self._stats[k].last)
            stale = by_age[: len(by_age) // 2]
        for key in stale:
            del self._stats[key]
            self._seen_at.pop(key, None)

    def features(self, st: _Stats, now: float) -> list[float]:
        seg, man, live, rung, stream = st.static
        return [
            math.log1p(st.size),
            math.log1p(max(0.0, now - st.last)),
            math.log1p(st.count),
            math.log1p(min(st.gap, 1e6)),
            math.log1p(max(0.0, now - st.first)),
            seg,
            man,
            live,
            rung,
            math.log1p(self._stream_rate.get(stream, 0.0)),
            # Live: behind the live edge; VOD: into the asset (viewers abandon as they go).
            math.log1p(self._segment_distance(st, live, stream)),
        ]

    def _segment_distance(self, st: _Stats, live: float, stream: str) -> float:
        if st.seq < 0:
            return 0.0
        if live:
            return float(max(0, self._newest_segment.get(stream, st.seq) - st.seq))
        return float(st.seq)

    def _learn(self, key: str, st: _Stats, now: float) -> None:
        # Resolve samples whose horizon has passed: positive if requested again.
        while self._pending and self._pending[0][0] + self.horizon_s <= now:
            ts, k, x = self._pending.popleft()
            self._xs.append(x)
            self._ys.append(1 if self._seen_at.get(k, -1.0) > ts else 0)
        self._seen_at[key] = now
        self._accesses += 1
        if self._accesses % self.sample_every == 0:
            self._pending.append((now, key, np.array(self.features(st, now))))
        if self._accesses % self.retrain_every == 0:
            self.refit()

    def refit(self) -> None:
        if len(self._ys) < self.min_samples:
            return
        xs = np.vstack(list(self._xs))
        ys = np.fromiter(self._ys, dtype=np.int8, count=len(self._ys))
        version = (self.model.version if self.model else 0) + 1
        if self.trainer is not None:
            self.trainer(xs, ys, version)
            return
        model = fit_model(xs, ys, version)
        if model is not None:
            self.set_model(model)

    def set_model(self, model: DemandModel) -> None:
        self.model = model
        self.fits.append(model.train_seconds)

    def will_return(self, key: str, now: float) -> bool:
        st = self._stats.get(key)
        model = self.model
        if model is None or st is None:
            return False
        start = time.perf_counter_ns()
        yes = model.probability(self.features(st, now)) > self.threshold
        self.decision_ns += time.perf_counter_ns() - start
        self.decisions += 1
        return yes


class MlPolicy:
    """S3-FIFO whose probationary queue asks the demand model before dropping an object."""

    def __init__(
        self, capacity: int, tracker: DemandTracker, clock: Callable[[], float] = time.time
    ) -> None:
        self.tracker = tracker
        self.clock = clock  # the simulator passes trace time
        self.fifo = S3FifoPolicy(capacity)
        self.fifo.promote_hint = self._will_return
        self.fifo.retain_hint = self._will_return
        self.promotions = 0

    def _will_return(self, key: str) -> bool:
        promote = self.tracker.will_return(key, self.clock())
        self.promotions += promote
        return promote

    # ---- EvictionPolicy -----------------------------------------------------------------

    def inserted(self, key: str, size: int) -> None:
        self.fifo.inserted(key, size)

    def accessed(self, key: str) -> None:
        self.fifo.accessed(key)

    def removed(self, key: str) -> None:
        self.fifo.removed(key)

    def victim(self) -> str:
        return self.fifo.victim()

    def describe(self) -> dict[str, Any]:
        t = self.tracker
        return {
            "trained": t.model is not None,
            "model_version": t.model.version if t.model else None,
            "refits": len(t.fits),
            "promotions": self.promotions,
            "train_s_mean": round(sum(t.fits) / len(t.fits), 3) if t.fits else None,
            "inference_us_mean": round(t.decision_ns / t.decisions / 1000, 2)
            if t.decisions
            else None,
        }
