"""The saved chats as the browser keeps them: sealed by the server, opened only by the server.

The browser holds an opaque token (Fernet: AES and an HMAC) made with a key that never leaves the
server. A store the browser sends back is opened only if the server made it, for the same login:
a store written by hand, edited, or made by another server is refused whole. So the paths of
files in a store are always paths the server itself put there (files the user uploaded or
imported), never paths a client chose, and the chats are unreadable to anyone who copies the
browser's storage without the server's key.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from app.chats import Store

# Tokens larger than this are refused unread (a real store of many chats is a few MB; the
# browser's local storage holds about 5 MB per site).
MAX_SEALED_BYTES = 16 << 20


def _derive(secret: str, purpose: str) -> bytes:
    return hashlib.sha256(f"qwen-vl-chat\0{purpose}\0{secret}".encode()).digest()


def browser_layer_secret(secret: str) -> str:
    """The secret gradio's BrowserState gets. gradio sends it to every page (its encryption runs
    in the browser), so it must not be, nor lead to, the server's own key: a hash for another
    purpose, stable across restarts so that the browser still finds its value."""
    return _derive(secret, "browser layer").hex()[:32]


class StoreSeal:
    """Seals a store for one login (or none) and opens only what it sealed itself."""

    def __init__(self, secret: str) -> None:
        from cryptography.fernet import Fernet

        self._fernet = Fernet(base64.urlsafe_b64encode(_derive(secret, "server seal")))

    def seal(self, store: Store, owner: str | None) -> str:
        body = json.dumps({"owner": owner, "store": store}, separators=(",", ":"))
        return self._fernet.encrypt(body.encode()).decode("ascii")

    def open(self, token: Any, owner: str | None) -> Store | None:
        """The store in `token` if this server sealed it for `owner`; None otherwise (and for
        the empty value of a browser that has saved nothing yet)."""
        from cryptography.fernet import InvalidToken

        if not isinstance(token, str) or not token or len(token) > MAX_SEALED_BYTES:
            return None
        try:
            body = json.loads(self._fernet.decrypt(token.encode("ascii")))
        except (InvalidToken, ValueError, UnicodeError):
            return None
        if not isinstance(body, dict) or body.get("owner") != owner:
            return None
        store = body.get("store")
        return store if isinstance(store, dict) else None
