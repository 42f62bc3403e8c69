"""Data-subject rights over the models: the subject map, and access and portability exports.

Annotate the models (``Column.info`` and ``__table_args__``), build the map once at start-up,
and export a member's data::

    from vaultkit.subjects import collect, not_personal, personal, subject_link

    class Member(Base):
        __tablename__ = "members"
        __table_args__ = {"info": subject_link(column="id")}
        id = mapped_column(String(20), primary_key=True)
        email = mapped_column(
            Encrypted(String(320), domain="identity"),
            info=personal(category="contact", legal_basis="contract",
                          purpose="membership administration"),
        )

    subjects = collect(Base.metadata)          # ConfigurationError on any gap or ambiguity
    export = vault.export_subject(session, "m-17", kind="access", subjects=subjects)
    export.write_json("m-17.json"); export.write_html("m-17.html")

The JSON Schema of the export is package data: :func:`export_schema`. See docs/subject-rights.md.
"""

from vaultkit._requests import RequestLog, SubjectRequest
from vaultkit.subjects._annotations import (
    NotPersonal,
    Personal,
    SubjectLink,
    not_personal,
    personal,
    subject_link,
)
from vaultkit.subjects._api import export_subject
from vaultkit.subjects._export import DEFAULT_PURPOSE, SCHEMA_ID, ExportKind, SubjectExport
from vaultkit.subjects._import import ImportReport
from vaultkit.subjects._map import ExportedColumn, LinkedTable, SubjectMap, collect
from vaultkit.subjects._schema import export_schema

__all__ = [
    "DEFAULT_PURPOSE",
    "SCHEMA_ID",
    "ExportKind",
    "ExportedColumn",
    "ImportReport",
    "LinkedTable",
    "NotPersonal",
    "Personal",
    "RequestLog",
    "SubjectExport",
    "SubjectLink",
    "SubjectMap",
    "SubjectRequest",
    "collect",
    "export_schema",
    "export_subject",
    "not_personal",
    "personal",
    "subject_link",
]
