// floor.c is the /init of the floor measurement in bench/vm-floor.sh. This
// static C program makes the system calls that fief init makes before its
// first vassal, with as little code of its own as possible. Its times are
// then what the kernel and QEMU charge for that work.
//
// By default it reports when main started (see report_main_start). With
// FLOOR_MODE=system on the kernel command line, which the kernel passes to
// /init as an environment variable, it runs do_system_work instead and
// prints each step's CLOCK_MONOTONIC duration. The first steps leave the
// initramfs, mount what fief init mounts, read /proc/cmdline and make
// ctrl-alt-del send SIGINT to pid 1. The next ones bring lo up with an
// RTM_NEWLINK request, watch /etc/fief/vassals with inotify, write one console
// line, read every vassal file, and fork and exec into new mount and pid
// namespaces.
//
// It ends QEMU through the isa-debug-exit device at I/O port 0xf4.
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static long long monotonic_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static char report[8192];
static int report_len;
static long long step_start;

// step records the time since the previous step under name.
static void step(const char *name)
{
	long long now = monotonic_ns();
	report_len += snprintf(report + report_len, sizeof report - report_len,
			       "floor: step %s %.2f ms\n", name, (now - step_start) / 1e6);
	step_start = now;
}

// mount_early mounts like fief init's mountEarly: it creates the target and
// mounts on it unless something is already mounted there.
static void mount_early(const char *source, const char *target, const char *fstype,
			unsigned long flags, const char *data, mode_t mode)
{
	struct stat st, parent;
	char parent_path[256];

	mkdir(target, mode);
	snprintf(parent_path, sizeof parent_path, "%s/..", target);
	if (stat(target, &st) == 0 && stat(parent_path, &parent) == 0 && st.st_dev != parent.st_dev)
		return;
	if (mount(source, target, fstype, flags, data) != 0)
		dprintf(2, "floor: mounting %s failed: %s\n", target, strerror(errno));
}

