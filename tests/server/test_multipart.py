"""server/multipart.py: strictly formed bodies split as werkzeug splits them; anything else left to werkzeug."""
import io

import pytest
from urllib3 import encode_multipart_formdata
from werkzeug.formparser import MultiPartParser
from werkzeug.test import EnvironBuilder

from server.multipart import FastFormDataParser, split_form

PHOTO = bytes(range(256)) * 400  # binary content with CR, LF and dashes in it
BOUNDARY = b"----WebKitFormBoundary7MA4YWxkTrZu0gW"


def browser_body(parts: list[tuple[str, str | None, str | None, bytes]], boundary: bytes = BOUNDARY) -> bytes:
    """A body as browsers write it: (name, filename, content type, content) per part."""
    body = b""
    for name, filename, content_type, content in parts:
        body += b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"" + name.encode() + b"\""
        if filename is not None:
            body += b"; filename=\"" + filename.encode() + b"\""
        body += b"\r\n" + (b"Content-Type: " + content_type.encode() + b"\r\n" if content_type else b"")
        body += b"\r\n" + content + b"\r\n"
    return body + b"--" + boundary + b"--\r\n"


def werkzeug_body(data: dict) -> tuple[bytes, bytes]:
    environ = EnvironBuilder(method="POST", data=data).get_environ()
    boundary = environ["CONTENT_TYPE"].split("boundary=")[1].strip('"').encode()
    return environ["wsgi.input"].read(), boundary


def requests_body(fields) -> tuple[bytes, bytes]:
    body, content_type = encode_multipart_formdata(fields)
    return body, content_type.split("boundary=")[1].encode()


def as_werkzeug_parses(body: bytes, boundary: bytes):
    fields, files = MultiPartParser(stream_factory=lambda **kwargs: io.BytesIO()).parse(
        io.BytesIO(body), boundary, len(body))
    return summary(list(fields.items(multi=True)), list(files.items(multi=True)))


def summary(fields, files):
    return fields, [(name, f.filename, f.content_type, f.stream.read()) for name, f in files]


CLIENT_BODIES = {
    "browser": lambda: (browser_body([("image", "a.jpg", "image/jpeg", PHOTO), ("beam_size", None, None, b"3"),
                                      ("image", "b.png", "image/png", PHOTO[::-1]),
                                      ("note", None, "text/plain; charset=iso-8859-1", "café".encode("latin-1")),
                                      ("empty", "", "application/octet-stream", b"")]), BOUNDARY),
    "requests": lambda: requests_body([("image", ("a.jpg", PHOTO, "image/jpeg")), ("max_length", "7"),
                                       ("label", "übung ✓")]),
    "werkzeug test client": lambda: werkzeug_body({"image": (io.BytesIO(PHOTO), "a.jpg", "image/jpeg"),
                                                   "beam_size": "2"}),
}


@pytest.mark.parametrize("client", CLIENT_BODIES)
def test_bodies_clients_send_split_as_werkzeug_splits_them(client):
    body, boundary = CLIENT_BODIES[client]()
    parsed = split_form(body, boundary, max_field_bytes=1 << 20, max_parts=1000)
    assert parsed is not None, "the fast path should take this body"
    assert summary(*parsed) == as_werkzeug_parses(body, boundary)


def strict() -> bytes:
    return browser_body([("image", "a.jpg", "image/jpeg", PHOTO), ("beam_size", None, None, b"3")])


ODD_BODIES = {
    "a preamble": lambda: b"This is a preamble.\r\n" + strict(),
    "a folded header": lambda: strict().replace(b"Content-Type: image/jpeg", b"Content-Type:\r\n image/jpeg"),
    "a transfer encoding": lambda: strict().replace(b"Content-Type: image/jpeg",
                                                    b"Content-Transfer-Encoding: base64\r\nContent-Type: image/jpeg"),
    "no close delimiter": lambda: strict()[:-40],
    "a part without a name": lambda: strict().replace(b'name="beam_size"', b'nome="beam_size"'),
    "not form-data": lambda: strict().replace(b"form-data; name=\"beam_size\"", b"attachment; name=\"beam_size\""),
    "another boundary": lambda: strict().replace(BOUNDARY, b"other"),
}


@pytest.mark.parametrize("odd", ODD_BODIES)
def test_anything_unusual_is_left_to_werkzeug(odd):
    assert split_form(ODD_BODIES[odd](), BOUNDARY, max_field_bytes=1 << 20, max_parts=1000) is None


def test_limits_are_left_to_werkzeug_to_enforce():
    body = browser_body([("image", "a.jpg", "image/jpeg", PHOTO), ("beam_size", None, None, b"3" * 100)])
    assert split_form(body, BOUNDARY, max_field_bytes=99, max_parts=10) is None
    assert split_form(body, BOUNDARY, max_field_bytes=100, max_parts=1) is None
    assert split_form(body, BOUNDARY, max_field_bytes=100, max_parts=2) is not None


@pytest.mark.parametrize("odd", ["a preamble", "a folded header"])
def test_the_parser_falls_back_to_werkzeug_with_the_same_answer(odd):
    body = ODD_BODIES[odd]()
    parser = FastFormDataParser(stream_factory=lambda **kwargs: io.BytesIO(), max_form_memory_size=1 << 20)
    _, form, files = parser.parse(io.BytesIO(body), "multipart/form-data", len(body),
                                  {"boundary": BOUNDARY.decode()})
    assert summary(list(form.items(multi=True)), list(files.items(multi=True))) == as_werkzeug_parses(body, BOUNDARY)
