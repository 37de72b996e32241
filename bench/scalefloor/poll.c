/*
 * poll.c is the client of bench/scale-floor.sh. It renames the files
 * STAGE/v0.ini to STAGE/vN-1.ini into DIR one after another. Then, every
 * 25 ms, it tries a TCP connection to 127.0.0.1 on each port from BASE to
 * BASE+N-1 that has not accepted one yet. It prints the milliseconds from
 * before the first rename to the last accepted connection.
 *
 *   poll N BASE STAGE DIR
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double milliseconds(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int listening(int port)
{
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return 0;
	struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(port)};
	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	int ok = connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0;
	close(fd);
	return ok;
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: %s N BASE STAGE DIR\n", argv[0]);
		return 2;
	}
	int n = atoi(argv[1]), base = atoi(argv[2]);
	char *done = calloc(n, 1);
	if (n <= 0 || !done)
		return 2;

	double start = milliseconds();
	for (int i = 0; i < n; i++) {
		char from[4096], to[4096];
		snprintf(from, sizeof from, "%s/v%d.ini", argv[3], i);
		snprintf(to, sizeof to, "%s/v%d.ini", argv[4], i);
		if (rename(from, to) != 0) {
			perror(from);
			return 1;
		}
	}
	for (int left = n; left > 0;) {
		for (int i = 0; i < n; i++) {
			if (!done[i] && listening(base + i)) {
				done[i] = 1;
				left--;
			}
		}
		if (left > 0) {
			if (milliseconds() - start > 60e3) {
				fprintf(stderr, "poll: timed out after 60 s: %d of %d ports still reject connections; check the emperor's log\n", left, n);
				return 1;
			}
			usleep(25000);
		}
	}
	printf("%.1f\n", milliseconds() - start);
	return 0;
}
