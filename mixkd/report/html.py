"""report.html: one self-contained page per study, readable offline from file:// — the study, its leaderboard
(sortable, filterable), the comparisons that survive the correction, every figure, failed runs and links to
every table. No script or style is fetched from anywhere: they are inline, and figures are the PNG files
beside it (each linked to its PDF and the CSV of its numbers)."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from .. import __version__
from ..rundir import atomic_write
from ..tables import Tables
from .figures import FIGURES
from .stats import ALPHA, MIN_SEEDS

TABLES = ("runs.csv", "runs.parquet", "epochs.parquet", "metrics.parquet", "summary.csv", "summary.parquet",
          "comparisons.csv", "leaderboard.csv", "study.json")
MAX_FINDINGS = 60

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0 auto;max-width:1200px;\
padding:0 24px 48px;
color:#1b1b1b}
h1{margin:24px 0 4px}h2{margin-top:36px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555}nav a{margin-right:14px}
table{border-collapse:collapse;font-size:13px;width:100%}
th,td{padding:3px 8px;border-bottom:1px solid #eee;text-align:left;vertical-align:top}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
th{position:sticky;top:0;background:#f6f6f6;cursor:pointer;user-select:none}
th.sorted-asc::after{content:" ▲"}th.sorted-desc::after{content:" ▼"}
tr.best td{background:#f3f8ff}.sig{color:#0a6b2b;font-weight:600}.neg{color:#a4161a;font-weight:600}
.muted{color:#777}.scroll{max-height:70vh;overflow:auto;border:1px solid #ddd}
figure{margin:18px 0}figure img{max-width:100%;border:1px solid #eee}figcaption{color:#444;margin:4px 0 10px}
input[type=search]{padding:4px 8px;width:320px;margin:6px 0}
"""

SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function(table){
  table.querySelectorAll('th').forEach(function(th, col){
    th.addEventListener('click', function(){
      var body = table.tBodies[0], rows = Array.from(body.rows);
      var asc = !th.classList.contains('sorted-asc');
      table.querySelectorAll('th').forEach(function(h){h.classList.remove('sorted-asc','sorted-desc');});
      th.classList.add(asc ? 'sorted-asc' : 'sorted-desc');
      rows.sort(function(a, b){
        var x = a.cells[col].dataset.sort ?? a.cells[col].textContent;
        var y = b.cells[col].dataset.sort ?? b.cells[col].textContent;
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y, undefined, {numeric: true});
        return asc ? c : -c;
      });
      rows.forEach(function(r){body.appendChild(r);});
    });
  });
});
document.querySelectorAll('input[data-filter]').forEach(function(input){
  var table = document.getElementById(input.dataset.filter);
  input.addEventListener('input', function(){
    var q = input.value.toLowerCase();
    Array.from(table.tBodies[0].rows).forEach(function(r){
      r.style.display = r.textContent.toLowerCase().includes(q) ? '' : 'none';
    });
  });
});
"""


def _e(value) -> str:
    return html.escape("" if value is None or (isinstance(value, float) and pd.isna(value)) else str(value))


def _pct(value, digits: int = 2) -> str:
    return "–" if pd.isna(value) else f"{100 * value:.{digits}f}"


def _cell(text: str, sort=None, cls: str = "") -> str:
    key = "" if sort is None or pd.isna(sort) else f' data-sort="{sort}"'
    return f'<td{key}{f" class={chr(34)}{cls}{chr(34)}" if cls else ""}>{text}</td>'


def _verdict(delta, verdict) -> tuple[str, str]:
    if verdict == "reference":
        return "(reference)", "muted"
    if pd.isna(delta):
        return "–", "muted"
    cls = (("sig" if delta > 0 else "neg") if verdict == "significant"
           else "muted" if verdict == "too few seeds" else "")
    return f"{100 * delta:+.2f} <small>{_e(verdict)}</small>", cls


def _delta_cell(delta, verdict) -> str:
    text, cls = _verdict(delta, verdict)
    return _cell(text, delta, f"num {cls}")


def _best(board: pd.DataFrame) -> str:
    """The first-ranked variant(s) of each pair: the leaderboard at a glance on a large study."""
    if board[["teacher", "student"]].drop_duplicates().shape[0] < 2:
        return ""
    rows = "".join(f"<tr>{_cell(_e(r.teacher))}{_cell(_e(r.student))}{_cell(_e(r.setting))}"
                   f"{_cell(_pct(r.top1), r.top1, 'num')}{_delta_cell(r.delta_vs_kd, r.delta_vs_kd_verdict)}"
                   f"{_delta_cell(r.delta_vs_scratch, r.delta_vs_scratch_verdict)}</tr>"
                   for r in board[board["rank"] == 1].itertuples())
    return ("<h3>Best variant of each pair</h3><table class=sortable><thead><tr><th>teacher</th>"
            "<th>student</th><th>setting</th><th class=num>top-1 %</th>"
            "<th class=num>Δ vs no mixing, same loss (pts)</th>"
            f"<th class=num>Δ vs scratch (pts)</th></tr></thead><tbody>{rows}</tbody></table>"
            "<h3>All variants</h3>")


def _leaderboard(board: pd.DataFrame) -> str:
    if board.empty:
        return "<p class=muted>No distilled student has finished yet.</p>"
    head = ["teacher", "student", "rank", "setting", "n", "top-1 %", "95% CI", "Δ vs no mixing, same loss (pts)",
            "Δ vs scratch (pts)", "teacher %", "scratch %", "ECE"]
    numeric = {"rank", "n", "top-1 %", "teacher %", "scratch %", "ECE"}
    rows = []
    for r in board.itertuples():
        ci = f"{_pct(r.top1_ci_low)}–{_pct(r.top1_ci_high)}" if pd.notna(r.top1_ci_low) else "–"
        cells = [_cell(_e(r.teacher)), _cell(_e(r.student)), _cell(str(r.rank), r.rank, "num"),
                 _cell(_e(r.setting)), _cell(str(r.n), r.n, "num"), _cell(_pct(r.top1), r.top1, "num"),
                 _cell(ci, r.top1_ci_low, "num"), _delta_cell(r.delta_vs_kd, r.delta_vs_kd_verdict),
                 _delta_cell(r.delta_vs_scratch, r.delta_vs_scratch_verdict),
                 _cell(_pct(r.teacher_top1), r.teacher_top1, "num"),
                 _cell(_pct(r.scratch_top1), r.scratch_top1, "num"),
                 _cell(f"{r.ece:.3f}" if pd.notna(r.ece) else "–", r.ece, "num")]
        rows.append(f'<tr{" class=best" if r.rank == 1 else ""}>{"".join(cells)}</tr>')
    header = "".join(f'<th{" class=num" if h in numeric else ""}>{_e(h)}</th>' for h in head)
    return (f'<input type=search data-filter=leaderboard '
            f'placeholder="filter rows, e.g. a teacher, mix or T=4">'
            f'<div class=scroll><table id=leaderboard class=sortable><thead><tr>{header}</tr></thead>'
            f'<tbody>{"".join(rows)}</tbody></table></div>')


def _findings(comparisons: pd.DataFrame) -> str:
    top1 = comparisons[comparisons["metric"] == "top1_last"] if len(comparisons) else comparisons
    if top1.empty:
        return "<p class=muted>No paired comparison yet (they need complete runs that share seeds).</p>"
    claimable = top1[top1["n"] >= MIN_SEEDS]
    found = claimable[claimable["significant"].astype(str) == "True"].sort_values("p_adjusted")
    intro = (f"<p>{len(top1)} paired top-1 comparisons; {len(claimable)} with at least {MIN_SEEDS} seeds, "
             f"of which <b>{len(found)}</b> are significant at α = {ALPHA} after the Benjamini–Hochberg "
             f"correction"
             f"{'' if len(claimable) == len(top1) else f'; {len(top1) - len(claimable)} have too few seeds'}"
             f". Differences are b − a in points of top-1, paired by seed.</p>")
    if claimable.empty:
        return intro + (f"<p><b>No comparison has {MIN_SEEDS} seeds, "
                        f"so this study supports no claim of a difference"
                        f"</b>: add seeds to the grid (<code>grid.seeds</code>) and run it again.</p>")
    if found.empty:
        return intro
    context = ["role", "teacher", "teacher_model", "student", "mix", "mixed_view", "temperature", "loss"]
    rows = []
    for r in found.head(MAX_FINDINGS).itertuples():
        fixed = " · ".join(f"{c.replace('_', ' ')} {_e(getattr(r, c))}" for c in context
                           if pd.notna(getattr(r, c)) and c != "role")
        rows.append(f"<tr><td>{_e(r.axis)}</td><td>{_e(r.a)}</td><td>{_e(r.b)}</td><td>{fixed}</td>"
                    f'<td class=num data-sort="{r.mean_diff}">{100 * r.mean_diff:+.2f}</td>'
                    f'<td class=num>{_pct(r.ci_low)} – {_pct(r.ci_high)}</td><td class=num>{r.n}</td>'
                    f'<td class=num data-sort="{r.p_adjusted}">{r.p_adjusted:.2g}</td></tr>')
    more = f"<p class=muted>… and {len(found) - MAX_FINDINGS} more in comparisons.csv.</p>" \
        if len(found) > MAX_FINDINGS else ""
    return (intro + '<div class=scroll><table class=sortable><thead><tr><th>axis</th><th>a</th><th>b</th>'
            '<th>all else fixed</th><th class=num>Δ (pts)</th><th class=num>95% CI</th><th class=num>n</th>'
            f'<th class=num>p (BH)</th></tr></thead><tbody>{"".join(rows)}</tbody></table></div>{more}')


def _figures(drawn: dict[str, list[Path]], out: Path) -> str:
    parts = []
    for name in FIGURES:
        if name not in drawn:
            continue
        spec = FIGURES.get(name)
        pages = drawn[name]
        images = "".join(
            f'<figure><a href="figures/{p.name}"><img src="figures/{p.name}" alt="{_e(name)}, page {i}" '
            f'loading=lazy></a><figcaption>page {i} of {len(pages)} · <a href="figures/{p.stem}.pdf">PDF</a>'
            f'</figcaption></figure>' if len(pages) > 1 else
            f'<figure><a href="figures/{p.name}"><img src="figures/{p.name}" alt="{_e(name)}" '
            f'loading=lazy></a><figcaption><a href="figures/{p.stem}.pdf">PDF</a></figcaption></figure>'
            for i, p in enumerate(pages, 1))
        parts.append(f'<h3 id="fig-{name}">{_e(name)}</h3><p>{_e(spec.summary)} '
                     f'<a href="figures/{name}.csv">numbers drawn (CSV)</a></p>{images}')
    return "".join(parts) or "<p class=muted>No figure yet: nothing has finished.</p>"


def _failed(runs: pd.DataFrame) -> str:
    failed = runs[runs["status"] == "failed"]
    if failed.empty:
        return ""
    rows = "".join(f"<tr><td><code>{_e(r.run_id)}</code></td><td>{_e(r.variant)}</td><td>{_e(r.seed)}</td>"
                   f"<td>{_e(r.error)}</td></tr>" for r in failed.itertuples())
    return (f'<h2 id=failed>Failed runs ({len(failed)})</h2>'
            f'<p>Rerun them with <code>mixkd run --retry-failed</code>.'
            f'</p><table><thead><tr><th>run</th><th>variant</th><th>seed</th><th>error</th></tr></thead>'
            f'<tbody>{rows}</tbody></table>')


def report_html(name: str, description: str, tables: Tables, drawn: dict[str, list[Path]], out: Path) -> str:
    runs = tables.runs
    counts = runs["status"].value_counts()
    status = ", ".join(f"{counts.get(s, 0)} {s}" for s in ("complete", "failed", "pending", "running")
                       if counts.get(s, 0))
    links = " · ".join(f'<a href="{t}">{t}</a>' for t in TABLES if (out / t).exists())
    commits = sorted(set(runs["git_commit"].dropna())) if "git_commit" in runs else []
    nav = "".join(f'<a href="#{a}">{t}</a>'
                  for a, t in (("leaderboard", "Leaderboard"), ("findings", "Findings"),
                               ("figures", "Figures"), ("tables", "Tables")))
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><meta name=viewport content="width=device-width,initial-scale=1">
<title>{_e(name)} · mixkd report</title><style>{STYLE}</style></head><body>
<h1>{_e(name)}</h1><p>{_e(description)}</p>
<p class=meta>{len(runs)} runs ({status}); {runs['variant_id'].nunique()} variants; seeds
{_e(', '.join(map(str, sorted(runs['seed'].dropna().unique().tolist()))))}; mixkd {__version__}
{_e(('· commit ' + ', '.join(c[:10] for c in commits)) if commits else '')}</p>
<nav>{nav}{'<a href="#failed">Failed runs</a>' if (runs['status'] == 'failed').any() else ''}</nav>
<h2 id=leaderboard>Leaderboard</h2>
<p>Per (teacher, student) pair, its distilled variants ranked by mean top-1 over seeds (95% t-interval), each
against the same KD without mixing and against the student from scratch without mixing: paired by seed, the
verdict from the Benjamini–Hochberg adjusted p-value (α = {ALPHA}); no claim below {MIN_SEEDS} seeds. Click a
header to sort.</p>
{_best(tables.leaderboard) if len(tables.leaderboard) else ""}{_leaderboard(tables.leaderboard)}
<h2 id=findings>Findings</h2>{_findings(tables.comparisons)}
<h2 id=figures>Figures</h2>{_figures(drawn, out)}
{_failed(runs)}
<h2 id=tables>Tables</h2><p>{links}</p>
<p class=muted>Every number here is in these tables; every figure is redrawn from them by <code>mixkd report
</code>, and the numbers each draws are in its CSV.</p>
<script>{SCRIPT}</script></body></html>
"""


def write_html(name: str, description: str, tables: Tables, drawn: dict[str, list[Path]], out: Path) -> Path:
    path = Path(out) / "report.html"
    atomic_write(path, report_html(name, description, tables, drawn, Path(out)))
    return path
