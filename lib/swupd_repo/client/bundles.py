"""``bundle-add``, ``bundle-remove`` and ``bundle-list`` on a target root (format3 §7.1, §7.3).

Like c42f8a3a, both work at the version the target runs (its os-release), never at latest:
the MoM of that version names each bundle's manifest, and a bundle added now is updated with
the rest by the next ``update``. The set a target has is its tracking files
(:mod:`.tracking`); what each operation changes on disk is :mod:`.bundleset`'s arithmetic.

Adding downloads and hash-checks everything (zero pack ``pack-<b>-from-0.tar``, else
fullfiles) before the target is touched, and places the tracking files last, so an
interrupted add leaves the bundle untracked and a second run adds it again. Removing deletes
the tracking file last, so an interrupted removal can be run again.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import ClientError
from ..progress import NullReporter, Reporter
from ..swupd.manifest import Manifest, deleted_entry, valid_bundle_name
from .apply import remove_entries
from .bundleset import add_list, includers, removal_list
from .consolidate import consolidate, fullfile_bounds
from .http import DownloadLimits
from .manifests import bundle_lines
from .operations import Session, apply_staged, current_version, stage_all
from .report import ClientStats
from .staging import Staging
from .state import DEFAULT_RELATIVE, StateDir, resolve_in_root
from .tracking import CORE, installed_bundles, tracked_bundles, tracking_path, write_tracking_file


def _names(names: Sequence[str]) -> list[str]:
    """The distinct names asked for, in order; ClientError for one that cannot be a bundle."""
    for name in names:
        if not valid_bundle_name(name):
            raise ClientError(f"{name!r} cannot be a bundle name")
    return list(dict.fromkeys(names))


def _unknown(session: Session, mom: Manifest, names: Sequence[str]) -> ClientError:
    return ClientError(f"version {mom.version} has no bundle {', '.join(names)} "
                       f"({session.mom_url(mom.version)} lists "
                       f"{', '.join(sorted(bundle_lines(mom)))})",
                       hint="see them with 'swupd-repo client bundle-list --all'")


def bundle_add(url: str, root: Path, names: Sequence[str], *, state_dir: Path | None = None,
               packs: bool = True, trusted_certs: Sequence[Any] | None = None,
               check_time: bool = True, reporter: Reporter | None = None,
               limits: DownloadLimits | None = None) -> ClientStats:
    """Install the bundles ``names`` (and what they include) at the version ``root`` runs."""
    names = _names(names)
    session = Session(url, trusted_certs, check_time, reporter or NullReporter(),
                      limits=limits)
    rep = session.reporter
    session.latest()  # must answer, as in the real client
    current = current_version(root)
    mom = session.manifests.mom(current)
    lines = bundle_lines(mom)
    unknown = [n for n in names if n not in lines]
    if unknown:
        raise _unknown(session, mom, unknown)
    have, _ = session.bundle_set(mom, installed_bundles(root))  # a tracked bundle it lacks:
    want, missing = session.bundle_set(mom, [*have, *names])     # left as it is
    if missing:  # an includes: line naming a bundle this version does not have
        raise ClientError(f"cannot add {', '.join(names)}: {', '.join(missing)}, named by "
                          f"includes:, is not in {session.mom_url(current)}")
    added = [n for n in want if n not in have]
    stats = ClientStats(from_version=current, to_version=current, added=added)
    if not added:
        rep.info(f"{', '.join(names)} already installed in {root}")
        return session.finish(stats)
    merged = consolidate(want.values())
    stats.conflicts = merged.conflicts
    entries = add_list(merged.entries, (want[n] for n in added),
                       consolidate(have.values()).entries)
    staging = Staging(StateDir.for_root(root, state_dir), session.fetcher, stats, rep)
    staging.size_bounds = fullfile_bounds(want[n] for n in added)
    if packs:
        for name in added:
            staging.stage_pack(name, 0, lines[name].last_change, required=False)
    stage_all(staging, entries, rep)
    tracking = {tracking_path(n) for n in added}
    rep.step(f"adding {', '.join(added)} ({len(entries)} objects) to {root}", len(entries))
    apply_staged(staging, root, [e for e in entries if e.path not in tracking], current, rep)
    apply_staged(staging, root, [e for e in entries if e.path in tracking], current, rep)
    for name in added:
        if not any(e.path == tracking_path(name) for e in want[name].entries):
            rep.warning(f"bundle {name} does not ship its tracking file "
                        f"{tracking_path(name)}: writing it, so updates keep the bundle")
            write_tracking_file(root, name)
    session.finish(stats)
    rep.info(f"added {', '.join(added)} to {root} at version {current}")
    return stats


def bundle_remove(url: str, root: Path, names: Sequence[str], *,
                  trusted_certs: Sequence[Any] | None = None, check_time: bool = True,
                  reporter: Reporter | None = None,
                  limits: DownloadLimits | None = None,
                  state_dir: Path | None = None) -> ClientStats:
    """Remove the bundles ``names``: exactly the paths no remaining bundle lists.

    Refused for os-core, for a bundle that is not installed and for one a remaining bundle
    includes (c42f8a3a only warned, and removed it anyway).
    """
    names = _names(names)
    if CORE in names:
        raise ClientError(f"{CORE} cannot be removed: it is the base every bundle needs")
    tracked = tracked_bundles(root)
    absent = [n for n in names if n not in tracked]
    if absent:
        raise ClientError(f"{', '.join(absent)} {'is' if len(absent) == 1 else 'are'} not "
                          f"installed in {root} (installed: {', '.join(installed_bundles(root))})")
    session = Session(url, trusted_certs, check_time, reporter or NullReporter(),
                      limits=limits)
    rep = session.reporter
    session.latest()
    current = current_version(root)
    mom = session.manifests.mom(current)
    lines = bundle_lines(mom)
    unknown = [n for n in names if n not in lines]
    if unknown:
        raise ClientError(f"cannot remove {', '.join(unknown)}: version {current} "
                          f"({session.mom_url(current)}) does not list it, so its files are "
                          "unknown", hint=f"delete {root}{tracking_path(unknown[0])} by hand "
                          "to stop tracking it")
    kept, _ = session.bundle_set(mom, [n for n in installed_bundles(root) if n not in names])
    for name in names:
        if name in kept:
            users = includers(name, kept) or ["a remaining bundle"]
            raise ClientError(f"cannot remove {name}: {', '.join(users)} include"
                              f"{'s' if len(users) == 1 else ''} it",
                              hint=f"remove {', '.join(users)} with it, or keep {name}")
    removed = {n: session.manifests.fetch(n, lines[n].last_change, lines[n].hash)
               for n in names}
    entries = removal_list(removed.values(), kept.values())
    tracking = {tracking_path(n) for n in names}
    where = (Path(state_dir) if state_dir is not None
             else resolve_in_root(root, DEFAULT_RELATIVE, create=False))
    state = StateDir(where).inside(root)
    stats = ClientStats(from_version=current, to_version=current, removed=names)
    rep.step(f"removing {', '.join(names)} ({len(entries)} objects) from {root}")
    stats.deleted = remove_entries(root, [e for e in entries if e.path not in tracking],
                                   state=state, warn=rep.warning)
    # last, listed in the manifest or not: an interrupted removal can be run again
    stats.deleted += remove_entries(root, [deleted_entry(p, current) for p in sorted(tracking)],
                                    state=state, warn=rep.warning)
    session.finish(stats)
    rep.info(f"removed {', '.join(names)} from {root}")
    return stats


def bundle_list(root: Path, url: str | None = None, *, all_bundles: bool = False,
                trusted_certs: Sequence[Any] | None = None, check_time: bool = True,
                limits: DownloadLimits | None = None) -> list[tuple[str, bool]]:
    """(name, installed) for the bundles ``root`` has, or with ``all_bundles`` for every
    bundle the MoM of the version it runs lists (then ``url`` is needed)."""
    installed = installed_bundles(root)
    if not all_bundles:
        return [(n, True) for n in installed]
    if url is None:
        raise ClientError("listing every bundle needs the repository: pass --url")
    session = Session(url, trusted_certs, check_time, NullReporter(), limits=limits)
    session.latest()
    mom = session.manifests.mom(current_version(root))
    return [(n, n in installed) for n in sorted(bundle_lines(mom))]
