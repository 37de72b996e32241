#!/bin/sh
# Runs the first scenario of the uWSGI tutorial "Reliably use FUSE filesystems
# for uWSGI vassals" under fief: a web page shipped in a zip, mounted with
# fuse-zip on /app inside a vassal's mount namespace and served by busybox
# httpd on http://127.0.0.1:9090/. Kill the fuse-zip daemon to watch fief tear
# the vassal down and start it again from a clean state. Ctrl-C stops the
# emperor and the demo, which then removes what it set up.
#
# Needs root, the fief binary in the repository root (make build), and the
# Debian packages fuse-zip, fuse3, busybox-static, zip and util-linux.
# `make demo` installs them and builds fief first.
set -eu

port=9090
url="http://127.0.0.1:$port/"

say() {
	echo "demo: $*"
}

fail() {
	echo "demo: $*" >&2
	exit 1
}

# Reports whether a TCP socket listens on port $1, in IPv4 or IPv6. It reads
# /proc/net, where the local port is the hex number after the colon and
# state 0A is LISTEN.
port_in_use() {
	hex=$(printf '%04X' "$1")
	cat /proc/net/tcp /proc/net/tcp6 2>/dev/null |
		awk -v suffix=":$hex" '$4 == "0A" && substr($2, length($2) - 4) == suffix { found = 1 } END { exit !found }'
}

# Reports whether $1 is a mount point in this shell's mount namespace.
is_mount_point() {
	awk -v path="$1" '$5 == path { found = 1 } END { exit !found }' /proc/self/mountinfo
}

# --- Preconditions -----------------------------------------------------------

if [ "$(id -u)" != 0 ]; then
	fail "run the demo as root (sudo make demo): fief needs root to create mount and pid namespaces"
fi

root=$(cd "$(dirname "$0")/.." && pwd)
fief=$root/fief
if [ ! -x "$fief" ]; then
	fail "$fief not found: run make demo, which builds it, or make build"
fi

for program in fuse-zip fusermount busybox zip setpriv; do
	if ! command -v "$program" >/dev/null 2>&1; then
		fail "$program not found: run make demo, which installs the Debian packages fuse-zip fuse3 busybox-static zip util-linux"
	fi
done
if [ ! -c /dev/fuse ]; then
	fail "/dev/fuse is missing: load the FUSE kernel module (modprobe fuse)"
fi
if ! id -u nobody >/dev/null 2>&1; then
	fail "user nobody not found: the demo vassal runs as nobody"
fi

if port_in_use "$port"; then
	fail "port $port is busy: stop whatever listens on it (ss -ltnp 'sport = :$port' shows it) and run the demo again"
fi

# The tutorial mounts the app on /app. The demo creates /app when it is
# missing and removes it at the end. It never uses an /app with content.
created_app=
if [ -e /app ] || [ -L /app ]; then
	if [ -L /app ] || [ ! -d /app ]; then
		fail "/app exists and is not a directory: the demo mounts the app there, so move /app away first"
	fi
	if is_mount_point /app; then
		fail "/app is a mount point: the demo mounts the app there, so unmount it first"
	fi
	if [ -n "$(ls -A /app)" ]; then
		fail "/app exists and is not empty: the demo mounts the app there and would hide its content, so move it away first"
	fi
	# fusermount lets a user mount only on a directory the user can write.
	if ! setpriv --reuid=nobody --regid="$(id -g nobody)" --clear-groups test -w /app; then
		fail "/app exists but user nobody cannot write it, so fuse-zip cannot mount there: run chown nobody /app, or remove the empty /app and let the demo create it"
	fi
fi

# --- Set-up and clean-up -----------------------------------------------------

tmp=
emperor_pid=
emperor_waited=
cleaned=

# Sets emperor_pid when a signal arrives between the start of the emperor and
# the assignment of its pid. $! is empty until then, because the emperor is
# the only background job of the script.
find_emperor() {
	if [ -z "$emperor_pid" ] && [ -z "$emperor_waited" ]; then
		emperor_pid=${!:-}
	fi
}

# Stops the emperor if it still runs, removes the temporary folder and the
# /app the demo created, and checks that /app is not mounted on the host.
cleanup() {
	[ -z "$cleaned" ] || return 0
	cleaned=1
	status=0

	find_emperor
	if [ -n "$emperor_pid" ] && kill -0 "$emperor_pid" 2>/dev/null; then
		say "stopping the emperor (pid $emperor_pid)"
		kill -TERM "$emperor_pid" 2>/dev/null || true
		wait "$emperor_pid" 2>/dev/null || true
	fi

	if [ -n "$tmp" ]; then
		rm -rf "${tmp:?}"
	fi

	if is_mount_point /app; then
		echo "demo: error: /app is still mounted on the host after the demo. Unmount it with umount /app" >&2
		status=1
	elif [ -n "$created_app" ]; then
		if rmdir /app; then
			say "removed /app, which the demo had created"
		else
			echo "demo: error: could not remove /app, which the demo had created" >&2
			status=1
		fi
	fi
	if [ "$status" = 0 ]; then
		say "checked: /app is not in the host's mount table"
	fi
	return "$status"
}

on_exit() {
	code=$?
	cleanup || code=1
	exit "$code"
}

