"""What is particular to each real provider, beyond the conformance suite."""

from __future__ import annotations

import os
import secrets
from typing import Any

import pytest

from tests._servers import Server, SoftHSM
from vaultkit.errors import ConfigurationError, DomainError, KeyProviderError

CONTEXT = b"specific-context"


@pytest.mark.openbao
def test_transit_min_decryption_version_is_respected(openbao: Server) -> None:
    """After disable_below(2): v1 is neither offered nor unwrapped, with an error that says why."""
    from vaultkit.keys.transit import VaultTransitKeyProvider

    provider = VaultTransitKeyProvider(
        openbao.url, token=openbao.token, key_prefix=f"vk{secrets.token_hex(4)}-", create_keys=True
    )
    v1 = provider.primary("medical")
    dek = os.urandom(32)
    old = provider.wrap(v1, dek, context=CONTEXT)
    v2 = provider.rotate("medical")
    moved = provider.rewrap(v1, v2, old, context=CONTEXT)
    assert moved.startswith(b"vault:v2:") and provider.unwrap(v2, moved, context=CONTEXT) == dek
    provider.disable_below("medical", 2)
    assert [r.version for r in provider.versions("medical")] == [2]
    with pytest.raises(KeyProviderError, match=r"min_decryption_version|disallowed") as failure:
        provider.unwrap(v1, old, context=CONTEXT)
    assert dek.hex() not in str(failure.value)


@pytest.mark.openbao
def test_transit_refuses_a_key_that_is_not_derived(openbao: Server) -> None:
    """A transit key without derivation cannot bind a DEK to its context: refused at start."""
    import hvac

    from vaultkit.keys.transit import VaultTransitKeyProvider

    prefix = f"vk{secrets.token_hex(4)}-"
    hvac.Client(url=openbao.url, token=openbao.token).secrets.transit.create_key(
        f"{prefix}medical", key_type="aes256-gcm96"
    )
    provider = VaultTransitKeyProvider(openbao.url, token=openbao.token, key_prefix=prefix)
    with pytest.raises(ConfigurationError, match="not derived"):
        provider.primary("medical")
    missing = VaultTransitKeyProvider(openbao.url, token=openbao.token, key_prefix="none-")
    with pytest.raises(DomainError, match="does not exist"):
        missing.primary("medical")


@pytest.mark.openbao
def test_transit_wrong_token_says_check_the_token(openbao: Server) -> None:
    from vaultkit.keys.transit import VaultTransitKeyProvider

    wrong = secrets.token_hex(16)
    provider = VaultTransitKeyProvider(openbao.url, token=wrong)
    with pytest.raises(KeyProviderError, match="check the token") as failure:
        provider.primary("medical")
    assert wrong not in str(failure.value) and openbao.token not in str(failure.value)


@pytest.mark.pkcs11
def test_pkcs11_keys_are_sensitive_and_not_extractable(softhsm: SoftHSM) -> None:
    """The KEK objects cannot be read out of the token; a wrong PIN is refused without echo."""
    import PyKCS11

    from vaultkit.keys.pkcs11 import PKCS11KeyProvider

    prefix = f"vk{secrets.token_hex(3)}:"
    provider = PKCS11KeyProvider(
        softhsm.library, token_label=softhsm.token_label, pin=softhsm.pin, label_prefix=prefix
    )
    ref = provider.primary("medical")

    def attributes(session: Any) -> list[Any]:
        handle = session.findObjects([(PyKCS11.CKA_LABEL, ref.key_id)])[0]
        return list(
            session.getAttributeValue(
                handle,
                [
                    PyKCS11.CKA_SENSITIVE,
                    PyKCS11.CKA_EXTRACTABLE,
                    PyKCS11.CKA_TOKEN,
                    PyKCS11.CKA_VALUE,
                ],
            )
        )

    sensitive, extractable, on_token, value = provider._do("inspecting", attributes)
    assert (sensitive, extractable, on_token) == (True, False, True)
    assert not value  # the token does not give the key value out
    provider.close()
    wrong_pin = secrets.token_hex(6)
    with pytest.raises(KeyProviderError, match="check the PIN") as failure:
        PKCS11KeyProvider(
            softhsm.library, token_label=softhsm.token_label, pin=wrong_pin, label_prefix=prefix
        ).primary("medical")
    assert wrong_pin not in str(failure.value) and softhsm.pin not in str(failure.value)
    with pytest.raises(KeyProviderError, match="check the path"):
        PKCS11KeyProvider("/nonexistent/libpkcs11.so", token_label="x", pin="1234")


