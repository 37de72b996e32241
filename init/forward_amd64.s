#include "textflag.h"

// func forwardHandler()
//
// A signal handler as the kernel calls it: DI contains the signal number,
// and the return address on the stack is rawsig's restorer. Every register
// may be changed, because rt_sigreturn restores them all. Before the
// command starts, the handler keeps the signal as pending in bit SIGNO of
// fwdState. Once fwdReady is set, it sends the signal to the command. Once
// fwdClosed is set, it drops the signal. The numbers below must match
// forward.go: bit 32 is fwdReady, bit 33 fwdClosed, mode 1 fwdToGroup and
// mode 2 fwdByPid.
TEXT ·forwardHandler(SB),NOSPLIT|NOFRAME,$0-0
	MOVQ	DI, R8
	ANDQ	$31, R8
again:
	MOVQ	·fwdState(SB), AX
	BTQ	$33, AX	// fwdClosed
	JCS	done
	BTQ	$32, AX	// fwdReady
	JCS	send
	MOVQ	AX, DX
	BTSQ	R8, DX
	LOCK
	CMPXCHGQ	DX, ·fwdState(SB)
	JNE	again
	RET
send:
	MOVL	·fwdMode(SB), AX
	CMPL	AX, $1	// fwdToGroup
	JEQ	group
	CMPL	AX, $2	// fwdByPid
	JEQ	bypid
	// pidfd_send_signal(fwdPidfd, signo, NULL, 0)
	MOVLQSX	·fwdPidfd(SB), DI
	MOVQ	R8, SI
	XORQ	DX, DX
	XORQ	R10, R10
	MOVQ	$424, AX	// SYS_pidfd_send_signal
	SYSCALL
	RET
group:
	// kill(-fwdPid, signo)
	MOVLQSX	·fwdPid(SB), DI
	NEGQ	DI
	MOVQ	R8, SI
	MOVQ	$62, AX	// SYS_kill
	SYSCALL
	RET
bypid:
	// kill(fwdPid, signo)
	MOVLQSX	·fwdPid(SB), DI
	MOVQ	R8, SI
	MOVQ	$62, AX	// SYS_kill
	SYSCALL
done:
	RET

// func forwardAddr() uintptr
TEXT ·forwardAddr(SB),NOSPLIT,$0-8
	MOVQ	$·forwardHandler(SB), AX
	MOVQ	AX, ret+0(FP)
	RET
