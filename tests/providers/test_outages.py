"""Key-server outages, against real servers that the tests stop and start: cached DEKs keep
serving, transient failures are retried with backoff, and a DEK that cannot be had gives a clear
error with nothing written half-done. Also: batch unwrap on the transit engine."""

from __future__ import annotations

import select
import socket
import socketserver
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import vaultkit.sqla
from tests._servers import Server, free_port, start_moto, start_openbao, started
from vaultkit import Principal, Vault
from vaultkit.errors import KeyProviderError
from vaultkit.keys._retry import Retry
from vaultkit.sqla import Encrypted
from vaultkit.store import MemoryKeyStore

COACH = Principal("coach-7", grants={"medical"})


@pytest.fixture
def own_openbao(tmp_path: Path) -> Iterator[Server]:
    """An OpenBao server of this test's own, to stop at will."""
    pytest.importorskip("hvac")
    server = started(start_openbao, tmp_path / "bao.log")
    yield server
    if server.process is not None and server.process.poll() is None:
        server.stop()


def transit(server: Server, **kwargs: Any) -> Any:
    from vaultkit.keys.transit import VaultTransitKeyProvider

    kwargs.setdefault("retry", Retry(attempts=3, base_delay=0.05))
    return VaultTransitKeyProvider(server.url, token=server.token, create_keys=True, **kwargs)


@pytest.mark.openbao
def test_cached_deks_keep_serving_when_the_server_is_down(own_openbao: Server) -> None:
    """With the transit server gone: values under cached DEKs still decrypt; a cold vault gets a
    KeyProviderError naming what to check; no key-store row is left half-made."""
    store = MemoryKeyStore()
    warm = Vault(provider=transit(own_openbao), store=store, domains=["medical"])
    with warm.acting_as(COACH, purpose="test"):
        blobs = [warm.encrypt(f"note {i}", domain="medical") for i in range(5)]
        assert warm.decrypt(blobs[0], domain="medical") == "note 0"
    rows = len(list(store.records()))
    # A vault checks its domains' KEKs when it starts (so it fails at start-up, not later, when
    # the server is missing); this one started before the outage, with nothing cached.
    cold = Vault(provider=transit(own_openbao), store=store, domains=["medical"])
    own_openbao.stop()
    with warm.acting_as(COACH, purpose="test"):
        assert [warm.decrypt(b, domain="medical") for b in blobs] == [f"note {i}" for i in range(5)]
        assert warm.decrypt(warm.encrypt("still writing", domain="medical"), domain="medical")
    with cold.acting_as(COACH, purpose="test"):
        with pytest.raises(KeyProviderError, match=r"could not reach the transit server.*check"):
            cold.decrypt(blobs[0], domain="medical")
        with pytest.raises(KeyProviderError):
            cold.encrypt("needs a new DEK", domain="medical")
    assert len(list(store.records())) == rows  # no DEK row without a wrapped key
    warm.close()
    cold.close()


@pytest.mark.openbao
def test_nothing_is_written_when_no_dek_can_be_had(own_openbao: Server, tmp_path: Path) -> None:
    """An ORM insert with the key server down fails before the INSERT: the table stays empty."""
    vault = Vault(provider=transit(own_openbao), store=MemoryKeyStore(), domains=["medical"])
    own_openbao.stop()
    vaultkit.sqla.configure(vault)
    table = sa.Table(
        "notes",
        sa.MetaData(),
        sa.Column("id", sa.Uuid, primary_key=True),
        sa.Column("note", Encrypted(sa.Text, domain="medical")),
    )
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'app.db'}")
    table.create(engine)
    try:
        with (
            pytest.raises(KeyProviderError),
            vault.acting_as(COACH, purpose="t"),
            engine.begin() as conn,
        ):
            conn.execute(table.insert(), [{"id": uuid.uuid4(), "note": "x"}])
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(table)).scalar() == 0
    finally:
        vaultkit.sqla.configure(None)
        engine.dispose()
        vault.close()


