"""orch's HTTP clients share one verifying TLS context (httpx would read the CA bundle for each)."""

from __future__ import annotations

import ssl
from concurrent.futures import ThreadPoolExecutor

import httpx

from orchestrator.observe import httpio


def context(client: httpx.Client) -> ssl.SSLContext:
    pool = client._transport._pool  # type: ignore[attr-defined]
    ctx: ssl.SSLContext = pool._ssl_context
    return ctx


def test_clients_made_at_once_on_many_threads_share_one_verifying_context() -> None:
    with ThreadPoolExecutor(16) as pool:
        clients = list(pool.map(lambda _: httpio.client(timeout=1), range(16)))
    contexts = {id(context(c)) for c in clients}
    assert len(contexts) == 1
    ctx = context(clients[0])
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert ctx.cert_store_stats()["x509_ca"] > 0  # the CA bundle is loaded: https stays verified
    for c in clients:
        c.close()


def test_a_client_for_plain_http_reads_no_ca_bundle_and_trusts_no_certificate() -> None:
    with httpio.client(timeout=1, plain_http=True) as client:
        ctx = context(client)
        assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname  # still verifies...
        assert ctx.cert_store_stats()["x509_ca"] == 0  # ...against nothing: https through it fails closed
    with httpio.client(timeout=1) as client:
        assert context(client).cert_store_stats()["x509_ca"] > 0
