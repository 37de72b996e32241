#include "textflag.h"

// func restorer()
//
// The return address that the kernel puts on the stack of a handler set
// with SA_RESTORER. rt_sigreturn restores the interrupted context and does
// not return.
TEXT ·restorer(SB),NOSPLIT|NOFRAME,$0-0
	MOVQ	$15, AX	// SYS_rt_sigreturn
	SYSCALL
	INT	$3

// func restorerAddr() uintptr
TEXT ·restorerAddr(SB),NOSPLIT,$0-8
	MOVQ	$·restorer(SB), AX
	MOVQ	AX, ret+0(FP)
	RET
