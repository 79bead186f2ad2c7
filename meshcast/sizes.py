"""Human sizes on the command line: ``512M``, ``2G``, ``1048576``."""

from __future__ import annotations

_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


def parse_size(text: str) -> int:
    raw = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = raw[-1:] if raw[-1:] in _UNITS and raw[-1:] != "" else ""
    number = raw[: len(raw) - len(unit)] if unit else raw
    try:
        value = float(number)
    except ValueError:
        raise ValueError(f"invalid size {text!r} (examples: 512M, 2G, 1048576)") from None
    if value < 0:
        raise ValueError(f"invalid size {text!r}: negative")
    return int(value * _UNITS[unit])
