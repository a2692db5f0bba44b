"""The input fetcher against real HTTP servers on loopback (127.0.0.1 and 127.0.0.2).

Linux routes all of 127.0.0.0/8 to the loopback interface, so two servers on two loopback
addresses let the allow-list admit one while the guard still refuses the other.
"""

from __future__ import annotations

import asyncio
import base64
import io
import socket
import struct
import threading
import time
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import quote_from_bytes, urlsplit

import httpx
import pytest
from PIL import Image

from reelgate.errors import InvalidInput
from reelgate.media.fetch import FetchPolicy, fetch_input, load_input_image
from reelgate.media.images import check_image
from reelgate.settings import load_settings


def _image_bytes(fmt: str, size: tuple[int, int] = (8, 6)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (200, 40, 90)).save(buf, format=fmt)
    return buf.getvalue()


PNG = _image_bytes("PNG")
JPEG = _image_bytes("JPEG")


# --- servers -------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, host: str) -> None:
        super().__init__((host, 0), _Handler)
        self.host = host
        self.port: int = self.server_address[1]
        self.paths: list[str] = []  # every request that reached us
        self.redirect_target = ""  # where /to-elsewhere points
        self.release = threading.Event()  # lets /slow finish at teardown

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        self.server.paths.append(path)
        if path == "/img.png":
            self._send(200, PNG, content_type="image/png")
        elif path == "/echo-host":
            self._send(200, (self.headers.get("Host") or "").encode())
        elif path == "/text":
            self._send(200, b"hello, this is not an image\n", content_type="text/plain")
        elif path == "/missing":
            self._send(404, b"not here")
        elif path == "/big":
            self._send(200, b"x" * 4096)
        elif path == "/big-chunked":
            self._send_chunked([b"x" * 512] * 8)
        elif path == "/gzip":
            self._send(200, zlib.compress(PNG), headers={"Content-Encoding": "gzip"})
        elif path == "/slow":
            # Headers and a first few bytes, then nothing until the test is over.
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            self.wfile.write(b"\x89PNG")
            self.wfile.flush()
            self.server.release.wait(10)
        elif path == "/trickle":
            # A byte every 0.2 s: no single read ever waits long, only the total is long.
            self.send_response(200)
            self.send_header("Content-Length", "100000")
            self.end_headers()
            while not self.server.release.wait(0.2):
                try:
                    self.wfile.write(b"x")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    return
        elif path == "/loop":
            self._send(302, b"", headers={"Location": "/loop"})
        elif path == "/redirect-relative":
            self._send(301, b"", headers={"Location": "/img.png"})
        elif path == "/to-elsewhere":
            self._send(302, b"", headers={"Location": self.server.redirect_target})
        else:
            self._send(404, b"unknown path")

    def _send(
        self,
        status: int,
        body: bytes,
        *,
        content_type: str = "application/octet-stream",
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def _send_chunked(self, chunks: list[bytes]) -> None:
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        try:
            for chunk in chunks:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client hung up once it had seen enough: that is the point
        self.close_connection = True


def _start(host: str) -> _Server:
    server = _Server(host)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def servers() -> Iterator[tuple[_Server, _Server]]:
    """``(a, b)``: a on 127.0.0.1, b on 127.0.0.2; b's /to-elsewhere redirects to a."""
    a, b = _start("127.0.0.1"), _start("127.0.0.2")
    b.redirect_target = a.url("/img.png")
    yield a, b
    for server in (a, b):
        server.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def a(servers: tuple[_Server, _Server]) -> _Server:
    servers[0].paths.clear()
    return servers[0]


@pytest.fixture
def b(servers: tuple[_Server, _Server]) -> _Server:
    servers[1].paths.clear()
    return servers[1]


LOOPBACK_OK = FetchPolicy(allow_hosts=("127.0.0.2",))


async def _refused(url: str, policy: FetchPolicy, **kwargs: object) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        await fetch_input(url, policy, field="image", **kwargs)  # type: ignore[arg-type]
    exc = info.value
    assert exc.status == 400
    assert exc.field == "image"
    assert exc.message == f"image: {exc.rule}"
    return exc


class _NoNetwork:
    """An httpx client whose transport records requests: proves none was attempted."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []

        def handler(request: httpx.Request) -> httpx.Response:
            self.requests.append(request)
            return httpx.Response(200, content=PNG)

        self.client = httpx.AsyncClient(transport=httpx.MockTransport(handler))


def _fake_dns(monkeypatch: pytest.MonkeyPatch, table: dict[str, list[str]]) -> list[str]:
    """Answer the running loop's getaddrinfo from ``table``; returns the names looked up."""
    looked_up: list[str] = []

    async def getaddrinfo(host: str, port: int, **_: object) -> list[tuple[object, ...]]:
        looked_up.append(host)
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        out: list[tuple[object, ...]] = []
        for ip in table[host]:
            if ":" in ip:
                out.append((socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, port, 0, 0)))
            else:
                out.append((socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)))
        return out

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    return looked_up