@pytest.mark.pkcs11
def test_pkcs11_wrong_pin_is_refused_while_another_provider_is_logged_in(softhsm: SoftHSM) -> None:
    """PKCS#11 logins are per process and token: a second provider with a wrong PIN is refused
    although the token is already logged in, and the first provider goes on working."""
    from vaultkit.keys.pkcs11 import PKCS11KeyProvider

    prefix = f"vk{secrets.token_hex(3)}:"
    good = PKCS11KeyProvider(
        softhsm.library, token_label=softhsm.token_label, pin=softhsm.pin, label_prefix=prefix
    )
    ref = good.primary("medical")
    wrong_pin = secrets.token_hex(6)
    wrong = PKCS11KeyProvider(
        softhsm.library, token_label=softhsm.token_label, pin=wrong_pin, label_prefix=prefix
    )
    with pytest.raises(KeyProviderError, match="check the PIN") as failure:
        wrong.primary("medical")
    assert wrong_pin not in str(failure.value) and softhsm.pin not in str(failure.value)
    with pytest.raises(KeyProviderError, match="check the PIN"):
        wrong.wrap(ref, b"k" * 32, context=CONTEXT)
    dek = os.urandom(32)
    assert good.unwrap(ref, good.wrap(ref, dek, context=CONTEXT), context=CONTEXT) == dek
    right = PKCS11KeyProvider(
        softhsm.library, token_label=softhsm.token_label, pin=softhsm.pin, label_prefix=prefix
    )
    assert right.unwrap(ref, good.wrap(ref, dek, context=CONTEXT), context=CONTEXT) == dek
    good.close()
    right.close()


@pytest.mark.pkcs11
def test_pkcs11_pin_is_in_no_frame_of_a_construction_error(softhsm: SoftHSM) -> None:
    """A provider that cannot load its module, or logs in with a wrong PIN, raises from frames
    whose locals (and the provider's vars()) hold no PIN."""
    from tests.unit.test_leaks import frame_leaks, object_leaks, raised_by
    from vaultkit.keys.pkcs11 import PKCS11KeyProvider

    pin = secrets.token_hex(8)
    planted: dict[str, bytes | str] = {"PIN": pin, "token PIN": softhsm.pin}
    failed = raised_by(PKCS11KeyProvider, "/nonexistent/libpkcs11.so", token_label="x", pin=pin)
    assert isinstance(failed, KeyProviderError)
    assert frame_leaks(failed, planted) == []
    provider = PKCS11KeyProvider(softhsm.library, token_label=softhsm.token_label, pin=pin)
    assert object_leaks(provider, planted) == []
    failed = raised_by(provider.primary, "medical")
    assert isinstance(failed, KeyProviderError)
    assert frame_leaks(failed, planted) == []


def _pkcs11(softhsm: SoftHSM, prefix: str | None = None) -> Any:
    from vaultkit.keys.pkcs11 import PKCS11KeyProvider

    return PKCS11KeyProvider(
        softhsm.library,
        token_label=softhsm.token_label,
        pin=softhsm.pin,
        label_prefix=prefix or f"vk{secrets.token_hex(4)}:",
    )


@pytest.mark.pkcs11
def test_pkcs11_wrapped_dek_layout_is_unchanged(softhsm: SoftHSM) -> None:
    """A wrapped DEK is ``01 || IV (12) || GCM ciphertext and tag (48)``, byte for byte as before
    the provider used the shared layout: one framed by hand with the token's own AES-GCM unwraps,
    and one the provider wraps opens by hand the same way."""
    provider = _pkcs11(softhsm)
    pk = provider._pk
    ref = provider.primary("medical")
    handle = provider._handle(ref)
    dek, iv = os.urandom(32), os.urandom(12)
    sealed = provider._do(
        "test", lambda s: bytes(s.encrypt(handle, dek, pk.AES_GCM_Mechanism(iv, CONTEXT, 128)))
    )
    assert len(sealed) == 48
    assert provider.unwrap(ref, b"\x01" + iv + sealed, context=CONTEXT) == dek
    wrapped = provider.wrap(ref, dek, context=CONTEXT)
    assert len(wrapped) == 61 and wrapped[:1] == b"\x01"
    opened = provider._do(
        "test",
        lambda s: bytes(
            s.decrypt(handle, wrapped[13:], pk.AES_GCM_Mechanism(wrapped[1:13], CONTEXT, 128))
        ),
    )
    assert opened == dek
    for bad in (b"\x02" + wrapped[1:], wrapped[:-1]):
        with pytest.raises(KeyProviderError, match="malformed"):
            provider.unwrap(ref, bad, context=CONTEXT)
    provider.close()


