"""Encoders shared by the encoder tests, built once per session (MiniLM takes about a second)."""

from __future__ import annotations

import pytest

from ptmrec.encoders import build_encoder


@pytest.fixture(scope="session")
def bundled():
    return build_encoder("bundled")


@pytest.fixture(scope="session")
def tiny():
    return build_encoder("tiny-clip")
