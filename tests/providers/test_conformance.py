"""One conformance suite, run unchanged against every key provider.

in-memory and local run in-process; PKCS#11 against a SoftHSM2 token; transit against a real
OpenBao dev server; AWS KMS against moto's server mode, an emulator (no real KMS runs here).
"""

from __future__ import annotations

import base64
import logging
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests._servers import Server, SoftHSM, free_port
from tests.unit.test_leaks import frame_leaks, object_leaks, raised_by
from vaultkit import Principal, Vault
from vaultkit.errors import KeyProviderError
from vaultkit.keys import (
    KeyProvider,
    KeyRef,
    LocalKeyProvider,
    SupportsAuditSigner,
    SupportsBatchUnwrap,
    SupportsDataKeyGeneration,
    SupportsRewrap,
    SupportsWriterPins,
)
from vaultkit.store import MemoryKeyStore
from vaultkit.testing import CountingKeyProvider, InMemoryKeyProvider

CONTEXT = b"\x00\x08identity\x00\x10" + b"k" * 16 + b"\x00\x04data"


@dataclass
class Case:
    """A provider under test, and what the suite needs to know about it."""

    name: str
    provider: Any
    disable: Callable[[str, int], None] | None
    unreachable: Callable[[], Any] | None
    secrets: list[str] = field(default_factory=list)
    key_material: list[bytes] = field(default_factory=list)


def _transit(server: Server, prefix: str, **kwargs: Any) -> Any:
    from vaultkit.keys.transit import VaultTransitKeyProvider

    return VaultTransitKeyProvider(
        server.url, token=server.token, key_prefix=prefix, create_keys=True, **kwargs
    )


def _aws(server: Server, prefix: str, **kwargs: Any) -> Any:
    from vaultkit.keys.aws import AWSKMSKeyProvider

    return AWSKMSKeyProvider(
        region="eu-west-1",
        endpoint_url=server.url,
        alias_prefix=f"alias/{prefix}",
        create_keys=True,
        **kwargs,
    )


@pytest.fixture(
    params=[
        "in-memory",
        "local",
        pytest.param("pkcs11-softhsm2", marks=pytest.mark.pkcs11),
        pytest.param("transit-openbao", marks=pytest.mark.openbao),
        pytest.param("aws-kms-emulator", marks=pytest.mark.aws),
    ]
)
def case(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Case]:
    prefix = f"vk{secrets.token_hex(4)}-"  # each test has its own keys on the shared servers
    if request.param == "in-memory":
        yield Case("in-memory", InMemoryKeyProvider(), None, None)
    elif request.param == "local":
        master = os.urandom(32)
        provider = LocalKeyProvider(tmp_path / "keyring.json", master_key=master)
        yield Case(
            "local", provider, provider.disable, None, [base64.b64encode(master).decode()], [master]
        )
    elif request.param == "pkcs11-softhsm2":
        from vaultkit.keys.pkcs11 import PKCS11KeyProvider

        hsm: SoftHSM = request.getfixturevalue("softhsm")
        provider = PKCS11KeyProvider(
            hsm.library, token_label=hsm.token_label, pin=hsm.pin, label_prefix=prefix
        )
        yield Case(
            "pkcs11",
            provider,
            provider.disable,
            lambda: PKCS11KeyProvider(hsm.library, token_label="no-such-token", pin=hsm.pin),
            [hsm.pin],
        )
        provider.close()
    elif request.param == "transit-openbao":
        server: Server = request.getfixturevalue("openbao")
        provider = _transit(server, prefix)
        yield Case(
            "transit",
            provider,
            lambda domain, version: provider.disable_below(domain, version + 1),
            lambda: _transit(
                Server(f"http://127.0.0.1:{free_port()}", server.token, None),
                prefix,
                timeout=1.0,
            ),
            [server.token],
        )
    else:
        server = request.getfixturevalue("aws_emulator")
        provider = _aws(server, prefix)
        yield Case(
            "aws",
            provider,
            provider.disable,
            lambda: _aws(
                Server(f"http://127.0.0.1:{free_port()}", "", None),
                prefix,
                max_attempts=2,
                timeout=1.0,
            ),
            [os.environ.get("AWS_SECRET_ACCESS_KEY", "testing")],
        )


