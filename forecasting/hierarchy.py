"""Hierarchies of series, pure: the tree of levels, the aggregate series, reconciliation.

Levels come from the static attributes of the contract (``site``, ``region``) under a
``total``, in the order ``hierarchy.levels`` names them (default total > region >
site), with the series (meters) below the last one.

The tree (:func:`paths`): each series belongs to one node per level, named by its
attribute value. A series whose attribute of a level is absent is left out of that
level and of the levels below it (its ``reason`` says which); it still counts in the
levels above, through a *hidden* node (``(no site)`` under its region), so that every
level partitions the series and the sums stay exact. Hidden nodes are forecast and
reconciled like the others, but not stored. A node value found under more than one
parent (a site in two regions) is named ``parent/value`` instead, so the tree stays a
tree.

Reconciliation (:mod:`forecasting.reconciliation`): the nodes of the aggregate levels
(total, ..., the last attribute level) are forecast by their own models, then made
coherent as ``S P yhat``, where ``S`` (:func:`tree`) sums the bottom nodes (those of the
last attribute level, hidden ones included) into every node: bottom-up, or MinT (shrink)
with the covariance of the nodes' backtest errors.

MinT over the series themselves (100,000+ columns in ``S``) is not feasible; the series
get their bottom node's reconciled forecast in proportion to their own forecasts
(:func:`distribute`: top-down with forecast proportions below the bottom node), so every
level, series included, sums exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import pandas as pd

TOTAL, SERIES = "total", "series"
ALL = "all"  # the one node of the total level
ATTRIBUTE_LEVELS = ("region", "site")  # the contract's static attributes usable as levels
LEVEL_NAMES = (TOTAL, *ATTRIBUTE_LEVELS)
METHODS = ("mint_shrink", "bottom_up")
SEP = "\x1f"  # between level and node in a node key (no attribute value holds it)


def node_key(level: str, node: str) -> str:
    return f"{level}{SEP}{node}"


def split_key(key: str) -> tuple[str, str]:
    level, _, node = str(key).partition(SEP)
    return level, node


def hidden_name(level: str) -> str:
    """The name of the hidden node of the series that have no ``level`` attribute."""
    return f"(no {level})"


def paths(attrs: pd.DataFrame, levels: Sequence[str]) -> pd.DataFrame:
    """Per series (``attrs``: ``series_id`` and the attribute columns of ``levels``) its
    node at each level (columns named by level; the first level is ``total``), whether
    that node is hidden (``hidden_<level>``), and ``reason`` ("" or the levels it is left
    out of and why)."""
    out = pd.DataFrame({"series_id": attrs["series_id"].astype(str).to_numpy()})
    out[levels[0]] = ALL
    out[f"hidden_{levels[0]}"] = False
    reason = pd.Series("", index=out.index)
    missing = pd.Series(False, index=out.index)
    parent = out[levels[0]]
    for level in levels[1:]:
        raw = attrs[level].to_numpy(dtype=object)
        value = pd.Series([None if v is None or v != v or str(v) == "" else str(v) for v in raw])
        absent = value.isna() | missing
        newly = value.isna() & ~missing
        reason = reason.where(~newly, f"no {level}: left out of the {level} level and those below it")
        missing = absent
        value = value.where(~absent, hidden_name(level))
        value = _unique_under(value, parent, absent)
        name = value.where(~absent, parent + "/" + hidden_name(level))
        out[level] = name.to_numpy()
        out[f"hidden_{level}"] = absent.to_numpy()
        parent = out[level]
    out["reason"] = reason.to_numpy()
    return out


def _unique_under(value: pd.Series, parent: pd.Series, absent: pd.Series) -> pd.Series:
    """``value``, renamed ``parent/value`` where the same value has several parents."""
    frame = pd.DataFrame({"v": value, "p": parent})[~absent.to_numpy()]
    parents = frame.groupby("v")["p"].nunique()
    shared = set(parents.index[parents > 1])
    if not shared:
        return value
    return pd.Series(
        [f"{p}/{v}" if v in shared and not a else v for v, p, a in zip(value, parent, absent)],
        index=value.index,
    )


@dataclass
class Tree:
    """The nodes of the aggregate levels, top level first: ``nodes`` (level, node, parent,
    hidden, n_series; its row order is the order of ``S``'s rows) and ``S`` (nodes x bottom
    nodes, 0/1)."""

    levels: tuple[str, ...]
    nodes: pd.DataFrame
    S: np.ndarray

    @property
    def keys(self) -> list[str]:
        return [node_key(lv, n) for lv, n in zip(self.nodes["level"], self.nodes["node"])]

    @property
    def bottom(self) -> pd.DataFrame:
        return self.nodes[self.nodes["level"] == self.levels[-1]]

    def level_of(self, level: str) -> np.ndarray:
        return (self.nodes["level"] == level).to_numpy()


def tree(members: pd.DataFrame, levels: Sequence[str]) -> Tree:
    """The tree of the bottom nodes in ``members`` (one row per bottom node: its node at
    each level, ``hidden_<level>`` flags and ``n_series``; the rows of :func:`paths`
    grouped by their nodes, possibly summed over batches)."""
    levels = tuple(levels)
    bottom = members.groupby(list(levels), sort=True, as_index=False).agg(
        {**{f"hidden_{lv}": "first" for lv in levels}, "n_series": "sum"}
    )
    # the bottom nodes in the order of the last level's rows (names unique there)
    bottom = bottom.sort_values(levels[-1], kind="stable").reset_index(drop=True)
    rows, columns = [], []
    for depth, level in enumerate(levels):
        parent_col = levels[depth - 1] if depth else None
        grouped = bottom.groupby(level, sort=True)
        for name, group in grouped:
            rows.append(
                {
                    "level": level,
                    "node": str(name),
                    "parent": str(group[parent_col].iloc[0]) if parent_col else "",
                    "hidden": bool(group[f"hidden_{level}"].iloc[0]),
                    "n_series": int(group["n_series"].sum()),
                }
            )
            columns.append(group.index.to_numpy())
    nodes = pd.DataFrame(rows)
    S = np.zeros((len(nodes), len(bottom)))
    for i, cols in enumerate(columns):
        S[i, cols] = 1.0
    return Tree(levels, nodes, S)


# -- the series below the bottom nodes ------------------------------------------------
def node_totals(base: pd.DataFrame, node_col: str = "node") -> pd.DataFrame:
    """The sum and count of the series' forecasts (``base``: node, ts, yhat) by (node,
    ts): added up over batches, they are what :func:`distribute` scales by."""
    return base.groupby([node_col, "ts"])["yhat"].agg(["sum", "count"]).astype(float)


def distribute(
    node_point: pd.Series,
    base: pd.DataFrame,
    bounds: Sequence[str],
    totals: pd.DataFrame | None = None,
    node_col: str = "node",
) -> pd.DataFrame:
    """Series' coherent forecasts below their bottom node: ``base`` (series_id, node, ts,
    yhat and the ``bounds`` columns: the series' own forecasts) scaled so the series of a
    node sum to its reconciled point (``node_point``, indexed by (node, ts)); the bounds
    move with the point, scaled alike. A node whose series forecast a sum <= 0 splits its
    point equally (the bounds shifted by the change of the point). ``totals``: the
    :func:`node_totals` of all the nodes' series when ``base`` holds only some of them
    (one batch); by default those of ``base``."""
    totals = node_totals(base, node_col) if totals is None else totals
    keys = pd.MultiIndex.from_frame(base[[node_col, "ts"]])
    sums = pd.Series(totals["sum"].reindex(keys).to_numpy(), index=base.index)
    counts = pd.Series(totals["count"].reindex(keys).to_numpy(), index=base.index)
    target = pd.Series(
        node_point.reindex(pd.MultiIndex.from_frame(base[[node_col, "ts"]])).to_numpy(), index=base.index
    )
    scalable = sums > 1e-12
    ratio = (target / sums.where(scalable, 1.0)).where(scalable, np.nan)
    out = base.copy()
    point = np.where(scalable, base["yhat"] * ratio, target / counts)
    shift = point - base["yhat"].to_numpy()
    for col in bounds:
        out[col] = np.where(scalable, base[col] * ratio, base[col] + shift)
    out["yhat_base"] = base["yhat"]
    out["yhat"] = point
    return out
