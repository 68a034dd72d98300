# swupd-repo.bbclass: every build of this image ends with a published swupd (format 3) update.
#
# Inherit it in an image recipe that deploys a GPT .dsk (Ostro's image-dsk class does):
#
#     inherit swupd-repo
#
# The version of the build (OS_VERSION) is fixed when the recipe is parsed: the storage's
# latest version + SWUPD_REPO_VERSION_STEP (10 for the first build). do_rootfs writes it into
# the rootfs as VERSION_ID in /usr/lib/os-release (swupd_repo_os_release, run as a
# ROOTFS_POSTPROCESS_COMMAND). After do_image_complete, do_swupd_repo extracts the rootfs
# partition of the .dsk into ${SWUPD_REPO_STORAGE_DIR}/image/<OS_VERSION>/os-core, writes
# www/<OS_VERSION> and then moves the latest markers; devices download from
# ${SWUPD_REPO_STORAGE_DIR}/www (`swupd-repo serve --storage ${SWUPD_REPO_STORAGE_DIR}`).
#
# Every SWUPD_REPO_<KEY> variable below (but SWUPD_REPO_GENERATE) is the key <key> of
# conf/swupd-repo.yaml, the defaults shared with the `swupd-repo` command line, and OS_VERSION
# is its os_version; the defaults below are equal to that file's (tests/test_layer.py checks).
# The work is done by the swupd_repo library (../lib, put on the Python path by layer.conf);
# this class only maps variables and declares the task.

# "0" builds the image without publishing it: do_swupd_repo is removed from the recipe.
SWUPD_REPO_GENERATE ??= "1"

# Storage directory holding image/<version>/os-core (+ its metadata record os-core.meta)
# and www/ (the layout of the ostro-swupd-server container, so either backend can continue
# the other's history). One per image and MACHINE by default: two images built together
# never share a version history. Images may share one on purpose (their tasks then run one
# after the other); give each its own OS_VERSION then, since both parse latest + step.
# Nothing here needs pseudo: the storage is read and written as the build user, so it must
# stay out of PSEUDO_INCLUDE_PATHS (OE-core leaves ${TOPDIR}/swupd-repo out).
SWUPD_REPO_STORAGE_DIR ??= "${TOPDIR}/swupd-repo/${PN}-${MACHINE}"

# What writes www/<version>: "native" (the embedded generator) or "docker" (the
# swupd-server container through the Docker Engine API).
SWUPD_REPO_BACKEND ??= "native"

# Distance between two builds' versions; Clear Linux reserves the last digit, hence 10.
SWUPD_REPO_VERSION_STEP ??= "10"

# Version of this build, a positive integer above the storage's latest version; the
# default is that latest version + SWUPD_REPO_VERSION_STEP (first build: 10). The image's
# os-release must say the same (the class takes care of that), or do_swupd_repo refuses.
OS_VERSION ??= "${@swupd_repo_next_os_version(d)}"

# disk-layout JSON of the image. Empty: ${DEPLOY_DIR_IMAGE}/${IMAGE_NAME}-disk-layout.json
# (what image-dsk deploys), then ${IMAGE_LINK_NAME}-disk-layout.json, then
# disk-layout-${MACHINE}.json in DEPLOY_DIR_IMAGE or on FILESPATH, then the text of
# DSK_IMAGE_LAYOUT itself (the first that exists).
SWUPD_REPO_DISK_LAYOUT ??= ""

# The .dsk image whose rootfs partition is published.
SWUPD_REPO_DISK_IMAGE ??= "${DEPLOY_DIR_IMAGE}/${IMAGE_LINK_NAME}.dsk"

# Rootfs partition number or name; empty = the one the layout names (key ending in _rootfs).
SWUPD_REPO_PARTITION ??= ""

# How many earlier change points of a bundle get delta packs (the container uses 2).
SWUPD_REPO_DELTAPACK_VERSIONS ??= "2"

