"""Key versions and rotation: re-keying runs at the local level, retirement of old versions at the platform.

Rotation of a platform's level-1 key (`eds keys rotate --platform X`) = a new key version, then a re-keying run:

- Local level: every published table records the fingerprint of what its rows depend on besides the data
  (level-1 key version, date-shift range, birth-month and text policies) in the hospital's own database
  (`eds_local.published_state`). When the current fingerprint differs from the last published one, the next run
  extracts the whole table (every row changed before the end of the interval), not only the interval's changes,
  and marks the table `full` in its manifest. A table that fails that night stays due for a full extraction.
- Platform: a `full` table entry replaces the site's rows of that table (delete by site, then load, in the
  batch's transaction); for `person`, the base's persons not in the new set leave `person_site` and persons no
  site refers to any more are deleted. Every warehouse row carries the level-1 key version it was hashed with
  (`_key_version`); a version no row carries any more is retired (`eds_platform.key_version`) and a batch still
  carrying a retired version is rejected. While two versions are live (some members not re-keyed yet) the
  platform does not package: the same patient would appear under two level-1 pseudonyms.

The local half lives in `eds_network.local.keystate`, the platform half in `eds_network.platform.keyversions`;
this module holds what the key holder decides: which key a rotation concerns and its next version.
Nothing here reads or logs a key: versions and connection ids only.
"""

from __future__ import annotations

from eds_network.core.errors import EdsError

# Old secrets kept by the key holder until their version is retired everywhere.
RETIRED_KEYS_FILE = "keys.retired.json"


def next_version(version: str) -> str:
    """v1 -> v2, v9 -> v10; any other scheme is refused rather than guessed."""
    import re

    m = re.fullmatch(r"v(\d+)", version)
    if not m:
        raise EdsError(f"cannot derive the next key version from {version!r} (expected v<number>)")
    return f"v{int(m.group(1)) + 1}"


ROTATABLE = ("platform level-1 keys (--platform ID)", "the national key (--national)")


def key_connection_for(network, *, platform: str | None = None, national: bool = False) -> str:
    if platform and national:
        raise EdsError("rotate one key at a time: --platform or --national")
    if platform:
        return network.platform(platform).key_connection_id
    if national:
        return network.national.key_connection_id
    raise EdsError(f"which key? rotatable: {', '.join(ROTATABLE)}")