def _pkcs11_in_child(provider: Any, ref: Any, wrapped: bytes, dek: bytes, out: Any) -> None:
    try:
        parent = provider._token.current()
        result = provider.unwrap(ref, wrapped, context=CONTEXT) == dek
        out.put((parent is None, result, provider.wrap(ref, dek, context=CONTEXT)))
    except Exception as exc:  # reported to the parent, which fails the test
        out.put((False, False, type(exc).__name__.encode()))


@pytest.mark.pkcs11
@pytest.mark.parametrize("parent", ["session-open", "closed", "never-opened"])
def test_pkcs11_a_forked_child_opens_its_own_session(softhsm: SoftHSM, parent: str) -> None:
    """After fork the child loads the module and logs in on its own (whether the parent's
    provider has a session, closed it, or never opened one); parent and child keep working."""
    import multiprocessing

    prefix = f"vk{secrets.token_hex(4)}:"
    first = _pkcs11(softhsm, prefix)
    ref = first.primary("medical")
    dek = os.urandom(32)
    wrapped = first.wrap(ref, dek, context=CONTEXT)
    provider = first if parent != "never-opened" else _pkcs11(softhsm, prefix)
    if parent == "closed":
        provider.close()
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    child = context.Process(target=_pkcs11_in_child, args=(provider, ref, wrapped, dek, out))
    child.start()
    fresh, unwrapped, from_child = out.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0
    assert fresh and unwrapped
    assert provider.unwrap(ref, from_child, context=CONTEXT) == dek
    assert provider.unwrap(ref, wrapped, context=CONTEXT) == dek
    provider.close()
    first.close()


@pytest.mark.aws
def test_kms_binds_the_domain_in_the_encryption_context(aws_emulator: Server) -> None:
    """The wrapped DEK carries the domain in its encryption context (what IAM conditions use);
    rotation moves the alias; the current version cannot be disabled."""
    import base64

    import boto3

    from vaultkit.keys.aws import AWSKMSKeyProvider

    prefix = f"alias/vk{secrets.token_hex(4)}-"
    provider = AWSKMSKeyProvider(
        region="eu-west-1", endpoint_url=aws_emulator.url, alias_prefix=prefix, create_keys=True
    )
    ref = provider.primary("medical")
    dek, wrapped = provider.generate_data_key(ref, context=CONTEXT)
    kms = boto3.client("kms", region_name="eu-west-1", endpoint_url=aws_emulator.url)
    wrap = base64.b64encode(CONTEXT).decode()
    plain = kms.decrypt(
        CiphertextBlob=wrapped,
        EncryptionContext={"vaultkit:domain": "medical", "vaultkit:wrap": wrap},
    )["Plaintext"]
    assert plain == dek
    with pytest.raises(kms.exceptions.InvalidCiphertextException):
        kms.decrypt(
            CiphertextBlob=wrapped,
            EncryptionContext={"vaultkit:domain": "identity", "vaultkit:wrap": wrap},
        )
    v2 = provider.rotate("medical")
    aliases = {a["AliasName"]: a["TargetKeyId"] for a in kms.list_aliases()["Aliases"]}
    assert v2.key_id.endswith(aliases[f"{prefix}medical"])
    assert ref.key_id.endswith(aliases[f"{prefix}medical-v1"])
    with pytest.raises(ConfigurationError, match="current KEK"):
        provider.disable("medical", 2)
    provider.disable("medical", 1)
    assert kms.describe_key(KeyId=ref.key_id)["KeyMetadata"]["KeyState"] == "Disabled"