# After each publish, remove the stored image/<V> trees no future build reads (under the
# storage lock, crash-safe), keeping at least this many newest trees; latest and the change
# points delta packs start from are always kept. "0" keeps every tree. Unchanged files of
# consecutive trees share storage (hard links) either way.
SWUPD_REPO_KEEP_TREES ??= "0"

# Fullfile compression: "gzip", "xz", or "smallest" (tries gzip/xz/bzip2 like swupd-server).
SWUPD_REPO_COMPRESSION ??= "gzip"

# Worker processes for hashing, compression and deltas; "0" = all usable cores.
SWUPD_REPO_JOBS ??= "0"

# Largest regular file in the rootfs, in bytes (apparent size: holes count); a larger one stops
# the task naming this variable. Publishing reads every byte of a file several times (hash,
# compressed fullfiles, packs), about half a minute per GiB, so the default (4 GiB) bounds it.
SWUPD_REPO_MAX_FILE_SIZE ??= "4294967296"

# Signing material (PEM). Key and certificate together sign Manifest.MoM; empty = unsigned.
SWUPD_REPO_SIGNING_KEY ??= ""
SWUPD_REPO_SIGNING_CERT ??= ""
# Optional chain of intermediate certificates, and a file holding the key's passphrase.
SWUPD_REPO_SIGNING_CHAIN ??= ""
SWUPD_REPO_SIGNING_PASSPHRASE_FILE ??= ""

# Docker backend: the swupd-server image, its command (the version is appended), whether it
# runs privileged, extra volumes ("HOST:CONTAINER[:ro]", space separated) and the engine
# address. An empty SWUPD_REPO_DOCKER_HOST uses DOCKER_HOST: BitBake empties a task's
# environment, so it is taken from the datastore (add DOCKER_HOST to
# BB_ENV_PASSTHROUGH_ADDITIONS) or else from the environment bitbake was started in
# (BB_ORIGENV), as OE-core's fetcher does for proxies; without either, the default socket.
# Owners, device nodes and security.* xattrs of a stored tree are in its metadata record,
# not on disk: the backend first has the engine unpack a copy of the tree with them
# (STORAGE/.swupd-repo-docker-os-core.*, removed after the run) and mounts that copy as
# image/<version>/os-core in the container.
SWUPD_REPO_DOCKER_IMAGE ??= "ostroproject/ostro-swupd-server"
SWUPD_REPO_DOCKER_COMMAND ??= "/home/clrbuilder/projects/process_rootfs.sh"
SWUPD_REPO_DOCKER_PRIVILEGED ??= "1"
SWUPD_REPO_DOCKER_VOLUMES ??= ""
SWUPD_REPO_DOCKER_HOST ??= ""

# "1" runs the repository check (consistency and an update simulation) before moving latest.
SWUPD_REPO_CHECK ??= "0"

# "1" allows rebuilding an existing www/<OS_VERSION> (never a version below the latest).
SWUPD_REPO_FORCE ??= "0"

# "1" makes this build a rebase (Clear's minimum version): every live manifest entry gets
# OS_VERSION as its last change, with its fullfile in www/<OS_VERSION>/files, so that
# `swupd-repo prune --www-before <OS_VERSION>` may later retire the www/ of older versions
# (devices on them still update: their small manifest files stay). Set it for one build,
# e.g. `SWUPD_REPO_REBASE = "1"` in local.conf, then remove it; every later build would be a
# full respin. Native backend only.
SWUPD_REPO_REBASE ??= "0"

# "0" stages the build: www/<OS_VERSION> is published (and checked, with SWUPD_REPO_CHECK)
# but www/version/format3/latest stays where it was, so devices do not see it until
# `swupd-repo release <OS_VERSION> --storage ${SWUPD_REPO_STORAGE_DIR}`. The next build still
# gets the next version and is built on this one. Try a staged version on a device with
# `swupd-repo client update --version <OS_VERSION>`.
SWUPD_REPO_RELEASE ??= "1"