class _Forwarder(socketserver.ThreadingTCPServer):
    """A TCP forwarder from a port to the real server: the server 'comes back' when it starts."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, target: tuple[str, int]) -> None:
        self.target = target
        super().__init__(("127.0.0.1", port), _Pipe)


class _Pipe(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: Any = self.server
        with socket.create_connection(server.target) as upstream:
            streams = [self.request, upstream]
            while True:
                ready, _, _ = select.select(streams, [], [], 5)
                if not ready:
                    return
                for stream in ready:
                    data = stream.recv(65536)
                    if not data:
                        return
                    (upstream if stream is self.request else self.request).sendall(data)


@pytest.mark.openbao
def test_transient_failures_are_retried_with_backoff(own_openbao: Server) -> None:
    """The provider's address refuses connections until, 0.8 s in, the server becomes reachable:
    the call succeeds after waits that grow (each retry logged, without secrets)."""
    port = free_port()
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        time.sleep(seconds)

    provider = transit(
        Server(f"http://127.0.0.1:{port}", own_openbao.token, own_openbao.process),
        retry=Retry(attempts=12, base_delay=0.2, max_delay=1.0, sleep=sleep),
    )
    target = own_openbao.url.rsplit(":", 1)
    forwarders: list[_Forwarder] = []

    def come_back() -> None:
        forwarder = _Forwarder(port, (target[0].split("//")[1], int(target[1])))
        forwarders.append(forwarder)
        forwarder.serve_forever()

    timer = threading.Timer(0.8, come_back)
    timer.start()
    try:
        ref = provider.primary("medical")  # refused, refused, ..., then answered
    finally:
        timer.join(0.1)
        for forwarder in forwarders:
            forwarder.shutdown()
            forwarder.server_close()
    assert ref.version == 1 and len(waits) >= 2
    assert 0.1 <= waits[0] <= 0.2 and 0.2 <= waits[1] <= 0.4  # base 0.2 s, doubling, jitter


@pytest.mark.openbao
def test_preload_unwraps_in_one_batch_request(openbao: Server) -> None:
    """Vault.preload of 20 DEKs on the transit engine: one decrypt request, then reads cost none."""
    import secrets

    provider = transit(openbao, key_prefix=f"vk{secrets.token_hex(4)}-")
    store = MemoryKeyStore()
    with (
        Vault(provider=provider, store=store, domains=["medical"], dek_max_encryptions=1) as writer,
        writer.acting_as(COACH, purpose="t"),
    ):
        blobs = [writer.encrypt(f"n{i}", domain="medical") for i in range(20)]
    calls: list[str] = []
    original = provider._request

    def counting(method: str, path: str, what: str, body: Any = None) -> Any:
        calls.append(path.split("/")[0])
        return original(method, path, what, body)

    provider._request = counting
    with (
        Vault(provider=provider, store=store, domains=["medical"]) as reader,
        reader.acting_as(COACH, purpose="t"),
    ):
        calls.clear()  # the vault read the key's versions when it started
        assert reader.preload(b[4:20] for b in blobs) == 20
        assert calls == ["decrypt"]
        assert [reader.decrypt(b, domain="medical") for b in blobs] == [f"n{i}" for i in range(20)]
        assert calls == ["decrypt"]  # everything came from the cache


@pytest.mark.aws
def test_kms_emulator_down_gives_a_clear_error(tmp_path: Path, aws_emulator: Server) -> None:
    """With the KMS endpoint gone: cached DEKs serve; a cold read says what to check."""
    from vaultkit.keys.aws import AWSKMSKeyProvider

    own = started(start_moto, tmp_path / "moto.log")

    def provider() -> AWSKMSKeyProvider:
        return AWSKMSKeyProvider(
            region="eu-west-1", endpoint_url=own.url, create_keys=True, max_attempts=2, timeout=1.0
        )

    store = MemoryKeyStore()
    warm = Vault(provider=provider(), store=store, domains=["medical"])
    with warm.acting_as(COACH, purpose="t"):
        blob = warm.encrypt("note", domain="medical")
        assert warm.decrypt(blob, domain="medical") == "note"
    cold = Vault(provider=provider(), store=store, domains=["medical"])
    own.stop()
    with warm.acting_as(COACH, purpose="t"):
        assert warm.decrypt(blob, domain="medical") == "note"
    with (
        cold.acting_as(COACH, purpose="t"),
        pytest.raises(KeyProviderError, match=r"could not reach KMS.*check"),
    ):
        cold.decrypt(blob, domain="medical")
    warm.close()
    cold.close()


def _unwrap_in_child(provider: Any, ref: Any, wrapped: bytes, dek: bytes, out: Any) -> None:
    client = provider._client if hasattr(provider, "_client") else provider._kms
    inherited = client.current()  # the parent's client: never handed to the child
    out.put((inherited is None, provider.unwrap(ref, wrapped, context=b"ctx") == dek))


@pytest.mark.openbao
@pytest.mark.aws
def test_a_forked_child_uses_connections_of_its_own(openbao: Server, aws_emulator: Server) -> None:
    """After fork the transit and KMS providers open their own connections (never the parent's
    pooled sockets) and keep working in parent and child alike."""
    import multiprocessing
    import os
    import secrets

    from vaultkit.keys.aws import AWSKMSKeyProvider

    context = multiprocessing.get_context("fork")
    for provider in (
        transit(openbao, key_prefix=f"vk{secrets.token_hex(4)}-"),
        AWSKMSKeyProvider(
            region="eu-west-1",
            endpoint_url=aws_emulator.url,
            alias_prefix=f"alias/vk{secrets.token_hex(4)}-",
            create_keys=True,
        ),
    ):
        ref = provider.primary("medical")
        dek = os.urandom(32)
        wrapped = provider.wrap(ref, dek, context=b"ctx")  # the parent's pool holds a connection
        out = context.Queue()
        child = context.Process(target=_unwrap_in_child, args=(provider, ref, wrapped, dek, out))
        child.start()
        assert out.get(timeout=60) == (True, True)
        child.join(timeout=60)
        assert child.exitcode == 0
        assert provider.unwrap(ref, wrapped, context=b"ctx") == dek
