"""The published JSON Schema of an export (``vaultkit-subject-export/1``), shipped as package data."""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any, Final

__all__ = ["SCHEMA_FILE", "export_schema"]

#: The schema's file name inside the package.
SCHEMA_FILE: Final = "vaultkit-subject-export-1.schema.json"


@functools.cache
def _text() -> str:
    return resources.files("vaultkit.subjects").joinpath(SCHEMA_FILE).read_text("utf-8")


def export_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) every export validates against (a fresh copy).

    .. versionadded:: 0.3.0
    """
    schema: dict[str, Any] = json.loads(_text())
    return schema
