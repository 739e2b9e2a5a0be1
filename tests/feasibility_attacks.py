"""The attacks a feasibility answer must resist (used by the unit and integration tests): exact recovery of a
suppressed count from the published ones, by linear algebra and by plain differences."""

from __future__ import annotations

import numpy as np


def published(ans: dict) -> list[int]:
    vals = [v for p in ans["bases"].values() for v in p.values()] + list(ans["platforms"].values()) + [ans["network"]]
    return [v for v in vals if v is not None]


def recoverable(ans: dict, per_base: dict) -> list[str]:
    """The suppressed base counts an attacker can solve for exactly in the additive worst case (no overlap: every
    published platform count is the sum of its bases, the network count the sum of the platforms), by linear
    algebra independent of the module's own check: unknown i is determined iff e_i lies in the row space."""
    unknowns = [(p, b) for p, bs in ans["bases"].items() for b, v in bs.items() if v is None]
    if not unknowns:
        return []
    idx = {u: i for i, u in enumerate(unknowns)}
    rows = []
    for p, v in ans["platforms"].items():
        if v is not None:
            rows.append([1.0 if u[0] == p else 0.0 for u in unknowns])
    if ans["network"] is not None:
        rows.append([1.0] * len(unknowns))
    a = np.array(rows) if rows else np.zeros((0, len(unknowns)))
    out = []
    for u, i in idx.items():
        e = np.zeros(len(unknowns))
        e[i] = 1.0
        if len(a) and np.linalg.matrix_rank(np.vstack([a, e])) == np.linalg.matrix_rank(a):
            out.append(f"{u[0]}/{u[1]}")
    for p, v in ans["platforms"].items():
        if v is None and len(a):
            f = np.array([1.0 if u[0] == p else 0.0 for u in unknowns])
            if f.any() and np.linalg.matrix_rank(np.vstack([a, f])) == np.linalg.matrix_rank(a):
                out.append(p)
    return out


def differences_hit(ans: dict, per_base: dict, per_platform: dict, network: int) -> list[str]:
    """The plain attacks: a published total minus the published counts under it equals a suppressed count."""
    hits = []
    for p, tot in ans["platforms"].items():
        if tot is None:
            continue
        pub = {b: v for b, v in ans["bases"].get(p, {}).items() if v is not None}
        hidden = [b for b, v in ans["bases"].get(p, {}).items() if v is None]
        if len(hidden) == 1 and tot - sum(pub.values()) == per_base[(p, hidden[0])]:
            hits.append(f"{p}/{hidden[0]}")
    if ans["network"] is not None:
        hidden = [p for p, v in ans["platforms"].items() if v is None]
        pub = sum(v for v in ans["platforms"].values() if v is not None)
        if len(hidden) == 1 and ans["network"] - pub == per_platform[hidden[0]]:
            hits.append(hidden[0])
    return hits
