#!/bin/sh
# Measures the floor under fief init's boot times in QEMU (TCG), with the
# kernel and QEMU settings of bench/vm.sh. It prints the median of three
# boots (FIEF_VM_FLOOR_RUNS) for each of these times:
#
#   C exec-to-main:   The time from the kernel's exec of /init to main of a
#                     static C program (bench/vmfloor/floor.c).
#   Go exec-to-main:  The same for a static Go program that imports only
#                     syscall, strconv, strings and unsafe
#                     (bench/vmfloor/goinit).
#   C system work:    The time floor.c takes for the system calls that fief
#                     init makes before its first vassal, with no other work.
#                     These are the mounts, bringing up lo, inotify, one
#                     console line, reading the vassal files, and a fork and
#                     exec into new mount and pid namespaces.
#
# Needs root, qemu-system-x86_64, Go, a C compiler with a static libc (gcc,
# libc6-dev), xz and the kernel that bench/vm.sh uses. Run it after make
# build, because fief writes the initramfs.
set -eu

runs=${FIEF_VM_FLOOR_RUNS:-3}
here=$(cd "$(dirname "$0")/.." && pwd)
fief=$here/fief
cache=/var/cache/fief-test

[ "$(id -u)" = 0 ] || { echo "bench/vm-floor.sh: must run as root" >&2; exit 1; }
[ -x "$fief" ] || { echo "bench/vm-floor.sh: $fief not found: run make build first" >&2; exit 1; }
for tool in qemu-system-x86_64 cc go; do
	command -v "$tool" >/dev/null || { echo "bench/vm-floor.sh: $tool not found: install it" >&2; exit 1; }
done
vmlinux=$(ls -1 "$cache"/vmlinux-* 2>/dev/null | head -n 1 || true)
[ -n "$vmlinux" ] || { echo "bench/vm-floor.sh: no vmlinux-* kernel found in $cache: run bench/vm.sh once first" >&2; exit 1; }

work=$(mktemp -d /tmp/fief-vm-floor.XXXXXX)
trap 'rm -rf "$work"' EXIT INT TERM

cc -static -O2 -o "$work/floor-c" "$here/bench/vmfloor/floor.c"
(cd "$here" && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$work/floor-go" ./bench/vmfloor/goinit)
echo "exec = /bin/busybox httpd -f -p 127.0.0.1:8080 -h /www" > "$work/app.ini"
"$fief" mkinitramfs -o "$work/c.cpio" --init "$work/floor-c" --vassal "$work/app.ini" >/dev/null
"$fief" mkinitramfs -o "$work/go.cpio" --init "$work/floor-go" >/dev/null

# boot INITRD [PARAMETER...] boots INITRD once, with the kernel parameters
# PARAMETER, and prints the console's "floor: " lines.
boot() {
	initrd=$1
	shift
	timeout 120 qemu-system-x86_64 -accel tcg -m 512 -nographic -no-reboot \
		-kernel "$vmlinux" -initrd "$initrd" \
		-append "console=ttyS0 panic=-1 quiet $*" \
		-device isa-debug-exit,iobase=0xf4,iosize=0x04 > "$work/console" 2>&1 || true
	# grep -o, because the first line may follow the firmware's text on the
	# same console line.
	if ! grep -ao 'floor: .*' "$work/console" | tr -d '\r' > "$work/lines"; then
		echo "bench/vm-floor.sh: no \"floor: \" line found on the console of $initrd:" >&2
		cat "$work/console" >&2
		exit 1
	fi
	cat "$work/lines"
}

i=1
while [ "$i" -le "$runs" ]; do
	boot "$work/c.cpio" > "$work/boot"
	sed 's/^floor: /c /' "$work/boot" >> "$work/results"
	boot "$work/go.cpio" > "$work/boot"
	sed 's/^floor: /go /' "$work/boot" >> "$work/results"
	boot "$work/c.cpio" FLOOR_MODE=system > "$work/boot"
	sed 's/^floor: /c /' "$work/boot" >> "$work/results"
	i=$((i + 1))
done

echo "floor under fief init in QEMU (tcg, $(basename "$vmlinux"), median of $runs boots)"
# Lines read "PROGRAM WHAT [STEP] VALUE ms", and the key is all but the value.
awk '{
	key = $1
	for (f = 2; f < NF - 1; f++)
		key = key " " $f
	values[key] = values[key] " " $(NF - 1)
}
END {
	for (key in values) {
		count = split(values[key], v, " ")
		# Sort the few values numerically in place.
		for (a = 1; a <= count; a++) {
			for (b = a + 1; b <= count; b++) {
				if (v[b] + 0 < v[a] + 0) {
					t = v[a]
					v[a] = v[b]
					v[b] = t
				}
			}
		}
		median = count % 2 ? v[(count + 1) / 2] : (v[count / 2] + v[count / 2 + 1]) / 2
		printf "%-32s %8.2f ms  (%s )\n", key, median, values[key]
	}
}' "$work/results" | sort
