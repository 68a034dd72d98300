SUMMARY = "A tiny Ostro-style image for the meta-swupd-repo test bed"
DESCRIPTION = "A rootfs of a few files with the metadata swupd hashes (owners, a device, \
a security.* xattr), built into a GPT .dsk and published as a swupd update."
LICENSE = "MIT"

inherit image-dsk swupd-repo

# Text of /etc/motd; local.conf changes it to make a build differ from the one before.
IMAGE_MOTD ??= "Welcome to Ostro"

rootfs_install () {
	cd ${IMAGE_ROOTFS}
	install -d -m 0755 etc usr/bin usr/lib home/ostro dev var/empty
	printf 'NAME="Ostro OS"\nID=ostro\nVERSION_ID=0\nPRETTY_NAME="Ostro OS"\n' > usr/lib/os-release
	ln -s ../usr/lib/os-release etc/os-release
	echo "${IMAGE_MOTD}" > etc/motd
	printf '#!/bin/sh\necho hello\n' > usr/bin/hello
	chmod 0755 usr/bin/hello
	echo "ostro's notes" > home/ostro/notes
	chown -R 1000:1000 home/ostro
	# big enough for a delta (the client gets whole files under 200 bytes), changing with
	# IMAGE_MOTD, owned by a user and labelled: a delta must carry all of it
	install -d -m 0755 usr/share/ostro
	for i in $(seq 1 64); do echo "line $i of the release notes of ${IMAGE_MOTD}"; done \
		> usr/share/ostro/release-notes
	chown 1000:1000 usr/share/ostro/release-notes
	setfattr -n security.SMACK64 -v User usr/share/ostro/release-notes
	chmod 0700 home/ostro
	mknod -m 0666 dev/null c 1 3
	setfattr -n security.SMACK64 -v System usr/bin/hello
}
