package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// The copy-on-write root of uWSGI's FUSE tutorial ("Going Heavy Metal"):
// unionfs-fuse merges a read-only base root with a writable folder of the
// vassal's user, and the vassal pivot_roots into the union. The base is
// built under WORKSPACE/ns, the chroot of unionfs-fuse:
//
//	ns/base/bin/busybox     static busybox, with the applets sh and httpd
//	ns/base/etc/passwd      root and unionUser
//	ns/base/www/index.html  the file that every union vassal serves
//	ns/base/.old_root       where pivot_root puts the host's root
//	ns/cow/UID              the writable folder, owned by unionUID
const (
	unionUID   = 1001
	unionIndex = "<!DOCTYPE html>\n<title>fief bench</title>\n<p>served from the shared base root</p>\n"
)

// unionSides are the two emperors of the union section. uWSGI serves
// /www/index.html of the union with its own static file server, fief runs
// busybox httpd from the base root.
func unionSides() []*side {
	return []*side{
		{key: "union-uwsgi", title: "uWSGI Emperor, uWSGI static files", body: unionIndex, daemon: "unionfs-fuse", vassal: uwsgiUnionVassal},
		{key: "union-fief", title: "fief, busybox httpd", fief: true, body: unionIndex, daemon: "unionfs-fuse", vassal: fiefUnionVassal},
	}
}

// unionHooks returns the lines of the tutorial's union vassal that both
// emperors run. They set the program's uid and gid, mount unionfs-fuse on
// the vassal's mount point and pivot_root into it. The as-root hooks then
// mount /proc, bind /dev from the old root and detach the old root.
func unionHooks(ws *workspace, v *vassal) string {
	return fmt.Sprintf(`uid = %d
gid = %d
hook-pre-jail = callret:chdir /
hook-pre-jail = exec:unionfs-fuse -ocow,chroot=%s,default_permissions,allow_other /base=RO:/cow/%%(uid)=RW %s
pivot_root = %s %s/.old_root
hook-as-root = mount:proc none /proc
hook-as-root = mount:none /.old_root/dev /dev bind
hook-as-root = umount:/.old_root rec,detach
`, unionUID, unionUID, unionNS(ws), v.mnt, v.mnt, v.mnt)
}

// uwsgiUnionVassal serves /www of the union with uWSGI's static file
// server. Without a request plugin, uWSGI 2.0.21 logs "unavailable modifier
// requested: 0" and closes each connection without a response, for static
// files too. So the file loads notfound, the smallest plugin of Debian's uwsgi-core, which
// returns 404 for every request that check-static does not serve. uWSGI
// and the plugin are loaded from the host before the pivot.
func uwsgiUnionVassal(_ *config, ws *workspace, v *vassal) string {
	return fmt.Sprintf(`[uwsgi]
plugin = notfound
%shttp-socket = 127.0.0.1:%d
check-static = /www
static-index = index.html
mountpoint-check = /
`, unionHooks(ws, v), v.port)
}

// fiefUnionVassal runs busybox httpd of the base root as the program.
func fiefUnionVassal(_ *config, ws *workspace, v *vassal) string {
	return fmt.Sprintf(`[uwsgi]
%sexec = /bin/busybox httpd -f -p 127.0.0.1:%d -h /www
mountpoint-check = /
`, unionHooks(ws, v), v.port)
}

func unionNS(ws *workspace) string {
	return filepath.Join(ws.root, "ns")
}

// buildUnionRoot creates the base root and the copy-on-write folder below
// the workspace. The base has no shared libraries, so busybox must be
// static.
func buildUnionRoot(ws *workspace) error {
	busybox := "/bin/busybox"
	info, err := inspectBinary(busybox)
	if err != nil {
		return fmt.Errorf("a static %s is needed for the base root: %w; install the Debian package busybox-static", busybox, err)
	}
	if !info.static {
		return fmt.Errorf("%s is dynamically linked, but the base root has no shared libraries; install the Debian package busybox-static", busybox)
	}

	base := filepath.Join(unionNS(ws), "base")
	for dir, mode := range map[string]os.FileMode{
		"bin": 0o755, "etc": 0o755, "www": 0o755, ".old_root": 0o755,
		"proc": 0o555, "dev": 0o755, "tmp": 0o1777,
	} {
		path := filepath.Join(base, dir)
		if err := os.MkdirAll(path, 0o755); err != nil {
			return err
		}
		// Chmod, because the umask applies to MkdirAll.
		if err := os.Chmod(path, mode); err != nil {
			return err
		}
	}
	data, err := os.ReadFile(busybox)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(base, "bin", "busybox"), data, 0o755); err != nil {
		return err
	}
	for _, applet := range []string{"sh", "httpd"} {
		if err := os.Symlink("busybox", filepath.Join(base, "bin", applet)); err != nil {
			return err
		}
	}
	files := map[string]string{
		"etc/passwd":     fmt.Sprintf("root:x:0:0:root:/root:/bin/sh\nbench:x:%d:%d:bench:/tmp:/bin/sh\n", unionUID, unionUID),
		"etc/group":      fmt.Sprintf("root:x:0:\nbench:x:%d:\n", unionUID),
		"www/index.html": unionIndex,
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(base, name), []byte(text), 0o644); err != nil {
			return err
		}
	}

	cow := filepath.Join(unionNS(ws), "cow", fmt.Sprint(unionUID))
	if err := os.MkdirAll(cow, 0o755); err != nil {
		return err
	}
	return os.Chown(cow, unionUID, unionUID)
}