# "1" writes ${SWUPD_REPO_STORAGE_DIR}/report.html (plots, works offline) and report.json
# after each publish: per version sizes and changes, per earlier version the download to
# latest (`swupd-repo report`); `swupd-repo publish`, `build`, `release`, `revert` and
# `prune --www-before` write it again. "0" skips it.
SWUPD_REPO_REPORT ??= "1"

# Bundles beside os-core, which devices add with bundle-add (the swupd client tracks them in
# /usr/share/clear/bundles/<name>): space-separated names (letters, digits, - and _; not
# os-core, full or MoM), each given content by one or both varflags:
#   SWUPD_REPO_BUNDLES = "debug docs"
#   SWUPD_REPO_BUNDLE_PACKAGES[debug] = "gdb strace"
#   SWUPD_REPO_BUNDLE_GLOBS[docs] = "/usr/share/doc/** /usr/share/man/**"
# Packages are resolved through the package database inside the image's rootfs (dpkg, opkg or
# rpm: keep it with IMAGE_FEATURES += "package-management"), their paths mapped through the
# rootfs' symlinks (merged /usr). Globs match manifest paths: * and ? within a name, ** across
# directories, DIR/** is DIR and everything below it. A path claimed by two bundles stops the
# task; a directory belongs to a bundle only if everything under it does, else os-core keeps
# it; os-core is what no bundle claims. The split is resolved once, when the rootfs is
# stored (image/<version>/os-core.bundles), and each bundle gets its tracking file.
# Empty: os-core only. Needs the native backend.
SWUPD_REPO_BUNDLES ??= ""

# Everything do_swupd_repo reads: its signature changes when one of them does.
SWUPD_REPO_TASK_VARIABLES = "\
    OS_VERSION SWUPD_REPO_STORAGE_DIR SWUPD_REPO_BACKEND SWUPD_REPO_VERSION_STEP \
    SWUPD_REPO_DISK_LAYOUT SWUPD_REPO_DISK_IMAGE SWUPD_REPO_PARTITION \
    SWUPD_REPO_DELTAPACK_VERSIONS SWUPD_REPO_KEEP_TREES SWUPD_REPO_COMPRESSION \
    SWUPD_REPO_MAX_FILE_SIZE \
    SWUPD_REPO_SIGNING_KEY SWUPD_REPO_SIGNING_CERT SWUPD_REPO_SIGNING_CHAIN \
    SWUPD_REPO_SIGNING_PASSPHRASE_FILE SWUPD_REPO_DOCKER_IMAGE SWUPD_REPO_DOCKER_COMMAND \
    SWUPD_REPO_DOCKER_PRIVILEGED SWUPD_REPO_DOCKER_VOLUMES SWUPD_REPO_DOCKER_HOST \
    SWUPD_REPO_CHECK SWUPD_REPO_FORCE SWUPD_REPO_REBASE SWUPD_REPO_RELEASE SWUPD_REPO_REPORT \
    SWUPD_REPO_BUNDLES SWUPD_REPO_BUNDLE_PACKAGES SWUPD_REPO_BUNDLE_GLOBS \
    DSK_IMAGE_LAYOUT IMAGE_LINK_NAME MACHINE \
"

def swupd_repo_bundle_vardeps(d):
    """Each bundle's SWUPD_REPO_BUNDLE_PACKAGES[name] and SWUPD_REPO_BUNDLE_GLOBS[name]."""
    import swupd_repo.bitbake
    return swupd_repo.bitbake.bundle_vardeps(d)

def swupd_repo_next_os_version(d):
    """OS_VERSION's default: the storage's latest version + SWUPD_REPO_VERSION_STEP."""
    import swupd_repo.bitbake
    return str(swupd_repo.bitbake.next_os_version(d))

