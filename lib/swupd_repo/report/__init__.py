"""The repository report (``swupd-repo report``): per version, what it holds and changed and
what its deltas saved; per earlier version still served, what a device downloads to reach the
released version. :mod:`.figures` computes (pure), :mod:`.collect` reads the storage,
:mod:`.render` and :mod:`.svg` write text, JSON and an offline HTML page with plots.
"""

from __future__ import annotations

from pathlib import Path

from ..storage import Storage, atomic_write_text
from .collect import collect
from .figures import RepositoryReport, UpdateCost, VersionFigures
from .render import to_html, to_json, to_text

__all__ = ["RepositoryReport", "UpdateCost", "VersionFigures", "collect", "to_html", "to_json",
           "to_text", "write_report_files"]

#: Where ``write_report_files`` puts the report, in the storage directory (never in www/).
HTML_NAME, JSON_NAME = "report.html", "report.json"


def write_report_files(storage: Storage) -> tuple[Path, Path]:
    """``STORAGE/report.html`` and ``STORAGE/report.json``, each replaced atomically."""
    report = collect(storage)
    html, data = storage.root / HTML_NAME, storage.root / JSON_NAME
    atomic_write_text(html, to_html(report))
    atomic_write_text(data, to_json(report))
    return html, data
