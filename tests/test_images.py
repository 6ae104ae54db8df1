"""The image loader on a corpus of broken and odd inputs, and the built-in sources over real HTTP."""

from __future__ import annotations

import base64
import io
import os
import socket
import struct
import threading
import time
import urllib.parse
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image, features

from blip2plugins import default_sources
from blip2plugins.errors import ImageError
from blip2plugins.images import describe, load_image, printable
from blip2plugins.types import ImageLimits, ImageSource

SOURCES = default_sources.SOURCES
RED = (255, 0, 0)
WHITE = (255, 255, 255)


def load(source, **kwargs):
    return load_image(source, sources=kwargs.pop("sources", SOURCES), **kwargs)


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def close_to(actual, expected, tolerance=12) -> bool:
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected))


def refused(source, reason: str, **kwargs) -> ImageError:
    with pytest.raises(ImageError) as info:
        load(source, **kwargs)
    assert reason in info.value.reason
    assert str(info.value).startswith(describe(source) + ": ")
    return info.value


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height, with no pixel data at all."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


RED_PNG = encode(Image.new("RGB", (8, 6), RED), "PNG")


# --- ordinary inputs ------------------------------------------------------------------------------


def test_path_str_bytes_file_object_and_data_uri_all_give_the_same_rgb_image(tmp_path):
    path = tmp_path / "red.png"
    path.write_bytes(RED_PNG)
    b64 = "data:image/png;base64," + base64.b64encode(RED_PNG).decode()
    percent = "data:image/png," + urllib.parse.quote_from_bytes(RED_PNG)
    inputs = [path, str(path), RED_PNG, bytearray(RED_PNG), memoryview(RED_PNG), io.BytesIO(RED_PNG), b64, percent]
    for source in inputs:
        image = load(source)
        assert (image.mode, image.size, image.getpixel((3, 3))) == ("RGB", (8, 6), RED), describe(source)


def test_data_uri_tolerates_missing_padding_and_url_safe_alphabet():
    encoded = base64.urlsafe_b64encode(RED_PNG).decode().rstrip("=")
    assert load("data:image/png;base64," + encoded).getpixel((0, 0)) == RED


def test_file_url(tmp_path):
    path = tmp_path / "red image.png"
    path.write_bytes(RED_PNG)
    assert load(path.as_uri()).size == (8, 6)
    refused((tmp_path / "gone.png").as_uri(), "file not found")


def test_file_url_escapes_are_the_file_names_bytes(tmp_path):
    name = os.fsencode(tmp_path) + b"/bad\xffname.png"  # a name that is not UTF-8
    with open(name, "wb") as file:
        file.write(RED_PNG)
    assert load("file://" + urllib.parse.quote_from_bytes(name)).getpixel((0, 0)) == RED


@pytest.mark.parametrize("name", ["file:x.png", "http:y.png", "data:z.png", "https://example.com/w.png"])
def test_an_existing_file_named_like_a_url_is_that_file(tmp_path, monkeypatch, name):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.png").write_bytes(encode(Image.new("RGB", (4, 4), WHITE), "PNG"))  # what file:x.png names
    Path(name).parent.mkdir(parents=True, exist_ok=True)
    Path(name).write_bytes(RED_PNG)
    assert load(name).getpixel((0, 0)) == RED


def test_pil_image_is_converted_without_touching_the_callers_image():
    original = Image.new("L", (5, 5), 77)
    image = load(original)
    assert image.mode == "RGB" and image.getpixel((0, 0)) == (77, 77, 77)
    assert image is not original and original.mode == "L"


def test_rgb_pil_image_comes_back_as_a_copy():
    original = Image.new("RGB", (5, 5), (1, 2, 3))
    image = load(original)
    image.putpixel((0, 0), (9, 9, 9))
    assert image is not original and original.getpixel((0, 0)) == (1, 2, 3)


# --- files that are not (whole) images ------------------------------------------------------------


