"""Twin of the compiled op_groups (crypto/op_groups.pxi): the op table's groups of one
(pass, kind, suite, key context), passes in order."""
from __future__ import annotations

import numpy as np

from ..layout import CRYPTO_OP_DTYPE
from .common import _buffers


def op_groups(ops):
    _buffers(ops=(ops, np.uint8, False))
    if len(ops) % CRYPTO_OP_DTYPE.itemsize:
        raise ValueError("ops buffer size does not match the CryptoOp layout")
    table = np.asarray(ops).view(CRYPTO_OP_DTYPE)
    keys = [(int(op["pass_no"]), int(op["kind"]), int(op["suite"]),
             int(op["key_row"]) & 0xFFFFFFFF) for op in table]
    order = sorted(range(len(keys)), key=lambda i: keys[i])  # stable
    groups: list[list[int]] = []
    for pos, i in enumerate(order):
        if pos == 0 or keys[i] != keys[order[pos - 1]]:
            if groups:
                groups[-1][1] = pos
            groups.append([pos, len(order), *keys[i][:3], int(table[i]["key_row"])])
    return (np.asarray(order, np.int32),
            np.asarray(groups, np.int64).reshape(len(groups), 6))
