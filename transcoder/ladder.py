"""Ladder planning: which video rungs a source gets (never above its height)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RungSpec:
    """A configured rung: its name is the height with a ``p`` (``720p``)."""

    height: int
    video_kbps: int

    @property
    def name(self) -> str:
        return f"{self.height}p"


@dataclass(frozen=True, slots=True)
class Rung:
    """A planned rung for one source: concrete size and rate control."""

    name: str
    width: int
    height: int
    video_kbps: int

    @property
    def maxrate_kbps(self) -> int:
        return self.video_kbps * 3 // 2

    @property
    def bufsize_kbits(self) -> int:
        return self.video_kbps * 2


# Bitrates in line with common H.264 ladders (Apple HLS authoring spec, 30 fps).
DEFAULT_LADDER: tuple[RungSpec, ...] = (
    RungSpec(1080, 5000),
    RungSpec(720, 2800),
    RungSpec(480, 1400),
    RungSpec(360, 800),
)


def parse_ladder(text: str) -> tuple[RungSpec, ...]:
    """``"1080:5000,720:2800"`` (height:kbps) -> rung specs."""
    specs = []
    for item in text.split(","):
        try:
            height_text, kbps_text = item.strip().split(":")
            height, kbps = int(height_text.removesuffix("p")), int(kbps_text)
        except ValueError:
            raise ValueError(
                f"invalid ladder rung {item!r}: use HEIGHT:KBPS, e.g. 720:2800"
            ) from None
        if height < 16 or kbps < 16:
            raise ValueError(f"invalid ladder rung {item!r}: height and kbps must be >= 16")
        specs.append(RungSpec(height, kbps))
    return tuple(sorted(specs, key=lambda s: -s.height))


def _even(x: float) -> int:
    return max(2, round(x / 2) * 2)


def plan_ladder(width: int, height: int, ladder: Sequence[RungSpec] = DEFAULT_LADDER) -> list[Rung]:
    """Rungs at or below the source size, keeping its aspect ratio.

    A rung's nominal height applies to the frame's short side, so a portrait 1080x1920
    source gets a "720p" rung of 720x1280. A source smaller than every rung still gets
    one rung at its own size, so that every stream is playable.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"invalid source size {width}x{height}")
    short = min(width, height)
    rungs = [
        Rung(
            spec.name,
            _even(width * spec.height / short),
            _even(height * spec.height / short),
            spec.video_kbps,
        )
        for spec in sorted(ladder, key=lambda s: -s.height)
        if spec.height <= short
    ]
    if not rungs:
        if not ladder:
            raise ValueError("the ladder has no rungs")
        smallest = min(ladder, key=lambda s: s.height)
        kbps = max(100, smallest.video_kbps * short // smallest.height)
        rungs = [Rung(f"{_even(short)}p", _even(width), _even(height), kbps)]
    return rungs
