"""``swupd-repo client install|update|verify|bundle-add|bundle-remove|bundle-list``: the
verifying format-3 client on a target root."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..progress import TqdmReporter


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("client", help="install, update or verify a target root over HTTP, "
                       "add or remove its bundles",
                       description="A format-3 swupd client that checks every hash it installs "
                       "(and every signature, given --cert). Never touches the host's "
                       "/var/lib/swupd: its state lives in ROOT/var/lib/swupd or --state-dir. "
                       "The bundles a root has are its tracking files "
                       "ROOT/usr/share/clear/bundles/<name>, and always os-core; update and "
                       "verify cover all of them.")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    inst = actions.add_parser("install", help="install version V into an empty root",
                              description="Lay down version V into ROOT, which must be new or "
                              "empty: an install does not remove what is already there, so a "
                              "non-empty root would end up matching no version (use 'update' "
                              "for an installed root).")
    inst.add_argument("--version", dest="target_version", type=int, required=True,
                      help="version to install")
    inst.add_argument("--bundle", dest="bundles", action="append",
                      help="bundle to install besides os-core (repeatable; with what it "
                      "includes)")
    inst.add_argument("--force", action="store_true",
                      help="install even though ROOT is not empty (its other files stay)")
    upd = actions.add_parser("update", help="update ROOT to latest (or --to V)")
    upd.add_argument("--to", "--version", dest="target_version", type=int,
                     help="version to update to (default: version/format3/latest); may be "
                     "a staged version, not yet latest, for testing it on a device")
    ver = actions.add_parser("verify", help="hash-check ROOT; exit 1 on mismatches")
    ver.add_argument("--version", dest="target_version", type=int,
                     help="version to verify against (default: ROOT's os-release)")
    add = actions.add_parser("bundle-add", help="install bundles into ROOT",
                             description="Install each bundle NAME, with the bundles it "
                             "includes, at the version ROOT runs (its os-release), from its "
                             "zero pack or fullfiles, every hash checked before ROOT is "
                             "touched. Its tracking file comes with its content, so later "
                             "updates keep it.")
    add.add_argument("names", metavar="NAME", nargs="+", help="bundle to add")
    rem = actions.add_parser("bundle-remove", help="remove bundles from ROOT",
                             description="Remove each bundle NAME: exactly the paths that no "
                             "remaining bundle (os-core included) lists; a directory that "
                             "still holds something stays. os-core, a bundle that is not "
                             "installed and one that a remaining bundle includes are refused.")
    rem.add_argument("names", metavar="NAME", nargs="+", help="bundle to remove")
    lst = actions.add_parser("bundle-list", help="list ROOT's bundles (--all: every bundle)",
                             description="Print the bundles ROOT has, one a line; with --all, "
                             "every bundle of the version ROOT runs (needs --url), the "
                             "installed ones marked.")
    lst.add_argument("--all", dest="all_bundles", action="store_true",
                     help="every bundle the repository has for ROOT's version")
    lst.add_argument("--path", dest="root", type=Path, required=True, help="target root")
    lst.add_argument("--url", help="repository base URL (serves www/); needed with --all")
    for q in (inst, upd, ver, add, rem):
        q.add_argument("--path", dest="root", type=Path, required=True, help="target root")
        q.add_argument("--url", required=True, help="repository base URL (serves www/)")
    for q in (inst, upd, ver, add, rem, lst):
        q.add_argument("--cert", type=Path,
                       help="PEM certificate(s) to verify manifest signatures against")
        q.add_argument("--no-check-time", dest="check_time", action="store_false",
                       help="accept expired certificates (the 2016 test certificates are)")
        # defaults: swupd_repo.client.http.DownloadLimits (not imported here: it pulls in
        # urllib and ssl for every command)
        q.add_argument("--max-download-mb", type=_positive(int),
                       help="largest single download in MiB, for what the manifests give no "
                       "size for (packs, older fullfiles; 4096)")
        q.add_argument("--download-deadline", type=_positive(float),
                       help="seconds one download may take in all, however steadily bytes "
                       "arrive (1800)")
        q.add_argument("--read-timeout", type=_positive(float),
                       help="seconds without a byte before a download is retried (30)")
    for q in (inst, upd, add, rem):
        q.add_argument("--state-dir", type=Path,
                       help="client state directory (default: ROOT/var/lib/swupd)")
    for q in (inst, upd, add):
        q.add_argument("--no-packs", dest="packs", action="store_false",
                       help="use fullfiles only")
    p.set_defaults(func=run)


def _positive(kind: type) -> Any:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive, not {text}")
        return value
    parse.__name__ = kind.__name__
    return parse


def _limits(args: argparse.Namespace) -> Any:
    """The DownloadLimits the flags ask for (the library's defaults for those not given)."""
    from ..client.http import DownloadLimits

    given = {"max_bytes": args.max_download_mb << 20 if args.max_download_mb else None,
             "deadline": args.download_deadline, "read_timeout": args.read_timeout}
    return DownloadLimits(**{k: v for k, v in given.items() if v is not None})


def _certs(path: Path | None) -> Any:
    """Trusted certificates for :func:`swupd_repo.swupd.signing.verify` (it reads the file)."""
    return [path] if path is not None else None


def run(args: argparse.Namespace) -> int:
    from ..client import bundle_add, bundle_list, bundle_remove, install, update, verify

    certs = _certs(args.cert)
    if args.action == "bundle-list":
        for name, installed in bundle_list(args.root, args.url, all_bundles=args.all_bundles,
                                           trusted_certs=certs, check_time=args.check_time,
                                           limits=_limits(args)):
            print(f"{name} (installed)" if installed and args.all_bundles else name)
        return 0
    if args.action == "verify":
        report = verify(args.url, args.root, version=args.target_version, trusted_certs=certs,
                        check_time=args.check_time, limits=_limits(args))
        for mismatch in report.mismatches:
            print(f"mismatch: {mismatch}")
        for path in report.leftovers:
            print(f"note: {path} is deleted in version {report.version} but still present")
        for name in report.unknown_bundles:
            print(f"note: bundle {name} is tracked but not in version {report.version}; "
                  "its files were not verified")
        print(f"verified {report.checked} objects of version {report.version} in {args.root}: "
              f"{len(report.mismatches)} mismatches")
        return 0 if report.ok else 1
    with TqdmReporter() as reporter:
        if args.action == "install":
            stats = install(args.url, args.root, args.target_version, state_dir=args.state_dir,
                            packs=args.packs, bundles=args.bundles, trusted_certs=certs,
                            check_time=args.check_time, reporter=reporter,
                            limits=_limits(args), force=args.force)
        elif args.action == "bundle-add":
            stats = bundle_add(args.url, args.root, args.names, state_dir=args.state_dir,
                               packs=args.packs, trusted_certs=certs,
                               check_time=args.check_time, reporter=reporter,
                               limits=_limits(args))
        elif args.action == "bundle-remove":
            stats = bundle_remove(args.url, args.root, args.names, state_dir=args.state_dir,
                                  trusted_certs=certs, check_time=args.check_time,
                                  reporter=reporter, limits=_limits(args))
        else:
            stats = update(args.url, args.root, to=args.target_version,
                           state_dir=args.state_dir, packs=args.packs, trusted_certs=certs,
                           check_time=args.check_time, reporter=reporter,
                           limits=_limits(args))
    if args.action == "bundle-add":
        print(f"added {', '.join(stats.added) or 'nothing'} at version {stats.to_version}: "
              f"{stats.counts()}")
    elif args.action == "bundle-remove":
        print(f"removed {', '.join(stats.removed)} at version {stats.to_version}: "
              f"{stats.deleted} objects deleted")
    else:
        print(stats.summary())
    return 0