def test_missing_path(tmp_path):
    err = refused(str(tmp_path / "nope.png"), "file not found")
    assert "nope.png" in str(err)


def test_directory(tmp_path):
    refused(tmp_path, "is a directory")


@pytest.mark.parametrize("path, kind", [("fifo", "a named pipe"), ("/dev/null", "a device"),
                                        ("/dev/zero", "a device")])
def test_anything_but_a_regular_file_is_refused_without_reading_it(tmp_path, path, kind):
    if path == "fifo":
        path = str(tmp_path / "pipe.png")
        os.mkfifo(path)  # opening it for reading would wait for a writer forever
    elif not os.path.exists(path):
        pytest.skip(f"no {path} here")
    errors = []
    reader = threading.Thread(target=lambda: errors.append(pytest.raises(ImageError, load, path).value), daemon=True)
    reader.start()
    reader.join(5)
    assert not reader.is_alive(), "the loader is stuck on a special file"
    assert errors[0].reason == f"not a regular file ({kind})"


def test_empty_file(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    refused(tmp_path / "empty.png", "empty file")


def test_text_file_named_png(tmp_path):
    (tmp_path / "notes.png").write_text("just some notes, not pixels\n")
    assert refused(tmp_path / "notes.png", "not an image").reason == "not an image (got text)"


def test_html_bytes():
    refused(b"<!DOCTYPE html><html><body>Sign in</body></html>", "not an image (got text/html)")


def test_random_binary_is_not_an_image():
    assert refused(bytes(range(256)) * 4, "not an image").reason == "not an image"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_image(tmp_path, fmt):
    data = encode(Image.effect_noise((64, 64), 50).convert("RGB"), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    refused(path, "truncated or corrupt image")


# --- limits ---------------------------------------------------------------------------------------


def test_decompression_bomb_header_is_refused():
    refused(png_header_only(100_000, 100_000), "too many pixels")


def test_pixel_cap_is_checked_from_the_header_before_decoding():
    # No pixel data at all: decoding would fail as corrupt, so this reason proves the order.
    err = refused(png_header_only(5000, 4000), "too many pixels", limits=ImageLimits(max_pixels=1_000_000))
    assert err.reason == "too many pixels (5000x4000 > limit 1000000)"


def test_pixel_cap_applies_to_pil_images():
    refused(Image.new("RGB", (100, 100)), "too many pixels", limits=ImageLimits(max_pixels=9999))


def test_byte_cap_on_bytes_file_and_file_object(tmp_path):
    limits = ImageLimits(max_bytes=len(RED_PNG) - 1)
    path = tmp_path / "red.png"
    path.write_bytes(RED_PNG)
    assert refused(RED_PNG, "too large", limits=limits).reason == (
        f"too large ({len(RED_PNG)} bytes > limit {len(RED_PNG) - 1})"
    )
    refused(path, "too large", limits=limits)
    refused(io.BytesIO(RED_PNG), "too large", limits=limits)
    assert load(RED_PNG, limits=ImageLimits(max_bytes=len(RED_PNG))).size == (8, 6)


def test_byte_cap_stops_reading_an_endless_stream():
    class Endless(io.RawIOBase):
        read_so_far = 0

        def readable(self):
            return True

        def readinto(self, buffer):
            buffer[:] = b"\0" * len(buffer)
            self.read_so_far += len(buffer)
            return len(buffer)

    stream = Endless()
    refused(stream, "too large", limits=ImageLimits(max_bytes=10_000))
    assert stream.read_so_far == 10_001


def test_text_mode_file_object(tmp_path):
    (tmp_path / "red.png").write_bytes(RED_PNG)
    with open(tmp_path / "red.png", encoding="latin-1") as text_file:
        refused(text_file, "text mode")


# --- modes, orientation, animation ----------------------------------------------------------------


def test_rgba_transparent_pixel_becomes_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
    image.putpixel((0, 0), (0, 0, 0, 0))
    image.putpixel((1, 0), (0, 0, 0, 128))
    out = load(encode(image, "PNG"))
    assert out.getpixel((0, 0)) == WHITE
    assert close_to(out.getpixel((1, 0)), (127, 127, 127), 2)
    assert out.getpixel((2, 2)) == RED


def test_palette_with_transparency_becomes_white():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((0, 0), 1)
    out = load(encode(image, "PNG", transparency=1))
    assert out.getpixel((0, 0)) == WHITE
    assert out.getpixel((3, 3)) == RED


def test_la_transparent_pixel_becomes_white():
    image = Image.new("LA", (4, 4), (50, 255))
    image.putpixel((0, 0), (0, 0))
    out = load(encode(image, "PNG"))
    assert out.getpixel((0, 0)) == WHITE
    assert out.getpixel((1, 1)) == (50, 50, 50)


def test_cmyk_jpeg():
    out = load(encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95))
    assert close_to(out.getpixel((8, 8)), RED)


def test_16_bit_grayscale_is_scaled_not_clipped():
    image = Image.new("I;16", (3, 1))
    for x, value in enumerate([0, 32768, 65535]):
        image.putpixel((x, 0), value)
    reloaded = Image.open(io.BytesIO(encode(image, "PNG")))
    assert reloaded.mode == "I;16"
    out = load(encode(image, "PNG"))
    assert [out.getpixel((x, 0)) for x in range(3)] == [(0, 0, 0), (128, 128, 128), WHITE]


@pytest.mark.parametrize(
    ("mode", "value", "expected"),
    [("F", 0.5, 128), ("F", 200.0, 200), ("I", 100, 100), ("I", 40000, 156), ("1", 1, 255), ("L", 9, 9)],
)
def test_other_modes_become_rgb(mode, value, expected):
    assert load(Image.new(mode, (2, 2), value)).getpixel((1, 1)) == (expected,) * 3


def test_exif_orientation_is_applied():
    image = Image.new("RGB", (60, 30), (128, 128, 128))
    image.paste(RED, (0, 0, 12, 12))  # mark the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    out = load(encode(image, "JPEG", quality=95, exif=exif.tobytes()))
    assert out.size == (30, 60)
    assert close_to(out.getpixel((30 - 5, 5)), RED)  # now the top-right corner
    assert close_to(out.getpixel((5, 5)), (128, 128, 128))


ANIMATED = ["GIF", "PNG"] + (["WEBP"] if features.check("webp") else [])


@pytest.mark.parametrize("fmt", ANIMATED)
def test_animated_image_gives_its_first_frame(fmt):
    frames = [Image.new("RGB", (8, 8), colour) for colour in (RED, (0, 255, 0), (0, 0, 255))]
    extra = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, **extra)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 3
    assert close_to(load(data).getpixel((4, 4)), RED, 2)


