#include "textflag.h"

// func wakeHandler()
//
// A signal handler as the kernel calls it: DI contains the signal number,
// and the return address on the stack is rawsig's restorer. Every register may
// be changed, because rt_sigreturn restores them all, and Go code has no
// errno to preserve. The handler sets bit DI of pending, then writes one
// byte to wakeFD. The pipe is non-blocking, and a failed write (EAGAIN on
// a full pipe) is ignored, because the bytes in the pipe already wake the
// reader.
TEXT ·wakeHandler(SB),NOSPLIT|NOFRAME,$0-0
	MOVQ	DI, CX
	MOVQ	$1, AX
	SHLQ	CX, AX
	LOCK
	ORQ	AX, ·pending(SB)
	// write(wakeFD, &wakeByte, 1)
	MOVLQSX	·wakeFD(SB), DI
	LEAQ	·wakeByte(SB), SI
	MOVQ	$1, DX
	MOVQ	$1, AX	// SYS_write
	SYSCALL
	RET

// func handlerAddr() uintptr
TEXT ·handlerAddr(SB),NOSPLIT,$0-8
	MOVQ	$·wakeHandler(SB), AX
	MOVQ	AX, ret+0(FP)
	RET
