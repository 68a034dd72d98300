"""The repository report (``swupd-repo report``): per version, what it holds and changed and
what its deltas saved; per earlier version still served, what a device downloads to reach the
released version. :mod:`.figures` computes (pure), :mod:`.collect` reads the storage,
:mod:`.render` and :mod:`.svg` write text, JSON and an offline HTML page with plots.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import SwupdRepoError
from ..progress import Reporter
from ..storage import Storage, atomic_write_text
from .collect import collect
from .figures import RepositoryReport, UpdateCost, VersionFigures
from .render import to_html, to_json, to_text

__all__ = ["RepositoryReport", "UpdateCost", "VersionFigures", "collect", "has_report_files",
           "refresh_report_files", "to_html", "to_json", "to_text", "write_report_files"]

#: Where ``write_report_files`` puts the report, in the storage directory (never in www/).
HTML_NAME, JSON_NAME = "report.html", "report.json"


def write_report_files(storage: Storage) -> tuple[Path, Path]:
    """``STORAGE/report.html`` and ``STORAGE/report.json``, each replaced atomically."""
    report = collect(storage)
    html, data = storage.root / HTML_NAME, storage.root / JSON_NAME
    atomic_write_text(html, to_html(report))
    atomic_write_text(data, to_json(report))
    return html, data


def has_report_files(storage: Storage) -> bool:
    """Whether a run wrote the report into the storage (the BitBake task does, by default)."""
    return any((storage.root / name).exists() for name in (HTML_NAME, JSON_NAME))


def refresh_report_files(storage: Storage, reporter: Reporter) -> Path | None:
    """:func:`write_report_files` at the end of a run that changed what the report shows
    (a publish, a release, a revert); returns the page, or None when it could not be written.

    The caller holds the storage lock: another run's leftover cleaning would take the
    report's temporary file for its own. The run's work is done by then (the version is
    published, ``latest`` moved), so a failure is a warning, not a failed run.
    """
    try:
        html, _ = write_report_files(storage)
    except (SwupdRepoError, OSError) as exc:
        reporter.warning(f"no report written ({exc}); set SWUPD_REPO_REPORT = \"0\" "
                         "(YAML report: false) to skip it")
        return None
    reporter.info(f"report: {html}")
    return html