# --- strings, sources, descriptions ---------------------------------------------------------------


def test_unsupported_scheme():
    assert refused("ftp://example.com/cat.png", "unsupported scheme").reason == "unsupported scheme 'ftp'"


def test_windows_drive_is_a_path_not_a_scheme():
    refused("C://images/cat.png", "file not found")


def test_bad_base64_data_uri():
    refused("data:image/png;base64,iVBOR*w0KGgo!!", "bad base64")


def test_first_claiming_source_wins_and_its_result_is_checked():
    calls = []

    def loader(ref, limits):
        calls.append(ref)
        return io.BytesIO(b"<html><body>login</body></html>")

    mine = ImageSource("mine", loader, matches=lambda ref: ref.startswith("data:"))
    refused("data:image/png;base64,AAAA", "not an image (got text/html)", sources=[mine, *SOURCES])
    assert calls == ["data:image/png;base64,AAAA"]


def test_plugin_scheme_and_loader_crash_become_image_errors():
    s3 = ImageSource("s3", lambda ref, limits: Image.new("L", (2, 2), 5), scheme="s3")
    assert load("s3://bucket/key.png", sources=[s3]).getpixel((0, 0)) == (5, 5, 5)

    def broken(ref, limits):
        raise KeyError("no credentials")

    err = refused("s3://bucket/key.png", "image source 's3' failed", sources=[ImageSource("s3", broken, scheme="s3")])
    assert "no credentials" in err.reason and isinstance(err.__cause__, KeyError)


