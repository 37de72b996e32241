package vassal

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
)

// keyKind is the category of a key, which decides how the parser handles it.
type keyKind int

const (
	kindFief      keyKind = iota + 1 // a key that fief applies itself
	kindCondition                    // an if-* key that opens a block
	kindEndif                        // the endif key that closes a block
	kindUWSGI                        // a uWSGI application option, collected in Config.UWSGIOptions
)

// keyInfo is the table entry of a key.
type keyInfo struct {
	canonical string
	kind      keyKind
}

// fiefKeys are the keys that fief applies, in canonical spelling.
var fiefKeys = []string{
	"exec",
	"uid",
	"gid",
	"chdir",
	"env",
	"exec-pre-jail",
	"exec-as-root",
	"exec-as-user",
	"exec-as-user-atexit",
	"exec-as-root-atexit",
	"hook-pre-jail",
	"hook-as-root",
	"hook-as-user",
	"hook-as-user-atexit",
	"hook-as-root-atexit",
	"pivot-root",
	"mountpoint-check",
	"mountpoint-check-interval",
	"mountpoint-check-timeout",
	"fuse-mount-timeout",
	"unshare",
	"stop-timeout",
}

// conditionKeys are the keys that open an if-* block.
var conditionKeys = []string{
	"if-reload",
	"if-not-reload",
	"if-exists",
	"if-not-exists",
	"if-env",
	"if-not-env",
}

// keyAliases maps other spellings of fief keys to the canonical key. The
// aliases are the uWSGI names of the same option.
var keyAliases = sync.OnceValue(func() map[string]string {
	return map[string]string{
		"check-mountpoint": "mountpoint-check",
		"check-mount":      "mountpoint-check",
		"mount-check":      "mountpoint-check",
	}
})

// uwsgiKeys are uWSGI application options that fief accepts without
// handling them. They come from the option tables in the uWSGI source
// (core/uwsgi.c and the python, psgi, rack, php and http plugins).
//
// uWSGI options that change how the vassal is jailed or run, such as chroot,
// umask, hook-post-jail, exec-in-jail, mount-as-root or the config logic
// keys (for, if-opt, include), are deliberately absent. Fief does not apply
// them, so it rejects them instead of ignoring them.
var uwsgiKeys = []string{
	// Sockets and protocols.
	"socket", "uwsgi-socket", "suwsgi-socket", "ssl-socket", "puwsgi-socket",
	"http-socket", "http11-socket", "https-socket",
	"http-socket-modifier1", "http-socket-modifier2",
	"fastcgi-socket", "fastcgi-nph-socket", "fastcgi-modifier1", "fastcgi-modifier2",
	"scgi-socket", "scgi-nph-socket", "scgi-modifier1", "scgi-modifier2",
	"raw-socket", "protocol", "socket-protocol",
	"shared-socket", "undeferred-shared-socket", "map-socket",
	"listen", "chmod-socket", "chown-socket", "abstract-socket",
	"reuse-port", "freebind", "tcp-nodelay", "so-keepalive", "socket-timeout",
	"zerg", "zerg-server",

	// Applications.
	"mount", "manage-script-name", "chdir2", "need-app", "single-interpreter",
	"lazy", "lazy-apps", "cheap", "master",

	// Plugins.
	"plugins-dir", "plugin-dir", "plugins", "plugin",

	// Processes, threads and recycling.
	"processes", "workers", "threads", "enable-threads", "offload-threads",
	"thunder-lock", "harakiri", "harakiri-verbose", "max-requests",
	"min-worker-lifetime", "max-worker-lifetime", "reload-mercy",
	"worker-reload-mercy", "die-on-term", "die-on-idle", "idle", "exit-on-reload",
	"reload-on-as", "reload-on-rss", "evil-reload-on-as", "evil-reload-on-rss",
	"limit-as", "touch-reload", "touch-workers-reload", "touch-chain-reload",
	"cheaper", "cheaper-initial", "cheaper-step", "cheaper-algo", "cheaper-overload",
	"vacuum", "auto-procname", "procname", "procname-prefix", "procname-prefix-spaced",
	"procname-append", "procname-master", "pidfile", "pidfile2",
	"heartbeat", "mules", "mule", "spooler", "spooler-processes",

	// Buffers, caches and requests.
	"buffer-size", "post-buffering", "limit-post", "max-vars", "memory-report",
	"cache", "cache2", "cache-blocksize", "queue", "sharedarea",
	"ignore-sigpipe", "ignore-write-errors", "disable-write-exception",
	"add-header", "stats", "stats-server", "stats-http",

	// Static files.
	"static-map", "static-map2", "static-check", "check-static", "check-static-docroot",
	"static-index", "static-skip-ext", "static-expires", "static-expires-uri",
	"file-serve-mode", "mimefile", "mime-file",

	// Routing.
	"route", "route-host", "route-uri", "route-qs", "route-if", "route-if-not",
	"route-run", "response-route", "final-route", "error-route",

	// Logging.
	"logto", "logto2", "log-format", "logformat", "logger", "req-logger",
	"disable-logging", "log-date", "logdate", "log-4xx", "log-5xx", "log-slow",
	"log-big", "log-zero", "log-master", "log-reopen", "log-maxsize",
	"log-backupname", "log-x-forwarded-for",

	// Python plugin.
	"wsgi-file", "file", "wsgi", "module", "callable", "pythonpath", "python-path",
	"pp", "pymodule-alias", "home", "virtualenv", "venv", "pyhome",
	"py-autoreload", "python-autoreload", "pyargv", "optimize", "paste",
	"paste-logger", "import", "pyimport", "python-import", "wsgi-env-behaviour",
	"wsgi-disable-file-wrapper", "py-tracebacker", "py-call-osafterfork",

	// PSGI (Perl) plugin.
	"psgi", "psgi-enable-psgix-io", "perl-no-die-catch", "perl-local-lib",
	"perl-exec", "perl-exec-post-fork", "perl-auto-reload", "perl-args", "perl-arg",

	// Rack (Ruby) plugin.
	"rack", "rails", "rbrequire", "ruby-require", "rb-require", "gemset", "rvm",
	"rvm-path", "ruby-gc-freq", "rb-gc-freq", "rb-lib", "ruby-lib",

	// PHP plugin.
	"php-ini", "php-config", "php-ini-append", "php-config-append", "php-set",
	"php-index", "php-docroot", "php-allowed-docroot", "php-allowed-ext",
	"php-allowed-script", "php-server-software", "php-app", "php-app-qs",
	"php-fallback", "php-var", "php-sapi-name",

	// HTTP router plugin.
	"http", "https", "https2", "http-to", "http-to-https", "http-var",
	"http-modifier1", "http-modifier2", "http-processes", "http-workers",
	"http-keepalive", "http-auto-chunked", "http-auto-gzip", "http-timeout",
	"http-headers-timeout", "http-connect-timeout", "http-websockets", "http-raw-body",
}

