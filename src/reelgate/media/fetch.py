"""Fetch user-supplied inputs (``image``, ``images[i]``, ``last_image``) safely.

A URL in a request body makes the server issue an HTTP request on the user's behalf, which
is the classic server-side request forgery (SSRF) hole: ``http://169.254.169.254/`` hands out
cloud credentials, ``http://localhost:6379/`` reaches internal services. So:

* only ``http(s)://`` URLs and ``data:`` URIs are accepted, never with credentials in them;
* the host is resolved once and *every* address it resolves to must be globally routable;
* the connection goes to the address that was checked, not to a fresh lookup of the name
  (a second lookup could answer differently: DNS rebinding);
* redirects are followed by hand so every hop gets the same checks;
* the body is capped in bytes and the whole fetch in wall-clock time.

Every refusal is an :class:`~reelgate.errors.InvalidInput` (HTTP 400) that says what to fix.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import itertools
import re
import socket
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING
from urllib.parse import unquote, unquote_to_bytes

import httpx

from reelgate.errors import InvalidInput
from reelgate.media.images import check_image

if TYPE_CHECKING:
    from reelgate.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MiB = 1024 * 1024

_REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_USER_AGENT = "reelgate-input-fetcher/1"
_MAX_URL_IN_MESSAGE = 200

_METADATA_V4 = ipaddress.IPv4Address("169.254.169.254")
# AWS's IPv6 instance-metadata endpoint; inside fc00::/7 but worth naming.
_METADATA_V6 = ipaddress.IPv6Address("fd00:ec2::254")
_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_PRIVATE_NETWORKS: tuple[IPNetwork, ...] = (
    ipaddress.IPv4Network("10.0.0.0/8"),
    ipaddress.IPv4Network("172.16.0.0/12"),
    ipaddress.IPv4Network("192.168.0.0/16"),
    ipaddress.IPv6Network("fc00::/7"),
)
# Well-known NAT64 prefix: 64:ff9b::a.b.c.d reaches IPv4 a.b.c.d through a translator.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


@dataclass(frozen=True)
class FetchPolicy:
    """Limits for fetching one input. ``allow_hosts`` holds hostnames, IPs or CIDR networks
    exempt from the private-address guard (for tests and lab setups; empty by default)."""

    max_bytes: int = 20 * MiB
    timeout_s: float = 15.0
    max_redirects: int = 5
    allow_hosts: tuple[str, ...] = ()

    @classmethod
    def from_settings(cls, settings: Settings) -> FetchPolicy:
        return cls(
            max_bytes=settings.fetch_max_bytes,
            timeout_s=settings.fetch_timeout_s,
            max_redirects=settings.fetch_max_redirects,
            allow_hosts=tuple(settings.fetch_allow_hosts),
        )


async def fetch_input(
    url: str,
    policy: FetchPolicy,
    *,
    field: str,
    client: httpx.AsyncClient | None = None,
) -> bytes:
    """Return the raw bytes behind ``url`` (an ``http(s)://`` URL or a ``data:`` URI).

    Raises ``InvalidInput(field, reason)`` for every refusal. A caller-supplied ``client`` is
    used as it is (its proxy and TLS settings included), so it must not route through a proxy
    that does its own DNS lookups, and should not keep connections alive across hostnames;
    without one, a private client with neither is made for this fetch.
    """
    text = url.strip()
    if text[:5].lower() == "data:":
        return _decode_data_uri(text, policy, field)
    target = _parse_http_url(text, field, redirect_from=None)
    try:
        # One deadline for everything (DNS, connects, every redirect hop, the body), so a
        # server cannot hold a worker by trickling bytes just under a per-read timeout.
        async with asyncio.timeout(policy.timeout_s):
            if client is not None:
                return await _fetch_following_redirects(target, policy, field, client)
            async with _private_client(policy) as own:
                return await _fetch_following_redirects(target, policy, field, own)
    except TimeoutError:
        raise _timed_out(field, policy) from None


async def load_input_image(
    url: str,
    policy: FetchPolicy,
    *,
    field: str,
    client: httpx.AsyncClient | None = None,
) -> bytes:
    """Fetch ``url`` and check that it is a decodable image; return its bytes."""
    data = await fetch_input(url, policy, field=field, client=client)
    # Decoding a large image takes a while; keep it off the event loop.
    await asyncio.to_thread(check_image, data, field=field)
    return data


# --- data: URIs ----------------------------------------------------------------------------

_STRAY_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
_WHITESPACE = re.compile(r"\s+")


def _decode_data_uri(text: str, policy: FetchPolicy, field: str) -> bytes:
    header, comma, payload = text[5:].partition(",")
    if not comma:
        raise InvalidInput(field, "is not a valid data: URI (there is no comma before the data)")
    params = [p.strip().lower() for p in header.split(";")]
    if params[-1] == "base64":
        data = _decode_base64_payload(payload, policy, field)
    else:
        # Percent-encoded bytes: each byte takes 1 to 3 characters, so a payload more than
        # three times the limit is too large whatever it holds.
        if len(payload) > 3 * policy.max_bytes:
            raise _too_large(field, policy)
        if _STRAY_PERCENT.search(payload):
            raise InvalidInput(
                field, "is not a valid data: URI (a '%' that does not start a %XX escape)"
            )
        data = unquote_to_bytes(payload)
    if not data:
        raise InvalidInput(field, "is not a valid data: URI (it carries no data)")
    if len(data) > policy.max_bytes:
        raise _too_large(field, policy)
    return data


def _decode_base64_payload(payload: str, policy: FetchPolicy, field: str) -> bytes:
    # Be lenient about what clients commonly do to base64 (line breaks, URL-quoting of '+',
    # '/' and '=', the URL-safe alphabet, dropped padding) and strict about everything else.
    compact = _WHITESPACE.sub("", payload)
    if "%" in compact:
        compact = unquote(compact)
    # Refuse before decoding so an oversized payload costs no extra memory.
    if len(compact) // 4 * 3 > policy.max_bytes + 3:
        raise _too_large(field, policy)
    compact = compact.translate(str.maketrans("-_", "+/"))
    compact += "=" * (-len(compact) % 4)
    try:
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(
            field, "is not a valid data: URI (the base64 data is malformed)"
        ) from None


# --- URLs ----------------------------------------------------------------------------------


def _parse_http_url(text: str, field: str, *, redirect_from: httpx.URL | None) -> httpx.URL:
    """Parse and vet a URL; ``redirect_from`` is set when it came from a Location header."""
    try:
        url = httpx.URL(text) if redirect_from is None else redirect_from.join(text)
    except (httpx.InvalidURL, ValueError, TypeError):
        if redirect_from is None:
            raise InvalidInput(field, "is not a valid URL") from None
        raise InvalidInput(field, f"{_show(redirect_from)} redirected to an invalid URL") from None
    scheme = url.scheme.lower()
    if scheme not in ("http", "https"):
        if redirect_from is None:
            raise InvalidInput(field, "must be an https:// URL or a data: URI")
        raise InvalidInput(
            field,
            f"{_show(redirect_from)} redirected to a {scheme or 'relative'}: URL; "
            "only http:// and https:// redirects are followed",
        )
    # Never echo the URL here: it holds a password.
    if url.userinfo:
        if redirect_from is None:
            raise InvalidInput(field, "must not contain a user name or password (user:pass@)")
        raise InvalidInput(
            field,
            f"{_show(redirect_from)} redirected to a URL with a user name or password, "
            "which is not followed",
        )
    if not url.host:
        if redirect_from is None:
            raise InvalidInput(field, "is not a valid URL (it has no host name)")
        raise InvalidInput(field, f"{_show(redirect_from)} redirected to a URL with no host name")
    return url


def _show(url: httpx.URL) -> str:
    text = str(url)
    if len(text) > _MAX_URL_IN_MESSAGE:
        text = text[: _MAX_URL_IN_MESSAGE - 3] + "..."
    return text


# --- addresses -----------------------------------------------------------------------------


async def _resolve_checked(
    url: httpx.URL, policy: FetchPolicy, field: str, *, is_redirect: bool
) -> list[IPAddress]:
    """Resolve the URL's host and return its addresses, refusing if any is not public."""
    hostname = url.raw_host.decode("ascii")  # IDNA-encoded; IPv6 without brackets
    port = url.port or (443 if url.scheme == "https" else 80)
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(
            hostname, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
    except (socket.gaierror, UnicodeError):
        where = "the redirect target's host name" if is_redirect else "the host name"
        raise InvalidInput(
            field, f"could not fetch {_show(url)}: {where} {url.host} does not resolve"
        ) from None

    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        # IPv6 link-local answers may carry a zone ("fe80::1%eth0"); the guard refuses
        # those anyway, and the URL we build cannot hold a zone.
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise InvalidInput(field, f"could not fetch {_show(url)}: {url.host} has no address")

    networks, names = _parse_allow_hosts(policy.allow_hosts)
    if hostname.lower().rstrip(".") in names:
        return addresses
    # Any one bad address is enough to refuse: we might otherwise check one answer and, on
    # a connect failure, fall back to another.
    for ip in addresses:
        if _in_networks(ip, networks):
            continue
        kind = _blocked_kind(ip)
        if kind is None:
            continue
        if is_redirect:
            raise InvalidInput(
                field,
                f"refused to follow a redirect to {_show(url)}: "
                f"the redirect target resolves to {kind} ({_show_ip(ip)})",
            )
        raise InvalidInput(
            field,
            f"refused to fetch {_show(url)}: the host resolves to {kind} ({_show_ip(ip)})",
        )
    return addresses


def _show_ip(ip: IPAddress) -> str:
    # Python prints ::ffff:127.0.0.1 as ::ffff:7f00:1, which hides what it is.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return f"::ffff:{ip.ipv4_mapped}"
    return str(ip)


def _blocked_kind(ip: IPAddress) -> str | None:
    """Why ``ip`` must not be fetched from (with its article), or None if it is public."""
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            # ::ffff:127.0.0.1 and friends reach the IPv4 address; judge that one. A 6to4
            # address with a public IPv4 inside is still judged as IPv6 below.
            kind = _blocked_kind(embedded)
            if kind is not None or ip.sixtofour is None:
                return kind
        if ip == _METADATA_V6:
            return "a cloud metadata address"
    elif ip == _METADATA_V4:
        return "a link-local / cloud metadata address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip in _CGNAT:
        return "a carrier-grade NAT (shared) address"
    if any(ip in net for net in _PRIVATE_NETWORKS):
        return "a private address"
    if ip.is_multicast:
        return "a multicast address"
    # The rest of the special-purpose registry: 0/8, 192.0.0/24, documentation and
    # benchmarking ranges, 240/4, broadcast, IPv4-compatible ::a.b.c.d, Teredo, ...
    if ip.is_reserved or not ip.is_global:
        return "a reserved / non-routable address"
    return None


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


@lru_cache(maxsize=16)
def _parse_allow_hosts(entries: tuple[str, ...]) -> tuple[tuple[IPNetwork, ...], frozenset[str]]:
    networks: list[IPNetwork] = []
    names: set[str] = set()
    for entry in entries:
        item = entry.strip().lower()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
        except ValueError:
            names.add(item.rstrip("."))
    return tuple(networks), frozenset(names)


def _in_networks(ip: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    candidates: list[IPAddress] = [ip]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        candidates.append(ip.ipv4_mapped)
    return any(c in net for c in candidates for net in networks if c.version == net.version)


# --- HTTP ----------------------------------------------------------------------------------


def _private_client(policy: FetchPolicy) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        # Redirects are followed by hand, each hop re-checked.
        follow_redirects=False,
        # No proxies from the environment (a proxy resolves the name itself, undoing the
        # pinning) and no .netrc credentials sent to user-chosen hosts.
        trust_env=False,
        # No keep-alive: the pool keys connections by the pinned IP alone, so a connection
        # opened (and TLS-verified) for one hostname could be reused for another on the
        # same IP after a redirect.
        limits=httpx.Limits(max_keepalive_connections=0),
        timeout=httpx.Timeout(policy.timeout_s),
        headers={"User-Agent": _USER_AGENT},
    )


@dataclass(frozen=True)
class _Redirect:
    location: str


async def _fetch_following_redirects(
    url: httpx.URL, policy: FetchPolicy, field: str, client: httpx.AsyncClient
) -> bytes:
    previous: httpx.URL | None = None
    for hop in itertools.count():
        addresses = await _resolve_checked(url, policy, field, is_redirect=previous is not None)
        result = await _get_from_any(url, addresses, policy, field, client)
        if isinstance(result, bytes):
            return result
        if hop >= policy.max_redirects:
            raise InvalidInput(
                field,
                f"could not fetch {_show(url)}: it redirected more than "
                f"{policy.max_redirects} times",
            )
        previous, url = url, _parse_http_url(result.location, field, redirect_from=url)
    raise AssertionError("unreachable")  # itertools.count() never ends


async def _get_from_any(
    url: httpx.URL,
    addresses: list[IPAddress],
    policy: FetchPolicy,
    field: str,
    client: httpx.AsyncClient,
) -> bytes | _Redirect:
    """GET ``url`` from the first of the checked ``addresses`` that accepts a connection."""
    last_error: httpx.ConnectError | None = None
    for ip in addresses:
        try:
            return await _get_pinned(url, ip, policy, field, client)
        except httpx.ConnectError as exc:
            last_error = exc
        except httpx.TimeoutException:
            raise _timed_out(field, policy) from None
        except httpx.HTTPError as exc:
            raise InvalidInput(
                field, f"could not fetch {_show(url)}: the download broke off ({_why(exc)})"
            ) from None
    raise InvalidInput(
        field, f"could not fetch {_show(url)}: could not connect ({_why(last_error)})"
    )


async def _get_pinned(
    url: httpx.URL,
    ip: IPAddress,
    policy: FetchPolicy,
    field: str,
    client: httpx.AsyncClient,
) -> bytes | _Redirect:
    # Connect to the address we checked rather than the name: resolving the name again (as
    # httpx would) lets a hostile DNS server answer "public" to the check and "127.0.0.1" to
    # the connect (DNS rebinding). The server still sees the original Host header, and for
    # https the TLS handshake sends and verifies the original hostname (SNI), not the IP.
    request_url, headers, extensions = pinned_request(url, ip)
    headers["Accept"] = "image/*,*/*;q=0.5"
    # Ask for the bytes as stored: a compressed body could inflate a thousandfold between
    # two checks of the size cap.
    headers["Accept-Encoding"] = "identity"

    async with client.stream(
        "GET",
        request_url,
        headers=headers,
        extensions=extensions,
        follow_redirects=False,
    ) as response:
        status = response.status_code
        if status in _REDIRECT_STATUSES:
            location = response.headers.get("location", "").strip()
            if not location:
                raise InvalidInput(
                    field,
                    f"could not fetch {_show(url)}: it answered HTTP {status} "
                    "without a Location to redirect to",
                )
            return _Redirect(location)
        if not 200 <= status < 300:
            raise InvalidInput(
                field, f"could not fetch {_show(url)}: the URL answered HTTP {status}"
            )
        encoding = response.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise InvalidInput(
                field,
                f"could not fetch {_show(url)}: the server sent a compressed body "
                f"(Content-Encoding: {encoding}); serve the file uncompressed",
            )
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > policy.max_bytes:
            raise _too_large(field, policy)  # no need to download it to know
        body = bytearray()
        # With Content-Encoding refused above, these are the bytes as sent: nothing inflates
        # between two checks of the cap.
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > policy.max_bytes:
                raise _too_large(field, policy)
        return bytes(body)


def pinned_request(
    url: httpx.URL, ip: IPAddress
) -> tuple[httpx.URL, dict[str, str], dict[str, str]]:
    """The URL, headers and extensions that send a request for ``url`` to the checked
    address ``ip``: the Host header and, for https, the TLS server name stay the original
    hostname's."""
    hostname = url.raw_host.decode("ascii")
    headers = {"Host": url.netloc.decode("ascii")}
    extensions: dict[str, str] = {}
    if url.scheme == "https" and not _is_ip_literal(hostname):
        extensions["sni_hostname"] = hostname
    return url.copy_with(host=str(ip)), headers, extensions


async def resolve_destination(
    url: str, policy: FetchPolicy, *, field: str
) -> tuple[httpx.URL, list[IPAddress]]:
    """Parse a user-given ``http(s)://`` URL and resolve it, refusing (InvalidInput) any
    that reaches a private, loopback, link-local or metadata address. For outbound calls
    other than image fetches (webhooks), which then connect with :func:`pinned_request`."""
    target = _parse_http_url(url.strip(), field, redirect_from=None)
    return target, await _resolve_checked(target, policy, field, is_redirect=False)


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


# --- messages ------------------------------------------------------------------------------


def _too_large(field: str, policy: FetchPolicy) -> InvalidInput:
    return InvalidInput(field, f"the file is larger than the {_size(policy.max_bytes)} limit")


def _timed_out(field: str, policy: FetchPolicy) -> InvalidInput:
    return InvalidInput(field, f"fetching the URL took longer than {policy.timeout_s:g} s")


def _size(n: int) -> str:
    if n >= MiB:
        return f"{n / MiB:g} MiB" if n % MiB == 0 else f"{n / MiB:.1f} MiB"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} bytes"


def _why(exc: BaseException | None) -> str:
    if exc is None:
        return "no address to connect to"
    text = str(exc).strip() or type(exc).__name__
    return text[:200]
