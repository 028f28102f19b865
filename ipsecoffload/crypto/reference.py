"""The reference backend: one `cryptography` call per op, written plainly. Always available,
and the oracle every faster backend is checked against (docs/architecture.md)."""
from __future__ import annotations

import hmac as std_hmac
import struct
from typing import Any, cast

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..datapath.layout import CRYPTO_OP_DTYPE, OpKind, OpStatus, Suite
from .keys import SaKeys


def _aead(sa: SaKeys) -> AESGCM:
    """The SA's AESGCM object (GCM and GMAC SAs have one)."""
    if sa.aead is None:
        raise ValueError(f"an SA of suite {sa.suite.name} has no AES-GCM key")
    return sa.aead


class ReferenceBackend:
    name = "reference"

    def seal(self, arena: np.ndarray, ops: np.ndarray, idx, keys: SaKeys) -> None:
        """Seal the ops ``idx`` of ``ops`` (CRYPTO_OP_DTYPE rows, or their bytes) in place."""
        table = _ops(ops)
        buf = memoryview(cast(Any, arena))  # numpy stubs: no Buffer type before 3.12
        for j in np.asarray(idx).tolist():
            op = table[j]
            if op["kind"] == OpKind.AH_SIGN:
                sign_ah_one(buf, keys, int(op["auth_off"]), int(op["text_off"]),
                            int(op["text_len"]), int(op["icv_off"]), int(op["ip_off"]),
                            int(op["seq_hi"]))
            else:
                seal_one(buf, keys, int(op["auth_off"]), int(op["text_off"]),
                         int(op["text_len"]), int(op["icv_off"]), int(op["seq_hi"]))
            op["status"] = OpStatus.DONE

    def open(self, arena: np.ndarray, ops: np.ndarray, idx, keys: SaKeys) -> None:
        """Verify and decrypt the ops ``idx`` in place; a bad ICV leaves the text as it was."""
        table = _ops(ops)
        buf = memoryview(cast(Any, arena))  # numpy stubs: no Buffer type before 3.12
        for j in np.asarray(idx).tolist():
            op = table[j]
            if op["kind"] == OpKind.AH_VERIFY:
                ok = verify_ah_one(buf, keys, int(op["auth_off"]), int(op["text_off"]),
                                   int(op["text_len"]), int(op["icv_off"]), int(op["ip_off"]),
                                   int(op["seq_hi"]))
            else:
                ok = open_one(buf, keys, int(op["auth_off"]), int(op["text_off"]),
                              int(op["text_len"]), int(op["icv_off"]), int(op["seq_hi"]))
            op["status"] = OpStatus.DONE if ok else OpStatus.AUTH_FAILED


def _ops(ops: np.ndarray) -> np.ndarray:
    ops = np.asarray(ops)
    return ops if ops.dtype == CRYPTO_OP_DTYPE else ops.view(CRYPTO_OP_DTYPE)


def seal_one(buf: memoryview, sa: SaKeys, esp: int, text: int, text_len: int, icv: int,
             seq_hi: int) -> None:
    """Encrypt one ESP packet in place and write its ICV (RFC 4303 §3.3, RFC 4106, RFC 4543,
    RFC 3602; the ESN high word per RFC 4303 §2.2.1)."""
    spi_sn = bytes(buf[esp:esp + 8])
    esn_hi = struct.pack("!I", seq_hi) if sa.esn else b""
    iv = bytes(buf[esp + 8:text])
    end = text + text_len
    if sa.suite == Suite.AES_GCM:
        # RFC 4106: nonce = salt || IV; AAD = SPI || [SN_hi] || SN
        aad = spi_sn[:4] + esn_hi + spi_sn[4:]
        sealed = _aead(sa).encrypt(sa.salt + iv, bytes(buf[text:end]), aad)
        buf[text:end] = sealed[:text_len]
        buf[icv:icv + sa.icv_len] = sealed[text_len:text_len + sa.icv_len]
        return
    if sa.suite == Suite.AES_GMAC:
        # RFC 4543: everything is AAD, the plaintext is empty, the ICV is the whole tag
        aad = spi_sn[:4] + esn_hi + spi_sn[4:] + iv + bytes(buf[text:end])
        buf[icv:icv + 16] = _aead(sa).encrypt(sa.salt + iv, b"", aad)
        return
    if sa.suite in (Suite.AES_CBC_HMAC, Suite.AES_CBC):
        encryptor = Cipher(algorithms.AES(sa.enc_key), modes.CBC(iv)).encryptor()
        buf[text:end] = encryptor.update(bytes(buf[text:end])) + encryptor.finalize()
    if sa.suite == Suite.AES_CBC:  # no ESP ICV: the bundle's AH authenticates (G14)
        return
    # Encrypt-then-MAC over SPI..ciphertext, the ESN high word appended
    mac = sa.hmac()
    mac.update(bytes(buf[esp:end]))
    mac.update(esn_hi)
    buf[icv:icv + sa.icv_len] = mac.finalize()[:sa.icv_len]