// keyTables returns keyTable, which maps every accepted key, aliases
// included, in "-" spelling to its entry, and keyCandidates, which lists
// the same keys in the order in which suggestKey prefers them when two are
// equally close, fief keys first. They are built on first use, so commands
// that read no vassal file, such as exec-as-user, do not pay for them.
var keyTables = sync.OnceValues(buildKeyTable)

func buildKeyTable() (table map[string]keyInfo, candidates []string) {
	// The map is sized up front because growing it rehashes it several
	// times, which was a measurable share of each vassal init's start-up.
	size := len(fiefKeys) + len(conditionKeys) + 1 + len(keyAliases()) + len(uwsgiKeys)
	table = make(map[string]keyInfo, size)
	candidates = make([]string, 0, size)
	add := func(key string, info keyInfo) {
		if _, duplicate := table[key]; duplicate {
			panic(fmt.Sprintf("vassal: key %q is listed twice in the key table", key))
		}
		table[key] = info
		candidates = append(candidates, key)
	}
	for _, key := range fiefKeys {
		add(key, keyInfo{canonical: key, kind: kindFief})
	}
	for _, key := range conditionKeys {
		add(key, keyInfo{canonical: key, kind: kindCondition})
	}
	add("endif", keyInfo{canonical: "endif", kind: kindEndif})
	for _, alias := range slices.Sorted(maps.Keys(keyAliases())) {
		add(alias, keyInfo{canonical: keyAliases()[alias], kind: kindFief})
	}
	for _, key := range uwsgiKeys {
		add(key, keyInfo{canonical: key, kind: kindUWSGI})
	}
	return table, candidates
}

// normalizeKey replaces "_" with "-", so that both spellings of a key match.
func normalizeKey(key string) string {
	return strings.ReplaceAll(key, "_", "-")
}

