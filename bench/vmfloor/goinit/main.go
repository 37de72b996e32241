// Command goinit is the /init of the Go floor measurement in
// bench/vm-floor.sh, a static Go program that imports only syscall, strconv,
// strings and unsafe. Like floor.c, it reports the time from the kernel's
// exec of /init to main, which includes the Go runtime's start. It ends QEMU
// through the isa-debug-exit device at I/O port 0xf4.
package main

import (
	"strconv"
	"strings"
	"syscall"
	"unsafe"
)

// monotonicNanoseconds reads CLOCK_MONOTONIC (clock id 1), which package
// syscall does not wrap. Package time is not used because it would add its
// own start-up work.
func monotonicNanoseconds() int64 {
	var ts syscall.Timespec
	_, _, _ = syscall.Syscall(syscall.SYS_CLOCK_GETTIME, 1, uintptr(unsafe.Pointer(&ts)), 0)
	return ts.Nano()
}

func main() {
	mainStart := monotonicNanoseconds()
	reportMainStart(mainStart)

	if port, err := syscall.Open("/dev/port", syscall.O_WRONLY|syscall.O_CLOEXEC, 0); err == nil {
		_, _ = syscall.Pwrite(port, []byte{0}, 0xf4)
	}
	_ = syscall.Reboot(syscall.LINUX_REBOOT_CMD_POWER_OFF)
}

// reportMainStart writes two messages to /dev/kmsg and prints when main
// started on the kernel's log clock. The kernel stamps its "Run /init as
// init process" line with that clock right before it execs /init, and
// CLOCK_MONOTONIC differs from it by an offset, which the second message
// measures.
func reportMainStart(mainStart int64) {
	_ = syscall.Mount("devtmpfs", "/dev", "devtmpfs", 0, "")
	kmsg, err := syscall.Open("/dev/kmsg", syscall.O_RDWR|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0)
	if err != nil {
		printError("opening /dev/kmsg failed: " + err.Error())
		return
	}
	for range 2 {
		beforeWrite := monotonicNanoseconds()
		_, _ = syscall.Write(kmsg, []byte("floor-calibrate "+strconv.FormatInt(beforeWrite/1000, 10)+"\n"))
	}

	// Records read as "PRIORITY,SEQ,MICROSECONDS,FLAGS;TEXT".
	runInit, calibrate, calibrateMonotonic := int64(-1), int64(-1), int64(-1)
	record := make([]byte, 1024)
	for {
		n, err := syscall.Read(kmsg, record)
		if err == syscall.EPIPE {
			continue
		}
		if err != nil || n <= 0 {
			break
		}
		header, text, ok := strings.Cut(string(record[:n]), ";")
		fields := strings.Split(header, ",")
		if !ok || len(fields) < 3 {
			continue
		}
		stamp, err := strconv.ParseInt(fields[2], 10, 64)
		if err != nil {
			continue
		}
		switch {
		case strings.HasPrefix(text, "Run /init as init process"):
			runInit = stamp
		case strings.HasPrefix(text, "floor-calibrate "):
			value := strings.TrimSpace(strings.TrimPrefix(text, "floor-calibrate "))
			monotonic, err := strconv.ParseInt(value, 10, 64)
			if err == nil {
				calibrate, calibrateMonotonic = stamp, monotonic
			}
		}
	}
	if runInit < 0 || calibrate < 0 {
		printError(`the "Run /init as init process" line or the floor-calibrate message not found in /dev/kmsg`)
		return
	}
	offset := calibrate - calibrateMonotonic
	microseconds := mainStart/1000 + offset - runInit
	line := "floor: exec-to-main " + strconv.FormatFloat(float64(microseconds)/1000, 'f', 2, 64) + " ms\n"
	_, _ = syscall.Write(2, []byte(line))
}

func printError(message string) {
	_, _ = syscall.Write(2, []byte("floor: "+message+"\n"))
}
