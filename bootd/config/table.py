"""Reading TOML tables key by key, and the value parsers they share.

A `Table` remembers its dotted path, so every error names the key
("subnets[0].dynamic_pool: ... overlaps ..."), and `finish()` turns unknown keys
into errors: a misspelt key silently ignored would leave a rack without
addresses. Value parsers raise ValueError with the reason; the table adds the key.
"""

from __future__ import annotations

import ipaddress
from ipaddress import IPv4Address, IPv4Network
from typing import Any, TypeVar

from bootd.config.defaults import DEFAULT_HTTP_PORT
from bootd.config.sections import AddressRange
from bootd.errors import ConfigError, InvalidInput

T = TypeVar("T")


class Table:
    """A TOML table read key by key, remembering the dotted path for errors."""

    def __init__(self, source: str, path: str, data: object) -> None:
        if not isinstance(data, dict):
            raise ConfigError(source, path, f"must be a table, not {kind_of(data)}")
        self.source, self.path, self.data = source, path, data
        self.used: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.source, self.key(name), problem)

    def get(self, name: str, kind: type[T], default: T) -> T:
        value = self.opt(name, kind)
        return default if value is None else value

    def opt(self, name: str, kind: type[T], *, required: bool = False) -> T | None:
        self.used.add(name)
        if name not in self.data:
            if required:
                raise self.error(name, "is required")
            return None
        value = self.data[name]
        # bool is a subclass of int; `lease_time = true` must not pass as 1.
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(name, f"must be {kind_name(kind)}, not {kind_of(value)}")
        return value

    def parse(self, name: str, parser: Any, *, required: bool = False) -> Any:
        text = self.opt(name, str, required=required)
        if text is None:
            return None
        try:
            return parser(text)
        except (ValueError, InvalidInput) as exc:
            raise self.error(name, str(exc)) from None

    def table(self, name: str) -> Table:
        self.used.add(name)
        return Table(self.source, self.key(name), self.data.get(name, {}))

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.used)
        if unknown:
            raise self.error(unknown[0], "unknown key")


def kind_of(value: object) -> str:
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean",
            int: "an integer", float: "a float"}.get(type(value), type(value).__name__)


def kind_name(kind: type) -> str:
    return {dict: "a table", list: "an array", str: "a string", bool: "a boolean (true/false)",
            int: "an integer"}.get(kind, kind.__name__)


def ipv4(text: str) -> IPv4Address:
    try:
        return IPv4Address(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an IPv4 address") from None


def network(text: str) -> IPv4Network:
    try:
        return IPv4Network(text.strip(), strict=True)
    except ValueError as exc:
        raise ValueError(f"{text!r} is not an IPv4 network in CIDR form ({exc})") from None


def address_range(text: str) -> AddressRange:
    first, sep, last = text.partition("-")
    if not sep:
        raise ValueError(f"{text!r} is not a range; write it as first-last, e.g. 198.18.0.100-198.18.0.199")
    start, end = ipv4(first), ipv4(last)
    if start > end:
        raise ValueError(f"range {text!r} ends before it starts")
    return AddressRange(start, end)


def listen(text: str, default_host: str) -> tuple[str, int]:
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = text, str(DEFAULT_HTTP_PORT)
    host = host.strip("[]") or default_host
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"{port_text!r} is not a TCP port")
    return host, int(port_text)


def database_url(text: str) -> str:
    if not text.startswith(("sqlite+aiosqlite://", "postgresql+asyncpg://")):
        raise ValueError("must start with sqlite+aiosqlite:// or postgresql+asyncpg://")
    return text


def number(t: Table, name: str, default: float, low: float, high: float) -> float:
    t.used.add(name)
    value = t.data.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise t.error(name, f"must be a number, not {kind_of(value)}")
    if not low <= value <= high:
        raise t.error(name, f"must be between {low:g} and {high:g}")
    return float(value)


def loader_path(text: str) -> str:
    # Goes into the 128-octet BOOTP `file` field and is resolved under the TFTP root.
    parts = text.split("/")
    if (not text or len(text.encode()) > 127 or text.startswith("/") or ".." in parts
            or not text.isprintable() or " " in text):
        raise ValueError(f"{text!r} is not a relative path under the TFTP root (at most 127 bytes)")
    return text