def test_describe():
    assert describe("data:image/png;base64,AAAA") == "data:image/png;base64,... (4 bytes)"
    assert describe(b"abc") == "<bytes: 3>"
    assert describe(memoryview(b"abcd")) == "<bytes: 4>"
    assert describe(io.BytesIO()) == "<file object>"
    assert describe(Image.new("RGB", (1, 1))) == "<PIL image>"
    assert describe(Path("a/b.png")) == str(Path("a/b.png"))
    assert describe("https://user:secret@host/x.png") == "https://***@host/x.png"
    assert describe("bad\nname.png") == "bad\\nname.png"
    assert describe(os.fsdecode(b"bad\xffname.png")) == "bad\\xffname.png"  # valid UTF-8, one line
    long_url = "https://example.com/" + "x" * 1000
    assert len(describe(long_url)) == 200 and describe(long_url).startswith("https://example.com/xx")
    deep = "/photos/" + "deep/" * 100
    ends = [describe(deep + name) for name in ("cat.png", "dog.png")]
    assert [len(e) for e in ends] == [200, 200] and ends[0].endswith("/deep/cat.png") and ends[1].endswith("/dog.png")


def test_printable_escapes_bytes_that_are_not_utf8_and_with_controls_unprintables():
    name = os.fsdecode(b"caf\xc3\xa9/bad\xffname\n\tx.png")
    assert printable(name) == "café/bad\\xffname\\n\\tx.png"
    assert printable(name, controls=False) == "café/bad\\xffname\n\tx.png"  # for JSON, which escapes those
    assert printable("\ud800") == printable("\ud800", controls=False) == "\\ud800"  # no byte: still valid UTF-8


def test_unsupported_input_type():
    with pytest.raises(ImageError, match="unsupported input type 'int'"):
        load_image(42, sources=SOURCES)  # type: ignore[arg-type]


# --- HTTP -----------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    endless_sent = 0
    endless_done = threading.Event()

    def log_message(self, *args):
        pass

    def _send(self, code: int, body: bytes, content_type: str = "image/png", length: int | None = None):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body) if length is None else length))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?")[0]
        if path == "/red.png":
            self._send(200, RED_PNG)
        elif path == "/mislabelled":
            self._send(200, RED_PNG, "text/plain")
        elif path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/red.png")
            self.end_headers()
        elif path == "/redirect-missing":
            self.send_response(302)
            self.send_header("Location", "/missing.png")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path.startswith("/hops/"):  # /hops/N redirects N times before reaching /red.png
            hops = int(path.rsplit("/", 1)[1])
            self.send_response(301)
            self.send_header("Location", f"/hops/{hops - 1}" if hops > 1 else "/red.png")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path == "/page":
            self._send(200, b"<!doctype html><html><head><title>Cat</title></head></html>", "text/html")
        elif path == "/huge":
            self._send(200, b"\0" * 1024, length=10**10)
        elif path == "/endless":
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            chunk = b"\0" * 65536
            try:
                while type(self).endless_sent < 2**30:
                    self.wfile.write(chunk)
                    type(self).endless_sent += len(chunk)
            except OSError:
                pass
            finally:
                type(self).endless_done.set()
        elif path == "/slow-headers":
            time.sleep(1.5)
            self._send(200, RED_PNG)
        elif path == "/slow-body":
            self.send_response(200)
            self.send_header("Content-Length", "1000")
            self.end_headers()
            self.wfile.write(RED_PNG[:10])
            self.wfile.flush()
            time.sleep(1.5)
        else:
            self._send(404, b"not found", "text/plain")


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address):
        pass  # clients that hang up early (timeouts, byte caps) are what these tests do on purpose


