#!/bin/sh
# Measures the floor under the scale section's start of 200 vassals: the
# time from dropping 200 vassal files into an empty directory to all 200
# busybox httpd vassals accepting connections, for three emperors:
#
#   C floor:   bench/scalefloor/emperor.c, whose vassal init is a forked C
#              child that makes / a recursive slave, mounts /proc, and forks
#              and executes busybox.
#   Go floor:  the same emperor, whose vassal init executes a static Go
#              program doing the same (bench/scalefloor/goinit): the cost of
#              one Go runtime start per vassal.
#   fief:      fief emperor with emperor-use-clone = fs,pid, as in the scale
#              section.
#
# The three run interleaved, FIEF_SCALE_FLOOR_RUNS times each (default 5),
# and the script prints each time and the medians. A C client
# (bench/scalefloor/poll.c) renames the files and polls every port every
# 25 ms with a TCP connect; it sends no HTTP request.
#
# Needs root, Go, a C compiler with a static libc (gcc, libc6-dev) and
# busybox. Run it after make build.
set -eu

runs=${FIEF_SCALE_FLOOR_RUNS:-5}
count=${FIEF_SCALE_FLOOR_VASSALS:-200}
# Below Linux's ephemeral port range, so no client socket takes a vassal's port.
base=${FIEF_SCALE_FLOOR_PORT:-27100}
here=$(cd "$(dirname "$0")/.." && pwd)
fief=$here/fief

[ "$(id -u)" = 0 ] || { echo "bench/scale-floor.sh: must run as root: vassals need new mount and pid namespaces" >&2; exit 1; }
[ -x "$fief" ] || { echo "bench/scale-floor.sh: $fief not found: run make build first" >&2; exit 1; }
for tool in cc go busybox; do
	command -v "$tool" >/dev/null || { echo "bench/scale-floor.sh: $tool not found: run make bench-deps" >&2; exit 1; }
done

work=$(mktemp -d /tmp/fief-scale-floor.XXXXXX)
emperor_pid=""
cleanup() {
	if [ -n "$emperor_pid" ]; then
		kill -TERM "$emperor_pid" 2>/dev/null || true
		wait "$emperor_pid" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cc -static -O2 -o "$work/emperor" "$here/bench/scalefloor/emperor.c"
cc -O2 -o "$work/poll" "$here/bench/scalefloor/poll.c"
(cd "$here" && CGO_ENABLED=0 go build -trimpath -ldflags '-s -w' -o "$work/goinit" ./bench/scalefloor/goinit)
mkdir "$work/www" "$work/vassals" "$work/stage"
echo "floor" > "$work/www/index.html"
printf '[uwsgi]\nemperor = %s\nemperor-use-clone = fs,pid\n' "$work/vassals" > "$work/emperor.ini"

# stage writes the vassal files into $work/stage.
stage() {
	i=0
	while [ "$i" -lt "$count" ]; do
		printf '[uwsgi]\nexec = busybox httpd -f -p 127.0.0.1:%d -h %s\n' $((base + i)) "$work/www" > "$work/stage/v$i.ini"
		i=$((i + 1))
	done
}

# measure NAME starts the emperor NAME, drops the files, prints the time
# until all ports accept, then removes the files and stops the emperor.
measure() {
	name=$1
	stage
	case "$name" in
	c) "$work/emperor" c "$work/vassals" 2>"$work/log-$name" & ;;
	go) "$work/emperor" go "$work/vassals" "$work/goinit" 2>"$work/log-$name" & ;;
	fief) "$fief" emperor --ini "$work/emperor.ini" --status-socket "$work/sock" --log-format json 2>"$work/log-$name" & ;;
	esac
	emperor_pid=$!
	sleep 1
	if ! took=$("$work/poll" "$count" "$base" "$work/stage" "$work/vassals"); then
		echo "bench/scale-floor.sh: the $name emperor did not start all $count vassals; its log:" >&2
		tail -n 20 "$work/log-$name" >&2
		exit 1
	fi
	rm -f "$work/vassals"/*.ini
	# Wait up to 30 s for the emperor's children, the vassal inits, to end.
	i=0
	while pgrep -P "$emperor_pid" >/dev/null && [ "$i" -lt 300 ]; do
		sleep 0.1
		i=$((i + 1))
	done
	kill -TERM "$emperor_pid"
	wait "$emperor_pid" || true
	emperor_pid=""
	echo "$name $took"
}

echo "scale floor: $count vassals, $runs runs each, $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)"
run=1
while [ "$run" -le "$runs" ]; do
	for name in c go fief; do
		measure "$name" | tee -a "$work/results"
	done
	run=$((run + 1))
done

awk '{
	values[$1] = values[$1] " " $2
}
END {
	split("c go fief", order, " ")
	title["c"] = "C floor (C vassal init, no exec)"
	title["go"] = "Go floor (a minimal Go vassal init)"
	title["fief"] = "fief emperor"
	for (i = 1; i <= 3; i++) {
		name = order[i]
		n = split(values[name], v, " ")
		# Insertion sort, then the median.
		for (a = 2; a <= n; a++) {
			x = v[a]
			for (b = a - 1; b >= 1 && v[b] + 0 > x + 0; b--)
				v[b + 1] = v[b]
			v[b + 1] = x
		}
		median[name] = (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
		printf "%-38s median %7.1f ms (%s to %s ms)\n", title[name] ":", median[name], v[1], v[n]
	}
	printf "%d Go runtime starts (Go floor - C floor):  %.1f ms\n", count, median["go"] - median["c"]
	printf "fief work beyond them (fief - Go floor):    %.1f ms\n", median["fief"] - median["go"]
}' count="$count" "$work/results"
