"""Per-method metric tables for the paper notebooks: mean ± SD across subjects, best in bold, paper alongside.

:func:`metric_table` turns the tidy per-sample rows of :func:`medgen.evaluate.evaluate`
(``sample, patient_id, metric, value, data_range, method``) into a :class:`MetricTable`:

* per-subject means first (:func:`medgen.evaluate.subject_means`; several samples of one
  patient count once), then mean, SD (ddof=1) and ``n`` subjects per group and metric
  (DESIGN.md, "Metric guardrails");
* the best group per metric in **bold**, in the direction of ``higher_is_better``
  (defaults in :data:`HIGHER_IS_BETTER` for the known metrics; a metric with no known
  direction gets no bold: nothing is guessed). Best is judged on the *displayed* (rounded)
  mean, so every group whose shown mean equals the best one is bold (ties) and a reader
  never sees two equal numbers with only one of them bold;
* the paper's values, when given, as separate rows labelled ``"<group> (paper)"`` placed
  right below the matching group (or at the end), never part of the bolding;
* a group whose values are all NaN shows ``n/a``.

>>> tab = metric_table(rows, paper={"DDIM": {"psnr": (27.1, 1.3)}})   # doctest: +SKIP
>>> print(tab.to_markdown()); tab.best["psnr"]                          # doctest: +SKIP

Markdown is written with :func:`medgen.reports.markdown_table`; HTML is a small hand-made
``<table>`` (pandas' ``Styler`` needs jinja2 and would escape the bold markers).
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from medgen.evaluate import subject_means
from medgen.reports import markdown_table

__all__ = ["HIGHER_IS_BETTER", "DEFAULT_DECIMALS", "PAPER_SUFFIX", "NA", "TableError", "MetricTable",
           "metric_table", "direction"]

# Known metric directions (lower-cased names); any name starting with "dice" is higher-better.
HIGHER_IS_BETTER: dict[str, bool] = {
    "psnr": True, "ssim": True, "ms_ssim": True, "vifp": True, "rssim": True, "snr": True, "cnr": True,
    "icc": True,
    "l1": False, "mae": False, "mse": False, "fid": False, "kid": False, "hd95": False,
}
# Decimals shown per metric (lower-cased) when the caller gives none; 3 for everything else.
DEFAULT_DECIMALS: dict[str, int] = {"psnr": 2, "snr": 2, "cnr": 2, "fid": 2, "hd95": 2, "kid": 4, "mse": 4}
FALLBACK_DECIMALS = 3
PAPER_SUFFIX = " (paper)"   # label of a paper row: "<group> (paper)"
NA = "n/a"                  # shown for a group whose values are all NaN
PM = " ± "                  # mean ± SD separator
STATS = ("mean", "sd", "n")

PaperValue = float | tuple[float, float]
PaperArg = Mapping[str, Mapping[str, PaperValue]] | pd.DataFrame | None


class TableError(ValueError):
    """Bad input to :func:`metric_table`."""


def direction(metric: str, higher_is_better: Mapping[str, bool] | None = None) -> bool | None:
    """``True`` (higher is better), ``False`` (lower) or ``None`` (unknown) for ``metric``."""
    if higher_is_better and metric in higher_is_better:
        return bool(higher_is_better[metric])
    key = metric.lower()
    if key in HIGHER_IS_BETTER:
        return HIGHER_IS_BETTER[key]
    return True if key.startswith("dice") else None


@dataclass
class MetricTable:
    """A per-group metric table.

    Attributes:
        frame: numeric, index = group (one level per ``by`` column), columns = MultiIndex
            ``(metric, stat)`` with stat in ``mean, sd, n``.
        paper: the paper's values, index = paper group label, columns = MultiIndex
            ``(metric, mean|sd)`` (NaN where not reported); ``None`` when none were given.
        higher_is_better: ``metric -> True/False`` for the metrics with a known direction.
        decimals: ``metric -> decimals`` used for display.
        best: ``metric -> group`` of the best group (the first in row order when tied);
            metrics with no direction or only NaN values are absent.
        bold: ``metric -> tuple of groups`` shown in bold (all tied best groups).
        by: the grouping column(s).
    """

    frame: pd.DataFrame
    paper: pd.DataFrame | None
    higher_is_better: dict[str, bool]
    decimals: dict[str, int]
    best: dict[str, Any]
    bold: dict[str, tuple[Any, ...]]
    by: tuple[str, ...]

    @property
    def metrics(self) -> list[str]:
        """The metric columns, in table order."""
        return list(dict.fromkeys(self.frame.columns.get_level_values(0)))

    @property
    def long(self) -> pd.DataFrame:
        """Tidy version of :attr:`frame`: columns ``*by, metric, mean, sd, n`` (CSV friendly)."""
        out = self.frame.stack(level=0, future_stack=True).reset_index()
        out = out.rename(columns={out.columns[len(self.by)]: "metric"})[[*self.by, "metric", *STATS]]
        out.columns.name = None
        return out

    # -- display ---------------------------------------------------------------------
    def _header(self, metric: str) -> str:
        """Column title: the metric with an arrow for its direction."""
        d = self.higher_is_better.get(metric)
        return metric if d is None else f"{metric} {'↑' if d else '↓'}"

    def cells(self, bold: tuple[str, str] = ("**", "**")) -> pd.DataFrame:
        """The displayed table as strings: group label column(s), one column per metric, ``n``.

        ``bold`` is the (open, close) marker pair around the best cells.
        """
        records = []
        paper_left = list(self.paper.index) if self.paper is not None else []
        for group in self.frame.index:
            records.append(self._our_row(group, bold))
            label = _label(group) + PAPER_SUFFIX
            if label in paper_left:
                paper_left.remove(label)
                records.append(self._paper_row(label))
        records += [self._paper_row(label) for label in paper_left]
        columns = [" / ".join(self.by), *(self._header(m) for m in self.metrics), "n"]
        return pd.DataFrame(records, columns=columns)

    def _our_row(self, group: Any, bold: tuple[str, str]) -> list[str]:
        """One of our rows: ``mean ± SD`` cells (bold where best) and the subject count."""
        row = [_label(group)]
        for m in self.metrics:
            mean, sd = self.frame.loc[group, (m, "mean")], self.frame.loc[group, (m, "sd")]
            text = _fmt(mean, sd, self.decimals[m])
            row.append(f"{bold[0]}{text}{bold[1]}" if group in self.bold.get(m, ()) else text)
        counts = sorted({int(self.frame.loc[group, (m, "n")]) for m in self.metrics})
        row.append(str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}")
        return row

    def _paper_row(self, label: str) -> list[str]:
        """A paper row: the reported values (empty where the paper reports none)."""
        assert self.paper is not None
        row = [label]
        for m in self.metrics:
            mean = self.paper.loc[label, (m, "mean")] if (m, "mean") in self.paper.columns else math.nan
            sd = self.paper.loc[label, (m, "sd")] if (m, "sd") in self.paper.columns else math.nan
            row.append("" if pd.isna(mean) else _fmt(mean, sd, self.decimals[m]))
        return row + [""]

    def to_markdown(self) -> str:
        """GitHub pipe table; best cells wrapped in ``**``."""
        return markdown_table(self.cells())

    def to_html(self) -> str:
        """A plain HTML ``<table>``; best cells in ``<b>``, paper rows in italics."""
        open_, close = "\x00B\x00", "\x00/B\x00"   # placeholders that survive html.escape
        df = self.cells((open_, close))
        head = "".join(f"<th>{html.escape(c)}</th>" for c in df.columns)
        body = []
        for row in df.itertuples(index=False, name=None):
            style = ' style="font-style:italic"' if str(row[0]).endswith(PAPER_SUFFIX) else ""
            tds = "".join(f"<td>{html.escape(str(v)).replace(open_, '<b>').replace(close, '</b>')}</td>"
                          for v in row)
            body.append(f"<tr{style}>{tds}</tr>")
        return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>"

    def _repr_html_(self) -> str:
        return self.to_html()

    def __str__(self) -> str:
        return self.to_markdown()


# --------------------------------------------------------------------------------------
# Formatting helpers
# --------------------------------------------------------------------------------------
def _label(group: Any) -> str:
    """Display label of a group (tuple groups joined with ' / ')."""
    return " / ".join(str(g) for g in group) if isinstance(group, tuple) else str(group)


def _fmt(mean: float, sd: float, decimals: int) -> str:
    """``mean ± sd`` at ``decimals``; just ``mean`` when the SD is undefined; ``n/a`` for NaN."""
    if pd.isna(mean):
        return NA
    text = f"{float(mean):.{decimals}f}"
    return text if pd.isna(sd) else f"{text}{PM}{float(sd):.{decimals}f}"


# --------------------------------------------------------------------------------------
# Building the table
# --------------------------------------------------------------------------------------
def _check_rows(rows: pd.DataFrame, by: list[str], metrics: Sequence[str] | None) -> list[str]:
    """Validate the tidy rows; return the metrics to show (in order of first appearance)."""
    if not isinstance(rows, pd.DataFrame):
        raise TableError(f"metric_table: rows must be a pandas DataFrame, got {type(rows).__name__}")
    missing = [c for c in [*by, "metric", "patient_id", "value"] if c not in rows.columns]
    if missing:
        raise TableError(f"metric_table: rows lack column(s) {', '.join(missing)}")
    if rows.empty:
        raise TableError("metric_table: rows is empty")
    have = list(dict.fromkeys(rows["metric"]))
    chosen = list(have if metrics is None else ([metrics] if isinstance(metrics, str) else metrics))
    absent = [m for m in chosen if m not in have]
    if absent:
        raise TableError(f"metric_table: metric '{absent[0]}' is not in rows (have: {', '.join(map(str, have))})")
    if not chosen:
        raise TableError("metric_table: no metrics selected")
    return chosen


def _check_ranges(rows: pd.DataFrame, metrics: list[str]) -> None:
    """One ``data_range`` per metric: numbers computed on different ranges are not comparable."""
    if "data_range" not in rows.columns:
        return
    for m in metrics:
        ranges = sorted(rows.loc[rows["metric"] == m, "data_range"].dropna().unique())
        if len(ranges) > 1:
            raise TableError(f"metric_table: metric '{m}' mixes data_range values {ranges}; not comparable")


def _summary(rows: pd.DataFrame, by: list[str], metrics: list[str]) -> pd.DataFrame:
    """Wide numeric frame: index = group, columns = (metric, mean|sd|n)."""
    sel = rows[rows["metric"].isin(metrics)]
    # 1. one value per subject (mean over its samples), 2. mean, SD (ddof=1), n across subjects
    per_subject = subject_means(sel.drop(columns=["data_range"], errors="ignore"), by)
    stats = per_subject.groupby([*by, "metric"], sort=False, dropna=False)["value"].agg(["mean", "std", "count"])
    stats = stats.rename(columns={"std": "sd", "count": "n"})
    wide = stats.unstack("metric")                       # columns (stat, metric)
    wide = wide.swaplevel(axis=1).reindex(columns=pd.MultiIndex.from_product([metrics, STATS]))
    wide.columns.names = ["metric", "stat"]
    order = list(dict.fromkeys(per_subject[by].itertuples(index=False, name=None)))   # first appearance
    order = [o[0] for o in order] if len(by) == 1 else order
    wide = wide.reindex(order)
    for m in metrics:
        wide[(m, "n")] = wide[(m, "n")].fillna(0).astype(int)
    return wide


def _paper_frame(paper: PaperArg) -> pd.DataFrame | None:
    """Paper values as index ``"<group> (paper)"``, columns ``(metric, mean|sd)``."""
    if paper is None:
        return None
    if isinstance(paper, pd.DataFrame):
        paper = {str(g): {str(m): v for m, v in row.items() if not _missing(v)}
                 for g, row in paper.to_dict(orient="index").items()}
    records: dict[str, dict[tuple[str, str], float]] = {}
    for group, values in paper.items():
        rec = records.setdefault(f"{group}{PAPER_SUFFIX}", {})
        for metric, v in values.items():
            mean, sd = (v if isinstance(v, (tuple, list)) else (v, math.nan))
            rec[(str(metric), "mean")], rec[(str(metric), "sd")] = float(mean), float(sd)
    if not records:
        return None
    return pd.DataFrame.from_dict(records, orient="index")


def _missing(v: Any) -> bool:
    """True for None / NaN scalars (unreported paper values in a DataFrame)."""
    return v is None or (np.isscalar(v) and pd.isna(v))


def _best(frame: pd.DataFrame, metric: str, higher: bool | None, decimals: int) -> tuple[Any, ...]:
    """Groups whose displayed mean is the best (all of them when tied); () if none."""
    if higher is None:
        return ()
    shown = frame[(metric, "mean")].round(decimals)
    if shown.isna().all():
        return ()
    target = shown.max() if higher else shown.min()
    return tuple(g for g, v in shown.items() if v == target)


def metric_table(
    rows: pd.DataFrame,
    *,
    metrics: Sequence[str] | None = None,
    by: str | Sequence[str] = "method",
    higher_is_better: Mapping[str, bool] | None = None,
    paper: PaperArg = None,
    decimals: int | Mapping[str, int] | None = None,
) -> MetricTable:
    """Mean ± SD across subjects of each metric per group of ``by``, best in bold.

    Args:
        rows: tidy per-sample rows as :func:`medgen.evaluate.evaluate` returns
            (columns ``patient_id, metric, value`` and the ``by`` column(s); ``data_range``
            is checked to be one value per metric when present).
        metrics: metrics to show, in order (default: all, in order of appearance).
        by: grouping column(s); rows keep the order in which groups first appear.
        higher_is_better: per-metric direction overriding :data:`HIGHER_IS_BETTER`; a
            metric with no direction is shown without bold.
        paper: the paper's values ``{group: {metric: mean or (mean, sd)}}`` or a DataFrame
            (index group, columns metric); shown as rows ``"<group> (paper)"``. Metrics
            not among ``metrics`` are not shown.
        decimals: digits after the point, one int for all or per metric (default
            :data:`DEFAULT_DECIMALS`, else 3).
    """
    by_cols = [by] if isinstance(by, str) else list(by)
    if not by_cols:
        raise TableError("metric_table: 'by' names no column")
    chosen = _check_rows(rows, by_cols, metrics)
    _check_ranges(rows, chosen)
    frame = _summary(rows, by_cols, chosen)
    dirs = {m: d for m in chosen if (d := direction(m, higher_is_better)) is not None}
    if isinstance(decimals, Mapping):
        dec = {m: int(decimals.get(m, DEFAULT_DECIMALS.get(m.lower(), FALLBACK_DECIMALS))) for m in chosen}
    else:
        dec = {m: int(decimals) if decimals is not None else DEFAULT_DECIMALS.get(m.lower(), FALLBACK_DECIMALS)
               for m in chosen}
    bold = {m: g for m in chosen if (g := _best(frame, m, dirs.get(m), dec[m]))}
    best = {m: g[0] for m, g in bold.items()}
    return MetricTable(frame, _paper_frame(paper), dirs, dec, best, bold, tuple(by_cols))
