"""``check_repository``: the release gate, consistency first, then update simulation.

Both run before ``latest`` moves (``SWUPD_REPO_CHECK = "1"``) and from ``swupd-repo check``.
The caller holds the storage lock (the pipeline already does while it builds; the command
takes it), so nothing writes ``www`` while it is read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..progress import NullReporter, Reporter
from ..storage import Storage
from ..swupd.rebase import newest_rebase
from .consistency import Consistency
from .report import CheckFailed, CheckReport, Context
from .simulation import simulate as simulate_updates
from .simulation import update_sources
from .stamps import Stamps


def check_repository(storage: Storage, version: int | None = None, *,
                     from_versions: Sequence[int] | None = None,
                     reporter: Reporter | None = None,
                     trusted_certs: Sequence[Any] | None = None,
                     check_time: bool = True, simulate: bool = True, trust_stamps: bool = True,
                     context: Context = "publish") -> CheckReport:
    """Check ``storage`` at ``version`` (default: latest); raises :class:`CheckFailed`
    listing every problem.

    ``from_versions`` limits the simulated updates (default: every earlier version still in
    ``www`` that devices can update from). ``trust_stamps`` lets fullfiles and packs verified
    by an earlier passing check and unchanged since be skipped (stamps are written either
    way). ``context`` words the failure's hint.
    """
    rep = reporter or NullReporter()
    version = version if version is not None else storage.latest()
    report = CheckReport(version)
    if version <= 0:
        report.problems.append(f"{storage.www_dir}: nothing published yet")
        raise CheckFailed(report, context)
    versions = [v for v in storage.published_versions() if v <= version]
    if version not in versions:
        report.problems.append(f"{storage.www(version)}/Manifest.MoM is missing")
        raise CheckFailed(report, context)
    report.versions = versions
    stamp_book = Stamps(storage, trust=trust_stamps)
    consistency = Consistency(storage, report, rep, trusted_certs, check_time, stamp_book)
    consistency.markers(version)
    rebase = newest_rebase(storage.www_dir, versions, version)
    for v in versions:
        consistency.version(v, content=v >= rebase)
    if simulate and report.ok:
        explicit = from_versions is not None
        candidates = list(from_versions) if explicit else [v for v in versions if v < version]
        earlier = update_sources(candidates, version, rep, explicit=explicit)
        simulate_updates(storage, version, earlier, report, rep, trusted_certs, check_time)
    if not report.ok:
        raise CheckFailed(report, context)
    try:
        stamp_book.save()
    except OSError as exc:
        rep.warning(f"cannot save verification stamps in {stamp_book.dir}: {exc} (the "
                        "next check verifies everything again)")
    rep.info(f"check passed: {report.summary()}")
    return report

