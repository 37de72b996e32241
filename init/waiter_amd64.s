#include "textflag.h"

// The waiter: the container init's main loop once the command runs, as a
// program of its own. waiter_amd64.go copies the machine code of
// ·waiterCode into a small ELF file, with the state block below at
// WAITER_STATE. fief executes that file in place of itself (same pid), so
// the process that waits is one thread with a few pages of memory instead
// of a Go runtime. The code therefore uses no Go symbol, only relative
// jumps, the stack and the absolute address of the state block.
//
// The waiter starts with the forwarded signals and SIGCHLD blocked, because
// fief blocks them before execve, which keeps the mask and the pending
// signals. It takes them with rt_sigtimedwait, as tini does:
//   - A forwarded signal goes to the command, as forwardHandler sends it.
//   - SIGCHLD makes it reap every child that has exited. Once the command
//     is among them, the waiter reaps the other exited children and looks
//     for processes left. When there are none, it exits with the command's
//     remapped exit code. Otherwise it executes fief again (S_EXEFD) with
//     the command's wait status written into its arguments, and fief stops
//     those processes with the grace period.
//
// The offsets below must match waiter_amd64.go.
#define WAITER_STATE	0x401000
#define S_PID		0	// int32: the command's pid
#define S_PIDFD	4	// int32: its pidfd, or -1
#define S_MODE		8	// int32: fwdByPidfd, fwdToGroup or fwdByPid
#define S_PID1		12	// int32: 1 when fief is pid 1
#define S_EXEFD	16	// int32: fief's executable, for execveat
#define S_SIGSET	24	// uint64: forwarded signals and SIGCHLD
#define S_HEX		32	// uint64: address of the 8 hex digits of the status argument
#define S_ARGV		40	// uint64: address of the argv of fief's re-execution
#define S_ENVP		48	// uint64: set at entry: this program's environment
#define S_REMAP	56	// [256]byte: exit code to report for each exit code
#define S_INFO		312	// [128]byte: siginfo of rt_sigtimedwait
#define S_STATUS	440	// int32: wait status of wait4
#define S_EMPTY	452	// byte 0: the empty path of execveat
#define S_HEXDIG	456	// [16]byte: "0123456789abcdef"
#define S_NAME		472	// [16]byte: the process name, NUL-terminated
#define S_IGNACT	488	// struct sigaction of SIG_IGN

#define SYS_rt_sigaction	13
#define SYS_rt_sigtimedwait	128
#define SYS_kill		62
#define SYS_wait4		61
#define SYS_exit_group		231
#define SYS_prctl		157
#define SYS_execveat		322
#define SYS_pidfd_send_signal	424

// func waiterCode()
TEXT ·waiterCode(SB),NOSPLIT|NOFRAME,$0-0
	MOVQ	$WAITER_STATE, R15
	// At entry SP points to argc, then argv, NULL, envp.
	MOVQ	0(SP), AX
	LEAQ	16(SP)(AX*8), BX
	MOVQ	BX, S_ENVP(R15)
	// prctl(PR_SET_NAME, name): the process keeps fief's name.
	MOVQ	$15, DI
	LEAQ	S_NAME(R15), SI
	MOVQ	$SYS_prctl, AX
	SYSCALL
	// A child may have exited before the signals were blocked, with its
	// SIGCHLD taken by the Go runtime: reap first, then wait.
	JMP	reap

wait:
	// rt_sigtimedwait(&set, &info, NULL, 8)
	LEAQ	S_SIGSET(R15), DI
	LEAQ	S_INFO(R15), SI
	XORQ	DX, DX
	MOVQ	$8, R10
	MOVQ	$SYS_rt_sigtimedwait, AX
	SYSCALL
	CMPQ	AX, $17
	JEQ	reap
	CMPQ	AX, $0
	JLE	wait
	MOVQ	AX, SI
	MOVL	S_MODE(R15), CX
	CMPL	CX, $1
	JEQ	togroup
	CMPL	CX, $2
	JEQ	bypid
	// pidfd_send_signal(pidfd, sig, NULL, 0)
	MOVLQSX	S_PIDFD(R15), DI
	XORQ	DX, DX
	XORQ	R10, R10
	MOVQ	$SYS_pidfd_send_signal, AX
	SYSCALL
	JMP	wait
togroup:
	// kill(-pid, sig)
	MOVLQSX	S_PID(R15), DI
	NEGQ	DI
	MOVQ	$SYS_kill, AX
	SYSCALL
	JMP	wait