// lookupKey returns the table entry of a key as written in a file. fief's
// own keys are found without the table, so reading a file that has no
// other keys does not build it. Under QEMU's software emulation the build
// took about 2.5 ms of a booting VM's time to its first vassal (traced
// boots).
func lookupKey(key string) (keyInfo, bool) {
	key = normalizeKey(key)
	switch {
	case slices.Contains(fiefKeys, key):
		return keyInfo{canonical: key, kind: kindFief}, true
	case slices.Contains(conditionKeys, key):
		return keyInfo{canonical: key, kind: kindCondition}, true
	case key == "endif":
		return keyInfo{canonical: key, kind: kindEndif}, true
	}
	keyTable, _ := keyTables()
	info, ok := keyTable[key]
	return info, ok
}

// unknownKeyMessage describes an unknown key. It names the fief way for
// uWSGI jail options that fief does not support, and otherwise the closest
// known key when one is near enough to be a likely typo.
func unknownKeyMessage(key string) string {
	if hint, ok := unsupportedUWSGIKeyHint(normalizeKey(key)); ok {
		return fmt.Sprintf("unsupported uWSGI option %q: %s", key, hint)
	}
	if suggestion, ok := suggestKey(key); ok {
		return fmt.Sprintf("unknown key %q; did you mean %q?", key, suggestion)
	}
	return fmt.Sprintf("unknown key %q: it is not a fief key or a uWSGI application option that fief accepts", key)
}

// uwsgiStepPhases are the phases of the uWSGI exec-*, hook-*, call-*,
// mount-* and umount-* options.
var uwsgiStepPhases = []string{
	"asap", "pre-jail", "post-jail", "in-jail", "as-root", "as-user",
	"as-user-atexit", "as-root-atexit", "pre-app", "post-app", "as-vassal", "as-emperor",
}

// unsupportedUWSGIKeyHint returns what to write instead of a uWSGI option
// that jails or prepares the instance and that fief does not support. Fief
// rejects these options because ignoring them would run the vassal with less
// isolation or setup than its file requests.
func unsupportedUWSGIKeyHint(key string) (string, bool) {
	switch key {
	case "chroot":
		return "fief does not chroot; use pivot-root = NEW OLD instead", true
	case "umask":
		return "set it with a hook instead, e.g. hook-as-user = call:umask 022", true
	}

	action, phase, found := strings.Cut(key, "-")
	if !found || !slices.Contains(uwsgiStepPhases, phase) {
		return "", false
	}
	if !slices.Contains([]string{"exec", "hook", "call", "mount", "umount"}, action) {
		return "", false
	}
	if !slices.Contains(Phases, Phase(phase)) {
		return fmt.Sprintf("fief has no %s phase; it runs steps in the phases pre-jail, as-root, as-user, as-user-atexit and as-root-atexit", phase), true
	}

	// Exec-* and hook-* keys of fief phases are fief keys and never get
	// here, so the action is call, mount or umount.
	hookUsage := map[string]string{
		"call":   "call:FUNCTION ARGS",
		"mount":  "mount:FSTYPE SOURCE TARGET [FLAGS [DATA]]",
		"umount": "umount:TARGET [FLAGS]",
	}
	return fmt.Sprintf("write hook-%s = %s instead", phase, hookUsage[action]), true
}

// suggestKey returns the known key with the smallest edit distance to key,
// if that distance is at most a third of the key's length (and at least 2).
func suggestKey(key string) (string, bool) {
	key = normalizeKey(key)
	best, bestDistance := "", -1
	_, keyCandidates := keyTables()
	for _, candidate := range keyCandidates {
		distance := editDistance(key, candidate)
		if bestDistance < 0 || distance < bestDistance {
			best, bestDistance = candidate, distance
		}
	}
	if bestDistance < 0 || bestDistance > max(2, len(key)/3) {
		return "", false
	}
	return best, true
}

// editDistance returns the Levenshtein distance between a and b, counting
// bytes.
func editDistance(a, b string) int {
	previous := make([]int, len(b)+1)
	current := make([]int, len(b)+1)
	for j := range previous {
		previous[j] = j
	}
	for i := 1; i <= len(a); i++ {
		current[0] = i
		for j := 1; j <= len(b); j++ {
			substitution := previous[j-1]
			if a[i-1] != b[j-1] {
				substitution++
			}
			current[j] = min(substitution, previous[j]+1, current[j-1]+1)
		}
		previous, current = current, previous
	}
	return previous[len(b)]
}
