"""The measurements behind ``vaultkit bench``: suites, machine block, report formats, comparison.

Private to the command line (``vaultkit.cli.bench`` is its only user; it imports the sqla and rekey
layers, so it lives in the top layer with the CLI); the stable interface is the JSON a run writes
(schema ``vaultkit-bench/1``, :data:`SCHEMA_ID`, published as
``vaultkit/cli/_bench/vaultkit-bench-1.schema.json``) and the command's flags, documented in
``docs/benchmarks.md``.

.. versionadded:: 0.3.0
"""

from __future__ import annotations

__all__ = ["SCHEMA_ID"]

#: The identifier every JSON run carries in its ``schema`` field.
SCHEMA_ID = "vaultkit-bench/1"
