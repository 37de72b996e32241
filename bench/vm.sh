#!/bin/sh
# Boots fief init in QEMU (TCG) several times and prints fief's own time
# from the start of /init to the first vassal started, and from the end of
# the workload to power-off, as fief logs them. Needs root, qemu-system-x86,
# linux-image-amd64, busybox-static and xz-utils; run after make build.
set -eu

runs=${FIEF_VM_BENCH_RUNS:-5}
here=$(cd "$(dirname "$0")/.." && pwd)
fief=$here/fief
cache=/var/cache/fief-test

[ "$(id -u)" = 0 ] || { echo "bench/vm.sh: run as root" >&2; exit 1; }
[ -x "$fief" ] || { echo "bench/vm.sh: $fief is missing; run make build" >&2; exit 1; }
for tool in qemu-system-x86_64 xz busybox; do
	command -v "$tool" >/dev/null || { echo "bench/vm.sh: $tool is missing; run make bench-deps" >&2; exit 1; }
done

# The newest kernel in /boot that has its modules, uncompressed and cached:
# QEMU boots vmlinux through its PVH note about 3 s faster than vmlinuz.
vmlinuz=$(ls -1 /boot/vmlinuz-* 2>/dev/null | sort -V | tail -n 1)
[ -n "$vmlinuz" ] || { echo "bench/vm.sh: no /boot/vmlinuz-*; install linux-image-amd64" >&2; exit 1; }
release=${vmlinuz#/boot/vmlinuz-}
# The integration tests cache the same image under a name with the size and
# mtime of vmlinuz; either name will do.
vmlinux=$(ls -1 "$cache/vmlinux-$release"-* 2>/dev/null | head -n 1 || true)
if [ -z "$vmlinux" ]; then
	vmlinux=$cache/vmlinux-$release-bench
	mkdir -p "$cache"
	# The bzImage contains the kernel as one xz stream, whose magic is FD 37 7A
	# 58 5A 00. grep -P needs the C locale to match raw bytes.
	offset=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$vmlinuz" | head -n 1 | cut -d: -f1)
	[ -n "$offset" ] || { echo "bench/vm.sh: no xz stream in $vmlinuz" >&2; exit 1; }
	tail -c +$((offset + 1)) "$vmlinuz" | xz -dc --single-stream > "$vmlinux.tmp" 2>/dev/null || true
	if [ "$(head -c 4 "$vmlinux.tmp" | od -An -c | tr -d ' ')" != "177ELF" ]; then
		rm -f "$vmlinux.tmp"
		echo "bench/vm.sh: extracting the kernel from $vmlinuz gave no ELF image" >&2
		exit 1
	fi
	mv "$vmlinux.tmp" "$vmlinux"
fi

work=$(mktemp -d /tmp/fief-vm-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT INT TERM

mkdir -p "$work/www"
echo "served in the VM" > "$work/www/index.html"
cat > "$work/app.ini" <<VASSAL
exec = /bin/busybox httpd -f -p 127.0.0.1:8080 -h /www
VASSAL
# The check waits for the page, then ends the VM: the emperor stops the
# vassal and fief powers off.
cat > "$work/check.sh" <<'CHECK'
#!/bin/busybox sh
for i in $(/bin/busybox seq 200); do
	/bin/busybox wget -q -O /dev/null http://127.0.0.1:8080/ && exit 0
	/bin/busybox sleep 0.01
done
exit 1
CHECK
chmod 755 "$work/check.sh"

"$fief" mkinitramfs -o "$work/initrd.cpio" --kernel-version "$release" \
	--add /bin/busybox --add "$work/www:/www" --add "$work/check.sh:/check.sh" \
	--vassal "$work/app.ini" >/dev/null

accel=tcg
if [ -e /sys/module/kvm_intel ] || [ -e /sys/module/kvm_amd ]; then
	accel=kvm
fi

echo "fief init in QEMU ($accel, kernel $release, $runs boots)"
printf '%-5s %-14s %-28s %-24s\n' run "boot wall" "init start -> first vassal" "workload end -> power-off"
i=1
while [ "$i" -le "$runs" ]; do
	begin=$(date +%s%N)
	status=0
	timeout 120 qemu-system-x86_64 -accel "$accel" -m 512 -nographic -no-reboot \
		-kernel "$vmlinux" -initrd "$work/initrd.cpio" \
		-append "console=ttyS0 panic=-1 quiet fief.exec=/check.sh fief.exit-port=0xf4" \
		-device isa-debug-exit,iobase=0xf4,iosize=0x04 > "$work/console.$i" 2>&1 || status=$?
	wall=$(( ($(date +%s%N) - begin) / 1000000 ))
	first=$(grep -o 'since_init_start=[^ ]*' "$work/console.$i" | tail -n 1 | sed 's/.*=//')
	off=$(grep -o 'since_workload_end=[^ ]*' "$work/console.$i" | tail -n 1 | sed 's/.*=//')
	if [ "$status" != 1 ] || [ -z "$first" ] || [ -z "$off" ]; then
		echo "bench/vm.sh: boot $i failed (QEMU status $status, first vassal '$first', power-off '$off'); console:" >&2
		cat "$work/console.$i" >&2
		exit 1
	fi
	printf '%-5s %-14s %-28s %-24s\n' "$i" "${wall} ms" "$first" "$off"
	i=$((i + 1))
done
echo "target: under 50ms of fief's own work for each"