def test_is_a_key_provider(case: Case) -> None:
    assert isinstance(case.provider, KeyProvider)


def test_a_counted_provider_keeps_its_capabilities(case: Case) -> None:
    """CountingKeyProvider has exactly the optional capabilities of the provider it wraps, and a
    rotation through it rewraps server-side where the provider can (no DEK unwrapped)."""
    counting = CountingKeyProvider(case.provider)
    for capability in (
        SupportsRewrap,
        SupportsBatchUnwrap,
        SupportsDataKeyGeneration,
        SupportsAuditSigner,
        SupportsWriterPins,
    ):
        assert isinstance(counting, capability) == isinstance(case.provider, capability)
    store = MemoryKeyStore()
    with (
        Vault(provider=counting, store=store, domains=["medical"], dek_max_encryptions=2) as vault,
        vault.acting_as(Principal("coach", grants={"medical"}), purpose="test"),
    ):
        blobs = [vault.encrypt(f"note {i}", domain="medical") for i in range(4)]
        before = counting.calls.copy()
        assert vault.rotate_kek("medical").rewrapped == 2
        if isinstance(case.provider, SupportsRewrap):
            assert counting.calls["rewrap"] - before["rewrap"] == 2
            assert counting.calls["unwrap"] == before["unwrap"]
        else:
            assert counting.calls["rewrap"] == 0
    with (
        Vault(provider=counting, store=store, domains=["medical"]) as fresh,
        fresh.acting_as(Principal("coach", grants={"medical"}), purpose="test"),
    ):
        assert [fresh.decrypt(b, domain="medical") for b in blobs] == [
            f"note {i}" for i in range(4)
        ]


def test_wrap_unwrap_round_trip(case: Case) -> None:
    """A DEK wrapped under the primary version unwraps to the same 32 bytes, and is not them."""
    ref = case.provider.primary("identity")
    dek = os.urandom(32)
    wrapped = case.provider.wrap(ref, dek, context=CONTEXT)
    assert dek not in wrapped
    assert case.provider.unwrap(ref, wrapped, context=CONTEXT) == dek


def test_wrong_context_or_domain_is_rejected(case: Case) -> None:
    """Another context, another domain's KEK, or a damaged wrapped key: KeyProviderError."""
    ref = case.provider.primary("identity")
    other = case.provider.primary("medical")
    dek = os.urandom(32)
    wrapped = case.provider.wrap(ref, dek, context=CONTEXT)
    for bad_ref, bad_wrapped, bad_context in (
        (ref, wrapped, CONTEXT[:-1] + b"x"),
        (other, wrapped, CONTEXT),
        (ref, wrapped[:-1] + bytes([wrapped[-1] ^ 1]), CONTEXT),
    ):
        with pytest.raises(KeyProviderError) as failure:
            case.provider.unwrap(bad_ref, bad_wrapped, context=bad_context)
        assert dek.hex() not in str(failure.value)


def test_rotation_keeps_old_deks_readable(case: Case) -> None:
    """After rotate: a new primary version; DEKs wrapped under the old one still unwrap."""
    old = case.provider.primary("identity")
    dek = os.urandom(32)
    wrapped = case.provider.wrap(old, dek, context=CONTEXT)
    new = case.provider.rotate("identity")
    assert new.version == old.version + 1 and case.provider.primary("identity") == new
    assert [r.version for r in case.provider.versions("identity")][-2:] == [
        old.version,
        new.version,
    ]
    assert case.provider.unwrap(old, wrapped, context=CONTEXT) == dek
    assert (
        case.provider.unwrap(new, case.provider.wrap(new, dek, context=CONTEXT), context=CONTEXT)
        == dek
    )


