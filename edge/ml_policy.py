"""Learned cache admission on top of S3-FIFO: predict which objects will be requested again
within a horizon; an object leaving S3-FIFO's small (probationary) queue without a second
request is promoted to the main queue anyway when the model says it will be back.

(A first version evicted the least likely of 32 randomly sampled objects, LRB-style; on our
generated traces it was worse than LRU: it lost S3-FIFO's one-hit-wonder filter.)

Features per object: size, time since last request, request count, previous inter-request
gap, age, kind (segment / manifest, live / VOD), rung, and the recent request rate of its
stream. Labels come from the trace itself: an access is positive if the object is requested
again within the horizon. A logistic regression (scikit-learn) is refit periodically on the
latest labelled samples; inference is one dot product. Until a model exists the policy is
plain S3-FIFO.
"""

from __future__ import annotations

import collections
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edge.policies import S3FifoPolicy
from meshcast.paths import parse_media_path

RUNG_INDEX = {"audio": 0.0, "360p": 1.0, "480p": 2.0, "720p": 3.0, "1080p": 4.0}
N_FEATURES = 10


@dataclass(slots=True)
class _Stats:
    size: int
    first: float
    last: float
    count: int = 1
    gap: float = 1e6
    static: tuple[float, float, float, float, str] = (0.0, 0.0, 0.0, 0.0, "")


@dataclass
class MlPolicy:
    capacity: int
    horizon_s: float = 60.0
    sample_every: int = 4  # label one access in N
    retrain_every: int = 50_000  # accesses between refits
    max_samples: int = 40_000
    threshold: float = 0.8  # promote when P(requested again within the horizon) > this
    min_samples: int = 1000  # labelled samples needed before the first fit
    now: float | None = None  # the simulator sets trace time; the edge uses the clock
    train_seconds: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.fifo = S3FifoPolicy(self.capacity)
        self.fifo.promote_hint = self._will_return
        self._stats: dict[str, _Stats] = {}
        self._stream_rate: dict[str, float] = collections.defaultdict(float)
        self._stream_seen: dict[str, float] = {}
        self._pending: collections.deque[tuple[float, str, int, np.ndarray]] = collections.deque()
        self._hits_after: dict[str, float] = {}
        self._xs: collections.deque[np.ndarray] = collections.deque(maxlen=self.max_samples)
        self._ys: collections.deque[int] = collections.deque(maxlen=self.max_samples)
        self._accesses = 0
        self.promotions = 0
        self.model: tuple[np.ndarray, float, np.ndarray, np.ndarray] | None = None

    # ---- bookkeeping --------------------------------------------------------------------

    def _time(self) -> float:
        return self.now if self.now is not None else time.time()

    def _touch(self, key: str, size: int | None) -> None:
        now = self._time()
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
            st = self._stats[key] = _Stats(size or 0, now, now, static=static)
        else:
            st.gap, st.last = now - st.last, now
            st.count += 1
        # Exponentially decayed request rate per stream (~60 s memory).
        stream = st.static[4]
        prev = self._stream_seen.get(stream, now)
        self._stream_rate[stream] = self._stream_rate[stream] * math.exp(-(now - prev) / 60) + 1
        self._stream_seen[stream] = now
        self._learn(key, now)

    def _features(self, st: _Stats, now: float) -> list[float]:
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
        ]

    def _learn(self, key: str, now: float) -> None:
        # Resolve samples whose horizon has passed: positive if requested again.
        self._hits_after.setdefault(key, now)
        seen_at = self._hits_after
        while self._pending and self._pending[0][0] + self.horizon_s <= now:
            ts, k, _, x = self._pending.popleft()
            self._xs.append(x)
            self._ys.append(1 if seen_at.get(k, -1.0) > ts else 0)
        seen_at[key] = now
        self._accesses += 1
        if self._accesses % self.sample_every == 0:
            st = self._stats[key]
            x = np.array(self._features(st, now))
            self._pending.append((now, key, self._accesses, x))
        if self._accesses % self.retrain_every == 0:
            self._train()

    def _train(self) -> None:
        ys = np.fromiter(self._ys, dtype=np.int8, count=len(self._ys))
        if len(ys) < self.min_samples or ys.min() == ys.max():
            return
        from sklearn.linear_model import LogisticRegression

        start = time.perf_counter()
        xs = np.vstack(list(self._xs))
        mean, std = xs.mean(axis=0), xs.std(axis=0) + 1e-9
        clf = LogisticRegression(max_iter=200)
        clf.fit((xs - mean) / std, ys)
        self.model = (clf.coef_[0], float(clf.intercept_[0]), mean, std)
        self.train_seconds.append(time.perf_counter() - start)

    def _will_return(self, key: str) -> bool:
        st = self._stats.get(key)
        if self.model is None or st is None:
            return False
        coef, intercept, mean, std = self.model
        x = (np.array(self._features(st, self._time())) - mean) / std
        promote = 1 / (1 + math.exp(-float(x @ coef + intercept))) > self.threshold
        self.promotions += promote
        return promote

    # ---- EvictionPolicy -----------------------------------------------------------------

    def inserted(self, key: str, size: int) -> None:
        self.fifo.inserted(key, size)
        self._touch(key, size)

    def accessed(self, key: str) -> None:
        self.fifo.accessed(key)
        self._touch(key, None)

    def removed(self, key: str) -> None:
        self.fifo.removed(key)

    def victim(self) -> str:
        return self.fifo.victim()

    def describe(self) -> dict[str, Any]:
        return {
            "trained": self.model is not None,
            "refits": len(self.train_seconds),
            "promotions": self.promotions,
            "train_s_mean": round(sum(self.train_seconds) / len(self.train_seconds), 3)
            if self.train_seconds
            else None,
        }
