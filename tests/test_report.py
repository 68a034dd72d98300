"""``swupd-repo report``: its numbers against independent counts, its page in a real browser.

The download prediction is checked against what our client really fetches over real HTTP
(its own byte and request counters), from every earlier version, with packs and without; the
page is opened in headless Chromium (Debian's ``chromium``), which takes a screenshot and
dumps the DOM it rendered.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import pytest

from conftest import copy_tree
from helpers_cli import build, publish, swupd_repo
from swupd_repo.client import install, update
from swupd_repo.osrelease import stamp_version_id
from swupd_repo.report import collect, to_html, write_report_files
from swupd_repo.report.figures import DeltaFile, change_counts, delta_figures
from swupd_repo.report.svg import byte_ticks, nice_ticks
from swupd_repo.serve import serve_in_thread
from swupd_repo.storage import Storage
from swupd_repo.swupd.manifest import Entry, Manifest, deleted_entry


@pytest.fixture(scope="module")
def repo(rootfs_trees: dict[int, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """10, 20 (the vectors' trees), 30 (20 with one file changed, one added, one deleted),
    40 (one more file) released; 50 (one more) staged. Delta packs reach back two versions,
    so 40 has none from 10."""
    base = tmp_path_factory.mktemp("report")
    tree30 = copy_tree(rootfs_trees[20], base / "tree30")
    (tree30 / "usr/bin/prog01").write_bytes((tree30 / "usr/bin/prog01").read_bytes() * 3)
    (tree30 / "usr/share/added-in-30").write_text("new in 30\n")
    (tree30 / "usr/bin/prog02").unlink()
    stamp_version_id(tree30, 30)
    tree40 = copy_tree(tree30, base / "tree40")
    (tree40 / "usr/share/added-in-40").write_text("new in 40\n")
    stamp_version_id(tree40, 40)
    tree50 = copy_tree(tree40, base / "tree50")
    (tree50 / "usr/share/added-in-50").write_text("new in 50\n")
    stamp_version_id(tree50, 50)
    storage = base / "storage"
    for version, tree in ((10, rootfs_trees[10]), (20, rootfs_trees[20]), (30, tree30),
                          (40, tree40)):
        build(storage, tree, version)
    build(storage, tree50, 50, "--stage")
    return storage


def test_version_figures_match_independent_counts(repo: Path) -> None:
    st = Storage(repo)
    report = collect(st)
    assert (report.latest, report.released) == (50, 40)
    assert [v.version for v in report.versions] == [10, 20, 30, 40, 50]
    assert [v.staged for v in report.versions] == [False, False, False, False, True]
    by = {v.version: v for v in report.versions}
    for v in by.values():
        files = [p for p in st.www(v.version).rglob("*") if not p.is_dir()]
        assert v.www_files == len(files)
        assert v.www_bytes == sum(p.lstat().st_size for p in files)
        assert v.timestamp > 0
    # 30: prog01 and os-release changed, one path added, one deleted; 40: os-release, +1
    assert (by[30].changed, by[30].added, by[30].deleted) == (2, 1, 1)
    assert (by[40].changed, by[40].added, by[40].deleted) == (1, 1, 0)
    assert (by[50].changed, by[50].added, by[50].deleted) == (1, 1, 0)
    assert by[10].added == by[10].files
    assert by[10].deltas == 0 and by[20].deltas > 0 and by[20].delta_saved > 0


def test_download_prediction_equals_a_real_update(repo: Path, tmp_path: Path) -> None:
    """Our client's own counters during real updates over HTTP, from every earlier version."""
    report = collect(Storage(repo))
    assert [u.from_version for u in report.updates] == [10, 20, 30]
    assert all(u.to_version == 40 and not u.missing for u in report.updates)
    with serve_in_thread(Storage(repo).www_dir) as url:
        for cost in report.updates:
            for packs in (True, False):
                work = tmp_path / f"{cost.from_version}-{packs}"
                root = work / "root"
                install(url, root, cost.from_version, state_dir=work / "install-state")
                # a fresh download cache, as the prediction assumes
                stats = update(url, root, state_dir=work / "state", packs=packs)
                assert stats.to_version == 40
                predicted = cost.bytes_with_packs if packs else cost.bytes_without_packs
                requests = cost.requests_with_packs if packs else cost.requests_without_packs
                label = (cost.from_version, packs)
                assert abs(stats.bytes_received - predicted) <= cost.manifest_bytes, label
                assert stats.bytes_received == predicted, label
                assert stats.requests == requests, label
                if packs:
                    assert [f"{p}" for p in stats.packs] == list(cost.packs), label
    # no pack from 10 (the client asks, gets a 404 and takes fullfiles); packs from 20 and
    # 30 save requests (on a tree this small a pack's tar and xz framing can weigh more than
    # the few gzip fullfiles it replaces, so bytes are not compared here: the prediction
    # above equals what the client really fetched either way)
    ten, twenty, thirty = report.updates
    assert ten.packs == () and ten.requests_with_packs == ten.requests_without_packs + 1
    assert ten.bytes_with_packs == ten.bytes_without_packs
    assert twenty.packs == ("40/pack-os-core-from-20.tar",)
    assert thirty.packs == ("40/pack-os-core-from-30.tar",)
    assert twenty.requests_with_packs < twenty.requests_without_packs


def test_cli_text_json_and_html(repo: Path, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    done = swupd_repo("report", "--storage", repo, "--html", page)
    assert done.returncode == 0, done.stderr
    assert "5 versions, released 40, last built 50 (staged: 50)" in done.stdout
    assert "50 (staged)" in done.stdout and "40/pack-os-core-from-20.tar" in done.stdout
    assert page.read_text().startswith("<!DOCTYPE html>")
    data = json.loads(swupd_repo("report", "--storage", repo, "--json").stdout)
    assert data["released"] == 40 and len(data["versions"]) == 5
    assert [u["from_version"] for u in data["updates"]] == [10, 20, 30]


def test_report_files_in_the_storage(repo: Path, tmp_path: Path) -> None:
    copy = tmp_path / "storage"  # the report reads www/ and the markers only
    shutil.copytree(Storage(repo).www_dir, copy / "www", symlinks=True)
    (copy / "image").mkdir()
    shutil.copy(Storage(repo).latest_image_marker, copy / "image")
    html, data = write_report_files(Storage(copy))
    assert html == copy / "report.html" and data == copy / "report.json"
    assert json.loads(data.read_text())["released"] == 40


def test_publish_and_build_refresh_the_report_in_the_storage(
        tmp_path: Path, rootfs_trees: dict[int, Path],
        vector_images: dict[int, tuple[Path, Path]]) -> None:
    """A report written once into the storage (the BitBake task's, or ``swupd-repo report
    --html STORAGE/report.html``) is written again by every CLI publish and build, as by a
    release: it shows the version just published. None is written where none was."""
    storage = tmp_path / "storage"
    st = Storage(storage)
    done = publish(storage, vector_images[10])
    assert done.returncode == 0, done.stderr
    assert not (storage / "report.html").exists() and not (storage / "report.json").exists()
    assert "report:" not in done.stderr
    html, data = write_report_files(st)

    done = publish(storage, vector_images[20])
    assert done.returncode == 0, done.stderr
    assert f"report: {html}" in done.stderr
    written = json.loads(data.read_text())
    assert [v["version"] for v in written["versions"]] == [10, 20]
    assert (written["latest"], written["released"]) == (20, 20)
    assert [u["from_version"] for u in written["updates"]] == [10]

    tree30 = copy_tree(rootfs_trees[20], tmp_path / "tree30")
    (tree30 / "usr/share/added-in-30").write_text("new in 30\n")
    stamp_version_id(tree30, 30)
    copy_tree(tree30, st.os_core(30))
    done = swupd_repo("build", "--storage", storage, "--version", "30", "--stage")
    assert done.returncode == 0, done.stderr
    written = json.loads(data.read_text())
    assert [v["version"] for v in written["versions"]] == [10, 20, 30]
    assert (written["latest"], written["released"]) == (30, 20)
    assert html.read_text() == to_html(collect(st))  # the page too, not only the JSON


def test_a_report_that_cannot_be_written_does_not_fail_the_build(
        tmp_path: Path, rootfs_trees: dict[int, Path]) -> None:
    """The version is published before the report is written: a report the storage refuses
    (here ``report.html`` is a directory) is a warning, and the build succeeds."""
    storage = tmp_path / "storage"
    build(storage, rootfs_trees[10], 10)
    (storage / "report.html").mkdir()
    copy_tree(rootfs_trees[20], Storage(storage).os_core(20))
    done = swupd_repo("build", "--storage", storage, "--version", "20")
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if "no report written" in line]
    assert len(warnings) == 1 and "report.html" in warnings[0], done.stderr
    assert "published version 20" in done.stdout
    assert Storage(storage).latest() == Storage(storage).released() == 20


def test_missing_www_is_one_line(tmp_path: Path) -> None:
    done = swupd_repo("report", "--storage", tmp_path)
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1
    assert f"{tmp_path}/www does not exist" in done.stderr


# -- pure parts -----------------------------------------------------------------------------

def _entry(path: str, version: int, digest: str = "a" * 64) -> Entry:
    return Entry("F", digest, version, path)


def test_change_counts() -> None:
    old = Manifest(10, entries=[_entry("/a", 10), _entry("/b", 10), _entry("/c", 10)])
    new = Manifest(20, previous=10, entries=[
        _entry("/a", 10), _entry("/b", 20, "b" * 64), deleted_entry("/c", 20),
        _entry("/d", 20), deleted_entry("/gone-long-ago", 5)])
    assert change_counts(old, new) == (1, 1, 1)
    assert change_counts(None, old) == (0, 3, 0)


def test_delta_figures_follow_the_keep_rule() -> None:
    deltas = [DeltaFile(100, 1000), DeltaFile(100, 105), DeltaFile(5, 1000),
              DeltaFile(100, None)]
    assert delta_figures(deltas, 1.05, 8) == (1, 100, 900)


def test_ticks() -> None:
    assert nice_ticks(42) == [0, 10, 20, 30, 40, 50]
    assert byte_ticks(3 * 1024 * 1024)[-1] >= 3 * 1024 * 1024
    assert all(t % (512 * 1024) == 0 for t in byte_ticks(3 * 1024 * 1024))


# -- the page in a real browser -------------------------------------------------------------

class _Plots(HTMLParser):
    """The plots of a rendered DOM: ``{plot id: {series name: number of marks}}``."""

    def __init__(self) -> None:
        super().__init__()
        self.plots: dict[str, dict[str, int]] = {}
        self._plot: str | None = None
        self._series: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "svg" and a.get("class") == "plot":
            self._plot = a["data-plot"]
            self.plots[self._plot] = {}
        elif tag == "g" and a.get("class") == "series" and self._plot:
            self._series = a["data-series"]
            self.plots[self._plot][self._series] = 0
        elif tag in ("rect", "circle", "path") and self._series and self._plot:
            self.plots[self._plot][self._series] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "g":
            self._series = None
        elif tag == "svg":
            self._plot = None


def _png_colours(png: bytes) -> set[tuple[int, ...]]:
    """Pixel colours of an 8-bit RGB(A) PNG (what Chromium writes), every 7th pixel of each
    row (bars and legend boxes are far wider), decoded with zlib alone: no imaging library."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width = 8, b"", 0
    while pos < len(png):
        length, kind = struct.unpack(">I4s", png[pos:pos + 8])
        body = png[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, _height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and colour in (2, 6)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    stride = width * channels
    colours: set[tuple[int, ...]] = set()
    prev = bytearray(stride)
    for row in range(len(raw) // (stride + 1)):
        f = raw[row * (stride + 1)]
        line = bytearray(raw[row * (stride + 1) + 1:(row + 1) * (stride + 1)])
        for i in range(stride):
            left = line[i - channels] if i >= channels else 0
            up, ul = prev[i], prev[i - channels] if i >= channels else 0
            if f == 1:
                line[i] = (line[i] + left) & 255
            elif f == 2:
                line[i] = (line[i] + up) & 255
            elif f == 3:
                line[i] = (line[i] + (left + up) // 2) & 255
            elif f == 4:
                p = left + up - ul
                pa, pb, pc = abs(p - left), abs(p - up), abs(p - ul)
                pred = left if pa <= pb and pa <= pc else up if pb <= pc else ul
                line[i] = (line[i] + pred) & 255
        colours.update(tuple(line[i:i + 3]) for i in range(0, stride, channels * 7))
        prev = line
    return colours


def _chromium(*args: str) -> subprocess.CompletedProcess:
    browser = shutil.which("chromium")
    if browser is None:
        pytest.fail("chromium is not installed (scripts/install-deps installs it)")
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", "--window-size=1400,1100", *args],
                          capture_output=True, text=True, timeout=120, check=False,
                          env={**os.environ, "HOME": os.environ.get("HOME", "/tmp")})


def test_html_plots_render_in_headless_chromium(repo: Path, tmp_path: Path) -> None:
    page = tmp_path / "report.html"
    page.write_text(to_html(collect(Storage(repo))))
    dom = _chromium("--dump-dom", page.as_uri())
    assert dom.returncode == 0, dom.stderr
    parser = _Plots()
    parser.feed(dom.stdout)
    assert {plot: len(series) for plot, series in parser.plots.items()} == {
        "repository-size": 2, "download-to-latest": 2, "changed-files": 3}
    # every series drew marks: 5 versions (a line and 5 points), 3 starting versions (bars)
    assert parser.plots["repository-size"] == {"www/<V> bytes": 6, "repository total": 6}
    assert parser.plots["download-to-latest"] == {"with packs": 3, "without packs": 3}
    assert parser.plots["changed-files"] == {"changed": 5, "added": 5, "deleted": 5}
    shot = tmp_path / "report.png"
    done = _chromium(f"--screenshot={shot}", page.as_uri())
    assert done.returncode == 0 and shot.is_file(), done.stderr
    colours = _png_colours(shot.read_bytes())
    # the series colours (svg.COLOURS) were painted, not just a blank page
    for colour in ("0072b2", "e69f00", "009e73"):
        assert tuple(bytes.fromhex(colour)) in colours, colour
    keep = os.environ.get("SWUPD_REPO_REPORT_SHOT")  # to look at the page after the run
    if keep:
        shutil.copy(shot, keep)
