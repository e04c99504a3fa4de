"""API keys: who may caption. Off unless CAPTION_API_KEYS or CAPTION_API_KEYS_FILE names keys.

A caller sends `Authorization: Bearer <key>` (the web form sends its `api_key` field instead).
Every key is compared in constant time, and all of them every time, so neither the timing nor
the order of the keys tells a caller how close a guess was. The probes (`/healthz`, `/readyz`,
`/v2/health/*`, a model's `/ready`), `/metrics`, the form's page and the OpenAPI document stay
open: the platform that runs the server checks them without a key, and none of them captions.
Keys never reach a log line or a trace: only whether the request carried one that matched.
"""
from __future__ import annotations

import hmac
import re
from pathlib import Path

KEY = re.compile(r"^[A-Za-z0-9._~+/=-]{16,256}$")
SCHEME = "Bearer"
CHALLENGE = f'{SCHEME} realm="caption-server"'
# Flask routes (url_rule.rule) open without a key; every other route needs one when keys are set.
OPEN_ROUTES = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json", "/static/<path:filename>",
                         "/v2/health/live", "/v2/health/ready", "/v2/models/<name>/ready",
                         "/v2/models/<name>/versions/<version>/ready"})
OPEN_PAGES = frozenset({("GET", "/")})  # the form's page: it asks for the key, its submission needs one
# gRPC methods open without a key: the protocol's probes.
OPEN_GRPC_METHODS = frozenset({"/inference.GRPCInferenceService/ServerLive",
                               "/inference.GRPCInferenceService/ServerReady",
                               "/inference.GRPCInferenceService/ModelReady"})


def read_keys(listed: str, file: str) -> tuple[tuple[bytes, ...], list[str]]:
    """The keys from a comma-separated list and a file (one per line; blank lines and `#` comments
    skipped), and what is wrong with them (an empty list when they can be used)."""
    keys, problems = [k.strip() for k in listed.split(",") if k.strip()], []
    if file:
        try:
            lines = Path(file).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            return (), [f"api_keys_file={file!r} cannot be read ({getattr(exc, 'strerror', None) or exc})"]
        keys += [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
        if not keys:
            problems.append(f"api_keys_file={file!r} holds no key")
    # Which key is wrong is told by position, never by its text: the message goes to the log.
    bad = [str(index + 1) for index, key in enumerate(keys) if not KEY.match(key)]
    if bad:
        problems.append(f"API key {', '.join(bad)} (in the order given) is not 16 to 256 characters of letters, "
                        "digits and ._~+/=-")
    return tuple(key.encode() for key in keys), problems


def presented_key(authorization: str | None) -> bytes | None:
    """The key in an `Authorization: Bearer <key>` header, or None."""
    if not authorization:
        return None
    scheme, _, key = authorization.strip().partition(" ")
    return key.strip().encode() if scheme.lower() == SCHEME.lower() and key.strip() else None


def is_valid(presented: bytes | None, keys: tuple[bytes, ...]) -> bool:
    """Whether `presented` is one of `keys`, compared with every key in constant time."""
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(presented or b"", key)
    return matched and presented is not None


def route_is_open(method: str, rule: str | None) -> bool:
    """Whether a Flask route is reachable without a key (an unmatched route answers its own 404)."""
    method = "GET" if method == "HEAD" else method  # Flask answers HEAD with the GET route
    return rule is None or rule in OPEN_ROUTES or (method, rule) in OPEN_PAGES
