"""The export spec: a TOML allow-list of output columns and their transforms, checked eagerly.

Every key is allow-listed; an unknown key, transform or parameter is an error naming it (a typo
such as ``trasnform`` must never fall back to a default). Errors name keys, columns and
transforms, never a value from the data.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from vaultkit.errors import ConfigurationError

__all__ = [
    "DEFAULT_DOMAIN",
    "DEFAULT_K",
    "TRANSFORMS",
    "ColumnSpec",
    "ExportSpec",
    "dataset_key_name",
    "load_spec",
    "parse_spec",
]

#: The key domain whose KEK wraps the dataset keys.
DEFAULT_DOMAIN: Final = "research"
#: The k of k-anonymity when the spec gives none. A choice, not a rule: neither ENISA nor the
#: EDPB fixes a number; 10 is common for health data. Set ``k`` in the spec and justify it in the DPIA.
DEFAULT_K: Final = 10
#: The transforms a column may name.
TRANSFORMS: Final = ("pseudonym", "drop", "generalise", "date_shift", "keep", "ff1")
#: Refused outright, with the reason.
_REFUSED: Final = {
    "ff3": "FF3 is withdrawn from NIST SP 800-38G (Rev. 1, second public draft, February 2025) "
    "after published attacks; use pseudonym, or ff1",
    "ff3-1": "FF3-1 is withdrawn from NIST SP 800-38G (Rev. 1, second public draft, February "
    "2025); use pseudonym, or ff1",
    "ff3_1": "FF3-1 is withdrawn from NIST SP 800-38G (Rev. 1, second public draft, February "
    "2025); use pseudonym, or ff1",
}
_METHODS: Final = ("postal", "year", "age_band")
_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_IDENT: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_EXPORT_KEYS: Final = frozenset(
    {
        "project",
        "recipient",
        "source",
        "query",
        "member",
        "k",
        "on_small_class",
        "quasi_identifiers",
        "expires",
        "legal_basis",
        "dpia_ref",
        "link_with",
        "domain",
        "batch_size",
        "subject",
    }
)
_COMMON: Final = frozenset({"source", "transform", "decrypt"})
_PARAMS: Final[Mapping[str, frozenset[str]]] = {
    "pseudonym": frozenset(),
    "drop": frozenset(),
    "keep": frozenset(),
    "generalise": frozenset({"method", "digits", "years", "at"}),
    "date_shift": frozenset({"max_days"}),
    "ff1": frozenset(),
}
_DECRYPT_KEYS: Final = frozenset({"domain", "table", "column"})
MAX_SHIFT_DAYS: Final = 365_250  # the bound Google's DateShiftConfig allows each way
#: The date_shift bound each way when a column gives none; also the bound a dataset key is made
#: with by an export that shifts no date.
DEFAULT_MAX_DAYS: Final = 30


@dataclass(frozen=True, slots=True)
class ColumnSpec:
    """One output column: where it comes from and what is done to it."""

    name: str
    source: str
    transform: str
    method: str | None = None  # generalise: postal, year, age_band
    digits: int | None = None  # generalise postal: leading digits kept
    years: int | None = None  # generalise age_band: band width
    at: dt.date | None = None  # generalise age_band: the date ages are counted at
    max_days: int | None = None  # date_shift: the bound each way
    decrypt: tuple[str, str, str] | None = None  # (domain, table, column) of an encrypted source

    @property
    def params(self) -> dict[str, object]:
        """The transform's parameters as the manifest lists them (no key, no value)."""
        out: dict[str, object] = {}
        for key in ("method", "digits", "years", "max_days"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.at is not None:
            out["at"] = self.at.isoformat()
        if self.decrypt is not None:
            out["decrypt"] = ".".join(self.decrypt)
        return out


@dataclass(frozen=True, slots=True)
class ExportSpec:
    """A parsed and checked export spec (see docs/exports.md)."""

    project: str
    recipient: str
    member: str
    columns: tuple[ColumnSpec, ...]
    quasi_identifiers: tuple[str, ...]
    k: int = DEFAULT_K
    on_small_class: str = "refuse"
    source: str | None = None
    query: str | None = None
    expires: dt.date | None = None
    legal_basis: str | None = None
    dpia_ref: str | None = None
    link_with: tuple[str, ...] = ()
    domain: str = DEFAULT_DOMAIN
    batch_size: int = 65_536
    subject: str | None = None
    digest: str = field(default="", compare=False)

    @property
    def output(self) -> tuple[ColumnSpec, ...]:
        """The columns written (every column but those dropped)."""
        return tuple(c for c in self.columns if c.transform != "drop")

    @property
    def key_project(self) -> str:
        """The project whose dataset key the pseudonyms use: the linked one, else this one."""
        return self.link_with[0] if self.link_with else self.project

    @property
    def max_days(self) -> int:
        """The date-shift bound of this export: its date_shift columns' one bound, else the
        default. The dataset key records the bound it was made with; another is refused."""
        bounds = {
            c.max_days or DEFAULT_MAX_DAYS for c in self.output if c.transform == "date_shift"
        }
        return bounds.pop() if bounds else DEFAULT_MAX_DAYS

    @property
    def subject_column(self) -> str | None:
        """The source column holding the vault's subject (member) id, whose erasures leave the
        member out: ``[export] subject``, else the member column when a pseudonym column (not
        decrypted) takes it as its source; ``None`` when neither says so."""
        if self.subject is not None:
            return self.subject
        for c in self.output:
            if c.transform == "pseudonym" and c.decrypt is None and c.source == self.member:
                return self.member
        return None

    def source_columns(self) -> tuple[str, ...]:
        """The source columns read (the member column first), each once."""
        names = [self.member, *(c.source for c in self.output)]
        return tuple(dict.fromkeys(names))


def dataset_key_name(project: str, recipient: str) -> str:
    """The key-store name of the dataset key of (project, recipient)."""
    return f"dataset:{project}/{recipient}@v1"


def load_spec(path: str | os.PathLike[str]) -> ExportSpec:
    """Read and check a spec file.

    Raises:
        ConfigurationError: the file cannot be read, is not TOML, or the spec is not valid.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigurationError(f"cannot read export spec {path}: {exc.strerror}") from None
    return parse_spec(data)


def parse_spec(data: bytes | str) -> ExportSpec:
    """Parse and check a spec given as TOML text (its SHA-256 is the manifest's spec hash).

    Raises:
        ConfigurationError: the spec is not valid; the message names the key or column.
    """
    raw = data.encode() if isinstance(data, str) else data
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigurationError(f"export spec is not valid TOML: {exc}") from None
    unknown = sorted(set(doc) - {"export", "columns"})
    if unknown:
        raise ConfigurationError(f"export spec: unknown table(s) {', '.join(unknown)}")
    head = _table(doc.get("export"), "[export]")
    _only(head, _EXPORT_KEYS, "[export]")
    project = _name(head, "project")
    recipient = _name(head, "recipient")
    source = _opt_str(head, "source", "[export]")
    query = _opt_str(head, "query", "[export]")
    if (source is None) == (query is None):
        raise ConfigurationError("export spec: [export] needs exactly one of source and query")
    if source is not None and not _is_table_name(source):
        raise ConfigurationError("export spec: [export] source must be a table name")
    if query is not None and not query.lstrip().lower().startswith(("select", "with")):
        raise ConfigurationError("export spec: [export] query must be a SELECT statement")
    member = _ident(head, "member", "[export]")
    k = head.get("k", DEFAULT_K)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 1_000_000:
        raise ConfigurationError("export spec: [export] k must be an integer from 1")
    on_small = head.get("on_small_class", "refuse")
    if on_small not in ("refuse", "suppress"):
        raise ConfigurationError(
            "export spec: [export] on_small_class must be 'refuse' or 'suppress'"
        )
    batch = head.get("batch_size", 65_536)
    if isinstance(batch, bool) or not isinstance(batch, int) or not 1 <= batch <= 10_000_000:
        raise ConfigurationError("export spec: [export] batch_size must be a positive integer")
    link = head.get("link_with", [])
    if isinstance(link, str):
        link = [link]
    if not isinstance(link, list) or not all(isinstance(x, str) for x in link):
        raise ConfigurationError("export spec: [export] link_with must be a list of project names")
    for other in link:
        if not _NAME.fullmatch(other):
            raise ConfigurationError(f"export spec: link_with names no valid project: {other!r}")
    if len(link) > 1:
        raise ConfigurationError(
            "export spec: link_with names at most one project (datasets that link share that "
            "project's key; link the others to the same project)"
        )
    if project in link:
        raise ConfigurationError("export spec: a project cannot link_with itself")
    domain = head.get("domain", DEFAULT_DOMAIN)
    if not isinstance(domain, str) or not _NAME.fullmatch(domain):
        raise ConfigurationError("export spec: [export] domain must be a domain name")
    expires = head.get("expires")
    if expires is not None and not isinstance(expires, dt.date):
        raise ConfigurationError("export spec: [export] expires must be a TOML date (2027-12-31)")
    if isinstance(expires, dt.datetime):
        expires = expires.date()
    subject = None
    if "subject" in head:
        subject = _ident(head, "subject", "[export]")
    legal_basis = _opt_str(head, "legal_basis", "[export]")
    dpia_ref = _opt_str(head, "dpia_ref", "[export]")

    columns_raw = _table(doc.get("columns"), "[columns]")
    if not columns_raw:
        raise ConfigurationError("export spec: no [columns.<name>]: the export names no column")
    columns = tuple(_column(name, spec) for name, spec in columns_raw.items())
    out_names = {c.name for c in columns if c.transform != "drop"}
    if not out_names:
        raise ConfigurationError("export spec: every column is dropped")
    qis = head.get("quasi_identifiers", [])
    if not isinstance(qis, list) or not all(isinstance(x, str) for x in qis):
        raise ConfigurationError("export spec: [export] quasi_identifiers must be a list of names")
    missing = [q for q in qis if q not in out_names]
    if missing:
        raise ConfigurationError(
            "export spec: quasi_identifiers name no output column: " + ", ".join(missing)
        )
    if len(set(qis)) != len(qis):
        raise ConfigurationError("export spec: quasi_identifiers repeat a column")
    for c in columns:
        if c.name in qis and c.transform in ("pseudonym", "ff1"):
            raise ConfigurationError(
                f"export spec: quasi-identifier {c.name} is a {c.transform}: a unique value per "
                "member makes every class size 1"
            )
    _check_linkage(columns, qis)
    return ExportSpec(
        project=project,
        recipient=recipient,
        member=member,
        columns=columns,
        quasi_identifiers=tuple(qis),
        k=k,
        on_small_class=on_small,
        source=source,
        query=query,
        expires=expires,
        legal_basis=legal_basis,
        dpia_ref=dpia_ref,
        link_with=tuple(link),
        domain=domain,
        batch_size=batch,
        subject=subject,
        digest=hashlib.sha256(raw).hexdigest(),
    )


def _check_linkage(columns: tuple[ColumnSpec, ...], qis: list[str]) -> None:
    """Refuse the column combinations that undo a transform's protection.

    A generalised column is a quasi-identifier by what it is for: left out of the list it would
    escape the k check. A date-shifted source also written kept or generalised tells the
    recipient each member's shift (kept minus shifted, or the days its true year or age allows),
    and with it every shifted date of theirs. Shifts are keyed per member and bound, so one
    export takes one bound: two would shift one member's dates by two amounts (intervals lost,
    their difference leaked).
    """
    written = [c for c in columns if c.transform != "drop"]
    loose = [c.name for c in written if c.transform == "generalise" and c.name not in qis]
    if loose:
        raise ConfigurationError(
            "export spec: generalised column(s) missing from quasi_identifiers: "
            + ", ".join(loose)
            + " (a generalised column is a quasi-identifier; the k check must count it)"
        )
    shifted = [c for c in written if c.transform == "date_shift"]
    bounds = sorted({c.max_days or DEFAULT_MAX_DAYS for c in shifted})
    if len(bounds) > 1:
        raise ConfigurationError(
            "export spec: date_shift columns of one export take one max_days (given: "
            + ", ".join(str(b) for b in bounds)
            + "); a member's dates must move by one amount"
        )
    sources = {c.source for c in shifted}
    for c in written:
        if c.source in sources and c.transform in ("keep", "generalise", "ff1"):
            raise ConfigurationError(
                f"export spec: [columns.{c.name}] writes source {c.source} ({c.transform}) "
                "that another column date-shifts: the recipient would recover each member's "
                "shift"
            )


def _column(name: str, raw: object) -> ColumnSpec:
    where = f"[columns.{name}]"
    if not _IDENT.fullmatch(name):
        raise ConfigurationError(f"export spec: output column name {name!r} is not an identifier")
    spec = _table(raw, where)
    transform = spec.get("transform")
    if not isinstance(transform, str):
        raise ConfigurationError(f"export spec: {where} needs a transform")
    if transform.lower() in _REFUSED:
        raise ConfigurationError(
            f"export spec: {where}: {transform} refused: {_REFUSED[transform.lower()]}"
        )
    if transform not in _PARAMS:
        raise ConfigurationError(
            f"export spec: {where}: unknown transform {transform!r} "
            f"(one of {', '.join(TRANSFORMS)})"
        )
    _only(spec, _COMMON | _PARAMS[transform], where)
    source = spec.get("source", name)
    if not isinstance(source, str) or not _IDENT.fullmatch(source):
        raise ConfigurationError(f"export spec: {where} source must be a column name")
    decrypt = None
    if "decrypt" in spec:
        d = _table(spec["decrypt"], f"{where} decrypt")
        _only(d, _DECRYPT_KEYS, f"{where} decrypt")
        parts = []
        for key in ("domain", "table", "column"):
            value = d.get(key)
            if not isinstance(value, str) or not value:
                raise ConfigurationError(f"export spec: {where} decrypt needs {key}")
            parts.append(value)
        decrypt = (parts[0], parts[1], parts[2])
    method: str | None = None
    digits = years = max_days = None
    at = None
    if transform == "generalise":
        raw_method = spec.get("method")
        if not isinstance(raw_method, str) or raw_method not in _METHODS:
            raise ConfigurationError(
                f"export spec: {where} generalise needs method = one of {', '.join(_METHODS)}"
            )
        method = raw_method
        allowed = {"postal": {"digits"}, "year": set(), "age_band": {"years", "at"}}[method]
        extra = sorted(({"digits", "years", "at"} & set(spec)) - allowed)
        if extra:
            raise ConfigurationError(
                f"export spec: {where} generalise {method} takes no {', '.join(extra)}"
            )
        if method == "postal":
            digits = _int(spec, "digits", where, default=2, low=0, high=10)
        if method == "age_band":
            years = _int(spec, "years", where, default=5, low=1, high=150)
            raw_at = spec.get("at")
            if raw_at is not None and not isinstance(raw_at, dt.date):
                raise ConfigurationError(f"export spec: {where} at must be a TOML date")
            at = raw_at.date() if isinstance(raw_at, dt.datetime) else raw_at
    if transform == "date_shift":
        max_days = _int(
            spec, "max_days", where, default=DEFAULT_MAX_DAYS, low=1, high=MAX_SHIFT_DAYS
        )
    return ColumnSpec(
        name=name,
        source=source,
        transform=transform,
        method=method,
        digits=digits,
        years=years,
        at=at,
        max_days=max_days,
        decrypt=decrypt,
    )


def _table(value: object, where: str) -> dict[str, object]:
    if value is None:
        raise ConfigurationError(f"export spec: {where} is missing")
    if not isinstance(value, dict):
        raise ConfigurationError(f"export spec: {where} must be a table")
    return value


def _only(table: Mapping[str, object], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ConfigurationError(f"export spec: {where}: unknown key(s) {', '.join(unknown)}")


def _name(table: Mapping[str, object], key: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise ConfigurationError(
            f"export spec: [export] {key} is required: letters, digits, '.', '_', '-' (max 64)"
        )
    return value


def _ident(table: Mapping[str, object], key: str, where: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not _IDENT.fullmatch(value):
        raise ConfigurationError(f"export spec: {where} {key} is required: a column name")
    return value


def _opt_str(table: Mapping[str, object], key: str, where: str) -> str | None:
    value = table.get(key)
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ConfigurationError(f"export spec: {where} {key} must be a non-empty string")
    return value


def _int(
    table: Mapping[str, object], key: str, where: str, *, default: int, low: int, high: int
) -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigurationError(
            f"export spec: {where} {key} must be an integer from {low} to {high}"
        )
    return value


def _is_table_name(text: str) -> bool:
    parts = text.split(".")
    return 1 <= len(parts) <= 2 and all(_IDENT.fullmatch(p) for p in parts)
