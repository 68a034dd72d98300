"""Build real Ostro-style ``.dsk`` images for tests and benchmarks (sgdisk + mkfs.ext4 -d).

The same steps as Ostro's ``image-dsk`` class: a sparse file of the summed partition sizes,
``sgdisk -o``, one ``sgdisk -c/-n/-t/-u`` per partition in the sorted order of the layout's
keys, each filesystem made in its own file and copied into its byte range (zeros skipped, so
the image stays sparse). Only the rootfs gets a real filesystem; the others stay empty.

Importable from other tests (``from dsk import ...``; tests/ is on ``sys.path`` under pytest)
and usable as a script: ``python tests/dsk.py SRC OUT.dsk [--layout old|new]``.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
from pathlib import Path

MIB = 1 << 20
ROOTFS_PARTUUID = "12345678-9abc-4def-8123-456789abcdef"

#: Early Ostro: disk-layout-<MACHINE>.json, seven partitions, rootfs at 05.
OLD_LAYOUT_PARTS = (
    ("partition_01_primary_uefi_boot", "primary_uefi", "vfat", "EF00", 1),
    ("partition_02_secondary_uefi_boot", "secondary_uefi", "vfat", "EF00", 1),
    ("partition_03_config", "config", "ext4", "8300", 1),
    ("partition_04_factory", "factory", "ext4", "8300", 1),
    ("partition_05_rootfs", "rootfs", "ext4", "8300", None),
    ("partition_06_mutable", "mutable", "ext4", "8300", 1),
    ("partition_07_home", "home", "ext4", "8300", 1),
)
#: Later Ostro: DSK_IMAGE_LAYOUT, rootfs at 03.
NEW_LAYOUT_PARTS = (
    ("partition_01_primary_uefi_boot", "primary_uefi", "vfat", "EF00", 1),
    ("partition_02_secondary_uefi_boot", "secondary_uefi", "vfat", "EF00", 1),
    ("partition_03_rootfs", "rootfs", "ext4", "8300", None),
)


def make_layout(rootfs_mb: int, generation: str = "old",
                partuuid: str | None = ROOTFS_PARTUUID) -> dict:
    """A layout dict of either generation; the rootfs gets ``rootfs_mb`` and ``partuuid``."""
    parts = OLD_LAYOUT_PARTS if generation == "old" else NEW_LAYOUT_PARTS
    layout: dict = {"gpt_initial_offset_mb": 1, "gpt_tail_padding_mb": 1}
    for key, name, fs, ptype, size in parts:
        layout[key] = {
            "name": name, "uuid": (partuuid or 0) if name == "rootfs" else 0,
            "size_mb": size or rootfs_mb, "source": "", "filesystem": fs, "type": ptype,
        }
    return layout


def mkfs(image: Path, source: Path | None, size_mb: int, fs_type: str = "ext4",
         options: tuple[str, ...] = ("-b", "4096")) -> Path:
    """``mkfs.<fs_type> -d source`` into a fresh ``size_mb`` file.

    ``-E`` options given are merged with ``nodiscard`` (mke2fs keeps only its last ``-E``).
    """
    if image.exists():
        image.unlink()
    with open(image, "wb") as f:
        f.truncate(size_mb * MIB)
    options = tuple(options)
    extended = "nodiscard"
    if "-E" in options:
        at = options.index("-E")
        extended = f"{options[at + 1]},nodiscard"
        options = options[:at] + options[at + 2:]
    cmd = [f"mkfs.{fs_type}", "-F", "-q", *options, "-E", extended]
    if source is not None:
        cmd += ["-d", str(source)]
    subprocess.run([*cmd, str(image)], check=True, capture_output=True)
    return image


def copy_into(src: Path, dst: Path, offset: int) -> None:
    """Copy ``src`` into ``dst`` at ``offset``, skipping all-zero chunks (keeps dst sparse)."""
    chunk = MIB
    zero = bytes(chunk)
    with open(src, "rb") as fin, open(dst, "r+b") as fout:
        pos = 0
        while True:
            data = fin.read(chunk)
            if not data:
                break
            if data != zero[:len(data)]:
                fout.seek(offset + pos)
                fout.write(data)
            pos += len(data)


def extract_rootfs_tar(tar: Path, dest: Path) -> Path:
    """Extract a vectors rootfs tar as the vectors' README says (as root: owners, modes, xattrs)."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["tar", "--xattrs", "--xattrs-include=*", "--numeric-owner", "-xpf",
                    str(tar), "-C", str(dest)], check=True)
    return dest


