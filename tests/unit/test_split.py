"""The vault's collaborators (issue 15): keyring, cipher, recorder, policy, life cycle, wiring.

Each collaborator that keeps state resets itself in a forked child, no code path holds two of
their locks, the framing is :mod:`vaultkit.core`'s, and the facade's new read-only methods and
the wiring helpers (``open_store``, ``open_audit_log``, ``vault_options``) behave.
"""

from __future__ import annotations

import ast
import multiprocessing
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

import vaultkit._cipher as cipher_module
import vaultkit.core.aead as aead_module
from vaultkit import KeyDomain, Principal, Vault, acting_as
from vaultkit._access import Policy
from vaultkit._codec import decode_value
from vaultkit._recorder import AuditRecorder, _event
from vaultkit.audit import open_audit_log
from vaultkit.config import vault_options
from vaultkit.core import aead, wire
from vaultkit.errors import AccessDeniedError, ConfigurationError, DecryptionError, DomainError
from vaultkit.keys.provider import KeyRef
from vaultkit.store import DekState, MemoryKeyStore, SQLKeyStore, open_store
from vaultkit.testing import InMemoryKeyProvider

ROOT = Path(__file__).parents[2]
COACH = Principal("coach-17", grants={"medical"})
NONCE = bytes(range(12))


@pytest.fixture
def audited(tmp_path: Path) -> Iterator[Vault]:
    """A vault with an audited, restricted medical domain on an SQLite key store."""
    url = f"sqlite:///{tmp_path / 'keys.db'}"
    with Vault(
        provider=InMemoryKeyProvider(["identity", "medical"]),
        store=url,
        domains=["identity", KeyDomain("medical", restricted=True, audited=True)],
    ) as vault:
        yield vault


def _in_child(fn: Any) -> Any:
    ctx = multiprocessing.get_context("fork")
    queue: Any = ctx.Queue()
    proc = ctx.Process(target=lambda: queue.put(fn()))
    proc.start()
    proc.join(30)
    assert proc.exitcode == 0
    return queue.get(timeout=5)


class TestForkReset:
    def test_keyring_child_has_no_active_dek_and_a_free_lock(self, vault: Vault) -> None:
        """A forked child's keyring holds no active DEK of its parent and a lock it can take."""
        vault.encrypt("p", domain="identity")
        keyring = vault._keyring
        assert keyring.active
        keyring._lock.acquire()  # held by the parent's thread at the fork
        try:
            child = _in_child(lambda: (len(keyring.active), keyring._lock.acquire(timeout=5)))
        finally:
            keyring._lock.release()
        assert child == (0, True)

    def test_cipher_in_child_sees_the_reset_keyring(self, vault: Vault) -> None:
        """The cipher reads the keyring's own map, so a child's first value takes a new DEK."""
        parent = vault.encrypt("p", domain="identity")[wire.DEK_ID_SLICE]
        assert vault._cipher._active is vault._keyring.active
        child = _in_child(lambda: vault.field("identity", table="t", column="c").encrypt("c"))
        assert child[wire.DEK_ID_SLICE] != parent

    def test_recorder_child_has_no_batches_no_pending_and_a_free_lock(self, audited: Vault) -> None:
        """A forked child's recorder starts empty, with a lock it can take."""
        blob = audited.encrypt("note", domain="medical")
        with acting_as(COACH, purpose="review"):
            audited.decrypt(blob)
            audited.decrypt(blob)
            recorder = audited._recorder
            assert recorder is not None and recorder._batches
            key = ("p", "r", "decrypt", "medical", "t", "c", None)
            recorder._pending.append(_event(key, (), 1))  # as if a write had failed
            recorder._lock.acquire()
            try:
                child = _in_child(
                    lambda: (
                        len(recorder._batches),
                        len(recorder._pending),
                        recorder._lock.acquire(timeout=5),
                    )
                )
            finally:
                recorder._lock.release()
                recorder._pending.clear()
        assert child == (0, 0, True)
        audited.flush_audit()

    def test_policy_is_immutable_and_needs_no_reset(self) -> None:
        """The policy is built once from the domains and holds no lock or mutable state."""
        policy = Policy({"medical": KeyDomain("medical", restricted=True)})
        assert not hasattr(policy, "_lock")
        with pytest.raises(AttributeError):
            policy.extra = 1  # type: ignore[attr-defined]
        assert policy.is_denied("medical")
        with acting_as(COACH, purpose="p"):
            assert not policy.is_denied("medical")