# --- the address guard ---------------------------------------------------------------------


async def test_loopback_refused_without_allow_list(a: _Server) -> None:
    url = a.url("/img.png")
    exc = await _refused(url, FetchPolicy())
    assert exc.rule == (
        f"refused to fetch {url}: the host resolves to a loopback address (127.0.0.1)"
    )
    assert a.paths == []  # the server never saw a request


async def test_cloud_metadata_refused_fast_without_connecting() -> None:
    net = _NoNetwork()
    started = time.monotonic()
    exc = await _refused(
        "http://169.254.169.254/latest/meta-data/", FetchPolicy(timeout_s=5), client=net.client
    )
    assert time.monotonic() - started < 0.5
    assert "link-local / cloud metadata address (169.254.169.254)" in exc.rule
    assert net.requests == []


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("http://10.0.0.1/", "a private address (10.0.0.1)"),
        ("http://172.16.5.4/", "a private address"),
        ("http://192.168.1.1/", "a private address"),
        ("http://[::1]/", "a loopback address (::1)"),
        ("http://localhost/", "a loopback address"),
        ("http://127.1/", "a loopback address (127.0.0.1)"),
        ("http://2130706433/", "a loopback address (127.0.0.1)"),
        ("http://[::ffff:127.0.0.1]/", "a loopback address (::ffff:127.0.0.1)"),
        ("http://[::ffff:169.254.169.254]/", "cloud metadata address"),
        ("http://0.0.0.0/", "an unspecified address"),
        ("http://[fe80::1]/", "a link-local address"),
        ("http://[fc00::5]/", "a private address"),
        ("http://[fd00:ec2::254]/", "a cloud metadata address (fd00:ec2::254)"),
        ("http://100.64.0.1/", "carrier-grade NAT"),
        ("http://224.0.0.1/", "a multicast address"),
        ("http://240.0.0.1/", "reserved / non-routable"),
        ("https://[64:ff9b::a00:1]/", "a private address"),  # NAT64 to 10.0.0.1
    ],
)
async def test_non_public_addresses_refused(url: str, kind: str) -> None:
    net = _NoNetwork()
    exc = await _refused(url, FetchPolicy(), client=net.client)
    assert exc.rule.startswith("refused to fetch ")
    assert kind in exc.rule
    assert net.requests == []


async def test_any_private_answer_refuses_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dns(monkeypatch, {"mixed.example": ["93.184.216.34", "10.9.8.7"]})
    net = _NoNetwork()
    exc = await _refused("https://mixed.example/cat.png", FetchPolicy(), client=net.client)
    assert "a private address (10.9.8.7)" in exc.rule
    assert net.requests == []


async def test_redirect_to_private_address_refused(a: _Server, b: _Server) -> None:
    exc = await _refused(b.url("/to-elsewhere"), LOOPBACK_OK)
    assert exc.rule == (
        f"refused to follow a redirect to {a.url('/img.png')}: "
        "the redirect target resolves to a loopback address (127.0.0.1)"
    )
    assert b.paths == ["/to-elsewhere"]
    assert a.paths == []


async def test_every_hop_is_resolved_again(monkeypatch: pytest.MonkeyPatch) -> None:
    looked_up = _fake_dns(
        monkeypatch,
        {"cdn.example": ["93.184.216.34"], "internal.example": ["10.0.0.5"]},
    )
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(302, headers={"Location": "http://internal.example/secret"})

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    exc = await _refused("https://cdn.example/a.png", FetchPolicy(), client=client)
    assert "redirect target resolves to a private address (10.0.0.5)" in exc.rule
    assert looked_up == ["cdn.example", "internal.example"]
    assert seen == ["https://93.184.216.34/a.png"]


# --- what is allowed -----------------------------------------------------------------------


async def test_allow_listed_host_returns_exact_bytes(b: _Server) -> None:
    assert await fetch_input(b.url("/img.png"), LOOPBACK_OK, field="image") == PNG
    cidr = FetchPolicy(allow_hosts=("127.0.0.0/8",))
    assert await load_input_image(b.url("/img.png"), cidr, field="images[0]") == PNG


async def test_allow_list_does_not_open_other_loopback_addresses(a: _Server) -> None:
    exc = await _refused(a.url("/img.png"), LOOPBACK_OK)
    assert "loopback address (127.0.0.1)" in exc.rule