// runUnionSection measures the spawn and the recovery of the copy-on-write
// root vassal under both emperors.
func runUnionSection(ctx context.Context, cfg *config, logCopy string) (string, bool) {
	const heading = "## Copy-on-write root: unionfs-fuse and pivot_root\n\n"
	load, began := loadAverage(), time.Now()
	ws, err := newWorkspace(cfg.portBase)
	if err == nil {
		err = buildUnionRoot(ws)
	}
	if err != nil {
		return abortSection(heading, ws, err)
	}
	fmt.Fprintf(os.Stderr, "bench: union: workspace %s\n", ws.root)

	var results []*sideResult
	for _, s := range unionSides() {
		results = append(results, runUnionSide(ctx, cfg, ws, s))
		if ctx.Err() != nil {
			break
		}
	}
	problems := finishWorkspace(ws, logCopy)

	rows := []sectionRow{
		{label: "spawn: file dropped → first HTTP 200", key: metricSpawn, stats: []statistic{medianStat, maxStat}, target: targetTenth},
		{label: "recovery: unionfs-fuse killed → HTTP 200 through a new unionfs-fuse", key: metricRecovery, stats: []statistic{medianStat, maxStat}, target: targetTenth},
	}
	var out strings.Builder
	out.WriteString(heading)
	out.WriteString(sectionIntro(load, time.Since(began)))
	fmt.Fprintf(&out, "- runs per emperor: %d; the vassal's program runs as uid %d; targets are judged on fief's median\n\n", cfg.unionRuns, unionUID)
	out.WriteString(renderSectionTable(rows, sideOf(results, false), sideOf(results, true)))
	out.WriteString("\n")
	out.WriteString(renderDeaths(results))
	out.WriteString("\n```\n")
	out.WriteString(renderSectionRaw(rows, results...))
	out.WriteString("```\n")
	out.WriteString(renderCleanup(problems, "every emperor exited; no process and no mount was left under the workspace, and it was removed."))
	out.WriteString("\n")
	return out.String(), sectionOK(results, problems)
}

// runUnionSide drops one new union vassal per run, measures its spawn and
// its recovery after a kill -9 of its unionfs-fuse, and leaves it running.
// The vassals are removed together at the end.
func runUnionSide(ctx context.Context, cfg *config, ws *workspace, s *side) *sideResult {
	r, err := startSideRun(cfg, ws, s)
	if err != nil {
		return r.result
	}
	var running []*vassal
	for run := 1; run <= cfg.unionRuns && ctx.Err() == nil; run++ {
		v, err := r.newVassal(fmt.Sprintf("%s-%d", s.key, run))
		if err != nil {
			r.fail(metricSetup, run, err)
			break
		}
		running = append(running, v)
		if err := r.measureSpawn(ctx, v, run); err != nil {
			r.fail(metricSpawn, run, err)
			continue
		}
		if err := r.findRoots(ctx, []*vassal{v}); err != nil {
			r.fail(metricRecovery, run, err)
			continue
		}
		if err := pause(ctx, time.Second); err != nil {
			break
		}
		if err := r.recover(ctx, v, run); err != nil {
			r.fail(metricRecovery, run, err)
		}
	}
	r.removeAll(ctx, running)
	r.finish()
	return r.result
}

// measureSpawn drops the vassal file after a random pause of up to 3 s and
// records the time until the app responds.
func (r *sideRun) measureSpawn(ctx context.Context, v *vassal, run int) error {
	if err := pause(ctx, 3*time.Second); err != nil {
		return err
	}
	start := time.Now()
	if err := r.drop(v); err != nil {
		return err
	}
	err := poll(ctx, pollInterval, spawnTimeout, fmt.Sprintf("HTTP 200 on 127.0.0.1:%d", v.port), func() (bool, error) {
		return served(ctx, v.port, r.side.body), nil
	})
	if err != nil {
		return err
	}
	r.record(metricSpawn, run, time.Since(start).Seconds())
	return nil
}

// removeAll removes the files of vassals that are still in the vassal
// directory and waits until all their processes are gone. This is clean-up,
// and only a timeout is recorded, as a setup failure.
func (r *sideRun) removeAll(ctx context.Context, vassals []*vassal) {
	var present []*vassal
	for _, v := range vassals {
		if _, err := os.Stat(v.file); err == nil {
			present = append(present, v)
		}
	}
	if len(present) == 0 {
		return
	}
	took, err := removeVassals(ctx, present, 20*time.Millisecond, stopTimeout)
	if err != nil && ctx.Err() == nil {
		r.fail(metricSetup, 0, fmt.Errorf("removing %d vassals: %w", len(present), err))
		return
	}
	r.progress("removed %d vassals in %s", len(present), formatSeconds(took.Seconds()))
}
