"""A study's report, from its run directories to one HTML page: tables (`mixkd.tables`) → statistics
→ leaderboard → figures → report.html. Everything after the tables is computed from the tables alone, so
`mixkd report` rebuilds it anywhere the tables are, and notebooks read exactly what the figures drew."""

from __future__ import annotations

from pathlib import Path

from ..rundir import atomic_write
from ..study import Study
from ..tables import Tables, read_tables, write_tables
from .figures import write_figures
from .html import write_html
from .leaderboard import leaderboard_table
from .stats import write_statistics


def write_report(study: Study, out: Path) -> Tables:
    """Every table, statistic, figure and the HTML page of `study` in `out`; returns the tables as written."""
    write_tables(study, out)
    tables = write_statistics_tables(out)
    write_html(study.name, study.file.description, tables, write_figures(tables, out), out)
    return tables


def write_statistics_tables(out: Path) -> Tables:
    """summary.csv, comparisons.csv and leaderboard.csv from the runs and metrics tables in `out`; returns
    every table read back, as figures and notebooks read them."""
    out = Path(out)
    tables = read_tables(out)
    summary, comparisons = write_statistics(tables.runs, tables.metrics, out)
    atomic_write(out / "leaderboard.csv", leaderboard_table(summary, comparisons).to_csv(index=False))
    return read_tables(out)
