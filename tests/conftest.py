"""Fixtures shared by the backend tests."""
from __future__ import annotations

import pytest

from ipsecoffload import _fastpath
from ipsecoffload.crypto import aes_engine


@pytest.fixture(params=aes_engine.ENGINES)
def aes_engine_forced(request, monkeypatch):
    """Force the batched backends' AES engine (crypto/aes_engine.py): OpenSSL's ECB, or its
    XTS with a tweak that masks nothing; keys made during the test use it."""
    monkeypatch.setenv(aes_engine.ENGINE_ENV, request.param)
    aes_engine.engine_reset()
    _fastpath.gcm_one_call_reset()  # its default follows the engine
    assert aes_engine.engine() == request.param
    yield request.param
    monkeypatch.delenv(aes_engine.ENGINE_ENV)
    aes_engine.engine_reset()
    _fastpath.gcm_one_call_reset()
