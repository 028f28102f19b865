"""Keyed HMAC contexts of one SA, built once at ADD_SA time and copied per packet.

Copying a context that has already absorbed the key costs no key schedule and no
compression of the padded key: it is the cheapest per-packet HMAC these libraries offer.
The compiled CBC-HMAC backend (seal_cbc_hmac.pxi) reads the members below directly:

- ``_form`` 1: ``_a`` is one keyed HMAC object; per packet ``h = _copy_a()``,
  ``_update(h, data)``, ``tag = _final(h)``.
- ``_form`` 2: ``_a`` / ``_b`` are hash objects that absorbed key XOR ipad / key XOR opad
  (RFC 2104 §2); per packet ``h = _copy_a()``, ``_update(h, data)``,
  ``o = _copy_b()``, ``_update(o, _final(h))``, ``tag = _final(o)``.

Key material appears in no repr, log or error message.
"""
from __future__ import annotations

import hashlib
from typing import Callable, Dict

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as _chmac

from ..datapath.layout import Integrity

FORM_HMAC = 1
FORM_PAIR = 2

# name, digest size, block size
_ALGS = {
    Integrity.HMAC_MD5_96: ("md5", 16, 64),
    Integrity.HMAC_SHA1_96: ("sha1", 20, 64),
    Integrity.HMAC_SHA256_128: ("sha256", 32, 64),
}
_CRYPTO_HASHES: Dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "md5": hashes.MD5, "sha1": hashes.SHA1, "sha256": hashes.SHA256}


def _crypto_hmac(name: str, key: bytes):
    """FORM_HMAC with cryptography's keyed HMAC object (it hashes long keys itself)."""
    ctx = _chmac.HMAC(key, _CRYPTO_HASHES[name]())
    cls = type(ctx)
    return ctx, None, ctx.copy, None, cls.update, cls.finalize


def _hashlib_pair(name: str, key: bytes, block: int):
    """FORM_PAIR with hashlib; raises ValueError if OpenSSL refuses the hash (FIPS)."""
    if len(key) > block:  # RFC 2104 §3: longer keys are hashed first
        key = hashlib.new(name, key).digest()
    key = key.ljust(block, b"\0")
    inner = hashlib.new(name, bytes(b ^ 0x36 for b in key))
    outer = hashlib.new(name, bytes(b ^ 0x5C for b in key))
    cls = type(inner)
    return inner, outer, inner.copy, outer.copy, cls.update, cls.digest


class HmacTemplate:
    """Precomputed keyed HMAC context of one SA for HMAC-MD5-96, HMAC-SHA1-96 or
    HMAC-SHA-256-128 (RFC 2403, RFC 2404, RFC 4868)."""

    __slots__ = ("integrity", "digest_size", "block_size", "_form", "_a", "_b",
                 "_copy_a", "_copy_b", "_update", "_final")

    def __init__(self, integrity: int, auth_key: bytes):
        try:
            integrity = Integrity(integrity)
            name, digest_size, block = _ALGS[integrity]
        except (ValueError, KeyError):
            raise ValueError(f"HmacTemplate: unsupported integrity {integrity!r}") from None
        if not isinstance(auth_key, (bytes, bytearray, memoryview)):
            raise TypeError("HmacTemplate: auth_key must be bytes")
        key = bytes(auth_key)
        self.integrity = integrity
        self.digest_size = digest_size
        self.block_size = block
        # Copying hashlib's two keyed hashes measured a few per cent faster per packet
        # than copying cryptography's HMAC object, despite the extra calls.
        try:
            parts, form = _hashlib_pair(name, key, block), FORM_PAIR
        except ValueError:
            # hashlib refuses MD5 under FIPS: cryptography's HMAC instead.
            try:
                parts, form = _crypto_hmac(name, key), FORM_HMAC
            except Exception:
                raise ValueError(f"HmacTemplate: {integrity.name} is not available "
                                 "from OpenSSL (FIPS mode?)") from None
        self._form = form
        (self._a, self._b, self._copy_a, self._copy_b, self._update, self._final) = parts

    @classmethod
    def _with_form(cls, integrity: int, auth_key: bytes, form: int) -> "HmacTemplate":
        """A template forced to one form (tests, measurements)."""
        t = cls(integrity, auth_key)
        name, _, block = _ALGS[t.integrity]
        parts = (_crypto_hmac(name, bytes(auth_key)) if form == FORM_HMAC
                 else _hashlib_pair(name, bytes(auth_key), block))
        t._form = form
        (t._a, t._b, t._copy_a, t._copy_b, t._update, t._final) = parts
        return t

    def mac(self, data: bytes) -> bytes:
        """The full (untruncated) HMAC of ``data``, through the same contexts the backend copies."""
        h = self._copy_a()
        self._update(h, data)
        if self._form == FORM_HMAC:
            return self._final(h)
        o = self._copy_b()
        self._update(o, self._final(h))
        return self._final(o)

    def __repr__(self) -> str:
        return (f"HmacTemplate(integrity={self.integrity.name}, "
                f"digest_size={self.digest_size}, key=<hidden>)")

    def __reduce__(self):
        # Pickling would carry the key; an SA's key context never leaves the process.
        raise TypeError("HmacTemplate cannot be pickled")
