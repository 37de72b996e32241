package rawsig

import (
	"testing"

	"golang.org/x/sys/unix"
)

func TestSwapAndGetRoundTrip(t *testing.T) {
	// The Go runtime catches SIGWINCH only to ignore it, so the test may
	// change its action for a moment.
	original, err := Get(unix.SIGWINCH)
	if err != nil {
		t.Fatal(err)
	}

	old, err := Swap(unix.SIGWINCH, Action{Handler: Ignore})
	if err != nil {
		t.Fatal(err)
	}
	if old != original {
		t.Errorf("Swap returned %+v, expected the action Get read, %+v", old, original)
	}
	current, err := Get(unix.SIGWINCH)
	if err != nil {
		t.Fatal(err)
	}
	if current.Handler != Ignore {
		t.Errorf("handler after Swap = %#x, expected SIG_IGN", current.Handler)
	}

	if _, err := Swap(unix.SIGWINCH, original); err != nil {
		t.Fatal(err)
	}
	restored, err := Get(unix.SIGWINCH)
	if err != nil {
		t.Fatal(err)
	}
	if restored != original {
		t.Errorf("action after the second Swap = %+v, expected the original %+v", restored, original)
	}
}

func TestHandlerActionFlags(t *testing.T) {
	act := HandlerAction(0x1234)
	if act.Handler != 0x1234 {
		t.Errorf("Handler = %#x, expected 0x1234", act.Handler)
	}
	if act.Restorer == 0 {
		t.Error("Restorer is 0, expected the address of restorer")
	}
	if act.Flags != FlagRestorer|FlagOnStack|FlagRestart {
		t.Errorf("Flags = %#x, expected SA_RESTORER|SA_ONSTACK|SA_RESTART", act.Flags)
	}
}

func TestSwapInvalidSignal(t *testing.T) {
	if _, err := Swap(unix.SIGKILL, Action{Handler: Ignore}); err == nil {
		t.Error("Swap(SIGKILL) succeeded, expected EINVAL")
	}
}