class TestOneLockAtATime:
    def test_audit_writes_never_run_under_the_keyring_lock(
        self, audited: Vault, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Every audit write (on a cache miss, on a new DEK, on flush) runs without the keyring
        lock held, so no path holds the keyring's and the recorder's lock together."""
        recorder = audited._recorder
        assert recorder is not None
        keyring_lock = audited._keyring._lock
        held: list[bool] = []
        write = recorder._write

        def checked(events: Any) -> None:
            held.append(keyring_lock._is_owned())  # type: ignore[attr-defined]
            write(events)

        monkeypatch.setattr(recorder, "_write", checked)
        blob = audited.encrypt("note", domain="medical")  # new DEK, audited write
        with audited.acting_as(COACH, purpose="review"):
            audited.decrypt(blob)  # cache miss: key-store read, then audited decrypt
            audited.field("medical", table="t", column="c").decrypt(
                audited.field("medical", table="t", column="c").encrypt("x")
            )
        assert held and not any(held)

    def test_keyring_calls_never_run_under_the_recorder_lock(
        self, audited: Vault, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Key-store reads happen outside the recorder's lock."""
        recorder = audited._recorder
        assert recorder is not None
        held: list[bool] = []
        get = audited._keyring.store.get

        def checked(dek_id: bytes) -> Any:
            held.append(recorder._lock.locked())
            return get(dek_id)

        monkeypatch.setattr(audited._keyring.store, "get", checked)
        blob = audited.encrypt("note", domain="medical")
        with audited.acting_as(COACH, purpose="review"):
            audited.decrypt(blob)
        assert held and not any(held)


class TestFramingIsCore:
    def _fixed_nonce(self, monkeypatch: pytest.MonkeyPatch) -> None:
        # The core function and the copy inlined in FieldCipher's hot path draw their nonce here.
        monkeypatch.setattr(aead_module, "_urandom", lambda n: NONCE[:n])
        monkeypatch.setattr(cipher_module, "_urandom", lambda n: NONCE[:n])

    @pytest.mark.parametrize("api", ["encrypt", "field", "sealer"])
    def test_vault_values_equal_core_seal_with_the_same_nonce(
        self, vault: Vault, api: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Every way of encrypting yields exactly core.aead.seal_with_nonce's bytes."""
        self._fixed_nonce(monkeypatch)
        field = vault.field("identity", table="members", column="name")
        context = wire.cell_context(table="members", column="name")
        if api == "encrypt":
            blob = vault.encrypt("Jan", domain="identity", context=context)
        elif api == "field":
            blob = field.encrypt("Jan")
        else:
            blob = field.sealer()(b"\x01Jan")
        key = vault._keyring.active["identity"]
        aad = key.header + wire.context_block("identity", context)
        expected = aead.seal_with_nonce(key.cipher, NONCE, b"\x01Jan", aad, key.header)
        assert blob == expected
        assert aead.open_(key.cipher, blob, aad, wire.HEADER_SIZE) == b"\x01Jan"

    def test_row_bound_values_equal_core_seal(
        self, vault: Vault, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A row-bound value's associated data is context_fields of the full context."""
        self._fixed_nonce(monkeypatch)
        field = vault.field("identity", table="members", column="name", row_bound=True)
        blob = field.encrypt("Jan", row="m-17")
        key = vault._keyring.active["identity"]
        context = {"table": "members", "column": "name", "row": "m-17"}
        aad = key.header + wire.context_block("identity", context)
        assert blob == aead.seal_with_nonce(key.cipher, NONCE, b"\x01Jan", aad, key.header)
        assert vault.decrypt(blob, context=context) == "Jan"

    @pytest.mark.parametrize("value", ["Jan", "", "é" * 40, 17, b"\x00\xff", {"a": [1]}])
    def test_opener_equals_core_open_and_decode(self, vault: Vault, value: Any) -> None:
        """The inlined open in FieldCipher's hot path gives core.aead.open_ + decode_value."""
        field = vault.field("identity", table="members", column="name")
        blob = field.encrypt(value)
        field.decrypt(blob)  # cached now
        key = vault._keyring.cache.by_header[blob[: wire.HEADER_SIZE]]
        aad = key.aad_prefix + wire.context_fields(
            wire.cell_context(table="members", column="name")
        )
        expected = decode_value(aead.open_(key.cipher, blob, aad, wire.HEADER_SIZE))
        assert field.opener()(blob) == expected == field.decrypt(blob) == value
        for bad in (blob[:-1], blob[:-1] + bytes((blob[-1] ^ 1,)), blob[:60] + b"\x00" * 30):
            with pytest.raises(DecryptionError):
                aead.open_(key.cipher, bad, aad, wire.HEADER_SIZE)
            with pytest.raises(DecryptionError):
                field.opener()(bad)

    def test_seal_with_nonce_refuses_a_short_nonce(self) -> None:
        """seal_with_nonce takes 96-bit nonces only."""
        cipher, _ = aead.derive_suite1(bytes(32), bytes(16))
        with pytest.raises(ValueError, match="12 bytes"):
            aead.seal_with_nonce(cipher, bytes(8), b"x", b"")


class TestContextTemplate:
    @pytest.mark.parametrize(
        "fixed",
        [
            {"table": "members", "column": "name"},
            {"table": "members", "column": "name", "schema": "tenant_a"},
            {"a": "1", "z": "2"},
            {"rox": "x", "roa": "y"},
            {},
        ],
    )
    @pytest.mark.parametrize("row", ["m-17", 42, ""])
    def test_fill_equals_context_fields(self, fixed: dict[str, str], row: Any) -> None:
        """The template gives context_fields' bytes whatever the keys' sort order."""
        template = wire.context_template(fixed)
        assert template.fill(row) == wire.context_fields({**fixed, "row": row})

    def test_slot_must_be_open(self) -> None:
        """A slot that is also a fixed entry is refused."""
        with pytest.raises(ValueError, match="both fixed"):
            wire.context_template({"row": "1"})


class TestSealerOpener:
    def test_round_trip(self, vault: Vault) -> None:
        """sealer() and opener() are the column's encrypt and decrypt of encoded values."""
        field = vault.field("identity", table="members", column="name")
        blob = field.sealer()(b"\x01Jan")
        assert field.opener()(blob) == "Jan"
        assert field.decrypt(blob) == "Jan"
        assert field.opener()(field.encrypt(17)) == 17

    def test_row_bound_column_has_neither(self, vault: Vault) -> None:
        """A row-bound column needs its row key per value: no pre-bound callables."""
        field = vault.field("identity", table="members", column="name", row_bound=True)
        with pytest.raises(ConfigurationError):
            field.sealer()
        with pytest.raises(ConfigurationError):
            field.opener()

    def test_opener_applies_grants_and_domain(self) -> None:
        """The opener refuses a value of another domain and seals a restricted one."""
        with Vault(
            provider=InMemoryKeyProvider(["identity", "medical"]),
            store=MemoryKeyStore(),
            domains=["identity", KeyDomain("medical", restricted=True, on_denied="raise")],
        ) as vault:
            medical = vault.field("medical", table="t", column="c")
            blob = medical.encrypt("x")
            with pytest.raises(AccessDeniedError):
                medical.opener()(blob)
            with acting_as(COACH, purpose="p"):
                assert medical.opener()(blob) == "x"
                with pytest.raises(DecryptionError):
                    vault.field("identity", table="t", column="c").opener()(blob)


class TestReadOnlyMethods:
    def test_data_keys_and_dek_state(self, vault: Vault) -> None:
        """data_keys lists data keys only (no blind-index keys); dek_state reads one."""
        dek_id = vault.encrypt("x", domain="identity")[wire.DEK_ID_SLICE]
        vault.blind_index_key("identity", table="t", column="c")
        records = list(vault.data_keys())
        assert [r.dek_id for r in records] == [dek_id]
        assert [r.dek_id for r in vault.data_keys(domain="identity")] == [dek_id]
        assert list(vault.data_keys(domain="medical")) == []
        assert list(vault.data_keys(state=DekState.RETIRED)) == []
        assert vault.dek_state(dek_id) is DekState.ACTIVE
        vault.retire_dek(dek_id)
        assert vault.dek_state(dek_id) is DekState.RETIRED
        assert vault.dek_state(bytes(16)) is None
        with pytest.raises(DomainError):
            list(vault.data_keys(domain="nope"))


class TestWiring:
    def test_open_store(self, tmp_path: Path) -> None:
        """A KeyStore is used as it is; a URL or Engine gets an SQL store owned by the caller."""
        memory = MemoryKeyStore()
        assert open_store(memory) == (memory, False)
        store, owned = open_store(f"sqlite:///{tmp_path / 'k.db'}")
        assert isinstance(store, SQLKeyStore) and owned
        store.close()
        with pytest.raises(TypeError):
            open_store(42)  # type: ignore[arg-type]

    def test_open_audit_log_needs_a_database(self) -> None:
        """Without a URL and without an SQL key store there is nowhere to log."""
        with pytest.raises(ConfigurationError, match="audit log"):
            open_audit_log(None, key_store_engine=None, mac=lambda: lambda data: bytes(32))

    def test_open_audit_log_owns_the_engine_it_made(self, tmp_path: Path) -> None:
        """A URL gets an engine of the log's own, handed back for disposal."""
        log_, owned = open_audit_log(
            f"sqlite:///{tmp_path / 'audit.db'}",
            key_store_engine=None,
            mac=lambda: lambda data: bytes(32),
        )
        assert owned is log_.engine
        owned.dispose()
        engine = sa.create_engine(f"sqlite:///{tmp_path / 'audit2.db'}")
        log_, owned = open_audit_log(engine, key_store_engine=None, mac=lambda: lambda d: bytes(32))
        assert owned is None and log_.engine is engine
        engine.dispose()

    def test_recorder_is_what_the_vault_logs_through(self, audited: Vault) -> None:
        """The vault's audit log is its recorder's."""
        assert isinstance(audited._recorder, AuditRecorder)
        assert audited.audit_log is audited._recorder.log

    def test_vault_options_build_the_same_vault(self, tmp_path: Path) -> None:
        """Vault(**vault_options(path)) is Vault.from_config(path)."""
        path = tmp_path / "vaultkit.toml"
        keyring = tmp_path / "keyring.json"
        path.write_text(
            f'key_store = "sqlite:///{tmp_path / "keys.db"}"\n'
            "[providers.main]\n"
            'type = "local"\n'
            f'path = "{keyring}"\n'
            "create_keys = true\n"
            "[domains.identity]\n"
            'provider = "main"\n'
        )
        env = {"VAULTKIT_MASTER_KEY": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="}
        options = vault_options(path, env=env)
        assert set(options) >= {"provider", "store", "domains", "providers"}
        with Vault(**options) as vault:
            blob = vault.encrypt("x", domain="identity")
        with Vault.from_config(path, env=env) as vault:
            assert vault.decrypt(blob) == "x"

    def test_config_does_not_import_the_vault(self) -> None:
        """vaultkit.config refers to vaultkit._vault only for typing and in its deprecated shim."""
        tree = ast.parse((ROOT / "vaultkit" / "config.py").read_text())
        allowed: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                allowed.update(id(n) for n in ast.walk(node))
            if isinstance(node, ast.FunctionDef) and node.name == "vault_from_config":
                allowed.update(id(n) for n in ast.walk(node))
        imports = [
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module == "vaultkit._vault"
        ]
        assert all(id(node) in allowed for node in imports)

    def test_vault_from_config_is_deprecated(self, tmp_path: Path) -> None:
        """The old function still works, with a VaultkitDeprecationWarning."""
        from vaultkit.config import vault_from_config
        from vaultkit.errors import VaultkitDeprecationWarning

        path = tmp_path / "vaultkit.toml"
        path.write_text(
            f'key_store = "sqlite:///{tmp_path / "keys.db"}"\n'
            "[providers.main]\n"
            'type = "local"\n'
            f'path = "{tmp_path / "keyring.json"}"\n'
            "create_keys = true\n"
            "[domains.identity]\n"
            'provider = "main"\n'
        )
        env = {"VAULTKIT_MASTER_KEY": "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="}
        with pytest.warns(VaultkitDeprecationWarning), vault_from_config(path, env=env) as vault:
            assert vault.decrypt(vault.encrypt(1, domain="identity")) == 1


class _Rewrapping(InMemoryKeyProvider):
    def __init__(self, domains: list[str]) -> None:
        super().__init__(domains)
        self.rewraps = 0
        self.batches = 0

    def rewrap(self, old: KeyRef, new: KeyRef, wrapped: bytes, *, context: bytes) -> bytes:
        self.rewraps += 1
        return self.wrap(new, self.unwrap(old, wrapped, context=context), context=context)

    def unwrap_many(self, items: Any) -> list[bytes]:
        self.batches += 1
        return [self.unwrap(ref, wrapped, context=context) for ref, wrapped, context in items]


class TestCapabilities:
    def test_rewrap_and_batch_unwrap_are_used_when_offered(self) -> None:
        """A provider with rewrap and unwrap_many (checked with isinstance) gets those calls."""
        provider = _Rewrapping(["identity"])
        store = MemoryKeyStore()
        with Vault(provider=provider, store=store, domains=["identity"]) as writer:
            blobs = [writer.encrypt("x", domain="identity")]
            report = writer.rotate_kek("identity")
        assert provider.rewraps == report.rewrapped == 1
        with Vault(provider=provider, store=store, domains=["identity"]) as reader:
            assert reader.preload([b[wire.DEK_ID_SLICE] for b in blobs]) == 1
            assert provider.batches == 1
            assert reader.decrypt(blobs[0]) == "x"


def test_threads_share_one_cipher_safely(vault: Vault) -> None:
    """Threads sealing through one FieldCipher all decrypt (the cipher holds no lock)."""
    field = vault.field("identity", table="t", column="c")
    out: list[bytes] = []
    threads = [
        threading.Thread(target=lambda: out.extend(field.encrypt(str(i)) for i in range(200)))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(field.decrypt(b) for b in out) == sorted(
        str(i) for i in range(200) for _ in range(4)
    )