async def test_relative_redirect_followed(b: _Server) -> None:
    assert await fetch_input(b.url("/redirect-relative"), LOOPBACK_OK, field="image") == PNG
    assert b.paths == ["/redirect-relative", "/img.png"]


async def test_connects_to_the_checked_ip_with_original_host(
    monkeypatch: pytest.MonkeyPatch, b: _Server
) -> None:
    # If httpx looked the name up itself it would fail: only our fake DNS knows it.
    looked_up = _fake_dns(monkeypatch, {"images.test": ["127.0.0.2"]})
    for allow in ("127.0.0.2", "images.test"):
        policy = FetchPolicy(allow_hosts=(allow,))
        body = await fetch_input(
            f"http://images.test:{b.port}/echo-host", policy, field="last_image"
        )
        assert body == f"images.test:{b.port}".encode()
    assert looked_up == ["images.test", "images.test"]  # once per fetch, never again


async def test_https_pins_ip_and_keeps_hostname_for_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dns(monkeypatch, {"images.example.com": ["93.184.216.34"]})
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, content=PNG)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    body = await load_input_image(
        "https://images.example.com/a/cat.png?v=2", FetchPolicy(), field="image", client=client
    )
    assert body == PNG
    (request,) = seen
    assert str(request.url) == "https://93.184.216.34/a/cat.png?v=2"
    assert request.headers["host"] == "images.example.com"
    assert request.extensions["sni_hostname"] == "images.example.com"


# --- size, time, status --------------------------------------------------------------------


async def test_oversize_with_content_length_refused(b: _Server) -> None:
    policy = FetchPolicy(max_bytes=1024, allow_hosts=("127.0.0.2",))
    exc = await _refused(b.url("/big"), policy)
    assert exc.rule == "the file is larger than the 1 KiB limit"


async def test_oversize_chunked_refused(b: _Server) -> None:
    policy = FetchPolicy(max_bytes=1024, allow_hosts=("127.0.0.2",))
    exc = await _refused(b.url("/big-chunked"), policy)
    assert exc.rule == "the file is larger than the 1 KiB limit"


async def test_declared_oversize_refused_with_default_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _fake_dns(monkeypatch, {"huge.example": ["93.184.216.34"]})

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"Content-Length": str(30 * 1024 * 1024)})

    client = httpx.AsyncClient(transport=httpx.MockTransport(handler))
    exc = await _refused("https://huge.example/x.png", FetchPolicy(), client=client)
    assert exc.message == "image: the file is larger than the 20 MiB limit"


async def test_slow_server_hits_time_cap(b: _Server) -> None:
    policy = FetchPolicy(timeout_s=1, allow_hosts=("127.0.0.2",))
    started = time.monotonic()
    exc = await _refused(b.url("/slow"), policy)
    assert time.monotonic() - started < 2.5
    assert exc.message == "image: fetching the URL took longer than 1 s"


async def test_trickling_server_hits_overall_time_cap(b: _Server) -> None:
    policy = FetchPolicy(timeout_s=1, allow_hosts=("127.0.0.2",))
    started = time.monotonic()
    exc = await _refused(b.url("/trickle"), policy)
    assert time.monotonic() - started < 2.5
    assert exc.rule == "fetching the URL took longer than 1 s"


async def test_not_found_refused_with_status(b: _Server) -> None:
    exc = await _refused(b.url("/missing"), LOOPBACK_OK)
    assert exc.rule == f"could not fetch {b.url('/missing')}: the URL answered HTTP 404"


async def test_too_many_redirects_refused(b: _Server) -> None:
    policy = FetchPolicy(max_redirects=3, allow_hosts=("127.0.0.2",))
    exc = await _refused(b.url("/loop"), policy)
    assert "redirected more than 3 times" in exc.rule
    assert b.paths == ["/loop"] * 4  # the first request and three redirects


async def test_connection_refused_is_reported() -> None:
    with socket.socket() as s:  # a port with nothing listening on it
        s.bind(("127.0.0.2", 0))
        port = s.getsockname()[1]
    exc = await _refused(f"http://127.0.0.2:{port}/x.png", LOOPBACK_OK)
    assert "could not connect" in exc.rule


async def test_unresolvable_host_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_dns(monkeypatch, {})
    exc = await _refused("https://no-such-host.example/x.png", FetchPolicy())
    assert "no-such-host.example does not resolve" in exc.rule


async def test_compressed_body_refused(b: _Server) -> None:
    exc = await _refused(b.url("/gzip"), LOOPBACK_OK)
    assert "Content-Encoding: gzip" in exc.rule


