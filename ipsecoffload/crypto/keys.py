"""Key material and cipher objects of one offloaded SA. Never shows a key."""
from __future__ import annotations

from cryptography.hazmat.primitives import hashes, hmac
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..datapath.layout import Integrity, Suite

_HASHES = {Integrity.HMAC_MD5_96: hashes.MD5, Integrity.HMAC_SHA1_96: hashes.SHA1,
           Integrity.HMAC_SHA256_128: hashes.SHA256}


class SaKeys:
    """Keys of one SA plus the cipher objects built from them once, at ADD_SA time."""

    __slots__ = ("suite", "integrity", "icv_len", "esn", "salt", "enc_key", "aead",
                 "_hmac")

    def __init__(self, suite: Suite, integrity: Integrity, icv_len: int, esn: bool, *,
                 enc_key: bytes = b"", salt: bytes = b"", auth_key: bytes = b""):
        self.suite, self.integrity, self.icv_len, self.esn = suite, integrity, icv_len, esn
        self.salt = salt
        self.enc_key = enc_key
        # GCM and GMAC: one AESGCM object (GMAC keys travel in enc_key too).
        self.aead = AESGCM(enc_key) if suite in (Suite.AES_GCM, Suite.AES_GMAC) else None
        self._hmac = (hmac.HMAC(auth_key, _HASHES[integrity]())
                      if integrity in _HASHES else None)

    def hmac(self) -> hmac.HMAC:
        """A fresh HMAC context (a copy of the keyed template)."""
        return self._hmac.copy()

    def __repr__(self) -> str:
        return (f"SaKeys(suite={self.suite.name}, integrity={self.integrity.name}, "
                f"icv_len={self.icv_len}, esn={self.esn}, keys=<hidden>)")
