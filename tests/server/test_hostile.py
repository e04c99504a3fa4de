"""Hostile and odd uploads against the live server: the right status and a JSON error, or a
caption for a valid image; nothing echoed unescaped; workers stay up and small."""
import io
import json
import socket

import pytest
import requests
from PIL import Image

from harness.server_process import rss_kb

from .test_uploads import encode


def jpeg_with_orientation() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 8
    return encode(Image.new("RGB", (300, 100), (20, 200, 20)), "JPEG", exif=exif)


def animated_gif() -> bytes:
    frames = [Image.new("P", (64, 64), i) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def palette_with_transparency() -> bytes:
    image = Image.new("P", (80, 80), 1)
    image.putpalette([0, 0, 0, 200, 30, 30])
    return encode(image, "PNG", transparency=0)


def truncated_jpeg() -> bytes:
    data = encode(Image.effect_noise((400, 400), 40).convert("RGB"), "JPEG")
    return data[: len(data) // 3]


VALID = {
    "16-bit greyscale PNG": lambda: encode(Image.new("I;16", (120, 90), 30000), "PNG"),
    "CMYK JPEG": lambda: encode(Image.new("CMYK", (120, 90), (0, 200, 200, 0)), "JPEG"),
    "palette with transparency": palette_with_transparency,
    "animated GIF": animated_gif,
    "EXIF-rotated JPEG": jpeg_with_orientation,
    "1x1 PNG": lambda: encode(Image.new("RGB", (1, 1), (255, 0, 0)), "PNG"),
    "10000x5 PNG": lambda: encode(Image.new("RGB", (10000, 5), (0, 0, 255)), "PNG"),
    "just under the pixel limit": lambda: encode(Image.new("L", (6000, 6600)), "PNG"),  # 39.6 MP
}
INVALID = {
    "empty file": (lambda: b"", 400, "empty_image"),
    "text named .jpg": (lambda: b"this is not a jpeg", 415, "unsupported_media_type"),
    "truncated JPEG": (truncated_jpeg, 422, "invalid_image"),
    "PNG bomb over Pillow's limit": (lambda: encode(Image.new("1", (20000, 20000)), "PNG", optimize=True),
                                      413, "image_too_large"),
    "PNG just over the pixel limit": (lambda: encode(Image.new("L", (6400, 6400)), "PNG"), 413, "image_too_large"),
    "SVG": (lambda: b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
            415, "unsupported_media_type"),
    "HEIC": (lambda: b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + b"\x00" * 64, 415, "unsupported_media_type"),
}


@pytest.fixture(scope="module")
def baseline_rss(server):
    requests.post(server.url + "/api/v1/captions", files={"image": VALID["1x1 PNG"]()})
    return {pid: rss_kb(pid) for pid in server.workers()}


@pytest.mark.parametrize("name", list(VALID))
def test_odd_but_valid_images_are_captioned(server, baseline_rss, name):
    response = requests.post(server.url + "/api/v1/captions", files={"image": ("x.img", VALID[name]())})
    assert response.status_code == 200, response.text
    assert response.json()["captions"][0]["caption"]


@pytest.mark.parametrize("name", list(INVALID))
def test_hostile_uploads_get_the_right_error(server, baseline_rss, name):
    make, status, code = INVALID[name]
    response = requests.post(server.url + "/api/v1/captions", files={"image": ("photo.jpg", make())})
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code


def test_workers_survived_and_stayed_small(server, baseline_rss):
    # Runs after the uploads above (pytest keeps file order): same workers, bounded memory.
    assert {pid for pid in server.workers()} == set(baseline_rss)
    for pid, before in baseline_rss.items():
        assert rss_kb(pid) < before * 1.5 + 200_000, f"worker {pid} grew from {before} kB to {rss_kb(pid)} kB"


def test_filenames_are_never_echoed_unescaped(server):
    name = '../../etc/<img src=x onerror=alert(1)>"<script>alert(2)</script>.png'
    for data in (b"not an image", VALID["1x1 PNG"]()):
        page = requests.post(server.url + "/", files={"image": (name, data)})
        assert "<script>alert(2)</script>" not in page.text and "<img src=x" not in page.text
    api = requests.post(server.url + "/api/v1/captions", files={"image": (name, b"nope")})
    assert "<script>" not in api.text


def test_body_size_is_refused_before_it_is_read(server):
    """A declared 100 MB body is answered with 413 at once, without the server waiting for it."""
    host, port = server.url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /api/v1/captions HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                     b"Content-Length: 104857600\r\n\r\n" + b"\x89PNG" * 16)
        reply = b""
        while b'"}}' not in reply:  # headers and body may come in separate packets
            chunk = sock.recv(4096)
            assert chunk, f"connection closed after {reply!r}"
            reply += chunk
        reply = reply.decode(errors="replace")
    assert reply.startswith("HTTP/1.1 413")
    assert '"code":"request_entity_too_large"' in reply.replace(" ", "")


def test_headers_and_banner(server):
    response = requests.get(server.url + "/")
    assert response.headers["Server"] == "gunicorn"  # no version
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    error = requests.get(server.url + "/api/v1/nothing")
    assert "Traceback" not in error.text and "werkzeug" not in error.text.lower()


@pytest.mark.parametrize("request_bytes, status", [
    (b"GARBAGE\r\n\r\n", 400),                                               # not a request line
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n", 400),         # a space in a header name
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),  # a header over 8190 bytes
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: 1\r\n" % i for i in range(120)) + b"\r\n", 431),
    (b"GET /healthz?q=" + b"a" * 4100 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),  # docs/api.md's table has it
])
def test_errors_gunicorn_answers_itself_are_json_with_a_request_id(server, request_bytes, status):
    host, port = server.url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request_bytes)
        reply = b""
        while chunk := sock.recv(4096):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    head = head.decode()
    assert head.startswith(f"HTTP/1.1 {status} "), head
    assert "Content-Type: application/json" in head and "X-Request-ID: " in head
    error = json.loads(body)["error"]
    assert error["code"] and error["message"]
