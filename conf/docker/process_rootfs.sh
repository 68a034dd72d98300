#!/bin/sh
# process_rootfs.sh VERSION: the ostro-swupd-server container's entry point, done by
# meta-swupd-repo's native generator, with the real image's effects on the storage where they
# matter to a caller (docker-contract.md). Run with the whole storage at /var/lib/update.
#
# Reproduces, in the real order:
#   - image/ and log/ created, image/latest.version touched; PREVREL read from it;
#   - www/VERSION from image/VERSION/os-core, pack members staged by hard link from www/ into
#     packstage/ (stage_packs.py; a failed link drops the member, the run still succeeds);
#   - image/VERSION/full: a real copy of os-core (cp -a, xattrs too), not our symlink;
#   - www/version/formatstaging/latest raised when lower;
#   - the `hardlink` merges of basic_creator.sh: image/VERSION/*, image/PREVREL with
#     image/VERSION, www/PREVREL with www/VERSION. util-linux hardlink: equal data, mode,
#     owner and mtime, xattrs ignored, so a file keeping its data but not its xattrs is merged
#     and one side loses them; a failed merge (read-only view, EXDEV) is only reported;
#   - image/latest.version and www/version/format3/latest written at the end.
# Does not reproduce: swupd-server's own tools and their output (the generator is ours, so
# manifests, fullfiles and packs equal the native backend's), bundles other than os-core,
# server.ini/groups.ini, the shell noise, background zero-pack jobs.
#
# The caller (our docker backend, or a user's script) has already decided that VERSION is
# right, hence --force: like swupd-server, the container does not second-guess the version.
# Settings beyond the contract: mount a swupd-repo YAML file at /etc/swupd-repo.yaml.
set -eu
[ $# -eq 1 ] || { echo "usage: $0 VERSION" >&2; exit 2; }
v=$1
u=/var/lib/update
mkdir -p "$u/image" "$u/log"
touch "$u/image/latest.version"
prev=$(cat "$u/image/latest.version")
prev=${prev:-0}

config=
[ -f /etc/swupd-repo.yaml ] && config="--config /etc/swupd-repo.yaml"
# shellcheck disable=SC2086
python3 /opt/swupd-repo/stage_packs.py build $config --storage "$u" --backend native --force \
    --version "$v"

if [ -L "$u/image/$v/full" ]; then
  rm "$u/image/$v/full"
  cp -a "$u/image/$v/os-core" "$u/image/$v/full"
fi
staging=$u/www/version/formatstaging/latest
mkdir -p "${staging%/*}"
current=$(cat "$staging" 2>/dev/null || true)
if [ "${current:-0}" -lt "$v" ]; then echo "$v" >"$staging"; fi

hardlink -q "$u/image/$v"/* || echo "hardlink image/$v/* failed"
if [ "$prev" -gt 0 ] && [ "$prev" != "$v" ]; then
  hardlink -q "$u/image/$prev" "$u/image/$v" || echo "hardlink image/$prev image/$v failed"
  hardlink -q "$u/www/$prev" "$u/www/$v" || echo "hardlink www/$prev www/$v failed"
fi
echo "$v" >"$u/image/latest.version"
mkdir -p "$u/www/version/format3"
echo "$v" >"$u/www/version/format3/latest"
