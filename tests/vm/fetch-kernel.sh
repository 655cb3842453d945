#!/usr/bin/env bash
# Fetches one Debian kernel package and unpacks what the VM tests boot:
#
#   tests/vm/fetch-kernel.sh PACKAGE VERSION DEST
#
# leaves DEST/vmlinuz and DEST/modules/<name>.ko (uncompressed) for the
# virtio modules the guest loads, then DEST/.complete. A DEST that is
# complete is left as it is, so a second run fetches nothing.
#
# The package comes from this machine's own Debian mirror (the first
# deb.debian.org-style URI in /etc/apt/sources.list*), with the bookworm,
# bookworm-backports and trixie suites listed in a sources file of this
# script's own: the machine's apt configuration and lists are not touched.
# Needs apt-get and dpkg-deb (any Debian), and xz or busybox for the
# trixie kernels' .ko.xz modules.
set -euo pipefail

pkg="$1" version="$2" dest="$3"
[ -f "$dest/.complete" ] && { echo "$dest: cached"; exit 0; }

mirror=$(grep -rhoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
	| grep -v security | head -1 | tr -d ' ' || true)
mirror="${NODEWATCH_DEBIAN_MIRROR:-${mirror:-http://deb.debian.org/debian}}"
mirror="${mirror%/}"

work="$dest.fetch"
rm -rf "$work"
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/deb"
cat >"$work/sources.list" <<SOURCES
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror bookworm-backports main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie main
SOURCES
apt=(-o "Dir::Etc::sourcelist=$work/sources.list" -o Dir::Etc::sourceparts=- \
	-o "Dir::State::lists=$work/lists" -o "Dir::Cache=$work/cache" \
	-o Debug::NoLocking=1 -o APT::Sandbox::User=root -q)
echo "fetching $pkg=$version from $mirror"
apt-get "${apt[@]}" update >/dev/null
(cd "$work/deb" && apt-get "${apt[@]}" download "$pkg=$version" >/dev/null)
deb=$(ls "$work"/deb/*.deb)
dpkg-deb -x "$deb" "$work/root"

mkdir -p "$dest/modules"
cp "$(ls "$work"/root/boot/vmlinuz-*)" "$dest/vmlinuz"
# The guest's disk and network: virtio-blk and virtio-net with what they
# need, as far as the package builds them as modules (the cloud kernels do).
for m in virtio virtio_ring virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci failover net_failover virtio_blk virtio_net; do
	ko=$(find "$work/root" -name "$m.ko" -o -name "$m.ko.xz" | head -1)
	[ -n "$ko" ] || continue
	case "$ko" in
	*.xz)
		if command -v xz >/dev/null; then xz -dc "$ko"; else busybox unxz -c "$ko"; fi >"$dest/modules/$m.ko" ;;
	*) cp "$ko" "$dest/modules/$m.ko" ;;
	esac
	echo "$m" >>"$dest/modules/order"
done
touch "$dest/modules/order"
rm -rf "$work"
touch "$dest/.complete"
echo "$dest: $(basename "$deb")"