bypid:
	// kill(pid, sig)
	MOVLQSX	S_PID(R15), DI
	MOVQ	$SYS_kill, AX
	SYSCALL
	JMP	wait

reap:
	// wait4(-1, &status, WNOHANG, NULL)
	MOVQ	$-1, DI
	LEAQ	S_STATUS(R15), SI
	MOVQ	$1, DX
	XORQ	R10, R10
	MOVQ	$SYS_wait4, AX
	SYSCALL
	CMPQ	AX, $-4
	JEQ	reap
	CMPQ	AX, $0
	JLE	wait
	MOVLQSX	S_PID(R15), CX
	CMPQ	AX, CX
	JNE	reap
	// The command has exited; keep its status in R14.
	MOVL	S_STATUS(R15), R14

left:
	// Reap what else has exited, then see whether any process is left.
	MOVQ	$-1, DI
	LEAQ	S_STATUS(R15), SI
	MOVQ	$1, DX
	XORQ	R10, R10
	MOVQ	$SYS_wait4, AX
	SYSCALL
	CMPQ	AX, $-4
	JEQ	left
	CMPQ	AX, $0
	JGT	left
	JEQ	rerun
	// No child at all. As pid 1, kill(-1, 0) finds any other process of
	// the pid namespace, such as one entered with setns.
	MOVL	S_PID1(R15), CX
	TESTL	CX, CX
	JEQ	exit
	MOVQ	$-1, DI
	XORQ	SI, SI
	MOVQ	$SYS_kill, AX
	SYSCALL
	TESTQ	AX, AX
	JEQ	rerun

exit:
	// The exit code: 128+N for death by signal N, else the exit status,
	// then through the remap table.
	MOVL	R14, AX
	ANDL	$0x7f, AX
	JEQ	exited
	ADDL	$128, AX
	JMP	remap
exited:
	MOVL	R14, AX
	SHRL	$8, AX
	ANDL	$0xff, AX
remap:
	MOVBLZX	S_REMAP(R15)(AX*1), DI
	MOVQ	$SYS_exit_group, AX
	SYSCALL

rerun:
	// Write the status as 8 hex digits into fief's arguments, then
	// execveat(exefd, "", argv, envp, AT_EMPTY_PATH).
	MOVQ	S_HEX(R15), DI
	MOVL	R14, AX
	MOVQ	$8, CX
hex:
	ROLL	$4, AX
	MOVL	AX, DX
	ANDL	$15, DX
	MOVBLZX	S_HEXDIG(R15)(DX*1), BX
	MOVB	BX, 0(DI)
	INCQ	DI
	DECQ	CX
	JNE	hex
	// Ignore the forwarded signals, which stay blocked, until fief has
	// its handlers again: SIG_IGN discards those pending and those that
	// come before the Go runtime installs its handlers. SIGCHLD keeps its
	// default action, since ignoring it would reap children unwaited.
	MOVQ	$1, R13
ign:
	CMPQ	R13, $17
	JEQ	ignnext
	MOVQ	S_SIGSET(R15), AX
	MOVQ	R13, CX
	DECQ	CX
	BTQ	CX, AX
	JCC	ignnext
	MOVQ	R13, DI
	LEAQ	S_IGNACT(R15), SI
	XORQ	DX, DX
	MOVQ	$8, R10
	MOVQ	$SYS_rt_sigaction, AX
	SYSCALL
ignnext:
	INCQ	R13
	CMPQ	R13, $32
	JLT	ign
	MOVLQSX	S_EXEFD(R15), DI
	LEAQ	S_EMPTY(R15), SI
	MOVQ	S_ARGV(R15), DX
	MOVQ	S_ENVP(R15), R10
	MOVQ	$0x1000, R8
	MOVQ	$SYS_execveat, AX
	SYSCALL
	// Without fief, exit with the command's code: as pid 1 the kernel
	// then kills what is left.
	JMP	exit
	// The end mark that waiterCode's copy stops at.
	BYTE	$0x0f; BYTE $0x0b
	BYTE	$'F'; BYTE $'I'; BYTE $'E'; BYTE $'F'; BYTE $'W'; BYTE $'E'; BYTE $'N'; BYTE $'D'

// func waiterCodeAddr() unsafe.Pointer
TEXT ·waiterCodeAddr(SB),NOSPLIT,$0-8
	MOVQ	$·waiterCode(SB), AX
	MOVQ	AX, ret+0(FP)
	RET