# Forwards SIGINT and SIGTERM to the emperor, which stops every vassal in
# parallel and exits 0, so the wait loop below returns. Before the emperor
# starts, the signal ends the demo.
forward_signal() {
	find_emperor
	if [ -z "$emperor_pid" ]; then
		say "stopped by SIG$1 before the emperor started"
		if [ "$1" = INT ]; then exit 130; else exit 143; fi
	fi
	signalled=1
	kill "-$1" "$emperor_pid" 2>/dev/null || true
}

trap on_exit EXIT
trap 'forward_signal INT' INT
trap 'forward_signal TERM' TERM

if [ ! -e /app ]; then
	mkdir /app
	created_app=1
	chown nobody /app
	say "created /app, an empty directory owned by nobody, as the mount point. The demo removes it when it ends."
fi

tmp=$(mktemp -d /tmp/fief-demo.XXXXXX)
# fuse-zip runs as the user nobody and must be able to read the zip.
chmod 0755 "$tmp"
mkdir "$tmp/site" "$tmp/vassals"

cat >"$tmp/site/index.html" <<'EOF'
<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>fief demo</title></head>
<body>
<h1>Served from a zip through FUSE</h1>
<p>This page is index.html inside app.zip. fuse-zip mounts the zip read-only
on /app inside the mount namespace of a fief vassal, and busybox httpd serves
it from there, in the same mount and pid namespaces. On the host, /app stays
an empty directory.</p>
<p>Kill the fuse-zip daemon and load this page again: fief tears the vassal
down and starts it again from a clean state.</p>
</body>
</html>
EOF
(cd "$tmp/site" && zip -q "$tmp/app.zip" index.html)
chmod 0644 "$tmp/app.zip"

cat >"$tmp/vassals/app.ini" <<EOF
; The demo vassal, in the uWSGI ini dialect: the first scenario of the uWSGI
; tutorial "Reliably use FUSE filesystems for uWSGI vassals", with busybox
; httpd in place of a PSGI app.
[uwsgi]
; Run the as-user steps and the program as user nobody, with the primary
; group of nobody.
uid = nobody

; Mount the zip read-only (-r) on /app as user nobody, only on a fresh start.
; A reload restarts only the program, inside the existing namespaces where
; /app is still mounted. fief waits until the mount appears before it goes
; on.
if-not-reload =
  exec-as-user = fuse-zip -r $tmp/app.zip /app
endif =

; The program: busybox httpd in the foreground (-f), on the loopback address
; only, serving the files on /app.
exec = busybox httpd -f -p 127.0.0.1:$port -h /app

; Watch /app. When the mount vanishes or stops answering, for example because
; fuse-zip died, fief stops httpd, runs the atexit steps and ends the vassal.
; The emperor then starts it again with fresh namespaces.
mountpoint-check = /app

; Unmount /app when the vassal stops, as user nobody. This matters for FUSE
; filesystems that write their data on unmount, while fuse-zip -r writes
; nothing.
exec-as-user-atexit = fusermount -u /app
EOF

# The helper finds the demo's fuse-zip by its command line in /proc, so it
# kills that one process and no other fuse-zip on the machine.
cat >"$tmp/kill-fuse-zip.sh" <<EOF
#!/bin/sh
# Sends SIGKILL to the fuse-zip daemon that serves $tmp/app.zip.
set -eu
found=
for dir in /proc/[0-9]*; do
	comm=\$(cat "\$dir/comm" 2>/dev/null) || continue
	[ "\$comm" = fuse-zip ] || continue
	cmdline=\$(tr '\\000' ' ' 2>/dev/null <"\$dir/cmdline") || continue
	case "\$cmdline" in
	*" $tmp/app.zip "*)
		pid=\${dir#/proc/}
		echo "kill -9 \$pid (fuse-zip serving $tmp/app.zip)"
		kill -9 "\$pid"
		found=1
		;;
	esac
done
if [ -z "\$found" ]; then
	echo "no fuse-zip serving $tmp/app.zip is running. The vassal may be starting again: retry in a second." >&2
	exit 1
fi
EOF
chmod 0755 "$tmp/kill-fuse-zip.sh"

# --- Run ---------------------------------------------------------------------

cat <<EOF

fief demo
  vassal file:  $tmp/vassals/app.ini
  the page:     $url   (for example: curl $url)
  kill the FUSE daemon and watch the recovery, from another terminal:
                sh $tmp/kill-fuse-zip.sh
                (or find its pid with ps -ef | grep fuse-zip and run kill -9 PID)
  a second kill within 10 s of the new start shows the backoff: the emperor
  waits 1 s before the next start, then 2 s, 4 s and so on up to 60 s.
  reload, which restarts httpd inside the existing namespaces while fuse-zip
  keeps running, because the if-not-reload block is skipped:
                touch $tmp/vassals/app.ini
  the host's /app stays empty (ls -A /app), because the mount lives in the
  vassal's mount namespace only.
  Ctrl-C stops the emperor and every vassal. The demo then removes what it
  set up.

EOF

"$fief" emperor "$tmp/vassals" &
emperor_pid=$!
say "emperor started, pid $emperor_pid (kill -INT $emperor_pid stops it like Ctrl-C)"

# A trapped signal interrupts wait after forward_signal has passed it on to
# the emperor, so wait again until the emperor has stopped its vassals.
while :; do
	signalled=
	emperor_status=0
	wait "$emperor_pid" || emperor_status=$?
	[ -n "$signalled" ] || break
done
emperor_waited=1
emperor_pid=
say "emperor exited with status $emperor_status"
exit "$emperor_status"