# --- schemes and URL shapes ----------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/cat.png",
        "file:///etc/passwd",
        "gopher://example.com:70/_x",
        "javascript:alert(1)",
        "example.com/cat.png",
    ],
)
async def test_other_schemes_refused(url: str) -> None:
    exc = await _refused(url, FetchPolicy())
    assert exc.rule == "must be an https:// URL or a data: URI"


async def test_userinfo_refused_without_echoing_it() -> None:
    net = _NoNetwork()
    exc = await _refused(
        "https://alice:s3cret@example.com/cat.png", FetchPolicy(), client=net.client
    )
    assert "user name or password" in exc.rule
    assert "s3cret" not in exc.message
    assert net.requests == []


# --- data: URIs ----------------------------------------------------------------------------


async def test_data_uris_accepted() -> None:
    policy = FetchPolicy()
    png_uri = "data:image/png;base64," + base64.b64encode(PNG).decode()
    jpeg_uri = "data:image/jpeg;base64," + base64.b64encode(JPEG).decode()
    assert await load_input_image(png_uri, policy, field="image") == PNG
    assert await load_input_image(jpeg_uri, policy, field="last_image") == JPEG
    # Percent-encoded instead of base64.
    pct_uri = "data:image/png," + quote_from_bytes(PNG)
    assert await fetch_input(pct_uri, policy, field="image") == PNG
    # Line-wrapped, unpadded base64 as some clients send it.
    wrapped = base64.b64encode(PNG).decode().rstrip("=")
    wrapped = "\n".join(wrapped[i : i + 76] for i in range(0, len(wrapped), 76))
    assert await fetch_input("data:image/png;base64," + wrapped, policy, field="image") == PNG


@pytest.mark.parametrize(
    ("uri", "words"),
    [
        ("data:image/png;base64", "no comma"),
        ("data:image/png;base64,iVBO$$$w0K", "base64 data is malformed"),
        ("data:image/png;base64,A", "base64 data is malformed"),
        ("data:image/png,%zz%89PNG", "does not start a %XX escape"),
        ("data:image/png;base64,", "carries no data"),
    ],
)
async def test_malformed_data_uris_refused(uri: str, words: str) -> None:
    exc = await _refused(uri, FetchPolicy())
    assert exc.rule.startswith("is not a valid data: URI")
    assert words in exc.rule


async def test_oversize_data_uri_refused() -> None:
    uri = "data:application/octet-stream;base64," + base64.b64encode(b"\0" * 2048).decode()
    exc = await _refused(uri, FetchPolicy(max_bytes=1024))
    assert exc.rule == "the file is larger than the 1 KiB limit"


# --- image checks --------------------------------------------------------------------------


async def test_non_image_bytes_refused(b: _Server) -> None:
    with pytest.raises(InvalidInput) as info:
        await load_input_image(b.url("/text"), LOOPBACK_OK, field="images[1]")
    assert info.value.field == "images[1]"
    assert info.value.rule.startswith("is not a decodable image")


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "GIF", "BMP"])
def test_check_image_formats(fmt: str) -> None:
    assert check_image(_image_bytes(fmt, (12, 7)), field="image") == (fmt.lower(), 12, 7)


def test_check_image_refuses_truncated_and_garbage() -> None:
    for data in (PNG[: len(PNG) // 2], b"GIF89a not really", b"", b"\0" * 100):
        with pytest.raises(InvalidInput) as info:
            check_image(data, field="image")
        assert info.value.field == "image"
        assert info.value.rule.startswith("is not a decodable image")


def test_check_image_refuses_decompression_bombs() -> None:
    # A PNG header claiming 100000 x 100000 pixels: a few dozen bytes, 10 gigapixels.
    def chunk(kind: bytes, payload: bytes) -> bytes:
        crc = zlib.crc32(kind + payload)
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")
    with pytest.raises(InvalidInput) as info:
        check_image(bomb, field="image")
    assert "too large to decode" in info.value.rule

    with pytest.raises(InvalidInput) as info:
        check_image(_image_bytes("PNG", (20, 20)), field="image", max_pixels=399)
    assert info.value.rule == (
        "is too large to decode (20x20 = 400 pixels; the limit is 399 pixels)"
    )


def test_policy_from_settings() -> None:
    settings = load_settings(
        fetch_max_bytes=1234,
        fetch_timeout_s=2.5,
        fetch_max_redirects=1,
        fetch_allow_hosts="images.test, 10.0.0.0/8",
    )
    assert FetchPolicy.from_settings(settings) == FetchPolicy(
        max_bytes=1234,
        timeout_s=2.5,
        max_redirects=1,
        allow_hosts=("images.test", "10.0.0.0/8"),
    )
