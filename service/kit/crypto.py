"""Personal-data encryption (AES-256-GCM), blind indexes and API-key digests.

Ciphertext layout: one version byte, a 12-byte nonce, then the GCM output.
The associated data names the column, so a ciphertext copied into another
column does not decrypt.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

if TYPE_CHECKING:
    from service.kit.config import Settings

_VERSION = b"\x01"


class Crypto:
    def __init__(self, *, data_key: bytes, index_key: bytes, api_key_pepper: bytes) -> None:
        self._aead = AESGCM(data_key)
        self._index_key = index_key
        self._pepper = api_key_pepper

    @classmethod
    def from_settings(cls, settings: Settings) -> Crypto:
        """The deployment's three keys (SLOTPOOL_DATA_KEY, …_INDEX_KEY, …_API_KEY_PEPPER)."""
        return cls(
            data_key=settings.key_bytes("data_key"),
            index_key=settings.key_bytes("index_key"),
            api_key_pepper=settings.key_bytes("api_key_pepper"),
        )

    def encrypt(self, plaintext: str, *, column: str) -> bytes:
        nonce = os.urandom(12)
        return _VERSION + nonce + self._aead.encrypt(nonce, plaintext.encode(), column.encode())

    def decrypt(self, blob: bytes, *, column: str) -> str:
        if blob[:1] != _VERSION:
            raise ValueError("unknown ciphertext version")
        return self._aead.decrypt(blob[1:13], blob[13:], column.encode()).decode()

    def blind_index(self, normalised: str, *, purpose: str) -> bytes:
        """A keyed digest for equality lookups without storing the plaintext."""
        return hmac.new(self._index_key, f"{purpose}:{normalised}".encode(), hashlib.sha256).digest()

    def api_key_digest(self, token: str) -> bytes:
        return hmac.new(self._pepper, token.encode(), hashlib.sha256).digest()


def new_api_key() -> str:
    """A random 256-bit bearer token."""
    return "sp_" + secrets.token_urlsafe(32)


def mask_id_number(id_number: str, *, keep_first: int = 1, keep_last: int = 1) -> str:
    """Keep only the first and last characters (the API's mask), or as many as the slip's policy says.

    At least two characters are always masked, whatever is asked: no mask returns the whole number.
    """
    keep_first, keep_last = max(keep_first, 0), max(keep_last, 0)
    if keep_first + keep_last > len(id_number) - 2:
        keep_first, keep_last = min(keep_first, 1), min(keep_last, 1)
    hidden = len(id_number) - keep_first - keep_last
    return id_number[:keep_first] + "*" * hidden + id_number[len(id_number) - keep_last :]


def mask_name(name: str) -> str:
    """Keep the first character (the surname, for most Chinese names)."""
    if len(name) <= 1:
        return "*"
    return name[0] + "*" * (len(name) - 1)
