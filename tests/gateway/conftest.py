"""Fixtures of the gateway tests: a local OIDC issuer on loopback and an HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx2
import pytest

from tests.gateway.issuer import LocalIssuer


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def _issuer_server() -> Iterator[LocalIssuer]:
    issuer = LocalIssuer().start()
    try:
        yield issuer
    finally:
        issuer.stop()


@pytest.fixture
def issuer(_issuer_server: LocalIssuer) -> LocalIssuer:
    """The running issuer with fresh keys (one RSA, one EC), counters at zero and answering 200."""
    _issuer_server.reset()
    return _issuer_server


@pytest.fixture
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(follow_redirects=False) as client:
        yield client
