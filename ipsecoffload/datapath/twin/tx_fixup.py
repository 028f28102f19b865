"""Twin of the compiled tx_fixup (datapath/tx_fixup.pxi): the UDP checksum of
UDP-encapsulated ESP over IPv6, after sealing (RFC 3948 §2.1, RFC 8200 §8.1)."""
from __future__ import annotations

import struct

import numpy as np

from ...inet import ones_complement_sum as _checksum
from ..layout import CRYPTO_OP_DTYPE, Fixup
from .common import _buffers, _ipv6_final_dst


def tx_fixup(out, ops):
    _buffers(out=(out, np.uint8, True), ops=(ops, np.uint8, False))
    if len(ops) % CRYPTO_OP_DTYPE.itemsize:
        raise ValueError("ops buffer size does not match the CryptoOp layout")
    table = np.asarray(ops).view(CRYPTO_OP_DTYPE)
    osize = len(out)
    for j, op in enumerate(table):
        if op["fixup"] == Fixup.UDP6_CHECKSUM:
            icv, icv_len = int(op["icv_off"]), int(op["icv_len"])
            if icv < 0 or icv > osize - icv_len:
                raise ValueError("op reaches outside the output arena")
            end, udp, ip = icv + icv_len, int(op["auth_off"]) - 8, int(op["ip_off"])
            if ip < 0 or ip > osize - 40 or udp < ip + 40 or udp > end - 8:
                raise ValueError("op reaches outside the output arena")
        elif op["fixup"] != Fixup.NONE:
            raise ValueError(f"op {j} has an unknown fixup {int(op['fixup'])}")
    for op in table:
        if op["fixup"] != Fixup.UDP6_CHECKSUM:
            continue
        udp, ip = int(op["auth_off"]) - 8, int(op["ip_off"])
        end = int(op["icv_off"]) + int(op["icv_len"])
        out[udp + 6:udp + 8] = 0
        dst = ip + _ipv6_final_dst(bytes(out[ip:udp]), udp - ip)
        pseudo = (bytes(out[ip + 8:ip + 24]) + bytes(out[dst:dst + 16])
                  + struct.pack("!IxxxB", end - udp, 17))
        csum = ~_checksum(pseudo + bytes(out[udp:end])) & 0xFFFF
        out[udp + 6:udp + 8] = np.frombuffer(struct.pack("!H", csum or 0xFFFF), np.uint8)
