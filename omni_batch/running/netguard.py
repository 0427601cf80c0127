"""Where a video link may lead: public addresses only, unless it is the API's own host.

A status answer names the URL we fetch, so a hostile or compromised API could aim us at the
machine's loopback services or a cloud metadata endpoint (169.254.169.254) and have the
answer saved as a "video". ``VideoGuard.problem`` vets each hop before it is fetched (scheme,
literal address, every address the name resolves to); ``GuardedResolver`` checks again inside
aiohttp's connector, on the very addresses it connects to, so a name that resolves to a
public address for the check and to an internal one for the connection is refused too.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
UNSAFE_KIND = "unsafe_video_url"  # the error type a refused link fails its job with


def address_problem(address: Address) -> str | None:
    """Why ``address`` is not one a video may come from (None: a public address)."""
    if isinstance(address, ipaddress.IPv6Address):
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address.teredo is not None:
            embedded = address.teredo[1]
        if embedded is not None and (why := address_problem(embedded)):
            return why
        if address.is_site_local:
            return "site-local"
    checks = (
        ("is_unspecified", "unspecified"),
        ("is_loopback", "loopback"),
        ("is_link_local", "link-local"),
        ("is_multicast", "multicast"),
        ("is_private", "private"),
        ("is_reserved", "reserved"),
    )
    for attribute, why in checks:
        if getattr(address, attribute):
            return why
    return None if address.is_global else "non-public"


def parse_address(text: str) -> Address | None:
    """``text`` as an IP address (brackets and IPv6 zone allowed), else None."""
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def host_key(host: str | None) -> str:
    """A host name as compared: lower case, no trailing dot, no IPv6 brackets."""
    return (host or "").strip("[]").rstrip(".").lower()


class UnsafeAddress(OSError):
    """A host resolved to an address a video may not come from (raised inside the resolver,
    so aiohttp reports it as a connection error carrying this as ``os_error``)."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class VideoGuard:
    """The rule for video links: http(s) only, and a public address unless the host is the
    API's own (the embedded simulator serves videos from 127.0.0.1, like its API).

    "The API's own host" is its name, or an address written out that its name resolves to:
    an API at http://localhost:8700 may hand out links on http://127.0.0.1:…, which exposes
    nothing the name did not already. Any other name is another host, whatever it resolves
    to (an API at 127.0.0.1 may not send us to http://localhost:…)."""

    def __init__(self, api_root: str | None):
        try:
            self.api_host = host_key(URL(api_root).raw_host) if api_root else ""
        except ValueError:  # not a URL: the client refuses it with a clear message
            self.api_host = ""
        literal = parse_address(self.api_host)
        self.api_addresses: frozenset[Address] | None = (
            frozenset({literal}) if literal is not None else None if self.api_host else frozenset()
        )

    def trusted(self, host: str | None) -> bool:
        return bool(self.api_host) and host_key(host) == self.api_host

    def _why(self, address: Address, literal: bool) -> str | None:
        if literal and address in (self.api_addresses or ()):
            return None
        return address_problem(address)

    async def _learn_api_addresses(self) -> None:
        """Look the API's host name up once (kept only when the lookup works)."""
        if self.api_addresses is not None:
            return
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                self.api_host, 0, type=socket.SOCK_STREAM
            )
        except (OSError, UnicodeError):
            return
        found = (parse_address(str(info[4][0])) for info in infos)
        self.api_addresses = frozenset(a for a in found if a is not None)

    @staticmethod
    def form_problem(url: URL) -> str | None:
        """A link we never fetch whatever its host: another scheme, or no host."""
        scheme = (url.scheme or "").lower()
        if scheme not in ("http", "https"):
            return f"refusing to download a {scheme or 'relative'}: URL"
        if not url.raw_host:
            return "refusing a video link with no host"
        return None

    def literal_problem(self, url: URL) -> str | None:
        """What is wrong with ``url`` before any lookup: its form, or an internal address
        written out."""
        if why := self.form_problem(url):
            return why
        host = url.raw_host or ""
        address = parse_address(host)
        if self.trusted(host) or address is None:
            return None
        return self.resolved_problem(host, [host], literal=True)

    def resolved_problem(
        self, host: str, addresses: list[str], literal: bool = False
    ) -> str | None:
        """What is wrong with a host given the addresses it stands for (``literal``: the
        host is an address written out)."""
        if self.trusted(host):
            return None
        for text in addresses:
            address = parse_address(text)
            if address is not None and (why := self._why(address, literal)):
                if literal:
                    return f"refusing to download from {host}: a {why} address"
                return f"refusing to download from {host}: it resolves to {text}, a {why} address"
        return None

    async def problem(self, url: URL) -> str | None:
        """Why ``url`` may not be fetched, or None. A name that does not resolve is left to
        the connection attempt (a transient DNS failure is retried like any network error)."""
        if why := self.form_problem(url):
            return why
        host = url.raw_host or ""
        if self.trusted(host):
            return None
        literal = parse_address(host) is not None
        if literal:
            addresses = [host]
        else:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, url.port or 0, type=socket.SOCK_STREAM
                )
            except (OSError, UnicodeError):
                return None
            addresses = [str(info[4][0]) for info in infos]
        if literal and self.api_addresses is None and self.resolved_problem(host, addresses, True):
            await self._learn_api_addresses()  # internal: is it where the API itself lives?
        return self.resolved_problem(host, addresses, literal)


class GuardedResolver(AbstractResolver):
    """aiohttp's resolver, refusing any name (other than the API's host) that resolves to an
    internal address; plug it into the run's connector."""

    def __init__(self, guard: VideoGuard, inner: AbstractResolver | None = None):
        self._guard = guard
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        if why := self._guard.resolved_problem(host, [r["host"] for r in found]):
            raise UnsafeAddress(why)
        return found

    async def close(self) -> None:
        await self._inner.close()


def unsafe_cause(exc: BaseException) -> UnsafeAddress | None:
    """The UnsafeAddress behind an aiohttp connection error, if that is what it was."""
    seen: Any = exc
    for _ in range(5):  # os_error, __cause__: a short chain
        if isinstance(seen, UnsafeAddress):
            return seen
        seen = getattr(seen, "os_error", None) or seen.__cause__
        if seen is None:
            return None
    return None


__all__ = [
    "UNSAFE_KIND",
    "GuardedResolver",
    "UnsafeAddress",
    "VideoGuard",
    "address_problem",
    "unsafe_cause",
]