# Fixes OS_VERSION for the whole build (and checks it), makes BitBake re-parse the recipe
# once a build has published (so the next one gets the next version), and honours
# SWUPD_REPO_GENERATE. A storage it cannot read or create skips this recipe only, with the
# reason (bb.parse.SkipRecipe), so the rest of the build goes on. This has to happen at parse time: the version is part of do_rootfs's
# signature, and deltask only works there; hence anonymous python despite its cost (one
# small file read per parse of an image recipe).
# nooelint: oelint.task.noanonpython
python __anonymous () {
    import swupd_repo.bitbake
    swupd_repo.bitbake.setup_recipe(d)
}

# Writes VERSION_ID=${OS_VERSION} into the rootfs' usr/lib/os-release (the file the swupd
# client reads first) and keeps etc/os-release the same. A function, not a task: it has no
# [doc] because `bitbake -c listtasks` never shows it.
# nooelint: oelint.task.docstrings
python swupd_repo_os_release () {
    import swupd_repo.bitbake
    swupd_repo.bitbake.write_os_release(d)
}
swupd_repo_os_release[vardeps] += "OS_VERSION"
ROOTFS_POSTPROCESS_COMMAND += "swupd_repo_os_release"

python do_swupd_repo () {
    import swupd_repo.bitbake
    swupd_repo.bitbake.publish_image(d)
}

# Runs before the task takes its lock file beside the storage: a location that cannot be
# created gets one error naming SWUPD_REPO_STORAGE_DIR, not BitBake's lock traceback. A
# function, not a task: it has no [doc] because `bitbake -c listtasks` never shows it.
# nooelint: oelint.task.docstrings
python swupd_repo_check_storage () {
    import swupd_repo.bitbake
    swupd_repo.bitbake.check_storage_location(d)
}
do_swupd_repo[prefuncs] += "swupd_repo_check_storage"
addtask swupd_repo after do_image_complete before do_build
do_swupd_repo[doc] = "Publishes the image's rootfs as version OS_VERSION of the swupd repository in SWUPD_REPO_STORAGE_DIR"
# No [fakeroot]: the extraction keeps owners, device nodes and security.* xattrs in the
# tree's metadata record (STORAGE/image/<version>/os-core.meta) instead of on disk, so the
# task needs no pseudo, and the storage belongs to no recipe's pseudo database: rm_work,
# cleanall, another build directory or the swupd-repo command line all read it alike.
# The docker backend talks to the engine at SWUPD_REPO_DOCKER_HOST (or DOCKER_HOST): a task
# without [network] runs in a new network namespace, where a tcp:// engine is unreachable.
# bitbake-worker expands this flag and reads it with bb.utils.to_boolean ("" = no network).
# Nothing is downloaded: the container's image must already be in the engine.
# nooelint: oelint.task.network
do_swupd_repo[network] = "${@'1' if d.getVar('SWUPD_REPO_BACKEND') == 'docker' else ''}"
# SWUPD_REPO_CHECK = "1" installs and updates scratch roots with the image's owners; a task
# may not chown, so that simulation runs under the build's pseudo (FAKEROOTCMD) with a
# database and PSEUDO_INCLUDE_PATHS of its own scratch directory. Its server listens on the
# loopback interface of the task's own network namespace: no [network] needed.
do_swupd_repo[depends] += "${@'virtual/fakeroot-native:do_populate_sysroot' if bb.utils.to_boolean(d.getVar('SWUPD_REPO_CHECK')) else ''}"
# One writer per storage directory, also across images and multiconfigs sharing it.
do_swupd_repo[lockfiles] = "${SWUPD_REPO_STORAGE_DIR}.bitbake.lock"
do_swupd_repo[vardeps] += "${SWUPD_REPO_TASK_VARIABLES}"
# The bundles' varflags, named one by one (see swupd_repo.bitbake.bundle_vardeps).
do_swupd_repo[vardeps] += "${@swupd_repo_bundle_vardeps(d)}"
# The number of workers changes how fast the repository is written, never what is written.
do_swupd_repo[vardepsexclude] += "SWUPD_REPO_JOBS"