def sparse_copy(src: Path, dest: Path) -> Path:
    """A private, writable copy of an image that costs only its allocated blocks."""
    subprocess.run(["cp", "--sparse=always", str(src), str(dest)], check=True)
    return dest


def build_dsk(out: Path, layout: dict, rootfs_image: Path) -> Path:
    """Partition ``out`` like Ostro's image class and copy ``rootfs_image`` into the rootfs."""
    keys = sorted(k for k, v in layout.items() if isinstance(v, dict))
    total = layout["gpt_initial_offset_mb"] + layout["gpt_tail_padding_mb"]
    total += sum(layout[k]["size_mb"] for k in keys)
    if out.exists():
        out.unlink()
    with open(out, "wb") as f:
        f.truncate(total * MIB)
    # One sgdisk call (each call sleeps ~1 s telling the kernel to re-read the table); the
    # explicit numbers are what Ostro's "0" (next free entry) gives in this order.
    cmd = ["sgdisk", "-o"]
    start = layout["gpt_initial_offset_mb"]
    rootfs_offset = None
    for number, key in enumerate(keys, start=1):
        part = layout[key]
        cmd += [f"--new={number}:{start}M:+{part['size_mb']}M",
                f"--change-name={number}:{part['name']}", f"--typecode={number}:{part['type']}"]
        if str(part["uuid"]) != "0":
            cmd.append(f"--partition-guid={number}:{part['uuid']}")
        if part["name"] == "rootfs":
            rootfs_offset = start * MIB
        start += part["size_mb"]
    subprocess.run([*cmd, str(out)], check=True, capture_output=True)
    assert rootfs_offset is not None
    copy_into(rootfs_image, out, rootfs_offset)
    return out


