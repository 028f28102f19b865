"""Crypto backends behind one op-table interface (docs/architecture.md).

tx_emit writes the op table (``layout.CRYPTO_OP_DTYPE``): one row per protected segment,
naming its kind, pass, suite, key context and where its header, text and ICV sit in the
output arena. The pipeline groups the ops by (pass, kind, suite, key context) and hands each
group to one backend call: ``backend.seal(arena, op_bytes, idx, keys)`` (``open`` on
receive), which processes the rows ``idx`` in place and sets their status. A backend whose
``reads_source`` is true also takes the source arena of out-of-place seals as a fifth
argument; any other gets those ops made in place first (docs/send-path.md, "Out-of-place
seal").
"""
from __future__ import annotations

import os
from typing import Optional, Protocol

import numpy as np

from ..datapath.layout import Suite
from .keys import SaKeys


class CryptoBackend(Protocol):
    name: str

    def seal(self, arena: np.ndarray, ops: np.ndarray, idx: np.ndarray, keys: SaKeys) -> None:
        """The send-side work of the ops ``idx`` (all sharing ``keys``), in place: encrypt
        and write the ICV (OP_ESP_SEAL), or write the AH ICV (OP_AH_SIGN)."""


BACKEND_NAMES = ("batched", "reference")


def backends_for(kernels, backend: Optional[CryptoBackend] = None) -> dict[int, CryptoBackend]:
    """Suite -> backend. One given backend serves every suite; otherwise the compiled batched
    backends when the kernels are compiled (IPSECOFFLOAD_BACKEND=reference forces the
    reference backend), else the reference backend."""
    if backend is None:
        choice = os.environ.get("IPSECOFFLOAD_BACKEND", "batched")
        if choice not in BACKEND_NAMES:
            raise ValueError(f"IPSECOFFLOAD_BACKEND must be one of {', '.join(BACKEND_NAMES)}, "
                             f"got {choice!r}")
        from .reference import ReferenceBackend
        chosen: dict[int, CryptoBackend] = {suite: ReferenceBackend() for suite in Suite}
        if choice == "batched" and hasattr(kernels, "GcmBatchedBackend"):
            gcm = kernels.GcmBatchedBackend()
            chosen[Suite.AES_GCM] = chosen[Suite.AES_GMAC] = chosen[Suite.AH_GMAC] = gcm
        if choice == "batched" and hasattr(kernels, "CbcHmacBackend"):
            cbc = kernels.CbcHmacBackend()
            chosen[Suite.AES_CBC_HMAC] = chosen[Suite.NULL_HMAC] = chosen[Suite.AH_HMAC] = cbc
            chosen[Suite.AES_CBC] = cbc
        return chosen
    return {suite: backend for suite in Suite}


__all__ = ["BACKEND_NAMES", "CryptoBackend", "SaKeys", "backends_for"]
