#!/usr/bin/env bash
# Builds the Debian 12 guest for `make test-systemd`: debootstrap into a directory, then
# `mke2fs -d` makes an ext4 image from it (no loop device, no mount). Writes
# OUT/{rootfs.ext4,vmlinuz,initrd.img} and OUT/done. Run as root (debootstrap chroots).
# The mirror is the one the host's apt already uses (read from its sources).
set -euo pipefail
out=${1:?usage: build-image.sh OUTDIR}
here=$(cd "$(dirname "$0")" && pwd)
# What the guest has: systemd as PID 1, the kernel and its initrd, Python 3.11 (the
# package's only dependency) and the tools the checks use, restic for the [offsite] checks
# (Debian's 0.14, as on a real host). No network configuration. The image cache key
# (run.py image_key) hashes this file, so a change to this list builds a new image.
packages=systemd,systemd-sysv,udev,dbus,linux-image-amd64,initramfs-tools,python3.11,sqlite3,procps,kmod,passwd,apt,restic
size=${T3VM_IMAGE_SIZE:-4G}

mirror=$(sed -n 's/^URIs:[[:space:]]*\([^[:space:]]*\/debian\)[[:space:]]*$/\1/p' \
  /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
if [ -z "$mirror" ]; then
  mirror=$(awk '$1 == "deb" && $3 ~ /^bookworm$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
fi
[ -n "$mirror" ] || { echo "build-image: no Debian mirror in the host's apt sources" >&2; exit 1; }

work=$(mktemp -d /var/tmp/t3vm-root.XXXXXX)
trap 'umount -R "$work/root/proc" "$work/root/sys" 2>/dev/null || true; rm -rf "$work"' EXIT
root=$work/root
echo "build-image: debootstrap bookworm ($packages)"
debootstrap --variant=minbase --include="$packages" bookworm "$root" "$mirror" \
  > "$work/debootstrap.log" 2>&1 || { tail -30 "$work/debootstrap.log" >&2; exit 1; }

cat > "$root/etc/fstab" <<'FSTAB'
/dev/vda / ext4 rw,errors=remount-ro 0 1
FSTAB
echo t3vm > "$root/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 t3vm\n' > "$root/etc/hosts"
: > "$root/etc/machine-id"          # generated at first boot
ln -sf /usr/share/zoneinfo/UTC "$root/etc/localtime"
# The test entry point: mounts the 9p shares and runs the checks for the phase the host
# chose; the guest powers itself off afterwards.
install -m 0755 "$here/guest-boot.sh" "$root/usr/local/sbin/t3vm-boot"
cat > "$root/etc/systemd/system/t3vm.service" <<'UNIT'
[Unit]
Description=t3backupd VM checks
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/usr/local/sbin/t3vm-boot
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity
[Install]
WantedBy=multi-user.target
UNIT
ln -sf /etc/systemd/system/t3vm.service "$root/etc/systemd/system/multi-user.target.wants/t3vm.service"
# No login prompts on the console the host reads.
ln -sf /dev/null "$root/etc/systemd/system/serial-getty@ttyS0.service"
ln -sf /dev/null "$root/etc/systemd/system/getty@tty1.service"
# Persistent journal: a power cut's boot can be read on the next one.
mkdir -p "$root/var/log/journal"
chroot "$root" apt-get clean
rm -rf "$root/var/lib/apt/lists/"*_Packages "$root/var/cache/apt/"*.bin

cp -L "$root/vmlinuz" "$work/vmlinuz"
cp -L "$root/initrd.img" "$work/initrd.img"
mke2fs -q -t ext4 -L t3vm -d "$root" -E root_owner=0:0 "$work/rootfs.ext4" "$size"
mkdir -p "$out"
mv "$work/rootfs.ext4" "$work/vmlinuz" "$work/initrd.img" "$out/"
touch "$out/done"
echo "build-image: $out"
