"""The module-level entry point of an export, for callers holding the models' metadata."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vaultkit.subjects._export import DEFAULT_PURPOSE, ExportKind, SubjectExport
from vaultkit.subjects._map import SubjectMap, collect

if TYPE_CHECKING:
    from vaultkit import Subject, Vault

__all__ = ["export_subject"]


def export_subject(
    vault: Vault,
    session: Any,
    subject: Subject,
    kind: ExportKind = "access",
    *,
    subjects: SubjectMap | Any,
    purpose: str = DEFAULT_PURPOSE,
    request_id: str | None = None,
    split_restricted: bool = False,
) -> SubjectExport:
    """:meth:`vaultkit.Vault.export_subject`, taking the map or what :func:`collect` takes.

    Prefer building the map once at start-up (:func:`collect`), so that a gap in the
    annotations fails the start, not the first request.

    .. versionadded:: 0.3.0
    """
    subject_map = subjects if isinstance(subjects, SubjectMap) else collect(subjects)
    return vault.export_subject(
        session,
        subject,
        kind,
        subjects=subject_map,
        purpose=purpose,
        request_id=request_id,
        split_restricted=split_restricted,
    )
