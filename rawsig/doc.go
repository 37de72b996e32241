// Package rawsig reads and sets signal actions with the rt_sigaction system
// call, bypassing the Go runtime, for signal handlers written in assembly.
// A handler set this way runs as the kernel calls it, with no Go runtime
// support, so it must not touch Go state other than plain variables.
// The Go runtime still records its own handler as installed, so a process
// must not request the same signal from os/signal afterwards.
//
// The package works on linux/amd64 only. On other architectures it is
// empty, and its callers keep to os/signal.
package rawsig
