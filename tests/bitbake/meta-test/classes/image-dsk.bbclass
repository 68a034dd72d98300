# image-dsk.bbclass of the test bed: the image tasks of OE-core's image.bbclass in small,
# with the .dsk output of Ostro's image-dsk class.
#
#   do_rootfs           [fakeroot] IMAGE_ROOTFS from the recipe's rootfs_install, then
#                       every function in ROOTFS_POSTPROCESS_COMMAND (as OE-core runs them)
#   do_image            [fakeroot] ext4 of the rootfs (mkfs.ext4 -d), a GPT .dsk laid out
#                       by DSK_IMAGE_LAYOUT (sgdisk), both into IMGDEPLOYDIR
#   do_image_complete   IMGDEPLOYDIR -> DEPLOY_DIR_IMAGE (OE-core does this through sstate)

IMAGE_BASENAME ?= "${PN}"
# OE-core appends -${DATETIME}; the bed's worker re-parses per task like bitbake-worker but
# has no server to hand it one DATETIME per build, so the bed uses the recipe's version.
IMAGE_VERSION_SUFFIX ?= "-${PV}-${PR}"
IMAGE_NAME ?= "${IMAGE_BASENAME}-${MACHINE}${IMAGE_VERSION_SUFFIX}"
IMAGE_LINK_NAME ?= "${IMAGE_BASENAME}-${MACHINE}"
IMAGE_ROOTFS ?= "${WORKDIR}/rootfs"
IMGDEPLOYDIR ?= "${WORKDIR}/deploy-${PN}-image-complete"
ROOTFS_POSTPROCESS_COMMAND ?= ""

# The disk layout, in the JSON shape of Ostro's DSK_IMAGE_LAYOUT: partitions numbered in
# the sorted order of their keys, sizes in MiB, the rootfs named "rootfs".
DSK_IMAGE_LAYOUT ??= ' \
{ \
    "gpt_initial_offset_mb": 1, \
    "gpt_tail_padding_mb": 1, \
    "partition_01_efi": {"name": "efi", "type": "EF00", "filesystem": "vfat", "size_mb": 1}, \
    "partition_02_swap": {"name": "swap", "type": "8200", "filesystem": "swap", "size_mb": 1}, \
    "partition_03_rootfs": {"name": "rootfs", "type": "8300", "filesystem": "ext4", \
                            "size_mb": 6, "uuid": "${DSK_ROOTFS_PARTUUID}"} \
}'
DSK_ROOTFS_PARTUUID ??= "8b2c3f1e-5d4a-4f6b-9c7d-0e1f2a3b4c5d"

# As OE-core's image.bbclass: the command list is parsed as shell code, so each function it
# names (and what that function reads) is part of do_rootfs's signature.
python () {
    if d.getVar("ROOTFS_POSTPROCESS_COMMAND", False):
        d.setVarFlag("ROOTFS_POSTPROCESS_COMMAND", "func", "1")
}

python do_rootfs () {
    rootfs = d.getVar("IMAGE_ROOTFS")
    bb.utils.mkdirhier(rootfs)
    bb.build.exec_func("rootfs_install", d)
    for cmd in (d.getVar("ROOTFS_POSTPROCESS_COMMAND") or "").replace(";", " ").split():
        bb.note("Executing %s ..." % cmd)
        bb.build.exec_func(cmd, d)
}
do_rootfs[fakeroot] = "1"
do_rootfs[cleandirs] = "${IMAGE_ROOTFS}"
do_rootfs[dirs] = "${WORKDIR}"
do_rootfs[vardeps] += "ROOTFS_POSTPROCESS_COMMAND rootfs_install"
addtask rootfs before do_image

python do_image () {
    import json
    import subprocess

    layout = json.loads(d.getVar("DSK_IMAGE_LAYOUT"))
    parts = [(k, v) for k, v in sorted(layout.items()) if isinstance(v, dict)]
    workdir = d.getVar("WORKDIR")
    deploy = d.getVar("IMGDEPLOYDIR")
    dsk = os.path.join(deploy, d.getVar("IMAGE_NAME") + ".dsk")
    mib = 1024 * 1024
    size = layout["gpt_initial_offset_mb"] + layout["gpt_tail_padding_mb"]
    size += sum(p["size_mb"] for _, p in parts)
    with open(dsk, "wb") as f:
        f.truncate(size * mib)
    cmd = ["sgdisk", "-o"]
    start = layout["gpt_initial_offset_mb"]
    rootfs_at = None
    for number, (key, part) in enumerate(parts, 1):
        first = start * mib // 512
        last = (start + part["size_mb"]) * mib // 512 - 1
        cmd += ["-n", "%d:%d:%d" % (number, first, last), "-t", "%d:%s" % (number, part["type"]),
                "-c", "%d:%s" % (number, part["name"])]
        if part.get("uuid"):
            cmd += ["-u", "%d:%s" % (number, part["uuid"])]
        if key.endswith("_rootfs"):
            rootfs_at = (start, part["size_mb"])
        start += part["size_mb"]
    subprocess.run(cmd + [dsk], check=True, stdout=subprocess.DEVNULL)
    ext4 = os.path.join(workdir, "rootfs.ext4")
    with open(ext4, "wb") as f:
        f.truncate(rootfs_at[1] * mib)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-b", "4096", "-d", d.getVar("IMAGE_ROOTFS"), ext4],
                   check=True)
    with open(ext4, "rb") as src, open(dsk, "r+b") as dst:
        dst.seek(rootfs_at[0] * mib)
        dst.write(src.read())
    os.unlink(ext4)
    link = os.path.join(deploy, d.getVar("IMAGE_LINK_NAME") + ".dsk")
    os.symlink(os.path.basename(dsk), link)
    # as Ostro's image-dsk: the layout under the image's own name (with OE-core's date in it)
    with open(os.path.join(deploy, d.getVar("IMAGE_NAME") + "-disk-layout.json"), "w") as f:
        json.dump(layout, f, indent=4, sort_keys=True)
}
do_image[fakeroot] = "1"
do_image[cleandirs] = "${IMGDEPLOYDIR}"
do_image[dirs] = "${WORKDIR}"
addtask image after do_rootfs before do_image_complete

python do_image_complete () {
    import shutil

    deploy = d.getVar("DEPLOY_DIR_IMAGE")
    bb.utils.mkdirhier(deploy)
    src = d.getVar("IMGDEPLOYDIR")
    for name in sorted(os.listdir(src)):
        target = os.path.join(deploy, name)
        if os.path.lexists(target):
            os.unlink(target)
        shutil.copy2(os.path.join(src, name), target, follow_symlinks=False)
}
addtask image_complete after do_image before do_build
