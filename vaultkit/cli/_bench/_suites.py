"""The suites of ``vaultkit bench``: each measures vaultkit beside its baselines in the same run.

Every suite is a function ``(Options) -> SuiteResult``. Baselines are named in the suite's
``baselines``; every result gets its ratio to each baseline of the same case and op. Peers
(Fernet, Tink, sqlalchemy-utils) are measured when installed and skipped with the reason
otherwise; ``lacks`` lists what a baseline or peer does not protect that vaultkit does.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import itertools
import os
import random
import string
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaultkit.cli._bench._model import Result, Role, Stats, SuiteResult, calibrate, interleaved


@dataclass(slots=True)
class Options:
    """What every suite is given: quick or full, databases beside SQLite, a vault configuration.

    ``servers`` collects the server version of each database a suite used, by dialect, for the
    machine block (never the URL: it may hold a password).
    """

    quick: bool = False
    databases: tuple[str, ...] = ()
    config: str | None = None
    servers: dict[str, str] = field(default_factory=dict)


def _targets(options: Options, sqlite_url: Callable[[], str]) -> list[tuple[str, Any]]:
    """``(label, engine factory)`` for SQLite and each ``--database``, recording server versions."""
    import sqlalchemy as sa

    found: list[tuple[str, Any]] = [("SQLite", lambda: sa.create_engine(sqlite_url()))]
    for url in options.databases:
        probe = sa.create_engine(url)
        try:
            with probe.connect():
                info = probe.dialect.server_version_info or ()
        finally:
            probe.dispose()
        name = probe.dialect.name
        options.servers[name] = ".".join(str(part) for part in info) or "unknown"
        found.append((name, lambda url=url: sa.create_engine(url)))
    return found


__all__ = ["SUITES", "Options", "bench_vault", "core_ops", "protections"]

_CORE_SIZES = (16, 64, 256, 1024, 4096, 16384)
_QUICK_SIZES = (16, 64, 256, 4096)

_RAW_LACKS = (
    "nonce not stored with the value",
    "no associated data: a value moved to another cell decrypts",
    "no key commitment",
    "no key id, so no rotation or key management",
)
_FRAMED_LACKS = (
    "associated data of the same length but no cell context built",
    "no key commitment",
    "no key id, so no rotation or key management",
    "no typed encoding",
)
_FERNET_LACKS = (
    "no associated data: a token moved to another cell decrypts",
    "AES-128-CBC + HMAC, timestamp in clear",
    "no key id or envelope keys",
)
_TINK_LACKS = (
    "no key commitment (AES-GCM)",
    "cell binding only if the caller passes associated data",
)
_SQLA_UTILS_LACKS = (
    "one key for every column, derived from a string by SHA-256",
    "no associated data: a value moved to another row or column decrypts",
    "no key commitment, no key id, no rotation",
)
_FLOOR_LACKS = (
    "no associated data, no key commitment",
    "one key in process memory, no key management",
)


def _result(
    case: str,
    op: str,
    subject: str,
    role: Role,
    samples: list[float],
    number: int,
    *,
    bytes_per_op: int | None = None,
    rows_per_op: int | None = None,
    lacks: tuple[str, ...] = (),
) -> Result:
    return Result(
        case=case,
        op=op,
        subject=subject,
        role=role,
        stats=Stats.of(samples, number),
        bytes_per_op=bytes_per_op,
        rows_per_op=rows_per_op,
        lacks=lacks,
    )


@contextmanager
def bench_vault(**kwargs: Any) -> Iterator[Any]:
    from vaultkit import Vault
    from vaultkit.store import MemoryKeyStore
    from vaultkit.testing import InMemoryKeyProvider

    vault = Vault(
        provider=InMemoryKeyProvider(), store=MemoryKeyStore(), domains=["identity"], **kwargs
    )
    try:
        yield vault
    finally:
        vault.close()


def protections() -> dict[str, Any]:
    """Check, on a vault built like the suites' ones, that every protection is on.

    Each entry is what was observed, not what was configured: the suite byte of a real value (key
    commitment), a value moved to another column failing (cell binding), a restricted domain
    read without a grant yielding a sealed value, the audit log holding the decrypt and the
    denial, and its hash chain verifying.
    """
    from vaultkit import KeyDomain, Principal, SealedValue, Vault
    from vaultkit.core import wire
    from vaultkit.errors import DecryptionError
    from vaultkit.store import MemoryKeyStore
    from vaultkit.testing import InMemoryKeyProvider

    found: dict[str, Any] = {}
    vault = Vault(
        provider=InMemoryKeyProvider(),
        store=MemoryKeyStore(),
        domains=["identity", KeyDomain("medical", restricted=True, audited=True)],
        audit="sqlite://",
    )
    try:
        note = vault.field("identity", table="members", column="note")
        other = vault.field("identity", table="members", column="email")
        blob = note.encrypt("protections check")
        suite, _dek, _commitment = wire.parse_header(blob)
        found["suite"] = suite.name
        found["key_commitment"] = suite is wire.Suite.AES256_GCM_HKDF_SHA256_COMMIT
        try:
            other.decrypt(blob)
        except DecryptionError:
            found["cell_binding"] = True
        else:
            found["cell_binding"] = False
        found["random_nonce"] = (
            note.encrypt("x")[wire.NONCE_SLICE] != note.encrypt("x")[wire.NONCE_SLICE]
        )
        medical = vault.field("medical", table="chats", column="body")
        sealed = medical.decrypt(medical.encrypt("protections check"))
        found["restricted_domain_sealed_without_grant"] = isinstance(sealed, SealedValue)
        with vault.acting_as(Principal("bench", grants={"medical"}), purpose="bench check"):
            found["restricted_domain_opens_with_grant"] = (
                medical.decrypt(medical.encrypt("y")) == "y"
            )
        vault.flush_audit()
        log = vault.audit_log
        actions = [event.action for _seq, event, _prev, _mac in log.read()] if log else []
        found["audit_records_decrypt_and_denial"] = "decrypt" in actions and "denied" in actions
        found["audit_chain_verifies"] = bool(log is not None and log.verify().ok)
    finally:
        vault.close()
    return found


# -- core ---------------------------------------------------------------------------------------


def core(options: Options) -> SuiteResult:
    """Per-value encrypt and decrypt against raw and framed AES-GCM, Fernet and Tink."""
    quick = options.quick
    from cryptography.fernet import Fernet
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from vaultkit.core import wire

    sizes = _QUICK_SIZES if quick else _CORE_SIZES
    # Calls per round are calibrated per operation so that a round lasts about ``target``.
    target, rounds = (0.001, 5) if quick else (0.04, 7)
    suite = SuiteResult(
        "core",
        "Per-value cost of one field: raw `AESGCM` (the floor), *framed* AES-GCM (nonce stored, "
        "associated data as long as vaultkit's), `Vault.encrypt` (context dict per call) and "
        "`FieldCipher` (the column types' path) with every protection on; and the blind-index "
        "HMAC of an e-mail beside one bare `hmac.digest`.",
        baselines=("raw AESGCM", "framed AESGCM", "hmac.digest"),
        params={
            "sizes": list(sizes),
            "round_s": target,
            "rounds": rounds,
            "interleaved": True,
        },
    )
    tink_aead: Any = None
    try:
        import tink  # type: ignore[import-not-found, unused-ignore]
        from tink import aead as tink_aead_module  # type: ignore[import-not-found, unused-ignore]

        tink_aead_module.register()
        handle = tink.new_keyset_handle(tink_aead_module.aead_key_templates.AES256_GCM)
        tink_aead = handle.primitive(tink_aead_module.Aead)
    except ImportError:
        suite.skip("Tink AEAD", "not installed (pip install tink)")
    urandom = os.urandom
    context = {"table": "members", "column": "note"}
    with bench_vault() as vault:
        field = vault.field("identity", table="members", column="note")
        raw = AESGCM(urandom(32))
        fernet = Fernet(Fernet.generate_key())
        aad = urandom(wire.HEADER_SIZE + len(wire.context_block("identity", context)))
        for size in sizes:
            ops = core_ops(size, vault, field, raw, fernet, tink_aead, aad, context)
            named = {f"{s}\0{o}": fn for (s, o), fn in ops.items()}
            numbers = {name: calibrate(fn, target) for name, fn in named.items()}
            samples = interleaved(named, number=numbers, rounds=rounds)
            for op in ("encrypt", "decrypt"):
                for (subject, o), _fn in ops.items():
                    if o != op:
                        continue
                    role: Role = (
                        "baseline"
                        if subject in suite.baselines
                        else "vaultkit"
                        if subject in ("Vault.encrypt", "FieldCipher")
                        else "peer"
                    )
                    lacks = {
                        "raw AESGCM": _RAW_LACKS,
                        "framed AESGCM": _FRAMED_LACKS,
                        "Fernet": _FERNET_LACKS,
                        "Tink AEAD": _TINK_LACKS,
                    }.get(subject, ())
                    suite.add(
                        _result(
                            f"{size} B",
                            op,
                            subject,
                            role,
                            samples[f"{subject}\0{o}"],
                            numbers[f"{subject}\0{o}"],
                            bytes_per_op=size,
                            lacks=lacks,
                        )
                    )
        _blind_index(suite, vault, target, rounds)
    return suite


def _blind_index(suite: SuiteResult, vault: Any, target: float, rounds: int) -> None:
    """The blind-index HMAC of a normalised e-mail beside one ``hmac.digest`` with the key at hand."""
    import hmac

    key = vault.blind_index_key("identity", table="members", column="email")
    bare_key = os.urandom(32)
    email = b"jan.peeters@example.be"  # 22 bytes, a typical normalised e-mail
    ops: dict[str, Callable[[], object]] = {
        "hmac.digest": lambda: hmac.digest(bare_key, email, "sha256"),
        "BlindIndexKey.digest": lambda: key.digest(email),
    }
    numbers = {name: calibrate(fn, target) for name, fn in ops.items()}
    samples = interleaved(ops, number=numbers, rounds=rounds)
    for name in ops:
        suite.add(
            _result(
                f"{len(email)} B",
                "blind index",
                name,
                "baseline" if name == "hmac.digest" else "vaultkit",
                samples[name],
                numbers[name],
                bytes_per_op=len(email),
                lacks=("key in this process's memory, not wrapped, versioned or per column",)
                if name == "hmac.digest"
                else (),
            )
        )


def core_ops(
    size: int,
    vault: Any,
    field: Any,
    raw: Any,
    fernet: Any,
    tink_aead: Any,
    aad: bytes,
    context: dict[str, str],
) -> dict[tuple[str, str], Callable[[], object]]:
    """The operations of one payload size, each with its input prepared outside the timing."""
    urandom = os.urandom
    payload = urandom(size)
    text = "x" * size
    nonce = urandom(12)
    raw_ct = raw.encrypt(nonce, payload, None)
    framed = nonce + raw.encrypt(nonce, payload, aad)
    blob = vault.encrypt(text, domain="identity", context=context)
    fblob = field.encrypt(text)
    token = fernet.encrypt(payload)

    def framed_encrypt() -> bytes:
        n = urandom(12)
        out: bytes = n + raw.encrypt(n, payload, aad)
        return out

    ops: dict[tuple[str, str], Callable[[], object]] = {
        ("raw AESGCM", "encrypt"): lambda: raw.encrypt(urandom(12), payload, None),
        ("raw AESGCM", "decrypt"): lambda: raw.decrypt(nonce, raw_ct, None),
        ("framed AESGCM", "encrypt"): framed_encrypt,
        ("framed AESGCM", "decrypt"): lambda: raw.decrypt(framed[:12], framed[12:], aad),
        ("Fernet", "encrypt"): lambda: fernet.encrypt(payload),
        ("Fernet", "decrypt"): lambda: fernet.decrypt(token),
        ("Vault.encrypt", "encrypt"): lambda: vault.encrypt(
            text, domain="identity", context=context
        ),
        ("Vault.encrypt", "decrypt"): lambda: vault.decrypt(blob, context=context),
        ("FieldCipher", "encrypt"): lambda: field.encrypt(text),
        ("FieldCipher", "decrypt"): lambda: field.decrypt(fblob),
    }
    if tink_aead is not None:
        tct = tink_aead.encrypt(payload, b"")
        ops[("Tink AEAD", "encrypt")] = lambda: tink_aead.encrypt(payload, b"")
        ops[("Tink AEAD", "decrypt")] = lambda: tink_aead.decrypt(tct, b"")
    return ops


# -- orm ----------------------------------------------------------------------------------------

_ORM_VAULT = "vaultkit-bench"


def _orm_model(kind: str, floor_key: Any, tablename: str) -> type[Any]:
    import sqlalchemy as sa
    from sqlalchemy.orm import DeclarativeBase, mapped_column
    from sqlalchemy.types import TypeDecorator

    from vaultkit.sqla import Encrypted

    class _Bytes(sa.LargeBinary):
        def bind_processor(self, dialect: Any) -> None:
            return None

    class FloorAESGCM(TypeDecorator[str]):
        impl = _Bytes
        cache_ok = True

        def process_bind_param(self, value: Any, dialect: Any) -> bytes | None:
            if value is None:
                return None
            nonce = os.urandom(12)
            out: bytes = nonce + floor_key.encrypt(nonce, value.encode(), None)
            return out

        def process_result_value(self, value: Any, dialect: Any) -> str | None:
            if value is None:
                return None
            text: str = floor_key.decrypt(value[:12], value[12:], None).decode()
            return text

    def col(inner: Any) -> Any:
        if kind == "plain columns":
            return mapped_column(inner)
        if kind == "floor AESGCM column":
            return mapped_column(FloorAESGCM())
        if kind == "vaultkit Encrypted":
            return mapped_column(Encrypted(inner, domain="identity", vault=_ORM_VAULT))
        from sqlalchemy_utils import StringEncryptedType
        from sqlalchemy_utils.types.encrypted.encrypted_type import AesGcmEngine

        return mapped_column(StringEncryptedType(sa.String, "k" * 32, AesGcmEngine, length=1024))

    class Base(DeclarativeBase):
        pass

    class Member(Base):
        __tablename__ = tablename
        id = mapped_column(sa.Integer, primary_key=True, autoincrement=False)
        member_no = mapped_column(sa.Integer)
        email = col(sa.String(320))
        phone = col(sa.String(32))
        note = col(sa.Text)

    return Member


def _member_rows(n: int) -> list[dict[str, Any]]:
    rnd = random.Random(7)  # noqa: S311 - synthetic data
    letters = string.ascii_lowercase
    return [
        {
            "id": i + 1,
            "member_no": 100000 + i,
            "email": "".join(rnd.choices(letters, k=12)) + "@example.be",
            "phone": "+32 470 " + "".join(rnd.choices(string.digits, k=6)),
            "note": "".join(rnd.choices(letters + " ", k=200)),
        }
        for i in range(n)
    ]


def orm(options: Options) -> SuiteResult:
    """ORM and Core insert and select of rows with three encrypted columns, SQLite and others."""
    quick = options.quick
    import sqlite3
    import warnings

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    import vaultkit.sqla

    n, rounds = (300, 3) if quick else (20_000, 3)
    suite = SuiteResult(
        "orm",
        "Rows of 5 columns, 3 encrypted (e-mail, phone, 200-character note), through the ORM "
        "(`add_all` + commit; select all entities) and Core (executemany; select), in-memory "
        "SQLite and each `--database`, against the same model with plain columns and a floor "
        "`TypeDecorator`.",
        baselines=("plain columns", "floor AESGCM column"),
        params={"rows": n, "rounds": rounds},
    )
    kinds = ["plain columns", "floor AESGCM column", "vaultkit Encrypted"]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import sqlalchemy_utils  # noqa: F401

        kinds.append("sqlalchemy-utils StringEncryptedType")
    except ImportError:
        suite.skip("sqlalchemy-utils", "not installed (pip install 'vaultkit[bench]')")
    data = _member_rows(n)
    floor_key = AESGCM(os.urandom(32))
    lacks = {
        "floor AESGCM column": _FLOOR_LACKS,
        "sqlalchemy-utils StringEncryptedType": _SQLA_UTILS_LACKS,
        "plain columns": ("no encryption at all",),
    }
    samples: dict[tuple[str, str, str], list[float]] = {}
    targets = _targets(options, lambda: "sqlite://")
    suite.params["databases"] = [
        f"SQLite {sqlite3.sqlite_version} memory",
        *(f"{label} {options.servers[label]}" for label, _ in targets[1:]),
    ]
    prefix = f"bench_members_{uuid.uuid4().hex[:8]}"
    with bench_vault() as vault:
        vaultkit.sqla.configure(vault, name=_ORM_VAULT)
        try:
            for label, make_engine in targets:
                models = {
                    kind: _orm_model(kind, floor_key, f"{prefix}_{i}")
                    for i, kind in enumerate(kinds)
                }
                for _ in range(rounds):
                    for kind, model in models.items():
                        engine = make_engine()
                        try:
                            model.metadata.create_all(engine)
                            for op, seconds in _orm_round(model, engine, data).items():
                                samples.setdefault((label, kind, op), []).append(seconds)
                        finally:
                            model.metadata.drop_all(engine)
                            engine.dispose()
        finally:
            vaultkit.sqla.configure(None, name=_ORM_VAULT)
    for label, _factory in targets:
        for op in ("ORM insert", "ORM select", "Core insert", "Core select"):
            for kind in kinds:
                role: Role = (
                    "baseline"
                    if kind in suite.baselines
                    else "vaultkit"
                    if kind.startswith("vaultkit")
                    else "peer"
                )
                suite.add(
                    _result(
                        f"{n:,} rows, {label}",
                        op,
                        kind,
                        role,
                        samples[(label, kind, op)],
                        1,
                        rows_per_op=n,
                        lacks=lacks.get(kind, ()),
                    )
                )
    suite.notes.append(
        "`benchmarks/bench_orm.py` runs the same comparison at 100,000 rows on SQLite files and "
        "the ORM-enabled statements (insert().returning(), bulk update())."
    )
    return suite


def _orm_round(model: Any, engine: Any, data: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds of each operation, once, on an empty table."""
    import sqlalchemy as sa
    from sqlalchemy.orm import Session

    table = model.__table__
    n = len(data)

    def orm_insert() -> None:
        with Session(engine) as s:
            s.add_all([model(**r) for r in data])
            s.commit()

    def orm_select() -> None:
        with Session(engine) as s:
            got = s.scalars(sa.select(model).order_by(model.id)).all()
            if len(got) != n or got[-1].note != data[-1]["note"]:
                raise RuntimeError("ORM select returned other rows")

    def core_insert() -> None:
        with engine.begin() as conn:
            conn.execute(sa.delete(table))
            conn.execute(table.insert(), data)

    def core_select() -> None:
        with engine.connect() as conn:
            if len(conn.execute(sa.select(table)).all()) != n:
                raise RuntimeError("Core select returned other rows")

    seconds: dict[str, float] = {}
    for op, fn in (
        ("ORM insert", orm_insert),
        ("ORM select", orm_select),
        ("Core insert", core_insert),
        ("Core select", core_select),
    ):
        start = time.perf_counter()
        fn()
        seconds[op] = time.perf_counter() - start
    return seconds


