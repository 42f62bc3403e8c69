"""The subject map: the six-table model resolves, and every gap or ambiguity fails at start-up.

Each refusal names the table and column (and for two paths, both paths), so that a developer
reads what to fix; none needs a database or a vault.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa

from tests.unit.subjects import _models as m
from vaultkit.errors import ConfigurationError
from vaultkit.sqla import BlindIndexType, Encrypted
from vaultkit.subjects import collect, not_personal, personal, subject_link

P = {"category": "contact", "legal_basis": "contract", "purpose": "administration"}


def _enc(domain: str = "identity") -> Encrypted:
    return Encrypted(sa.String(100), domain=domain)


def _members(md: sa.MetaData, **info: Any) -> sa.Table:
    return sa.Table(
        "members",
        md,
        sa.Column("id", sa.String(20), primary_key=True),
        sa.Column("email", _enc(), info=personal(**P)),
        info=info or subject_link(column="id"),
    )


def test_the_six_table_model_resolves_parents_first() -> None:
    subjects = collect(m.Base.metadata)
    names = [t.name for t in subjects.tables]
    assert set(names) == {
        "members",
        "policies",
        "claims",
        "coaching_chats",
        "call_recordings",
        "newsletter_subscriptions",
    }
    assert names[0] == "members"
    assert names.index("policies") < names.index("claims")
    claims = subjects.table("claims")
    assert (claims.kind, claims.via, claims.parent, claims.parent_column) == (
        "via",
        "policy_id",
        "policies",
        "id",
    )
    assert claims.depth == 2
    # The subject-key column of claims goes with each row (an import needs it), not as a value.
    assert claims.links == ("policy_id", "member_id")
    assert [c.name for c in claims.columns] == ["status", "filed_at", "amount", "diagnosis"]
    news = subjects.table("newsletter_subscriptions")
    assert (news.kind, news.match, news.identity) == ("match", "email_index", "members.email")
    # Unannotated plain columns are listed for the DPO and never exported; blind indexes and
    # not-personal columns are not exported either.
    assert subjects.unannotated == ("members.risk_score", "members.internal_note")
    assert subjects.not_personal == {
        "members.ops_tag": "routing tag of the CRM",
        "ops_counters": "operational counters",
    }
    members = subjects.table("members")
    assert "email_index" not in [c.name for c in members.columns]
    assert "ops_tag" not in [c.name for c in members.columns]
    text = subjects.describe()
    assert (
        "claims.policy_id = policies.id, policies.member_id = members.id, "
        "members.id is the member id"
    ) in text
    assert "newsletter_subscriptions.email_index matches members.email" in text
    assert "members.risk_score" in text
    assert repr(subjects) == "SubjectMap(tables=6)"


def test_an_encrypted_column_in_an_unlinked_table_is_refused() -> None:
    md = sa.MetaData()
    _members(md)
    sa.Table("notes", md, sa.Column("id", sa.Integer, primary_key=True), sa.Column("body", _enc()))
    with pytest.raises(ConfigurationError, match=r"notes\.body is encrypted, but notes has no"):
        collect(md)


def test_not_personal_lets_an_unlinked_table_or_column_through() -> None:
    md = sa.MetaData()
    _members(md)
    sa.Table(
        "counters",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("body", _enc()),
        info=not_personal("operational counters"),
    )
    sa.Table(
        "settings",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("secret", _enc(), info=not_personal("an API token of ours")),
    )
    subjects = collect(md)
    assert [t.name for t in subjects.tables] == ["members"]
    assert set(subjects.not_personal) == {"counters", "settings.secret"}


def test_an_unannotated_encrypted_column_of_a_linked_table_is_refused() -> None:
    md = sa.MetaData()
    sa.Table(
        "members",
        md,
        sa.Column("id", sa.String(20), primary_key=True),
        sa.Column("email", _enc(), info=personal(**P)),
        sa.Column("iban", _enc()),
        info=subject_link(column="id"),
    )
    with pytest.raises(ConfigurationError, match=r"members\.iban is encrypted but not annotated"):
        collect(md)


def test_a_personal_column_in_an_unlinked_table_is_refused() -> None:
    md = sa.MetaData()
    sa.Table(
        "leads",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("phone", sa.String(20), info=personal(**P)),
    )
    with pytest.raises(ConfigurationError, match=r"leads\.phone is annotated personal\(\), but"):
        collect(md)


def test_a_personal_column_in_a_not_personal_table_is_refused() -> None:
    md = sa.MetaData()
    sa.Table(
        "leads",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("phone", sa.String(20), info=personal(**P)),
        info=not_personal("nothing here"),
    )
    with pytest.raises(ConfigurationError, match=r"leads\.phone .* marked not_personal"):
        collect(md)


@pytest.mark.parametrize(
    ("link", "message"),
    [
        (subject_link(via="nope"), r"claims: subject_link\(via='nope'\) names no column"),
        (subject_link(via="note"), r"claims\.note: .* no foreign key"),
        (subject_link(column="nope"), r"claims: subject_link\(column='nope'\) names no column"),
        (
            subject_link(match="note", identity="members.email"),
            r"claims\.note: subject_link\(match=\) names a blind-index column",
        ),
    ],
)
def test_a_link_to_an_unknown_column_is_refused(link: dict[str, Any], message: str) -> None:
    md = sa.MetaData()
    _members(md)
    sa.Table(
        "claims",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("note", sa.String(10)),
        info=link,
    )
    with pytest.raises(ConfigurationError, match=message):
        collect(md)


def test_a_link_to_an_unlinked_table_is_refused() -> None:
    md = sa.MetaData()
    _members(md)
    sa.Table("branches", md, sa.Column("id", sa.Integer, primary_key=True))
    sa.Table(
        "claims",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("branch_id", sa.ForeignKey("branches.id")),
        info=subject_link(via="branch_id"),
    )
    with pytest.raises(
        ConfigurationError, match=r"claims\.branch_id: .* branches, which is not linked"
    ):
        collect(md)


def test_a_match_against_an_unknown_identity_is_refused() -> None:
    for identity, message in (
        ("people.email", r"names table 'people', which is not in the metadata"),
        ("members.name", r"names no encrypted column of members"),
    ):
        md = sa.MetaData()
        _members(md)
        sa.Table(
            "news",
            md,
            sa.Column("id", sa.Integer, primary_key=True),
            sa.Column("email", _enc(), info=personal(**P)),
            sa.Column("email_index", BlindIndexType("email")),
            info=subject_link(match="email_index", identity=identity),
        )
        with pytest.raises(ConfigurationError, match=message):
            collect(md)


def test_a_cycle_of_links_is_refused() -> None:
    md = sa.MetaData()
    sa.Table(
        "a",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("b_id", sa.Integer, sa.ForeignKey("b.id")),
        info=subject_link(via="b_id"),
    )
    sa.Table(
        "b",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("a_id", sa.Integer, sa.ForeignKey("a.id")),
        info=subject_link(via="a_id"),
    )
    with pytest.raises(ConfigurationError, match=r"cycle: (a -> b -> a|b -> a -> b)"):
        collect(md)


def _two_paths(md: sa.MetaData, link: dict[str, Any]) -> None:
    _members(md)
    sa.Table(
        "policies",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("member_id", sa.ForeignKey("members.id")),
        info=subject_link(),
    )
    sa.Table(
        "claims",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("policy_id", sa.ForeignKey("policies.id")),
        sa.Column("member_id", sa.ForeignKey("members.id")),
        sa.Column("amount", _enc(), info=personal(**P)),
        info=link,
    )


def test_two_paths_to_a_member_are_refused_naming_both() -> None:
    md = sa.MetaData()
    _two_paths(md, subject_link())
    with pytest.raises(ConfigurationError) as caught:
        collect(md)
    assert "claims has two paths to a member" in str(caught.value)
    assert "claims.member_id -> members" in str(caught.value)
    assert "claims.policy_id -> policies" in str(caught.value)


def test_an_explicit_link_beside_another_foreign_key_path_is_refused() -> None:
    md = sa.MetaData()
    _two_paths(md, subject_link(via="policy_id"))
    with pytest.raises(ConfigurationError) as caught:
        collect(md)
    assert "claims.policy_id -> policies and claims.member_id -> members" in str(caught.value)


def test_ignore_declares_a_foreign_key_that_is_no_path() -> None:
    md = sa.MetaData()
    _two_paths(md, subject_link(via="policy_id", ignore=("member_id",)))
    assert collect(md).table("claims").parent == "policies"


def test_a_blind_index_or_a_primary_key_cannot_be_annotated() -> None:
    md = sa.MetaData()
    sa.Table(
        "members",
        md,
        sa.Column("id", sa.String(20), primary_key=True),
        sa.Column("email", _enc(), info=personal(**P)),
        sa.Column("email_index", BlindIndexType("email"), info=personal(**P)),
        info=subject_link(column="id"),
    )
    with pytest.raises(ConfigurationError, match=r"members\.email_index is a blind index"):
        collect(md)
    md = sa.MetaData()
    sa.Table(
        "members",
        md,
        sa.Column("id", sa.String(20), primary_key=True, info=personal(**P)),
        info=subject_link(column="id"),
    )
    with pytest.raises(ConfigurationError, match=r"members\.id is a primary key"):
        collect(md)


def test_a_linked_table_needs_a_primary_key() -> None:
    md = sa.MetaData()
    sa.Table(
        "members",
        md,
        sa.Column("id", sa.String(20)),
        sa.Column("email", _enc(), info=personal(**P)),
        info=subject_link(column="id"),
    )
    with pytest.raises(ConfigurationError, match="members has no primary key"):
        collect(md)


def test_the_annotations_check_their_arguments() -> None:
    with pytest.raises(ConfigurationError, match="provenance= is one of"):
        personal(provenance="guessed", **P)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="not a string"):
        personal(recipients="claims team", **P)
    with pytest.raises(ConfigurationError, match="non-empty string"):
        personal(category="", legal_basis="x", purpose="y")
    with pytest.raises(ConfigurationError, match="one of column=, via= and match="):
        subject_link(column="id", via="member_id")
    with pytest.raises(ConfigurationError, match="match= and identity= go together"):
        subject_link(match="email_index")
    with pytest.raises(ConfigurationError, match="reason"):
        not_personal("")
    annotation = personal(**P)["vaultkit.personal"]
    assert annotation.provenance == "provided"
    assert annotation.portable
    assert not personal(provenance="derived", **P)["vaultkit.personal"].portable


def test_a_member_id_column_must_be_plain() -> None:
    md = sa.MetaData()
    sa.Table(
        "members",
        md,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("member_no", _enc(), info=personal(**P)),
        info=subject_link(column="member_no"),
    )
    with pytest.raises(ConfigurationError, match=r"members\.member_no: the member-id column"):
        collect(md)
