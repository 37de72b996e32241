// Command goinit is the vassal init of the Go floor in bench/scale-floor.sh:
// a static Go program that imports only os and syscall. Started by
// bench/scalefloor/emperor.c in new mount and pid namespaces, it makes /
// a slave mount recursively, mounts /proc, starts the program named by its
// arguments, and reaps children until it is killed. Those are the system
// calls of fief's vassal init for the same vassal file, without its other
// work.
package main

import (
	"os"
	"syscall"
)

func main() {
	if len(os.Args) < 2 {
		os.Exit(2)
	}
	if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_SLAVE, ""); err != nil {
		os.Exit(10)
	}
	if err := syscall.Mount("proc", "/proc", "proc", syscall.MS_NOSUID|syscall.MS_NODEV|syscall.MS_NOEXEC, ""); err != nil {
		os.Exit(11)
	}
	path := lookPath(os.Args[1])
	attr := &syscall.ProcAttr{Env: os.Environ(), Files: []uintptr{0, 1, 2}}
	if _, err := syscall.ForkExec(path, os.Args[1:], attr); err != nil {
		os.Exit(12)
	}
	for {
		var status syscall.WaitStatus
		if _, err := syscall.Wait4(-1, &status, 0, nil); err == syscall.ECHILD {
			// The program ended. pid 1 stays until the emperor kills it.
			pause := syscall.Timespec{Sec: 3600}
			_ = syscall.Nanosleep(&pause, nil)
		}
	}
}

// lookPath finds program in the directories the C emperor searches.
func lookPath(program string) string {
	for _, c := range program {
		if c == '/' {
			return program
		}
	}
	for _, dir := range []string{"/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"} {
		path := dir + "/" + program
		if syscall.Access(path, 1) == nil {
			return path
		}
	}
	return program
}