def test_vault_rotate_kek_then_disable_the_old_version(case: Case) -> None:
    """A vault on this provider: values written, KEK rotated (key rows rewrapped), the old version
    disabled, and a fresh vault (cold cache) still reads everything with one unwrap per DEK."""
    store = MemoryKeyStore()
    coach = Principal("coach", grants={"medical"})
    with (
        Vault(
            provider=case.provider,
            store=store,
            domains=["identity", "medical"],
            dek_max_encryptions=10,
        ) as vault,
        vault.acting_as(coach, purpose="test"),
    ):
        blobs = [vault.encrypt(f"note {i}", domain="medical") for i in range(25)]
        old = case.provider.primary("medical").version
        report = vault.rotate_kek("medical")
        assert report.kek_version == old + 1 and report.rewrapped == 3
    assert {r.kek_version for r in store.records(domain="medical")} == {old + 1}
    if case.disable is not None:
        case.disable("medical", old)
    counting = CountingKeyProvider(case.provider)
    with (
        Vault(provider=counting, store=store, domains=["identity", "medical"]) as fresh,
        fresh.acting_as(coach, purpose="test"),
    ):
        assert [fresh.decrypt(b, domain="medical") for b in blobs] == [
            f"note {i}" for i in range(25)
        ]
    assert counting.calls["unwrap"] == 3


def test_unreachable_provider_says_what_to_check(case: Case) -> None:
    """A provider whose server or token is not there: KeyProviderError naming what to check."""
    if case.unreachable is None:
        pytest.skip(f"{case.name} runs in-process: nothing to be unreachable")
    with pytest.raises(KeyProviderError) as failure:
        case.unreachable().primary("identity")
    text = str(failure.value)
    assert "check" in text
    for secret in case.secrets:
        assert secret not in text


def test_nothing_secret_in_errors_reprs_or_logs(
    case: Case, caplog: pytest.LogCaptureFixture
) -> None:
    """Failures and DEBUG logs never show a DEK, a PIN, a token or a master key."""
    caplog.set_level(logging.DEBUG)
    ref = case.provider.primary("identity")
    dek = os.urandom(32)
    wrapped = case.provider.wrap(ref, dek, context=CONTEXT)
    texts = [repr(case.provider), repr(ref)]
    for attempt in (
        lambda: case.provider.unwrap(ref, wrapped, context=b"other"),
        lambda: case.provider.unwrap(KeyRef("identity", "nope", 99), wrapped, context=CONTEXT),
        lambda: case.provider.unwrap(ref, wrapped[: len(wrapped) // 2], context=CONTEXT),
    ):
        with pytest.raises(KeyProviderError) as failure:
            attempt()
        texts.append(f"{failure.value!s} {failure.value!r} {failure.value.__cause__!r}")
    texts.append(caplog.text)
    blob = "\n".join(texts)
    for secret in [dek.hex(), base64.b64encode(dek).decode(), *case.secrets]:
        assert secret not in blob


def test_no_secret_in_vars_or_in_the_frames_of_an_error(case: Case) -> None:
    """What an error reporter that captures locals would ship (the provider's vars() and repr(),
    and every frame local of a failed unwrap and of an unreachable provider's error) holds no
    PIN, token, credential, master key or DEK."""
    planted: dict[str, bytes | str] = {
        f"secret {i}": s for i, s in enumerate([*case.secrets, *case.key_material])
    }
    ref = case.provider.primary("identity")
    dek = os.urandom(32)
    wrapped = case.provider.wrap(ref, dek, context=CONTEXT)
    assert object_leaks(case.provider, planted) == []
    failed = raised_by(case.provider.unwrap, ref, wrapped, context=b"other")
    assert isinstance(failed, KeyProviderError)
    assert frame_leaks(failed, {**planted, "DEK": dek}) == []
    if case.unreachable is not None:
        broken = case.unreachable()
        assert object_leaks(broken, planted) == []
        failed = raised_by(broken.primary, "identity")
        assert isinstance(failed, KeyProviderError)
        assert frame_leaks(failed, planted) == []


def test_threads_share_one_provider(case: Case) -> None:
    """8 threads wrapping and unwrapping at once all get their own DEKs back (for PKCS#11 this
    is the test that crashes a module driven from threads without a lock)."""
    ref = case.provider.primary("identity")
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(15):
                dek = os.urandom(32)
                wrapped = case.provider.wrap(ref, dek, context=CONTEXT)
                assert case.provider.unwrap(ref, wrapped, context=CONTEXT) == dek
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