def sign_ah_one(buf: memoryview, sa: SaKeys, copy: int, rest: int, rest_len: int, icv: int,
                ip: int, seq_hi: int) -> None:
    """Write the AH ICV of one packet (RFC 4302 §3.3.3): the MAC covers the zeroed copy of
    its header region (``copy``, as long as ``rest - ip``: IP header through AH, mutable
    fields and ICV zeroed), then the rest of the packet as it is, then the ESN high word
    (RFC 4302 §2.5.1). AES-GMAC (RFC 4543 §3): the whole input is AAD, the nonce salt || the
    IV before the ICV."""
    buf[icv:icv + sa.icv_len] = ah_icv(buf, sa, copy, rest, rest_len, icv, ip, seq_hi)


def verify_ah_one(buf: memoryview, sa: SaKeys, copy: int, rest: int, rest_len: int, icv: int,
                  ip: int, seq_hi: int) -> bool:
    """Check one received AH packet's ICV (at ``icv``, as received) against the one computed
    over the zeroed copy of its header region that rx_run made (ICV field zeroed there, RFC
    4302 §3.3.3.1) and the rest of the packet; compared in constant time."""
    want = ah_icv(buf, sa, copy, rest, rest_len, icv, ip, seq_hi)
    return std_hmac.compare_digest(want, bytes(buf[icv:icv + sa.icv_len]))


def ah_icv(buf: memoryview, sa: SaKeys, copy: int, rest: int, rest_len: int, icv: int,
           ip: int, seq_hi: int) -> bytes:
    """The AH ICV of sign_ah_one's input."""
    data = (bytes(buf[copy:copy + rest - ip]) + bytes(buf[rest:rest + rest_len])
            + (struct.pack("!I", seq_hi) if sa.esn else b""))
    if sa.suite == Suite.AH_GMAC:
        assert sa.aead is not None
        iv = bytes(buf[icv - 8:icv])
        return sa.aead.encrypt(sa.salt + iv, b"", data)
    mac = sa.hmac()
    mac.update(data)
    return mac.finalize()[:sa.icv_len]


def open_one(buf: memoryview, sa: SaKeys, esp: int, text: int, text_len: int, icv: int,
             seq_hi: int) -> bool:
    """Verify one ESP packet's ICV and decrypt it in place; False (text untouched) if the
    ICV is wrong. Tags are compared in constant time."""
    spi_sn = bytes(buf[esp:esp + 8])
    esn_hi = struct.pack("!I", seq_hi) if sa.esn else b""
    iv = bytes(buf[esp + 8:text])
    end = text + text_len
    got = bytes(buf[icv:icv + sa.icv_len])
    if sa.suite == Suite.AES_CBC:  # no ESP ICV: the bundle's AH was verified first (G14)
        decryptor = Cipher(algorithms.AES(sa.enc_key), modes.CBC(iv)).decryptor()
        buf[text:end] = decryptor.update(bytes(buf[text:end])) + decryptor.finalize()
        return True
    if sa.suite in (Suite.AES_GCM, Suite.AES_GMAC):
        header = spi_sn[:4] + esn_hi + spi_sn[4:]
        if sa.suite == Suite.AES_GMAC:
            want = _aead(sa).encrypt(sa.salt + iv, b"", header + iv + bytes(buf[text:end]))
            return std_hmac.compare_digest(want[:16], got)
        if sa.icv_len == 16:
            try:
                plain = _aead(sa).decrypt(sa.salt + iv, bytes(buf[text:end]) + got, header)
            except InvalidTag:
                return False
            buf[text:end] = plain
            return True
        # a truncated tag: decrypt with the GCM keystream (CTR from inc32(J0), NIST SP 800-38D
        # §7.2), then recompute the tag over the plaintext
        decryptor = Cipher(algorithms.AES(sa.enc_key),
                           modes.CTR(sa.salt + iv + b"\x00\x00\x00\x02")).decryptor()
        plain = decryptor.update(bytes(buf[text:end])) + decryptor.finalize()
        want = _aead(sa).encrypt(sa.salt + iv, plain, header)[text_len:text_len + sa.icv_len]
        if not std_hmac.compare_digest(want, got):
            return False
        buf[text:end] = plain
        return True
    mac = sa.hmac()
    mac.update(bytes(buf[esp:end]))
    mac.update(esn_hi)
    if not std_hmac.compare_digest(mac.finalize()[:sa.icv_len], got):
        return False
    if sa.suite == Suite.AES_CBC_HMAC:
        decryptor = Cipher(algorithms.AES(sa.enc_key), modes.CBC(iv)).decryptor()
        buf[text:end] = decryptor.update(bytes(buf[text:end])) + decryptor.finalize()
    return True