static void do_system_work(void)
{
	struct statfs root;
	struct stat st;
	char cmdline[4096], data[4096], path[512];
	int fd, n;

	step_start = monotonic_ns();
	statfs("/", &root);
	mkdir("/.fief-root", 0755);
	mount("/", "/.fief-root", NULL, MS_BIND | MS_REC, NULL);
	chdir("/.fief-root");
	mount(".", "/", NULL, MS_MOVE, NULL);
	chroot(".");
	chdir("/");
	step("leave-initramfs");

	mount_early("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, "", 0555);
	mount_early("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "", 0555);
	mount_early("devtmpfs", "/dev", "devtmpfs", MS_NOSUID, "mode=0755", 0755);
	mount_early("devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC, "newinstance,ptmxmode=0666,mode=0620", 0755);
	mount_early("tmpfs", "/dev/shm", "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777", 01777);
	mount_early("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755", 0755);
	unlink("/dev/ptmx");
	symlink("pts/ptmx", "/dev/ptmx");
	step("early-mounts");

	fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
	n = read(fd, cmdline, sizeof cmdline - 1);
	close(fd);
	cmdline[n > 0 ? n : 0] = 0;
	step("read-cmdline");

	reboot(RB_DISABLE_CAD);
	if (stat("/dev/fuse", &st) == 0)
		chmod("/dev/fuse", 0666);
	step("ctrl-alt-del-off");

	// As fief does: the index of lo by ioctl, then one RTM_NEWLINK
	// request with IFF_UP and its acknowledgement over netlink.
	fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct ifreq ifr = {0};
	strcpy(ifr.ifr_name, "lo");
	ioctl(fd, SIOCGIFINDEX, &ifr);
	close(fd);
	fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	struct {
		struct nlmsghdr nh;
		struct ifinfomsg ifi;
	} req = {0};
	req.nh.nlmsg_len = sizeof(req);
	req.nh.nlmsg_type = RTM_NEWLINK;
	req.nh.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
	req.nh.nlmsg_seq = 1;
	req.ifi.ifi_family = AF_UNSPEC;
	req.ifi.ifi_index = ifr.ifr_ifindex;
	req.ifi.ifi_flags = IFF_UP;
	req.ifi.ifi_change = IFF_UP;
	struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
	char ack[256];
	if (sendto(fd, &req, sizeof(req), 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0 ||
	    recv(fd, ack, sizeof(ack), 0) < 0)
		dprintf(2, "floor: bringing lo up failed: %s\n", strerror(errno));
	close(fd);
	step("lo-up");

	fd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
	inotify_add_watch(fd, "/etc/fief/vassals", IN_CREATE | IN_DELETE | IN_MOVED_FROM | IN_MOVED_TO |
			  IN_CLOSE_WRITE | IN_ATTRIB | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR);
	step("inotify");

	dprintf(2, "time=2026-01-01T00:00:00.000Z level=INFO msg=\"emperor started\" dir=/etc/fief/vassals clone=fs,pid pid=1\n");
	step("console-line");

	DIR *dir = opendir("/etc/fief/vassals");
	struct dirent *entry;
	while (dir && (entry = readdir(dir))) {
		if (entry->d_name[0] == '.')
			continue;
		snprintf(path, sizeof path, "/etc/fief/vassals/%s", entry->d_name);
		stat(path, &st);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		read(fd, data, sizeof data);
		close(fd);
	}
	if (dir)
		closedir(dir);
	step("scan-vassals");

	// As Go's os.StartProcess does, the parent waits for the exec through
	// a close-on-exec pipe.
	int exec_pipe[2];
	pipe2(exec_pipe, O_CLOEXEC);
	pid_t pid = syscall(SYS_clone, CLONE_NEWNS | CLONE_NEWPID | SIGCHLD, 0, 0, 0, 0);
	if (pid == 0) {
		char *argv[] = {"/init", "child", NULL};
		char *envp[] = {NULL};
		close(exec_pipe[0]);
		setsid();
		execve("/proc/self/exe", argv, envp);
		_exit(127);
	}
	close(exec_pipe[1]);
	read(exec_pipe[0], data, 1);
	close(exec_pipe[0]);
	step("clone-and-exec");
}

// report_main_start writes two messages to /dev/kmsg and prints when main
// started on the kernel's log clock. The kernel stamps its "Run /init as
// init process" line with that clock right before it execs /init, and
// CLOCK_MONOTONIC differs from it by an offset, which the second message
// measures.
static void report_main_start(long long main_ns)
{
	char message[256], record[1024];
	long long before_write;
	int kmsg, n;

	mount("devtmpfs", "/dev", "devtmpfs", 0, "");
	kmsg = open("/dev/kmsg", O_RDWR | O_NONBLOCK | O_CLOEXEC);
	if (kmsg < 0) {
		dprintf(2, "floor: opening /dev/kmsg failed: %s\n", strerror(errno));
		return;
	}
	for (int i = 0; i < 2; i++) {
		before_write = monotonic_ns();
		n = snprintf(message, sizeof message, "floor-calibrate %lld\n", before_write / 1000);
		write(kmsg, message, n);
	}
	// Records read as "PRIORITY,SEQ,MICROSECONDS,FLAGS;TEXT".
	long long run_init_us = -1, calibrate_us = -1, calibrate_mono_us = -1;
	while ((n = read(kmsg, record, sizeof record - 1)) != 0) {
		if (n < 0) {
			if (errno == EPIPE)
				continue;
			break;
		}
		record[n] = 0;
		long long stamp;
		if (sscanf(record, "%*d,%*d,%lld", &stamp) != 1)
			continue;
		char *text = strchr(record, ';');
		if (!text)
			continue;
		if (strncmp(text + 1, "Run /init as init process", 25) == 0)
			run_init_us = stamp;
		else if (sscanf(text + 1, "floor-calibrate %lld", &calibrate_mono_us) == 1)
			calibrate_us = stamp;
	}
	if (run_init_us < 0 || calibrate_us < 0) {
		dprintf(2, "floor: the \"Run /init as init process\" line or the floor-calibrate message not found in /dev/kmsg\n");
		return;
	}
	long long offset_us = calibrate_us - calibrate_mono_us;
	dprintf(2, "floor: exec-to-main %.2f ms\n", (main_ns / 1000 + offset_us - run_init_us) / 1000.0);
}

int main(int argc, char **argv)
{
	long long main_ns = monotonic_ns();
	const char *mode = getenv("FLOOR_MODE");
	int fd;

	if (argc > 1 && strcmp(argv[1], "child") == 0)
		_exit(0);

	if (mode && strcmp(mode, "system") == 0) {
		long long begin = monotonic_ns();
		do_system_work();
		report_len += snprintf(report + report_len, sizeof report - report_len,
				       "floor: system-total %.2f ms\n", (monotonic_ns() - begin) / 1e6);
		write(2, report, report_len);
	} else {
		report_main_start(main_ns);
	}

	fd = open("/dev/port", O_WRONLY | O_CLOEXEC);
	if (fd >= 0)
		pwrite(fd, "", 1, 0xf4);
	reboot(RB_POWER_OFF);
	return 0;
}
