"""Disclosure control of a feasibility answer: per-base, per-platform and network-wide patient counts.

The counts are deduplicated (a patient seen at two bases counts once for the platform, a patient of two platforms
once network-wide), so a platform's count is not the sum of its bases' counts. The suppression pattern is chosen
on the **additive** table — cells = per-base counts, a platform's total = the sum of its bases, the grand total =
the sum of everything — which is the attacker's best case (no overlap: every published total is an exact linear
equation over the cells), with `catalogue.stats.protected_counts`: primary suppression under k, secondary
suppression until no suppressed value follows from the published ones. The real (deduplicated) totals are then
published in the places the pattern leaves open, and a real total in [1, k-1] is suppressed as a primary cell of
the pattern too (it is forced into the additive problem, which then protects it with the rest).

With overlaps the published totals are smaller than the additive sums, so each equation the check ruled out has
one more unknown (the overlap): what the additive check proves safe stays safe.
"""

from __future__ import annotations

from collections.abc import Mapping

from eds_network.catalogue.stats import DEFAULT_K, protected_counts

NETWORK = "*"


def protect(
    per_base: Mapping[tuple[str, str], int],
    per_platform: Mapping[str, int],
    network: int,
    *,
    k: int = DEFAULT_K,
) -> dict:
    """The publishable answer:

    {"k", "bases": {platform: {base: n | None}}, "platforms": {platform: n | None}, "network": n | None,
     "suppressed": {"primary": [...], "secondary": [...]}}

    where None is a suppressed count (shown "< k" or "suppressed": a secondary suppression may hide a count >= k).
    """
    cells = {(p, b): int(n) for (p, b), n in per_base.items()}
    platforms = sorted({p for p, _ in cells} | set(per_platform))
    sums: dict[tuple, int] = {(None, None): sum(cells.values())}
    for p in platforms:
        sums[(p, None)] = sum(n for (q, _), n in cells.items() if q == p)
    real = {(p, None): int(per_platform.get(p, 0)) for p in platforms}
    real[(None, None)] = int(network)
    forced = {t for t, v in real.items() if 0 < v < k}
    # a platform with no base cell cannot be in the additive table: give it one cell standing for its bases
    for p in platforms:
        if not any(q == p for q, _ in cells):
            cells[(p, "")] = real[(p, None)]
            sums[(p, None)] = real[(p, None)]
            sums[(None, None)] += real[(p, None)]
    res = protected_counts(cells, k=k, totals=sums, suppress=forced)
    bases: dict[str, dict[str, int | None]] = {}
    for (p, b), v in res["cells"].items():
        if b:
            bases.setdefault(p, {})[b] = v
    plat = {p: (None if res["totals"][(p, None)] is None else real[(p, None)]) for p in platforms}
    net = None if res["totals"][(None, None)] is None else real[(None, None)]

    def label(key: tuple) -> str:
        p, b = key
        return "network" if p is None else (p if b is None else f"{p}/{b}")

    return {
        "k": k,
        "bases": bases,
        "platforms": plat,
        "network": net,
        "suppressed": {
            "primary": [label(x) for x in res["primary"]],
            "secondary": [label(x) for x in res["secondary"]],
        },
    }
