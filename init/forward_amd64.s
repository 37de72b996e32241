#include "textflag.h"

// func forwardHandler()
//
// A signal handler as the kernel calls it: DI holds the signal number, and
// the return address on the stack is forwardRestorer. Every register may be
// changed, since rt_sigreturn restores them all. It keeps the signal as
// pending before the command starts (fwdState bit SIGNO), sends it to the
// command once fwdReady is set, and drops it once fwdClosed is set.
TEXT ·forwardHandler(SB),NOSPLIT|NOFRAME,$0-0
	MOVQ	DI, R8
	ANDQ	$31, R8
again:
	MOVQ	·fwdState(SB), AX
	BTQ	$33, AX
	JCS	done
	BTQ	$32, AX
	JCS	send
	MOVQ	AX, DX
	BTSQ	R8, DX
	LOCK
	CMPXCHGQ	DX, ·fwdState(SB)
	JNE	again
	RET
send:
	MOVL	·fwdMode(SB), AX
	CMPL	AX, $1
	JEQ	group
	CMPL	AX, $2
	JEQ	bypid
	// pidfd_send_signal(fwdPidfd, signo, NULL, 0)
	MOVLQSX	·fwdPidfd(SB), DI
	MOVQ	R8, SI
	XORQ	DX, DX
	XORQ	R10, R10
	MOVQ	$424, AX
	SYSCALL
	RET
group:
	// kill(-fwdPid, signo)
	MOVLQSX	·fwdPid(SB), DI
	NEGQ	DI
	MOVQ	R8, SI
	MOVQ	$62, AX
	SYSCALL
	RET
bypid:
	// kill(fwdPid, signo)
	MOVLQSX	·fwdPid(SB), DI
	MOVQ	R8, SI
	MOVQ	$62, AX
	SYSCALL
done:
	RET

// func forwardRestorer()
TEXT ·forwardRestorer(SB),NOSPLIT|NOFRAME,$0-0
	MOVQ	$15, AX // rt_sigreturn
	SYSCALL
	INT	$3

// func forwardAddrs() (handler, restorer uintptr)
TEXT ·forwardAddrs(SB),NOSPLIT,$0-16
	MOVQ	$·forwardHandler(SB), AX
	MOVQ	AX, handler+0(FP)
	MOVQ	$·forwardRestorer(SB), AX
	MOVQ	AX, restorer+8(FP)
	RET
