/*
 * emperor.c is the smallest emperor that bench/scale-floor.sh compares fief
 * with. It watches one directory with inotify. For each vassal file moved
 * into it, it reads the "exec = PROGRAM ARG..." line and starts a vassal
 * init in new mount and pid namespaces. For each file removed, it kills that
 * vassal init, which ends every process of the vassal's pid namespace.
 *
 * The vassal init makes / a slave mount recursively, mounts /proc, and forks
 * and executes the program, then reaps children until it is killed. That is
 * the set-up of fief's vassal init for such a file, without its logging,
 * status pipe, signal handling, mount checks and file parsing.
 *
 *   emperor c DIR         The vassal init is the emperor's forked child, and
 *                         runs the set-up in C without an exec of its own.
 *   emperor go DIR INIT   The forked child executes INIT (goinit/main.go), a
 *                         static Go program that does the same set-up, with
 *                         GOMAXPROCS=1 as fief runs its vassal inits.
 *
 * It ends on SIGTERM or SIGINT after killing every vassal init.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/mount.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <poll.h>
#include <unistd.h>

#define MAX_VASSALS 4096
#define MAX_ARGS 32

struct vassal {
	char name[NAME_MAX + 1];
	pid_t pid;
};

static struct vassal vassals[MAX_VASSALS];
static const char *mode, *dir, *goinit;

static void die(const char *call)
{
	fprintf(stderr, "scalefloor emperor: %s failed: %s\n", call, strerror(errno));
	exit(1);
}

/* lookup returns the path of PROGRAM in the usual bin directories, or PROGRAM
 * itself when it contains a slash. */
static const char *lookup(const char *program, char *buf, size_t size)
{
	static const char *dirs[] = {"/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"};
	if (strchr(program, '/'))
		return program;
	for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) {
		snprintf(buf, size, "%s/%s", dirs[i], program);
		if (access(buf, X_OK) == 0)
			return buf;
	}
	return program;
}

/* vassal_init runs in the new namespaces as their pid 1 and never returns. */
static void vassal_init(char **argv)
{
	char path[PATH_MAX];

	if (mount(NULL, "/", NULL, MS_REC | MS_SLAVE, NULL) != 0)
		_exit(10);
	if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL) != 0)
		_exit(11);
	pid_t child = fork();
	if (child < 0)
		_exit(12);
	if (child == 0) {
		execv(lookup(argv[0], path, sizeof path), argv);
		_exit(127);
	}
	for (;;) {
		if (wait(NULL) < 0 && errno == ECHILD)
			pause();
	}
}

static void start(const char *name)
{
	char path[PATH_MAX], text[4096];
	char *argv[MAX_ARGS + 2];
	int argc = 0;

	snprintf(path, sizeof path, "%s/%s", dir, name);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	ssize_t n = read(fd, text, sizeof text - 1);
	close(fd);
	if (n <= 0)
		return;
	text[n] = 0;

	char *line = strstr(text, "exec = ");
	if (!line)
		return;
	line += strlen("exec = ");
	line[strcspn(line, "\n")] = 0;
	if (goinit)
		argv[argc++] = (char *)goinit;
	for (char *word = strtok(line, " "); word && argc < MAX_ARGS; word = strtok(NULL, " "))
		argv[argc++] = word;
	argv[argc] = NULL;

	struct vassal *slot = NULL;
	for (int i = 0; i < MAX_VASSALS && !slot; i++)
		if (vassals[i].pid == 0)
			slot = &vassals[i];
	if (!slot)
		return;

	/* A fork-like clone: the emperor is single-threaded. */
	pid_t pid = syscall(SYS_clone, CLONE_NEWNS | CLONE_NEWPID | SIGCHLD, 0, 0, 0, 0);
	if (pid < 0)
		die("clone");
	if (pid == 0) {
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		if (goinit) {
			/* fief gives its vassal inits one P the same way. */
			setenv("GOMAXPROCS", "1", 1);
			execv(goinit, argv);
			_exit(127);
		}
		vassal_init(argv);
	}
	snprintf(slot->name, sizeof slot->name, "%s", name);
	slot->pid = pid;
}

static void stop(const char *name)
{
	for (int i = 0; i < MAX_VASSALS; i++) {
		if (vassals[i].pid != 0 && strcmp(vassals[i].name, name) == 0) {
			kill(vassals[i].pid, SIGKILL);
			vassals[i].pid = 0;
		}
	}
}

int main(int argc, char **argv)
{
	if (argc < 3 || (strcmp(argv[1], "c") != 0 && strcmp(argv[1], "go") != 0) ||
	    (strcmp(argv[1], "go") == 0 && argc < 4)) {
		fprintf(stderr, "usage: %s c DIR | %s go DIR INIT\n", argv[0], argv[0]);
		return 2;
	}
	mode = argv[1];
	dir = argv[2];
	if (strcmp(mode, "go") == 0)
		goinit = argv[3];

	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGCHLD);
	sigaddset(&mask, SIGTERM);
	sigaddset(&mask, SIGINT);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	int sfd = signalfd(-1, &mask, SFD_CLOEXEC);
	int ifd = inotify_init1(IN_CLOEXEC);
	if (sfd < 0 || ifd < 0)
		die("signalfd or inotify_init1");
	if (inotify_add_watch(ifd, dir, IN_MOVED_TO | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_DELETE) < 0)
		die("inotify_add_watch");

	struct pollfd fds[2] = {{.fd = ifd, .events = POLLIN}, {.fd = sfd, .events = POLLIN}};
	char events[64 * 1024] __attribute__((aligned(__alignof__(struct inotify_event))));
	for (;;) {
		if (poll(fds, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			die("poll");
		}
		if (fds[0].revents & POLLIN) {
			ssize_t n = read(ifd, events, sizeof events);
			for (char *p = events; n > 0 && p < events + n;) {
				struct inotify_event *e = (struct inotify_event *)p;
				if (e->len > 0) {
					if (e->mask & (IN_MOVED_TO | IN_CLOSE_WRITE))
						start(e->name);
					else
						stop(e->name);
				}
				p += sizeof *e + e->len;
			}
		}
		if (fds[1].revents & POLLIN) {
			struct signalfd_siginfo info;
			if (read(sfd, &info, sizeof info) == sizeof info && info.ssi_signo != SIGCHLD) {
				for (int i = 0; i < MAX_VASSALS; i++)
					if (vassals[i].pid != 0)
						kill(vassals[i].pid, SIGKILL);
				while (wait(NULL) > 0)
					;
				return 0;
			}
			while (waitpid(-1, NULL, WNOHANG) > 0)
				;
		}
	}
}
