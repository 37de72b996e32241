#!/bin/sh
# Runs the side-by-side benchmarks (bench/*.go) of the fief emperor and the
# uWSGI Emperor, of "fief --" and tini, and of "fief exec-as-user" and gosu,
# and prints the results tables. BENCHMARKS.md describes the method.
# Needs root and the Debian packages that "make bench-deps" installs.
# Arguments go to the harness, e.g. ./bench/run.sh -runs 3 -sides uwsgi, or
# ./bench/run.sh -only container to run the tini and gosu comparisons only.
# -only takes a comma-separated list of emperor, union, recovery, scale and
# container.
set -eu
cd "$(dirname "$0")/.."

if ! command -v go >/dev/null 2>&1 && [ -x /usr/local/go/bin/go ]; then
	PATH=$PATH:/usr/local/go/bin
fi

if [ "$(id -u)" != 0 ]; then
	echo "bench: must run as root: vassals need new mount and pid namespaces and FUSE mounts" >&2
	exit 1
fi

# The sections that -only selects, if any. The harness checks the value, and
# the paths of tini and gosu, which flags can change.
only=""
previous=""
for arg in "$@"; do
	case "$arg" in
	-only=* | --only=*) only=${arg#*=} ;;
	esac
	case "$previous" in
	-only | --only) only=$arg ;;
	esac
	previous=$arg
done

# selected SECTION succeeds when -only is empty or names SECTION.
selected() {
	case ",$only," in
	,, | *,"$1",*) return 0 ;;
	esac
	return 1
}

missing=""
command -v go >/dev/null 2>&1 || missing="$missing go"
uses_uwsgi=false
for section in emperor union recovery scale; do
	selected "$section" && uses_uwsgi=true
done
if $uses_uwsgi; then
	for tool in uwsgi fuse-zip busybox; do
		command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"
	done
	# Debian's uwsgi-core loads plugins from this directory. The union and
	# scale sections serve static files through the notfound plugin.
	for plugin in psgi notfound; do
		[ -f "/usr/lib/uwsgi/plugins/${plugin}_plugin.so" ] || missing="$missing ${plugin}_plugin.so"
	done
fi
if selected union; then
	command -v unionfs-fuse >/dev/null 2>&1 || missing="$missing unionfs-fuse"
fi
if [ -n "$missing" ]; then
	echo "bench: missing:$missing; run 'make bench-deps' (Debian packages uwsgi-core, uwsgi-plugin-psgi, fuse-zip, unionfs-fuse, busybox-static) or install Go" >&2
	exit 1
fi
if $uses_uwsgi && [ ! -c /dev/fuse ]; then
	echo "bench: /dev/fuse is missing: load the fuse module (modprobe fuse)" >&2
	exit 1
fi

# Rebuild fief when the binary is missing or older than a source file.
if [ ! -x ./fief ] || [ -n "$(find . -path ./bench -prune -o \( -name '*.go' -o -name go.mod -o -name go.sum \) -newer ./fief -print | head -n 1)" ]; then
	make build
fi

exec go run ./bench -fief ./fief "$@"
