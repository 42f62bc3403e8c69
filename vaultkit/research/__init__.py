"""Pseudonymised research exports: an allow-list spec, keyed transforms, a k check, Parquet.

A spec (TOML) names every output column and its transform; anything not named is not read.
Pseudonyms and date shifts are keyed by a dataset key per project and recipient, a random key
wrapped by the research domain's KEK in the key store (:meth:`vaultkit.Vault.dataset_key`),
never stored with the data. Two projects' exports cannot be linked unless a spec says
``link_with``; :func:`destroy_key` makes an export unlinkable for good. See docs/exports.md.

.. versionadded:: 0.4.0
"""

from vaultkit.research._export import (
    MANIFEST_KEY,
    ExportReport,
    Withdrawal,
    destroy_key,
    export,
    withdraw,
)
from vaultkit.research._spec import (
    DEFAULT_DOMAIN,
    DEFAULT_K,
    TRANSFORMS,
    ColumnSpec,
    ExportSpec,
    dataset_key_name,
    load_spec,
    parse_spec,
)
from vaultkit.research._transforms import FF1_MIN_DOMAIN, PSEUDONYM_BITS, pseudonym

__all__ = [
    "DEFAULT_DOMAIN",
    "DEFAULT_K",
    "FF1_MIN_DOMAIN",
    "MANIFEST_KEY",
    "PSEUDONYM_BITS",
    "TRANSFORMS",
    "ColumnSpec",
    "ExportReport",
    "ExportSpec",
    "Withdrawal",
    "dataset_key_name",
    "destroy_key",
    "export",
    "load_spec",
    "parse_spec",
    "pseudonym",
    "withdraw",
]
