"""meshcast/events.py: every event name and payload type in one place."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from meshcast import events
from meshcast.events import EVENTS, EventBus, ModerationFlagged, VodReady

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("meshcast", "origin", "edge", "transcoder")


def test_every_payload_is_listed_under_its_own_name() -> None:
    names = {
        value
        for key, value in vars(events).items()
        if key.isupper() and isinstance(value, str) and "." in value
    }
    assert names == set(EVENTS)
    for name, payload in EVENTS.items():
        assert name == payload.TYPE
        assert dataclasses.is_dataclass(payload) and dataclasses.fields(payload)


async def test_emit_publishes_the_payload_fields_as_the_data() -> None:
    bus = EventBus()
    with bus.subscribe([events.VOD_READY, events.MODERATION_FLAGGED]) as sub:
        bus.emit(VodReady("a1", ["360p", "audio"], 12.5))
        bus.emit(events.NodeLeft("edge", "http://e"))  # not subscribed: not delivered
        flag = ModerationFlagged("vod", "a1", 4, 8.0, "block", ["X"], [0.9], "http://e")
        bus.emit(flag)
        first, second = await sub.get(), await sub.get()
    assert (first.type, first.data) == (
        "vod.ready",
        {"id": "a1", "renditions": ["360p", "audio"], "duration": 12.5},
    )
    assert second.type == "moderation.flagged" and second.data == dataclasses.asdict(flag)
    assert sub.queue.empty()


def test_no_module_spells_an_event_name_outside_events_py() -> None:
    """Publishers and subscribers name events through meshcast/events.py only."""
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if path == ROOT / "meshcast/events.py":
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Constant) and node.value in EVENTS:
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value!r}")
    assert not found, "\n".join(found)


def test_the_transcoder_imports_nothing_from_the_origin() -> None:
    found = []
    for path in sorted((ROOT / "transcoder").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            modules: list[str] = []
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module is not None:
                modules = [node.module]
            found += [
                f"{path.name}:{node.lineno}: {m}" for m in modules if m.split(".")[0] == "origin"
            ]
    assert not found, found
