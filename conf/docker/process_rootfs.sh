#!/bin/sh
# process_rootfs.sh VERSION: the ostro-swupd-server container's entry point, done by
# meta-swupd-repo's native generator. Input: /var/lib/update/image/VERSION/os-core; output:
# /var/lib/update/www/VERSION, then image/latest.version and www/version/format3/latest
# (like the original, which writes both markers at the end).
#
# The caller (our docker backend, or a user's script) has already decided that VERSION is
# right, hence --force: like swupd-server, the container does not second-guess the version.
# Settings beyond the contract: mount a swupd-repo YAML file at /etc/swupd-repo.yaml.
set -eu
[ $# -eq 1 ] || { echo "usage: $0 VERSION" >&2; exit 2; }
config=
[ -f /etc/swupd-repo.yaml ] && config="--config /etc/swupd-repo.yaml"
# shellcheck disable=SC2086
exec swupd-repo build $config --storage /var/lib/update --backend native --force --version "$1"
