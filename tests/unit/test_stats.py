"""Small-cell protection (`eds_network.catalogue.stats.protected_counts`): primary and secondary suppression.

Property tests (hypothesis) on random 1-D and 2-D tables, with the marginal totals or a random subset of
them published, and a random k; plus an independent disclosure audit (numpy rank) and worked examples.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eds_network.catalogue.stats import is_safe, marginal_totals, protected_counts


@st.composite
def tables(draw):
    dims = draw(st.integers(1, 2))
    shape = [draw(st.integers(1, 4)) for _ in range(dims)]
    small = st.integers(0, 12)
    value = st.one_of(small, st.integers(0, 60))
    keys = [()]
    for n in shape:
        keys = [k + (f"v{i}",) for k in keys for i in range(n)]
    cells = {key: draw(value) for key in keys}
    mode = draw(st.sampled_from(["marginals", "subset", "none"]))
    if mode == "marginals":
        totals = None
    elif mode == "none":
        totals = {}
    else:
        margins = marginal_totals(cells)
        chosen = draw(st.lists(st.sampled_from(sorted(margins, key=repr)), unique=True))
        totals = {t: margins[t] for t in chosen}
    k = draw(st.integers(2, 15))
    return cells, totals, k


def _covers(total, cell):
    return all(t is None or t == c for t, c in zip(total, cell, strict=True))


def _determined(result, cells) -> list:
    """Independent audit: suppressed cells or totals whose value follows from the published ones."""
    sup = [c for c, v in result["cells"].items() if v is None]
    if not sup:
        return []
    idx = {c: i for i, c in enumerate(sup)}

    def form(t):
        v = np.zeros(len(sup))
        for c in cells:
            if c in idx and _covers(t, c):
                v[idx[c]] = 1
        return v

    rows = [form(t) for t, v in result["totals"].items() if v is not None]
    a = np.array(rows) if rows else np.zeros((0, len(sup)))
    rank = np.linalg.matrix_rank(a) if rows else 0
    out = []
    targets = [(c, np.eye(len(sup))[idx[c]]) for c in sup]
    targets += [(t, form(t)) for t, v in result["totals"].items() if v is None]
    for key, vec in targets:
        if not vec.any():
            out.append(key)  # a suppressed total whose cells are all published
            continue
        if np.linalg.matrix_rank(np.vstack([a, vec])) == rank:
            out.append(key)
    return out


@settings(max_examples=300, deadline=None)
@given(tables())
def test_no_published_value_below_k(case):
    cells, totals, k = case
    res = protected_counts(cells, k=k, totals=totals)
    assert res["k"] == k
    for key, v in [*res["cells"].items(), *res["totals"].items()]:
        assert v is None or v == 0 or v >= k, (key, v)
        assert not (v is not None and 0 < v < k)
    assert is_safe(res)


@settings(max_examples=300, deadline=None)
@given(tables())
def test_published_values_are_the_true_ones(case):
    cells, totals, k = case
    res = protected_counts(cells, k=k, totals=totals)
    assert set(res["cells"]) == set(cells)
    for key, v in res["cells"].items():
        assert v is None or v == cells[key]
    expected_totals = marginal_totals(cells) if totals is None else totals
    assert set(res["totals"]) == set(expected_totals)
    for key, v in res["totals"].items():
        assert v is None or v == expected_totals[key]
    # primary suppression is exactly the small positive values
    small = {c for c, v in cells.items() if 0 < v < k} | {t for t, v in expected_totals.items() if 0 < v < k}
    assert set(res["primary"]) == small


@settings(max_examples=300, deadline=None)
@given(tables())
def test_never_exactly_one_suppressed_cell_under_a_published_total(case):
    cells, totals, k = case
    res = protected_counts(cells, k=k, totals=totals)
    for t, total in res["totals"].items():
        if total is None:
            continue
        covered = [c for c in cells if _covers(t, c)]
        suppressed = [c for c in covered if res["cells"][c] is None]
        assert len(suppressed) != 1, (t, suppressed)
        # the published cells never exceed the published total
        assert sum(res["cells"][c] for c in covered if res["cells"][c] is not None) <= total


@settings(max_examples=200, deadline=None)
@given(tables())
def test_no_suppressed_value_is_derivable(case):
    cells, totals, k = case
    res = protected_counts(cells, k=k, totals=totals)
    assert _determined(res, cells) == []


@pytest.mark.parametrize("k", [5, 11, 20])
def test_k_is_configurable(k):
    cells = {("a",): 4, ("b",): 10, ("c",): 19, ("d",): 50}
    res = protected_counts(cells, k=k, totals={})
    published = {c[0] for c, v in res["cells"].items() if v is not None}
    assert published == {c[0] for c, v in cells.items() if v >= k}


def test_one_small_year_forces_a_complement():
    res = protected_counts({(2020,): 3, (2021,): 100, (2022,): 50})
    assert res["totals"] == {(None,): 153}
    assert res["cells"] == {(2020,): None, (2021,): 100, (2022,): None}  # next smallest suppressed too
    assert res["primary"] == [(2020,)] and res["secondary"] == [(2022,)]


def test_two_by_three_table_suppresses_a_rectangle():
    cells = {("F", "a"): 5, ("F", "b"): 30, ("F", "c"): 40, ("M", "a"): 20, ("M", "b"): 25, ("M", "c"): 12}
    res = protected_counts(cells)
    suppressed = {c for c, v in res["cells"].items() if v is None}
    assert ("F", "a") in suppressed
    # every row and column total stays published and each holds 0 or >= 2 suppressed cells
    assert all(v is not None for v in res["totals"].values())
    assert _determined(res, cells) == []


def test_small_total_is_suppressed_and_not_recoverable():
    cells = {("F", "a"): 3, ("F", "b"): 4, ("M", "a"): 30, ("M", "b"): 25}
    res = protected_counts(cells)
    assert res["totals"][("F", None)] is None
    assert _determined(res, cells) == []


def test_zero_cells_are_published():
    res = protected_counts({("a",): 0, ("b",): 40}, totals={})
    assert res["cells"] == {("a",): 0, ("b",): 40}


def test_invalid_input():
    with pytest.raises(ValueError, match="not the sum"):
        protected_counts({("a",): 12}, totals={(None,): 13})
    with pytest.raises(ValueError, match="non-negative"):
        protected_counts({("a",): -1})
    with pytest.raises(ValueError, match="k must be"):
        protected_counts({("a",): 1}, k=0)