# -- providers ----------------------------------------------------------------------------------


def providers(options: Options) -> SuiteResult:
    """Wrap + unwrap of a 32-byte DEK by each provider that can run here, beside local AES-GCM."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from vaultkit.keys import LocalKeyProvider
    from vaultkit.testing import InMemoryKeyProvider

    target, rounds = (0.002, 3) if options.quick else (0.05, 7)
    suite = SuiteResult(
        "providers",
        "One DEK wrap and unwrap (32 bytes, with context) through each key provider: the cost "
        "a process pays once per DEK (then cached), beside the same work done by one "
        "`AESGCM` key in memory. With `--config`, each domain's provider of that configuration.",
        baselines=("AESGCM in memory",),
        params={"round_s": target, "rounds": rounds, "config": options.config is not None},
    )
    context = b"vaultkit-bench"
    kek = AESGCM(os.urandom(32))

    def bare() -> None:
        dek = os.urandom(32)
        nonce = os.urandom(12)
        if kek.decrypt(nonce, kek.encrypt(nonce, dek, context), context) != dek:
            raise RuntimeError("round trip failed")

    found: dict[str, Callable[[], None]] = {"AESGCM in memory": bare}
    lacks = {
        "AESGCM in memory": (
            "KEK in this process's memory",
            "no KEK versions, no access control, no audit",
        )
    }
    with tempfile.TemporaryDirectory(prefix="vaultkit-bench-") as folder:
        candidates: dict[str, tuple[Any, str]] = {
            "InMemoryKeyProvider (tests)": (InMemoryKeyProvider(), "medical"),
            "LocalKeyProvider (keyring file)": (
                LocalKeyProvider(Path(folder) / "keyring.json", master_key=os.urandom(32)),
                "medical",
            ),
        }
        if options.config is None:
            suite.skip(
                "PKCS#11, transit, AWS KMS",
                "give --config FILE to measure a configuration's providers "
                "(benchmarks/bench_providers.py starts SoftHSM2, OpenBao and moto)",
            )
        else:
            from vaultkit.config import vault_options

            parts = vault_options(options.config)
            default = parts["provider"]
            overrides = parts.get("providers") or {}
            for domain in parts["domains"]:
                name = getattr(domain, "name", domain)
                provider = overrides.get(name, default)
                candidates[f"{type(provider).__name__} (domain {name})"] = (provider, name)
        for label, (provider, domain) in candidates.items():
            try:
                ref = provider.primary(domain)
                fn = _provider_trip(provider, ref, context)
                fn()
            except Exception as exc:  # any refusal is reported, by its class only
                suite.skip(label, f"round trip refused ({type(exc).__name__})")
                continue
            found[label] = fn
        numbers = {name: calibrate(fn, target) for name, fn in found.items()}
        samples = interleaved(found, number=numbers, rounds=rounds, warmup=False)
    for name in found:
        role: Role = "baseline" if name in suite.baselines else "vaultkit"
        suite.add(
            _result(
                "32 B DEK",
                "wrap + unwrap",
                name,
                role,
                samples[name],
                numbers[name],
                lacks=lacks.get(name, ()),
            )
        )
    return suite


def _provider_trip(provider: Any, ref: Any, context: bytes) -> Callable[[], None]:
    def trip() -> None:
        dek = os.urandom(32)
        wrapped = provider.wrap(ref, dek, context=context)
        if provider.unwrap(ref, wrapped, context=context) != dek:
            raise RuntimeError("round trip failed")

    return trip


# -- rekey --------------------------------------------------------------------------------------


def rekey(options: Options) -> SuiteResult:
    """Re-keying rows/s on SQLite (and each ``--database``) against reading and rewriting the rows."""

    import vaultkit.sqla
    from vaultkit import Vault
    from vaultkit.store import MemoryKeyStore
    from vaultkit.testing import InMemoryKeyProvider

    quick = options.quick
    n, rounds = (500, 2) if quick else (20_000, 3)
    suite = SuiteResult(
        "rekey",
        "One worker re-encrypting every value of 3 encrypted columns whose DEK was retired "
        "(`rekey_table`, SQLite file and each `--database`), against the least a re-key must do "
        "on the database: read every row and write it back by key. KEK rotation rewraps DEK "
        "rows only.",
        baselines=("read + rewrite, no crypto",),
        params={"rows": n, "rounds": rounds, "workers": 1},
    )
    samples: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="vaultkit-bench-") as folder:
        counter = iter(range(10**6))
        targets = _targets(options, lambda: f"sqlite:///{Path(folder) / f'r{next(counter)}.db'}")
        suite.params["databases"] = [
            "SQLite file",
            *(f"{label} {options.servers[label]}" for label, _ in targets[1:]),
        ]
        vault = Vault(provider=InMemoryKeyProvider(), store=MemoryKeyStore(), domains=["identity"])
        vaultkit.sqla.configure(vault, name=_ORM_VAULT)
        try:
            for label, make_engine in targets:
                for _ in range(rounds):
                    engine = make_engine()
                    try:
                        for subject, seconds in _rekey_round(engine, vault, n).items():
                            samples.setdefault((label, subject), []).append(seconds)
                    finally:
                        engine.dispose()
        finally:
            vaultkit.sqla.configure(None, name=_ORM_VAULT)
            vault.close()
    for label, _factory in targets:
        case = f"{n:,} rows x 3 columns, {label}"
        suite.add(
            _result(
                case,
                "re-key",
                "read + rewrite, no crypto",
                "baseline",
                samples[(label, "read + rewrite, no crypto")],
                1,
                rows_per_op=n,
                lacks=("no decryption, no re-encryption, no resumable job",),
            )
        )
        suite.add(
            _result(
                case,
                "re-key",
                "vaultkit rekey_table",
                "vaultkit",
                samples[(label, "vaultkit rekey_table")],
                1,
                rows_per_op=n,
            )
        )
    for deks, values in ((20, 2_000), (20, 200)) if quick else ((100, 10_000), (100, 1_000)):
        times = []
        for _ in range(rounds):
            with Vault(
                provider=InMemoryKeyProvider(["medical"]),
                store=MemoryKeyStore(),
                domains=["medical"],
                dek_max_encryptions=max(1, values // deks),
            ) as v:
                for i in range(values):
                    v.encrypt(i, domain="medical")
                start = time.perf_counter()
                v.rotate_kek("medical")
                times.append(time.perf_counter() - start)
        suite.add(
            _result(
                f"{deks} DEKs, {values:,} values",
                "KEK rotation",
                "vaultkit rotate_kek",
                "vaultkit",
                times,
                1,
            )
        )
    suite.notes.append(
        "KEK rotation should take the same time for the same number of DEKs whatever the number "
        "of values; `benchmarks/bench_rekey.py --postgres URL` measures workers on PostgreSQL."
    )
    return suite


def _rekey_round(engine: Any, vault: Any, n: int) -> dict[str, float]:
    """Fill a fresh table, retire its DEKs, time the baseline and ``rekey_table``; drop it all."""
    import sqlalchemy as sa

    from vaultkit.rekey import drop_job, rekey_table
    from vaultkit.sqla import Encrypted

    name = f"bench_rekey_{uuid.uuid4().hex[:8]}"
    metadata = sa.MetaData()
    columns = (("email", sa.String(320)), ("phone", sa.String(32)), ("note", sa.Text))
    table = sa.Table(
        name,
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        *(sa.Column(c, Encrypted(t, domain="identity", vault=_ORM_VAULT)) for c, t in columns),
    )
    plain = sa.Table(
        f"{name}_plain",
        metadata,
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        *(sa.Column(c, sa.LargeBinary) for c, _ in columns),
    )
    job = f"{name}:rekey"
    seconds: dict[str, float] = {}
    metadata.create_all(engine)
    try:
        rows = [
            {"id": i, "email": f"m{i}@example.be", "phone": "+32470123456", "note": "x" * 200}
            for i in range(n)
        ]
        with engine.begin() as conn:
            conn.execute(table.insert(), rows)
            raw = [sa.type_coerce(table.c[c], sa.LargeBinary) for c, _ in columns]
            stored = conn.execute(sa.select(table.c.id, *raw)).all()
            conn.execute(
                plain.insert(),
                [{"id": r[0], "email": r[1], "phone": r[2], "note": r[3]} for r in stored],
            )
        for record in list(vault.store.records()):
            if record.state == "active":
                vault.retire_dek(record.dek_id)

        start = time.perf_counter()
        with engine.begin() as conn:
            got = conn.execute(sa.select(plain)).all()
            conn.execute(
                plain.update().where(plain.c.id == sa.bindparam("key")),
                [{"key": g[0], "email": g[1], "phone": g[2], "note": g[3]} for g in got],
            )
        seconds["read + rewrite, no crypto"] = time.perf_counter() - start

        start = time.perf_counter()
        report = rekey_table(engine, table, vault=vault, job=job, range_size=5_000)
        seconds["vaultkit rekey_table"] = time.perf_counter() - start
        if report.values_rewritten != 3 * n:
            raise RuntimeError("rekey did not rewrite every value")
    finally:
        drop_job(engine, job)
        metadata.drop_all(engine)
    return seconds


# -- audiences ----------------------------------------------------------------------------------


def audiences(options: Options) -> SuiteResult:
    """E-mail audience hashing end to end (CSV in, platform CSV out) against a bare SHA-256 loop."""
    quick = options.quick
    from vaultkit.audiences import hash_csv

    n, rounds = (3_000, 2) if quick else (100_000, 3)
    suite = SuiteResult(
        "audiences",
        "Member e-mails hashed for an ad platform's upload with `hash_csv` (normalisation per "
        "platform, validation, reject handling, CSV in and out), one worker, against "
        "`hashlib.sha256` over the same e-mails already in memory.",
        baselines=("bare sha256 loop",),
        params={"rows": n, "rounds": rounds, "workers": 1},
    )
    rnd = random.Random(42)  # noqa: S311 - synthetic data
    emails = [
        "".join(rnd.choices(string.ascii_lowercase, k=6))
        + f".{i % 1000}@"
        + ("gmail.com" if i % 4 == 0 else "example.be")
        for i in range(n)
    ]
    with tempfile.TemporaryDirectory(prefix="vaultkit-bench-") as folder:
        source = Path(folder) / "emails.csv"
        with open(source, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["email"])
            writer.writerows([e] for e in emails)
        sha = hashlib.sha256

        def bare() -> None:
            for email in emails:
                sha(email.encode()).hexdigest()

        ops: dict[str, Callable[[], object]] = {"bare sha256 loop": bare}
        for platform in ("google", "meta"):
            ops[f"hash_csv {platform}"] = functools.partial(
                hash_csv,
                source,
                Path(folder) / f"out-{platform}.csv",
                platform=platform,
                default_region="BE",
            )
        samples = interleaved(ops, number=1, rounds=rounds)
    for name in ops:
        role: Role = "baseline" if name in suite.baselines else "vaultkit"
        lacks = (
            (
                "no normalisation (case, spaces, Gmail dots)",
                "no validation, no reject file",
                "no CSV",
            )
            if role == "baseline"
            else ()
        )
        suite.add(
            _result(
                f"{n:,} e-mails", "hash", name, role, samples[name], 1, rows_per_op=n, lacks=lacks
            )
        )
    return suite


# -- passwords ----------------------------------------------------------------------------------

_PASSWORD = "correct horse battery staple"  # noqa: S105 - a benchmark input, not a secret


def passwords(options: Options) -> SuiteResult:
    """Hash, verify and policy check against argon2-cffi, bcrypt and zxcvbn called directly."""
    quick = options.quick
    import argon2
    import bcrypt
    import zxcvbn

    from vaultkit.passwords import PasswordHasher, PasswordPolicy

    rounds = 2 if quick else 5
    suite = SuiteResult(
        "passwords",
        "vaultkit's password hashing facade and policy against the libraries it wraps, called "
        "directly with the same parameters: argon2id t=3, 64 MiB, p=4 (RFC 9106 low-memory), "
        "bcrypt cost 12, and zxcvbn on the same input.",
        baselines=("argon2-cffi", "bcrypt", "zxcvbn"),
        params={"rounds": rounds, "argon2id": "t=3, m=65536 KiB, p=4", "bcrypt": "cost 12"},
    )
    argon = argon2.PasswordHasher(
        time_cost=3, memory_cost=65536, parallelism=4, type=argon2.Type.ID
    )
    mine = PasswordHasher()
    mine_bcrypt = PasswordHasher(scheme="bcrypt", bcrypt_rounds=12)
    stored_argon = argon.hash(_PASSWORD)
    stored_mine = mine.hash(_PASSWORD)
    salt = bcrypt.gensalt(12)
    stored_bcrypt = bcrypt.hashpw(_PASSWORD.encode(), salt)
    stored_mine_bcrypt = mine_bcrypt.hash(_PASSWORD)
    policy = PasswordPolicy()
    hard = "Tr0ub4dor&3" * 6  # 66 characters, l33t and repeated: expensive for zxcvbn
    ops: dict[tuple[str, str, str], Callable[[], object]] = {
        ("argon2id", "hash", "argon2-cffi"): lambda: argon.hash(_PASSWORD),
        ("argon2id", "hash", "vaultkit PasswordHasher"): lambda: mine.hash(_PASSWORD),
        ("argon2id", "verify", "argon2-cffi"): lambda: argon.verify(stored_argon, _PASSWORD),
        ("argon2id", "verify", "vaultkit PasswordHasher"): lambda: mine.verify(
            _PASSWORD, stored_mine
        ),
        ("bcrypt", "hash", "bcrypt"): lambda: bcrypt.hashpw(_PASSWORD.encode(), bcrypt.gensalt(12)),
        ("bcrypt", "hash", "vaultkit PasswordHasher"): lambda: mine_bcrypt.hash(_PASSWORD),
        ("bcrypt", "verify", "bcrypt"): lambda: bcrypt.checkpw(_PASSWORD.encode(), stored_bcrypt),
        ("bcrypt", "verify", "vaultkit PasswordHasher"): lambda: mine_bcrypt.verify(
            _PASSWORD, stored_mine_bcrypt
        ),
        ("typical input", "policy check", "zxcvbn"): lambda: zxcvbn.zxcvbn(_PASSWORD),
        ("typical input", "policy check", "vaultkit PasswordPolicy"): lambda: policy.check(
            _PASSWORD
        ),
        ("expensive input", "policy check", "zxcvbn"): lambda: zxcvbn.zxcvbn(hard),
        ("expensive input", "policy check", "vaultkit PasswordPolicy"): lambda: policy.check(hard),
    }
    lacks = {
        "argon2-cffi": ("no NFKC normalisation, no legacy PBKDF2/bcrypt verification",),
        "bcrypt": ("silently ignores bytes past 72", "no NFKC normalisation"),
        "zxcvbn": (
            "refuses input over 72 characters instead of scoring a prefix",
            "no breach list",
        ),
    }
    # No warm-up: a hash has nothing to warm, and each call costs a fifth of a second.
    samples = interleaved(
        {"\0".join(k): fn for k, fn in ops.items()}, number=1, rounds=rounds, warmup=False
    )
    for case, op, subject in ops:
        role: Role = "baseline" if subject in suite.baselines else "vaultkit"
        suite.add(
            _result(
                case,
                op,
                subject,
                role,
                samples["\0".join((case, op, subject))],
                1,
                lacks=lacks.get(subject, ()),
            )
        )
    suite.notes.append(
        "`benchmarks/bench_passwords.py` searches for the policy's worst-case inputs and times "
        "the breached-password mirror."
    )
    return suite


# -- lifecycle ----------------------------------------------------------------------------------

_PROCESS_SCOPED_LACKS = (
    "one key for many members: a member's values cannot be erased by destroying a key",
    "no retention enforced by key destruction: copies in backups stay readable",
)
_DELETE_LACKS = (
    "the deleted values stay readable in WAL, replicas, dumps and backups",
    "no fence against new writes, no receipt, no audit event",
)
_LIFECYCLE_DOMAINS = ("p_medical", "medical", "chats")
#: Rows per batch of the cold read: `vault.preload` of one batch's keys, then its values.
_PRELOAD_BATCH = 500


@contextmanager
def _lifecycle_vault(url: str, provider: Any) -> Iterator[tuple[Any, Any]]:
    """A vault and its SQLite key store at ``url``: a process-, a subject- and a bucket-scoped domain."""
    import datetime as dt

    from vaultkit import KeyDomain, Retention, Vault
    from vaultkit.store import SQLKeyStore

    domains = [
        KeyDomain("p_medical"),
        KeyDomain("medical", dek_scope="subject"),
        KeyDomain(
            "chats", dek_scope="bucket", bucket=dt.timedelta(hours=1), retention=Retention("PT72H")
        ),
    ]
    store = SQLKeyStore(url, table_prefix="bench_")
    vault = Vault(provider=provider, store=store, domains=domains)
    try:
        yield vault, store
    finally:
        vault.close()
        store.close()


@contextmanager
def _counted_queries(engine: Any) -> Iterator[list[int]]:
    import sqlalchemy as sa

    queries = [0]

    def count(*_args: Any) -> None:
        queries[0] += 1

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        yield queries
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)


def lifecycle(options: Options) -> SuiteResult:
    """Subject- and bucket-scoped keys (issue 16) against process-scoped keys and raw AES-GCM."""
    import sqlite3

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from vaultkit.core import wire
    from vaultkit.testing import CountingKeyProvider, InMemoryKeyProvider

    quick = options.quick
    target, rounds = (0.002, 5) if quick else (0.04, 7)
    known, new_per_round, cold_n, cold_rounds, erasures = (
        (50, 10, 200, 2, 5) if quick else (500, 200, 10_000, 3, 30)
    )
    suite = SuiteResult(
        "lifecycle",
        "The data life cycle on a SQLite key store: per-value encrypt and decrypt in a "
        "subject-scoped domain (a key per member, members already known) and a bucket-scoped one "
        "(a key per hour, 72 h retention) against a process-scoped domain and raw `AESGCM`; a "
        "new member's first write (key creation); a cold read of distinct members' values by a "
        "fresh vault, with and without `vault.preload`; and `erase_subject` against deleting the "
        "member's row.",
        baselines=("raw AESGCM", "process-scoped"),
        params={
            "size_b": 64,
            "round_s": target,
            "rounds": rounds,
            "known_members": known,
            "new_members_per_round": new_per_round,
            "cold_rows": cold_n,
            "cold_rounds": cold_rounds,
            "preload_batch": _PRELOAD_BATCH,
            "erasures": erasures,
            "key_store": "SQLite file",
        },
    )
    urandom = os.urandom
    text = "x" * 64
    payload = text.encode()
    context = {"table": "members", "column": "note"}
    inner = InMemoryKeyProvider(list(_LIFECYCLE_DOMAINS))
    with tempfile.TemporaryDirectory(prefix="vaultkit-bench-") as folder:
        url = f"sqlite:///{Path(folder) / 'keys.db'}"
        with _lifecycle_vault(url, CountingKeyProvider(inner)) as (vault, _store):
            raw = AESGCM(urandom(32))
            nonce = urandom(12)
            raw_ct = raw.encrypt(nonce, payload, None)
            members = [f"m-{i}" for i in range(known)]
            blobs = [
                vault.encrypt(text, domain="medical", context=context, subject=m) for m in members
            ]
            who = itertools.cycle(members)
            which = itertools.cycle(blobs)
            p_blob = vault.encrypt(text, domain="p_medical", context=context)
            b_blob = vault.encrypt(text, domain="chats", context=context)
            ops: dict[tuple[str, str], Callable[[], object]] = {
                ("raw AESGCM", "encrypt"): lambda: raw.encrypt(urandom(12), payload, None),
                ("raw AESGCM", "decrypt"): lambda: raw.decrypt(nonce, raw_ct, None),
                ("process-scoped", "encrypt"): lambda: vault.encrypt(
                    text, domain="p_medical", context=context
                ),
                ("process-scoped", "decrypt"): lambda: vault.decrypt(p_blob, context=context),
                ("subject-scoped, known member", "encrypt"): lambda: vault.encrypt(
                    text, domain="medical", context=context, subject=next(who)
                ),
                ("subject-scoped, known member", "decrypt"): lambda: vault.decrypt(
                    next(which), context=context
                ),
                ("bucket-scoped", "encrypt"): lambda: vault.encrypt(
                    text, domain="chats", context=context
                ),
                ("bucket-scoped", "decrypt"): lambda: vault.decrypt(b_blob, context=context),
            }
            named = {f"{s}\0{o}": fn for (s, o), fn in ops.items()}
            numbers = {name: calibrate(fn, target) for name, fn in named.items()}
            for name in named:  # a round goes through every known member at least once
                if name.startswith("subject-scoped"):
                    numbers[name] = max(numbers[name], known)
            for blob in blobs:  # warm: each member's key cached (and checked) just before
                vault.decrypt(blob, context=context)
            samples = interleaved(named, number=numbers, rounds=rounds)
            for subject, op in ops:
                role: Role = "baseline" if subject in suite.baselines else "vaultkit"
                lacks = {"raw AESGCM": _FLOOR_LACKS, "process-scoped": _PROCESS_SCOPED_LACKS}
                suite.add(
                    _result(
                        "64 B, warm",
                        op,
                        subject,
                        role,
                        samples[f"{subject}\0{op}"],
                        numbers[f"{subject}\0{op}"],
                        bytes_per_op=64,
                        lacks=lacks.get(subject, ()),
                    )
                )
            # A new member's first value: the subject key is created and stored.
            fresh = (f"new-{i}" for i in itertools.count())
            first = interleaved(
                {
                    "process-scoped": lambda: vault.encrypt(
                        text, domain="p_medical", context=context
                    ),
                    "subject-scoped, new member": lambda: vault.encrypt(
                        text, domain="medical", context=context, subject=next(fresh)
                    ),
                },
                number=new_per_round,
                rounds=rounds,
            )
            for subject, values in first.items():
                suite.add(
                    _result(
                        "64 B, first write",
                        "encrypt",
                        subject,
                        "baseline" if subject == "process-scoped" else "vaultkit",
                        values,
                        new_per_round,
                        bytes_per_op=64,
                        lacks=_PROCESS_SCOPED_LACKS if subject == "process-scoped" else (),
                    )
                )
            cold_blobs = {
                "process-scoped": [
                    vault.encrypt(text, domain="p_medical", context=context) for _ in range(cold_n)
                ],
                "subject-scoped": [
                    vault.encrypt(text, domain="medical", context=context, subject=f"c-{i}")
                    for i in range(cold_n)
                ],
            }
        counts: dict[str, dict[str, int]] = {}
        cold: dict[str, list[float]] = {}
        for name, preload in (
            ("process-scoped", False),
            ("subject-scoped", False),
            ("subject-scoped, preload", True),
        ):
            to_read = cold_blobs[name.split(",")[0]]
            for _ in range(cold_rounds):
                provider = CountingKeyProvider(inner)
                with _lifecycle_vault(url, provider) as (reader, store):
                    with _counted_queries(store.engine) as queries:
                        start = time.perf_counter()
                        # As an application reads a result set: in batches, each batch's keys
                        # preloaded first (a batch within the vault's cache_size).
                        for offset in range(0, len(to_read), _PRELOAD_BATCH):
                            batch = to_read[offset : offset + _PRELOAD_BATCH]
                            if preload:
                                ids = []
                                for blob in batch:
                                    header = wire.parse_value(blob)
                                    if header is not None:
                                        ids.append(header.dek_id)
                                reader.preload(ids)
                            for blob in batch:
                                reader.decrypt(blob, context=context)
                        cold.setdefault(name, []).append(time.perf_counter() - start)
                counts[name] = {
                    "provider_calls": sum(provider.calls.values()),
                    "key_store_queries": queries[0],
                }
        for name, seconds in cold.items():
            suite.add(
                _result(
                    f"{cold_n:,} distinct members, cold",
                    "read",
                    name,
                    "baseline" if name == "process-scoped" else "vaultkit",
                    seconds,
                    1,
                    rows_per_op=cold_n,
                    lacks=_PROCESS_SCOPED_LACKS if name == "process-scoped" else (),
                )
            )
        suite.params["cold_read_counts"] = counts
        suite.notes.append(
            "Warm figures hold while a process's distinct members fit its DEK cache "
            "(`cache_size`, default 1,000): beyond it each value of an evicted member's key costs "
            "a key-store query again; one `preload` of more keys than the cache holds gains "
            "nothing, hence the batches."
        )
        suite.notes.append(
            f"Cold read of {cold_n:,} values by a fresh vault: "
            + "; ".join(
                f"{name}: {c['provider_calls']} provider calls, {c['key_store_queries']} "
                "key-store queries"
                for name, c in counts.items()
            )
            + "."
        )
        # erase_subject against deleting the member's row (what a database alone offers).
        with _lifecycle_vault(url, CountingKeyProvider(inner)) as (vault, _store):
            for i in range(erasures):
                vault.encrypt(text, domain="medical", context=context, subject=f"e-{i}")
            erase_s = []
            for i in range(erasures):
                start = time.perf_counter()
                vault.erase_subject(f"e-{i}", reason="bench", request_id=f"bench-{i}")
                erase_s.append(time.perf_counter() - start)
        db = sqlite3.connect(Path(folder) / "app.db")
        try:
            db.execute("create table notes (member text primary key, body blob)")
            db.executemany(
                "insert into notes values (?, ?)", ((f"e-{i}", payload) for i in range(erasures))
            )
            db.commit()
            delete_s = []
            for i in range(erasures):
                start = time.perf_counter()
                db.execute("delete from notes where member = ?", (f"e-{i}",))
                db.commit()
                delete_s.append(time.perf_counter() - start)
        finally:
            db.close()
    suite.add(
        _result(
            "1 member, 1 subject-scoped domain",
            "erase",
            "DELETE of the row",
            "peer",
            delete_s,
            1,
            lacks=_DELETE_LACKS,
        )
    )
    suite.add(
        _result(
            "1 member, 1 subject-scoped domain",
            "erase",
            "vaultkit erase_subject",
            "vaultkit",
            erase_s,
            1,
        )
    )
    suite.notes.append(
        "`benchmarks/bench_lifecycle.py` measures 1 million members' key-store size, the time "
        "until a second process stops decrypting after an erasure, and `retention enforce`."
    )
    return suite


#: Every suite by name, in the order a run measures them.
SUITES: dict[str, Callable[[Options], SuiteResult]] = {
    "core": core,
    "orm": orm,
    "providers": providers,
    "rekey": rekey,
    "audiences": audiences,
    "passwords": passwords,
    "lifecycle": lifecycle,
}