@pytest.fixture(scope="module")
def server():
    httpd = _Server(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    for name in ("http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("no_proxy", "*")


@pytest.mark.parametrize("path", ["/red.png", "/mislabelled", "/redirect"])
def test_http_image(server, path):
    image = load(server + path + "?token=abc")
    assert (image.size, image.getpixel((0, 0))) == ((8, 6), RED)


def test_http_follows_at_most_five_redirects(server):
    assert load(server + "/hops/5").getpixel((0, 0)) == RED
    assert refused(server + "/hops/6", "too many redirects").reason == "too many redirects"


def test_http_redirect_to_a_missing_page(server):
    refused(server + "/redirect-missing", "HTTP 404")


def test_http_404(server):
    err = refused(server + "/missing.png", "HTTP 404")
    assert server + "/missing.png" in str(err)


def test_http_html_page(server):
    refused(server + "/page", "not an image (got text/html)")


def test_http_declared_length_over_the_cap_is_refused_before_reading(server):
    err = refused(server + "/huge", "too large", limits=ImageLimits(max_bytes=100_000))
    assert err.reason == "too large (10000000000 bytes > limit 100000)"


def test_http_endless_body_stops_at_the_cap(server):
    start = time.monotonic()
    refused(server + "/endless", "too large", limits=ImageLimits(max_bytes=100_000))
    assert time.monotonic() - start < 3
    assert _Handler.endless_done.wait(5)
    assert _Handler.endless_sent < 64 * 2**20  # what the socket buffers held, not the whole gigabyte


@pytest.mark.parametrize("path", ["/slow-headers", "/slow-body"])
def test_http_read_timeout(server, path):
    start = time.monotonic()
    refused(server + path, "timed out", limits=ImageLimits(read_timeout=0.3))
    assert time.monotonic() - start < 1.3


def test_http_download_has_an_overall_deadline():
    """A server that sends a byte at a time, each well within the read timeout, is cut off at the deadline."""

    class Trickle(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(RED_PNG)))
            self.end_headers()
            try:
                for byte in RED_PNG:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass

    httpd = _Server(("127.0.0.1", 0), Trickle)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        start = time.monotonic()
        err = refused(f"http://127.0.0.1:{httpd.server_address[1]}/slow.png", "timed out",
                      limits=ImageLimits(download_timeout=0.5))
        assert time.monotonic() - start < 1.5
        assert err.reason == "timed out (the download took longer than 0.5 s)"
        assert ImageLimits().download_timeout == 60
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_http_connection_refused():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    refused(f"http://127.0.0.1:{port}/x.png", "unreachable: ")


def test_https_to_a_plain_http_server_fails_cleanly(server):
    refused(server.replace("http://", "https://") + "/red.png", "unreachable: ")


class _KeepAliveHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    connections = 0

    def setup(self):
        type(self).connections += 1
        super().setup()

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(RED_PNG)))
        self.end_headers()
        self.wfile.write(RED_PNG)


def test_http_images_from_one_server_reuse_a_connection():
    httpd = _Server(("127.0.0.1", 0), _KeepAliveHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        images = [load(f"{url}/image-{i}.png") for i in range(8)]
        assert all(image.getpixel((0, 0)) == RED for image in images)
        assert _KeepAliveHandler.connections == 1
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("size", [(0, 0), (0, 5), (5, 0)])
def test_an_empty_image_is_refused(size: tuple[int, int]) -> None:
    with pytest.raises(ImageError, match=rf"^<PIL image>: empty image \({size[0]}x{size[1]}\)$"):
        load_image(Image.new("RGB", size))
