// Package fastpath starts fief exec-as-user from an init function, before
// most of fief's packages are initialized.
//
// A Go program initializes every package it links before main, and fief
// links many (fmt, reflect, encoding/json, log/slog, the emperor...). This
// package depends only on os and on fief/asuser, which formats its errors
// without fmt, so the linker runs its init function right after os's.
// For the usual command line, `fief exec-as-user [--no-new-privs]
// USER[:GROUP] CMD [ARG...]`, fief then switches users and executes CMD
// before the other packages' init functions run, and execve makes them
// moot. Package init functions also run on the main goroutine locked to
// the main thread, which asuser.Exec needs.
//
// Any other command line, such as one with --help or another flag, returns
// and goes through main's flag parsing as before. main imports this
// package for its side effect.
package fastpath

import (
	"errors"
	"os"

	"fief/asuser"
)

func init() {
	if len(os.Args) < 4 || os.Args[1] != "exec-as-user" {
		return
	}
	args := os.Args[2:]
	noNewPrivs := false
	if args[0] == "-no-new-privs" || args[0] == "--no-new-privs" {
		noNewPrivs = true
		args = args[1:]
	}
	if len(args) < 2 || args[0] != "" && args[0][0] == '-' {
		return
	}

	err := asuser.Exec(args[0], args[1:], asuser.Options{NoNewPrivs: noNewPrivs, ThreadLocked: true})
	// Exec returns only on failure. Report it as main would.
	os.Stderr.WriteString("fief exec-as-user: " + err.Error() + "\n")
	code := asuser.ExitUserError
	var execErr *asuser.ExecError
	if errors.As(err, &execErr) {
		code = execErr.Code
	}
	os.Exit(code)
}
