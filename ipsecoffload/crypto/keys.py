"""Key context of one SA transform: what the backends need, built once at ADD_SA time.
Never shows a key."""
from __future__ import annotations

import threading
from typing import Any, Callable, Dict, Optional

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..datapath.layout import Integrity, Suite
from .aes_engine import XTS_MAX_BYTES, xts_block_context

_HASHES: Dict[Integrity, Callable[[], hashes.HashAlgorithm]] = {
    Integrity.HMAC_MD5_96: hashes.MD5, Integrity.HMAC_SHA1_96: hashes.SHA1,
    Integrity.HMAC_SHA256_128: hashes.SHA256}


class SaKeys:
    """Keys of one transform plus the cipher objects and tables built from them.

    ``ecb_encryptor()`` / ``ecb_decryptor()``: AES-ECB contexts (one per thread: a context
    is stateless between calls in ECB but not safe to share between threads);
    ``aes_encryptor(n)`` / ``aes_decryptor(n)``: the same on the fastest engine for calls of
    at most n bytes (crypto/aes_engine.py);
    ``ghash_key``: the GHASH key table of GCM/GMAC (built on first use); ``hmac_template``:
    the keyed HMAC contexts of CBC/NULL + HMAC; ``aead`` and ``hmac()`` serve the reference
    backend.
    """

    __slots__ = ("suite", "integrity", "icv_len", "esn", "salt", "aead", "hmac_template",
                 "_enc_key", "_hmac", "_local", "_ghash_key", "_lock")

    def __init__(self, suite: Suite, integrity: Integrity, icv_len: int, esn: bool, *,
                 enc_key: bytes = b"", salt: bytes = b"", auth_key: bytes = b""):
        self.suite, self.integrity, self.icv_len, self.esn = suite, integrity, icv_len, esn
        self.salt = salt
        self._enc_key = enc_key
        self._local = threading.local()
        self._lock = threading.Lock()
        self._ghash_key: Optional[Any] = None  # _fastpath.ghash_key_context, made on first use
        # GCM and GMAC (ESP or AH): one AESGCM object (GMAC keys travel in enc_key too).
        self.aead = (AESGCM(enc_key) if suite in (Suite.AES_GCM, Suite.AES_GMAC, Suite.AH_GMAC)
                     else None)
        self._hmac = (hmac.HMAC(auth_key, _HASHES[integrity]())
                      if integrity in _HASHES else None)
        self.hmac_template: Optional[object] = None
        if integrity in _HASHES:
            from .hmac_ctx import HmacTemplate
            self.hmac_template = HmacTemplate(int(integrity), auth_key)

    @property
    def enc_key(self) -> bytes:
        return self._enc_key

    def hmac(self) -> hmac.HMAC:
        """A fresh HMAC context (a copy of the keyed template)."""
        if self._hmac is None:
            raise ValueError(f"an SA with integrity {self.integrity.name} has no HMAC")
        return self._hmac.copy()

    def ecb_encryptor(self):
        ctx = getattr(self._local, "enc", None)
        if ctx is None:
            ctx = self._local.enc = Cipher(algorithms.AES(self._enc_key), modes.ECB()).encryptor()
        return ctx

    def ecb_decryptor(self):
        ctx = getattr(self._local, "dec", None)
        if ctx is None:
            ctx = self._local.dec = Cipher(algorithms.AES(self._enc_key), modes.ECB()).decryptor()
        return ctx

    def aes_encryptor(self, max_bytes: int):
        """AES-ECB encryption for calls of 16 to ``max_bytes`` bytes, on the fastest engine
        (crypto/aes_engine.py); one context per thread, as ecb_encryptor()."""
        if max_bytes > XTS_MAX_BYTES:
            return self.ecb_encryptor()
        ctx = getattr(self._local, "fast_enc", None)
        if ctx is None:
            ctx = self._local.fast_enc = (xts_block_context(self._enc_key, True, max_bytes)
                                          or self.ecb_encryptor())
        return ctx

    def aes_decryptor(self, max_bytes: int):
        """AES-ECB decryption, as aes_encryptor()."""
        if max_bytes > XTS_MAX_BYTES:
            return self.ecb_decryptor()
        ctx = getattr(self._local, "fast_dec", None)
        if ctx is None:
            ctx = self._local.fast_dec = (xts_block_context(self._enc_key, False, max_bytes)
                                          or self.ecb_decryptor())
        return ctx

    @property
    def ghash_key(self):
        """GCM/GMAC: the compiled GHASH key of H = E_K(0^128) (NIST SP 800-38D §6.4)."""
        if self._ghash_key is None:
            with self._lock:
                if self._ghash_key is None:
                    from .. import _fastpath
                    h = self.ecb_encryptor().update(bytes(16))
                    self._ghash_key = _fastpath.ghash_key_context(h)
        return self._ghash_key

    def __repr__(self) -> str:
        return (f"SaKeys(suite={self.suite.name}, integrity={self.integrity.name}, "
                f"icv_len={self.icv_len}, esn={self.esn}, keys=<hidden>)")
