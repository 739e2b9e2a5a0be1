"""What zones exchange: the names and versions every publisher writes and every receiver checks.

A zone publishes files plus a manifest written last; the next zone reads only what a manifest lists.
"""

from __future__ import annotations

SCHEMA_VERSION = "OMOP CDM 5.4"
MANIFEST = "_manifest.json"
# The sealed transport token of a person row (hospital -> national, opaque to the platform).
TOKEN_COLUMN = "_transport_token"
