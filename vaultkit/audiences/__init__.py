"""Audience hashing for ad uploads (Google Customer Match, Meta Custom Audiences).

Member identifiers are normalised per platform rule, then hashed with unsalted SHA-256 on the
insurer's own machines. Such hashes are **pseudonymous personal data** under the GDPR, not anonymous
data: anyone holding a list of candidate e-mail addresses can recompute and match them.
"""

from vaultkit.audiences._csv import FIELD_ALIASES, RECORD_FIELDS, hash_csv
from vaultkit.audiences._render import (
    COLUMNS,
    RULE_VERSIONS,
    AudienceReport,
    MemberRecord,
    Platform,
    Rendered,
    hash_identifier,
    hash_records,
    render,
)
from vaultkit.audiences.normalize import Reason

__all__ = [
    "COLUMNS",
    "FIELD_ALIASES",
    "RECORD_FIELDS",
    "RULE_VERSIONS",
    "AudienceReport",
    "MemberRecord",
    "Platform",
    "Reason",
    "Rendered",
    "hash_csv",
    "hash_identifier",
    "hash_records",
    "render",
]