def make_dsk(source: Path | None, workdir: Path, name: str = "image", *, rootfs_mb: int = 24,
             generation: str = "old", fs_type: str = "ext4",
             options: tuple[str, ...] = ("-b", "4096"),
             index_dirs: bool = False) -> tuple[Path, Path]:
    """Source tree -> (``name``.dsk, ``name``-disk-layout.json) in ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    layout = make_layout(rootfs_mb, generation)
    fs = mkfs(workdir / f"{name}.rootfs.{fs_type}", source, rootfs_mb, fs_type, options)
    if index_dirs:
        # mkfs -d writes linear directories; e2fsck -D re-packs them with htree indexes
        # (exit status 1 = "errors corrected", which is that optimisation).
        done = subprocess.run(["e2fsck", "-fyD", str(fs)], capture_output=True, check=False)
        assert done.returncode in (0, 1), done.stderr
    dsk = build_dsk(workdir / f"{name}.dsk", layout, fs)
    fs.unlink()
    layout_path = workdir / f"{name}-disk-layout.json"
    layout_path.write_text(json.dumps(layout, indent=4))
    return dsk, layout_path


def debugfs(dsk: Path, offset: int, *requests: str) -> None:
    """Change the filesystem at byte ``offset`` of ``dsk`` with ``debugfs -w``.

    debugfs writes through libext2fs, so every checksum it touches is recomputed: the result
    is damage a checksum cannot see (what a crafted image looks like), not a torn write.
    """
    for request in requests:
        done = subprocess.run(["debugfs", "-w", "-R", request, f"{dsk}?offset={offset}"],
                              capture_output=True, text=True, check=True)
        complaints = [line for line in done.stderr.splitlines()
                      if not line.startswith("debugfs ")]  # the version banner
        assert not complaints, f"debugfs {request!r}: {done.stderr}"


def e2fsck_finds_damage(dsk: Path, offset: int) -> str:
    """``e2fsck -fn`` on the filesystem at ``offset``: its report, asserting it found errors
    (exit status 4: "errors left uncorrected", or 8 when it cannot even open the filesystem,
    as with a bad superblock checksum; -n changes nothing)."""
    done = subprocess.run(["e2fsck", "-fn", f"{dsk}?offset={offset}"], capture_output=True,
                          text=True, check=False)
    assert done.returncode & (4 | 8), f"e2fsck finds nothing wrong:\n{done.stdout}{done.stderr}"
    return done.stdout + done.stderr


def rootfs_offset(layout: dict) -> int:
    """Byte offset of the rootfs partition (what the GPT says, for tests that patch bytes)."""
    start = layout["gpt_initial_offset_mb"]
    for key in sorted(k for k, v in layout.items() if isinstance(v, dict)):
        if layout[key]["name"] == "rootfs":
            return start * MIB
        start += layout[key]["size_mb"]
    raise KeyError("rootfs")


#: A source tree holding every kind of metadata a rootfs can have (see make_rich_tree).
LONG_TARGET = "/usr/lib/" + "long-target-" * 15 + "x" * 11  # 200 characters
#: mkfs -d keeps whole seconds only and no epoch bits (times after 2038 are tested on
#: crafted inodes in test_ext4.py).
TIMES = {"usr/bin/past": -1_000_000, "etc/shadow": 1_500_000_000}


def make_rich_tree(root: Path) -> Path:
    """Write the issue's source tree into ``root`` (needs root: chown, mknod, security.*)."""
    def mkdir(rel: str, mode: int = 0o755, owner: tuple[int, int] = (0, 0)) -> Path:
        path = root / rel
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, *owner)
        os.chmod(path, mode)
        return path

    def write(rel: str, data: bytes, mode: int = 0o644, owner: tuple[int, int] = (0, 0)) -> Path:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.chown(path, *owner)
        os.chmod(path, mode)
        return path

    root.mkdir(parents=True, exist_ok=True)
    for rel in ("etc", "usr/bin", "usr/sbin", "usr/lib", "dev", "var/empty", "home/user",
                "empty/nested/deeper"):
        mkdir(rel)
    mkdir("tmp", 0o1777)
    mkdir("home/user/big-ids", 0o750, (70000, 80000))
    write("etc/shadow", b"root:*:1:0:99999:7:::\n", 0o600)
    write("etc/os-release", b"NAME=Ostro\nVERSION_ID=10\n")
    write("usr/bin/su", b"\x7fELF su" * 100, 0o4755)
    write("usr/bin/wall", b"\x7fELF wall" * 50, 0o2711, (0, 5))
    write("usr/bin/ping", b"\x7fELF ping" * 30, 0o755)
    write("usr/bin/past", b"from 1969\n")
    write("home/user/big-ids/file", b"owned by 70000:80000\n", 0o640, (70000, 80000))
    write("home/user/huge-uid", b"x", 0o644, (4_000_000_000, 3_000_000_000))
    write("empty-file", b"")
    write("etc/patch-me-name", b"tests rename this entry by patching the image\n")
    write("dir with spaces/file with spaces.txt", b"spaces\n")
    write("ünïcødé/名前.txt", "unicode ✓\n".encode())
    write("usr/lib/random.bin", os.urandom(3 * MIB + 123))
    for i in range(40):  # small files: inline data candidates, several inode-table blocks
        write(f"usr/lib/small/{i:02d}.conf", f"key{i}=value\n".encode() * (i % 7))
    # hard-link group of three
    busybox = write("usr/bin/busybox", b"\x7fELF busybox" * 1000, 0o755)
    os.link(busybox, root / "usr/bin/ls")
    os.link(busybox, root / "usr/sbin/init")
    # symlinks: relative, absolute, dangling, 200 characters
    os.symlink("busybox", root / "usr/bin/sh")
    os.symlink("/usr/share/zoneinfo/UTC", root / "etc/localtime")
    os.symlink("../nowhere/at/all", root / "usr/lib/dangling")
    assert len(LONG_TARGET) == 200
    os.symlink(LONG_TARGET, root / "usr/lib/long-link")
    os.lchown(root / "usr/lib/long-link", 1000, 1000)
    # devices (old and new encodings) and a FIFO
    os.mknod(root / "dev/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(root / "dev/loop0", 0o660 | stat.S_IFBLK, os.makedev(7, 0))
    os.mknod(root / "dev/nvme0n1p300", 0o660 | stat.S_IFBLK, os.makedev(259, 300))
    os.mknod(root / "dev/big", 0o600 | stat.S_IFCHR, os.makedev(4000, 1_000_000))
    os.chown(root / "dev/loop0", 0, 6)
    os.mkfifo(root / "dev/initctl", 0o600)
    # sparse file: 24 data islands over 12 MiB (more than 4 extents: an extent tree of depth 1)
    with open(root / "var/sparse.img", "wb") as f:
        for i in range(24):
            f.seek(i * MIB // 2 + (i % 3) * 4096)
            f.write(bytes([i + 1]) * 5000)
        f.truncate(12 * MIB + 7)
    # extended attributes of every namespace swupd hashes
    setx = os.setxattr
    setx(root / "usr/bin/su", "user.comment", b"setuid helper")
    setx(root / "usr/bin/su", "security.ima", bytes.fromhex("0404") + os.urandom(32))
    setx(root / "usr/bin/su", "security.SMACK64", b"_")
    setx(root / "usr/bin/ping", "security.capability",
         bytes.fromhex("0100000200200000000000000000000000000000"))
    setx(root / "etc/shadow", "trusted.big", bytes(range(256)) * 11 + b"y" * 184)  # 3000 B
    setx(root / "etc/shadow", "trusted.small", b"t")
    setx(root / "etc", "security.SMACK64", b"System")
    setx(root / "etc", "security.SMACK64TRANSMUTE", b"TRUE")
    setx(root / "dev/null", "security.SMACK64", b"*")
    setx(root / "usr/bin/sh", "security.SMACK64", b"_", follow_symlinks=False)
    subprocess.run(["setfacl", "-m", "u:1234:rwx,g:2345:r-x", str(root / "home/user/big-ids/file")],
                   check=True)
    subprocess.run(["setfacl", "-d", "-m", "u:1234:rwx,o::---", str(root / "home/user")],
                   check=True)
    subprocess.run(["setfacl", "-m", "u:99:r-x", str(root / "home/user")], check=True)
    for rel, seconds in TIMES.items():
        os.utime(root / rel, ns=(seconds * 1_000_000_000 + 123, seconds * 1_000_000_000 + 456))
    return root


def make_htree_tree(root: Path, count: int = 6000) -> Path:
    """One directory of ``count`` entries (an htree directory once made by mkfs)."""
    big = root / "usr/share/many"
    big.mkdir(parents=True)
    for i in range(count):
        (big / f"entry-{i:05d}-with-a-longer-name").write_bytes(b"")
    (root / "usr/share/other").write_bytes(b"other")
    return root


def describe_tree(root: Path, *, skip: tuple[str, ...] = ("lost+found",),
                  stored: bool = False) -> dict[str, tuple]:
    """Everything swupd hashes (and a bit more) of every path under ``root``, root included:
    type, mode, uid, gid, content hash, link target, device number, xattrs, mtime seconds.

    ``stored``: ``root`` is a stored tree; mode, owner, device number and xattrs come from
    its metadata record (which must exist), the rest from disk.
    """
    import hashlib

    from swupd_repo import treemeta

    record = treemeta.load(root) if stored else None
    assert record is not None or not stored, f"{root} has no metadata record"

    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d not in skip]
        for name in [".", *dirnames, *filenames]:
            path = os.path.join(dirpath, name) if name != "." else dirpath
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if name == "." and rel != ".":
                continue
            st = os.lstat(path)
            meta = (record.get("/" if rel == "." else "/" + rel) if record is not None
                    else treemeta.from_disk(path, st))
            mode = meta.mode
            content = target = None
            if stat.S_ISREG(mode):
                h = hashlib.sha256()
                with open(path, "rb") as f:
                    for chunk in iter(lambda: f.read(MIB), b""):
                        h.update(chunk)
                content = h.hexdigest()
            elif stat.S_ISLNK(mode):
                target = os.readlink(path)
            xattrs = tuple(sorted((os.fsdecode(k), v) for k, v in meta.xattrs.items()))
            rdev = meta.rdev if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else 0
            out[rel] = (stat.S_IFMT(mode), stat.S_IMODE(mode), meta.uid, meta.gid,
                        None if stat.S_ISDIR(mode) else st.st_size, content, target,
                        rdev, xattrs,
                        st.st_mtime_ns // 10**9)
    return out


def hardlink_groups(root: Path) -> set[frozenset[str]]:
    """Sets of paths sharing one inode (only groups of two or more)."""
    groups: dict[tuple[int, int], set[str]] = {}
    for dirpath, _dirs, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if st.st_nlink > 1:
                groups.setdefault((st.st_dev, st.st_ino), set()).add(
                    os.path.relpath(path, root))
    return {frozenset(g) for g in groups.values() if len(g) > 1}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path, help="the .dsk to write (layout JSON beside it)")
    parser.add_argument("--layout", choices=("old", "new"), default="old")
    parser.add_argument("--rootfs-mb", type=int, default=64)
    args = parser.parse_args()
    dsk, layout = make_dsk(args.source, args.out.parent, args.out.stem,
                           rootfs_mb=args.rootfs_mb, generation=args.layout)
    print(dsk, layout)


if __name__ == "__main__":
    main()
