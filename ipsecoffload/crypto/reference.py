"""The reference backend: one `cryptography` call per job. Plain, always available, and the
oracle every faster backend is checked against (design §5)."""
from __future__ import annotations

import struct
from typing import Sequence

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from ..datapath.layout import Suite
from ..crypto import JobTable
from ..crypto.keys import SaKeys


class ReferenceBackend:
    name = "reference"

    def seal(self, arena: np.ndarray, jobs: JobTable, keys: Sequence[SaKeys | None]) -> None:
        buf = memoryview(arena)
        for j in range(len(jobs)):
            sa = keys[int(jobs.slot[j])]
            seal_one(buf, sa, int(jobs.esp[j]), int(jobs.text[j]), int(jobs.text_len[j]),
                     int(jobs.icv[j]), int(jobs.seq_hi[j]))


def seal_one(buf: memoryview, sa: SaKeys, esp: int, text: int, text_len: int, icv: int,
             seq_hi: int) -> None:
    """Encrypt one ESP packet in place and write its ICV (spec §8.1, §8.4-8.7)."""
    spi_sn = bytes(buf[esp:esp + 8])
    esn_hi = struct.pack("!I", seq_hi) if sa.esn else b""
    iv = bytes(buf[esp + 8:text])
    end = text + text_len
    if sa.suite == Suite.AES_GCM:
        # RFC 4106: nonce = salt || IV; AAD = SPI || [SN_hi] || SN
        aad = spi_sn[:4] + esn_hi + spi_sn[4:]
        if sa.icv_len == 16:
            sa.aead.encrypt_into(sa.salt + iv, buf[text:end], aad, buf[text:end + 16])
        else:
            sealed = sa.aead.encrypt(sa.salt + iv, bytes(buf[text:end]), aad)
            buf[text:end + sa.icv_len] = sealed[:text_len + sa.icv_len]
        return
    if sa.suite == Suite.AES_GMAC:
        # RFC 4543: everything is AAD, the plaintext is empty, the ICV is the whole tag
        aad = spi_sn[:4] + esn_hi + spi_sn[4:] + iv + bytes(buf[text:end])
        buf[icv:icv + 16] = sa.aead.encrypt(sa.salt + iv, b"", aad)
        return
    if sa.suite == Suite.AES_CBC_HMAC:
        encryptor = Cipher(algorithms.AES(sa.enc_key), modes.CBC(iv)).encryptor()
        buf[text:end] = encryptor.update(bytes(buf[text:end])) + encryptor.finalize()
    # Encrypt-then-MAC over SPI..ciphertext, the ESN high word appended (spec §8.1)
    mac = sa.hmac()
    mac.update(bytes(buf[esp:end]))
    mac.update(esn_hi)
    buf[icv:icv + sa.icv_len] = mac.finalize()[:sa.icv_len]
