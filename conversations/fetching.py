"""Fetching a URL that an image provider handed us, without it reaching our own network.

The image API may answer with a `url` instead of base64, and the server then
downloads it: whoever controls that answer (a compromised or malicious
provider, a gateway) could point it at loopback, a cloud metadata endpoint or
the private network (SSRF). So:

- the host is resolved once, every address it resolves to is checked, and the
  connection goes to a checked address (no second lookup that DNS rebinding
  could answer differently); numeric hosts in any form (decimal 2130706433,
  octal 0177.0.0.1, hex 0x7f.1, IPv6, IPv4-mapped IPv6) reach the check as the
  address the system resolver makes of them;
- refused: everything that Python's `ipaddress` (the standard library's
  maintained table of IANA special-purpose ranges) does not call global, and
  multicast, reserved and unspecified addresses, also when an IPv4 address is
  embedded in IPv6 (mapped, 6to4, NAT64, Teredo) — unless an operator's
  allow-list names the network (CHATIMG_IMAGE_FETCH_ALLOW, e.g. a LocalAI on
  127.0.0.1);
- redirects are followed (at most MAX_REDIRECTS); each new host goes through
  the same check, because the check sits where connections are opened;
- one deadline for the whole exchange (lookup, connect, headers, body), not per
  read: a body trickling a byte every few seconds still ends; and a size cap.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from typing import Any

import httpcore2
import httpx2
from httpcore2._backends.auto import AutoBackend

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_REDIRECTS = 3
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class FetchError(Exception):
    """`code`: refused, too_large, timeout or unavailable; `message` is fit to log."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _embedded_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    """IPv4 addresses that an IPv6 address routes to (6to4, Teredo, NAT64)."""
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    found = [address.sixtofour, *(address.teredo or ())]
    if address in _NAT64:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return [item for item in found if item is not None]


def _listed(address: IPAddress, networks: Iterable[IPNetwork]) -> bool:
    return any(address in network for network in networks if network.version == address.version)


def refusal(address: IPAddress, allowed: Sequence[IPNetwork] = ()) -> str | None:
    """Why a connection to `address` is refused, or None when it may go ahead."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:a.b.c.d is a.b.c.d on the wire
    candidates = [address, *_embedded_ipv4(address)]
    if any(_listed(candidate, allowed) for candidate in candidates):
        return None
    for candidate in candidates:
        if (
            not candidate.is_global
            or candidate.is_multicast
            or candidate.is_reserved
            or candidate.is_unspecified
        ):
            return f"{address} is not a public address"
    return None


class _GuardedBackend(httpcore2.AsyncNetworkBackend):
    """httpcore's network backend with the address check in connect_tcp."""

    def __init__(self, allowed: Sequence[IPNetwork]) -> None:
        self._allowed = allowed
        self._inner = AutoBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
            )
        except socket.gaierror as exc:
            raise FetchError("unavailable", f"cannot resolve {host!r}: {exc}") from None
        # An IPv6 scope ("fe80::1%eth0") is dropped: link-local is refused anyway.
        addresses = list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))
        for address in addresses:
            reason = refusal(ipaddress.ip_address(address), self._allowed)
            if reason is not None:
                raise FetchError("refused", f"{host!r} resolves to {reason}")
        error: Exception | None = None
        for address in addresses:  # every one was checked: connect to them, not to `host`
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore2.ConnectError, httpcore2.ConnectTimeout) as exc:
                error = exc
        raise error or FetchError("unavailable", f"{host!r} has no address")

    async def connect_unix_socket(self, *args: Any, **kwargs: Any) -> Any:
        raise FetchError("refused", "unix sockets are not fetched")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class _GuardedTransport(httpx2.AsyncHTTPTransport):
    def __init__(self, allowed: Sequence[IPNetwork]) -> None:
        # trust_env=False: an HTTP(S)_PROXY would connect to the proxy instead,
        # past the check.
        super().__init__(trust_env=False)
        # httpx exposes no network_backend parameter; its pool takes one.
        self._pool = httpcore2.AsyncConnectionPool(
            ssl_context=self._pool._ssl_context,
            max_connections=4,
            network_backend=_GuardedBackend(allowed),
        )


async def fetch(
    url: str, *, max_bytes: int, deadline: float, allowed: Sequence[IPNetwork] = ()
) -> bytes:
    """GET `url` from a public address: the body, or FetchError."""
    scheme = url.split(":", 1)[0].lower()
    if scheme not in ("http", "https"):
        raise FetchError("refused", f"scheme {scheme!r} is not fetched")
    try:
        async with (
            asyncio.timeout(deadline),
            httpx2.AsyncClient(
                transport=_GuardedTransport(allowed),
                follow_redirects=True,
                max_redirects=MAX_REDIRECTS,
                trust_env=False,
                timeout=httpx2.Timeout(deadline),
            ) as http,
            http.stream("GET", url) as response,
        ):
            response.raise_for_status()
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise FetchError("too_large", f"{declared} bytes declared")
            chunks: list[bytes] = []
            received = 0
            async for chunk in response.aiter_bytes():
                received += len(chunk)
                if received > max_bytes:
                    raise FetchError("too_large", f"more than {max_bytes} bytes")
                chunks.append(chunk)
            return b"".join(chunks)
    except TimeoutError:
        raise FetchError("timeout", f"not done within {deadline} s") from None
    except httpx2.TimeoutException as exc:
        raise FetchError("timeout", str(exc) or "timed out") from exc
    except httpx2.InvalidURL as exc:  # e.g. octal 0177.0.0.1, which httpx refuses to parse
        raise FetchError("refused", str(exc)) from exc
    except (httpx2.HTTPError, ValueError) as exc:
        raise FetchError("unavailable", str(exc) or type(exc).__name__) from exc
