"""The report as text (terminals), JSON (scripts) and one self-contained HTML page (people).

Pure functions of a :class:`RepositoryReport`; the page has inline CSS and inline SVG plots
(:mod:`.svg`), no script and nothing fetched, so it works offline and from ``file://``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from html import escape

from .figures import RepositoryReport, UpdateCost, VersionFigures
from .svg import Series, chart, human_bytes

VERSION_COLUMNS = ("version", "date", "files", "www files", "www bytes", "changed", "added",
                   "deleted", "deltas", "delta saved", "delta packs")
UPDATE_COLUMNS = ("from", "to", "with packs", "requests", "without packs", "requests",
                  "manifests", "packs")


def _date(timestamp: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(timestamp)) if timestamp else "-"


def version_row(v: VersionFigures) -> list[str]:
    return [f"{v.version}{' (staged)' if v.staged else ''}", _date(v.timestamp), str(v.files),
            str(v.www_files), human_bytes(v.www_bytes), str(v.changed), str(v.added),
            str(v.deleted), str(v.deltas), human_bytes(v.delta_saved),
            human_bytes(v.delta_pack_bytes)]


def update_row(u: UpdateCost) -> list[str]:
    return [str(u.from_version), str(u.to_version), human_bytes(u.bytes_with_packs),
            str(u.requests_with_packs), human_bytes(u.bytes_without_packs),
            str(u.requests_without_packs), human_bytes(u.manifest_bytes),
            ", ".join(u.packs) or "none"]


def _table(columns: Sequence[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c)
              for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))
    out = [line.rstrip(), "  ".join("-" * w for w in widths)]
    out += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return out


def _headline(report: RepositoryReport) -> str:
    staged = [v.version for v in report.versions if v.staged]
    text = (f"{report.storage}: {len(report.versions)} versions, released {report.released}, "
            f"last built {report.latest}")
    return text + (f" (staged: {', '.join(map(str, staged))})" if staged else "")


def to_text(report: RepositoryReport) -> str:
    lines = [_headline(report), ""]
    lines += _table(VERSION_COLUMNS, [version_row(v) for v in report.versions])
    lines += ["", f"Updating to the released version {report.released}:"]
    if report.updates:
        lines += _table(UPDATE_COLUMNS, [update_row(u) for u in report.updates])
    else:
        lines.append("no earlier version is served")
    for u in report.updates:
        if u.missing:
            lines.append(f"warning: update from {u.from_version} asks for "
                         f"{len(u.missing)} unpublished file(s), e.g. {u.missing[0]}")
    return "\n".join(lines) + "\n"


def to_json(report: RepositoryReport) -> str:
    return json.dumps(report.as_dict(), indent=2) + "\n"


def plots(report: RepositoryReport) -> list[str]:
    """The three plots: repository size, download size to latest, changed files."""
    labels = [str(v.version) for v in report.versions]
    total, running = [], 0
    for v in report.versions:
        running += v.www_bytes
        total.append(running)
    size = chart("repository-size", "Repository size over versions", labels,
                 [Series("www/<V> bytes", [v.www_bytes for v in report.versions]),
                  Series("repository total", total)], y_format=human_bytes, in_bytes=True)
    starts = [str(u.from_version) for u in report.updates]
    download = chart("download-to-latest",
                     f"Download to reach version {report.released}, per starting version",
                     starts,
                     [Series("with packs", [u.bytes_with_packs for u in report.updates]),
                      Series("without packs", [u.bytes_without_packs for u in report.updates])],
                     kind="bar", y_format=human_bytes, x_title="starting version",
                     in_bytes=True)
    changes = chart("changed-files", "Files changed per version", labels,
                    [Series("changed", [v.changed for v in report.versions]),
                     Series("added", [v.added for v in report.versions]),
                     Series("deleted", [v.deleted for v in report.versions])],
                    kind="bar", y_format=lambda n: f"{n:g}")
    return [size, download, changes]


_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
h1 { font-size: 1.4em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; }
svg.plot { background: #fff; border: 1px solid #ddd; }
svg .title { font-weight: bold; font-size: 14px; } svg text { font-size: 11px; fill: #333; }
svg .grid { stroke: #eee; } svg .axis-line { stroke: #888; }
table { border-collapse: collapse; } td, th { padding: 0.2em 0.7em; text-align: right; }
th { border-bottom: 1px solid #888; } tr:nth-child(even) td { background: #f4f4f4; }
tr.staged td { color: #777; font-style: italic; }
"""


def _html_table(columns: Sequence[str], rows: list[tuple[list[str], str]]) -> str:
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join(f'<tr class="{cls}">' + "".join(f"<td>{escape(v)}</td>" for v in r) + "</tr>"
                   for r, cls in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def to_html(report: RepositoryReport) -> str:
    versions = _html_table(VERSION_COLUMNS, [(version_row(v), "staged" if v.staged else "")
                                             for v in report.versions])
    updates = (_html_table(UPDATE_COLUMNS, [(update_row(u), "") for u in report.updates])
               if report.updates else "<p>No earlier version is served.</p>")
    figures = "\n".join(f"<figure>{p}</figure>" for p in plots(report))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>swupd repository report: {escape(report.storage)}</title>
<style>{_CSS}</style></head>
<body>
<h1>swupd repository report</h1>
<p>{escape(_headline(report))}. Generated {escape(_date(report.generated))} UTC.</p>
<div class="plots">
{figures}
</div>
<h2>Versions</h2>
{versions}
<p>Changed, added and deleted count paths against the version before; deltas are those
the delta packs carry instead of a fullfile, "delta saved" the fullfile bytes they replace
minus their own.</p>
<h2>Updating to the released version {report.released}</h2>
{updates}
<p>Bytes and requests of our client's update from each earlier version still served, with
an empty download cache; "manifests" (the latest marker and the manifest tars) is part of
both totals.</p>
</body></html>
"""
