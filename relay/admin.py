"""`relay admin METHOD [PARAMS...]`: a NIP-86 call from the shell, signed with NIP-98.

The secret key (64 hex characters) comes from a file
(`--key-file`) or the RELAY_ADMIN_KEY environment variable, never from the command line,
where other users of the machine could read it in the process list.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from coincurve import PrivateKey

from relay.core.canonical import dumps, serialize
from relay.core.moderation import HTTP_AUTH_KIND

KEY_ENV = "RELAY_ADMIN_KEY"
CONTENT_TYPE = "application/nostr+json+rpc"


class AdminError(Exception):
    pass


def read_secret(key_file: str | None, environ: Mapping[str, str]) -> PrivateKey:
    text = Path(key_file).read_text().strip() if key_file else environ.get(KEY_ENV, "").strip()
    if not text:
        raise AdminError(f"no admin key: give --key-file or set {KEY_ENV}")
    try:
        return PrivateKey(bytes.fromhex(text))
    except ValueError:
        raise AdminError("the admin key must be 64 hex characters") from None


def auth_header(secret: PrivateKey, url: str, method: str, body: bytes, now: int) -> str:
    """NIP-98 `Authorization` value: a signed kind 27235 event, base64 of its JSON."""
    pubkey = secret.public_key_xonly.format().hex()
    tags = [["u", url], ["method", method.upper()]]
    if body:
        tags.append(["payload", hashlib.sha256(body).hexdigest()])
    digest = hashlib.sha256(serialize(pubkey, now, HTTP_AUTH_KIND, tags, "")).digest()
    event = {
        "id": digest.hex(),
        "pubkey": pubkey,
        "created_at": now,
        "kind": HTTP_AUTH_KIND,
        "tags": tags,
        "content": "",
        "sig": secret.sign_schnorr(digest).hex(),
    }
    return "Nostr " + base64.b64encode(dumps(event)).decode()


def parse_param(text: str) -> Any:
    """A kind is sent as a number, anything else as the string it is."""
    return int(text) if text.isascii() and text.isdigit() else text


def http_url(url: str) -> str:
    """The relay's URL as HTTP: ws:// -> http://, wss:// -> https://."""
    return "http" + url.removeprefix("ws") if url.startswith("ws") else url


def call(url: str, secret: PrivateKey, method: str, params: Sequence[Any]) -> Any:
    """POST one NIP-86 request; the result, or AdminError with the relay's error."""
    url = http_url(url)
    body = json.dumps({"method": method, "params": list(params)}).encode()
    request = urllib.request.Request(url, data=body, method="POST")
    request.add_header("Content-Type", CONTENT_TYPE)
    request.add_header("Authorization", auth_header(secret, url, "POST", body, int(time.time())))
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise AdminError(f"HTTP {error.code}: {error.read().decode(errors='replace')}") from None
    except (urllib.error.URLError, OSError, ValueError) as error:
        raise AdminError(f"cannot reach {url}: {error}") from None
    if not isinstance(answer, dict):
        raise AdminError(f"unexpected answer: {answer!r}")
    if answer.get("error"):
        raise AdminError(str(answer["error"]))
    return answer.get("result")
