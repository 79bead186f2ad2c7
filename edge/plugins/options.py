"""Plugin options: ``--plugin-option PLUGIN.KEY=VALUE`` (repeatable; a repeated key keeps
every value), parsed once per edge into :class:`PluginOptions`; a plugin reads its own
through ``host.options(name)`` (a :class:`PluginContext`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


class PluginOptionError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class PluginOptions:
    """``PLUGIN.KEY=VALUE`` strings, by plugin then key (every value of a repeated key)."""

    values: dict[str, dict[str, list[str]]] = field(default_factory=dict)

    @classmethod
    def parse(cls, items: Sequence[str]) -> PluginOptions:
        values: dict[str, dict[str, list[str]]] = {}
        for item in items:
            head, sep, value = item.partition("=")
            plugin, dot, key = head.partition(".")
            if not sep or not dot or not plugin or not key:
                raise PluginOptionError(f"plugin option {item!r} is not PLUGIN.KEY=VALUE")
            values.setdefault(plugin, {}).setdefault(key, []).append(value)
        return cls(values)

    def context(self, plugin: str) -> PluginContext:
        return PluginContext(self.values.get(plugin, {}))


def check_options(options: PluginOptions, enabled: Sequence[str]) -> None:
    unused = set(options.values) - set(enabled)
    if unused:
        raise PluginOptionError(f"options for plugins not enabled: {', '.join(sorted(unused))}")


@dataclass(frozen=True, slots=True)
class PluginContext:
    """One plugin's options."""

    options: dict[str, list[str]]

    def get(self, key: str, default: str) -> str:
        values = self.options.get(key)
        return values[-1] if values else default

    def number(self, key: str, default: float) -> float:
        raw = self.get(key, "")
        if not raw:
            return default
        try:
            return float(raw)
        except ValueError as exc:
            raise PluginOptionError(f"option {key}={raw!r} is not a number") from exc

    def all(self, key: str) -> list[str]:
        return list(self.options.get(key, ()))
