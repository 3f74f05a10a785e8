/*
 * fanout: a load driver for `edgeloop chat` — M members in one room, K of
 * them sending, everyone counting the lines it receives.
 *
 *   fanout IP PORT MEMBERS SENDERS SECONDS SERVER_PID [TEXT_BYTES] [WINDOW]
 *
 * Single-threaded, level-triggered epoll (this is the client, not the
 * subject). Phases:
 *   1. connect MEMBERS sockets; wait until every `* guestN joined` notice
 *      has arrived (member i receives MEMBERS - i of them);
 *   2. one second of warm-up load, then SECONDS of measured load.
 * The senders (members 0..K-1) take turns writing bursts of 16 messages of
 * TEXT_BYTES (default 32) bytes. At most WINDOW (default 1024) messages are
 * in flight: sent but not yet received by every member, counted as
 * sent * MEMBERS - delivered. That keeps every member's queue on the
 * server far below --max-outbuf, so nobody is disconnected as a slow
 * consumer; the server, not the window, should be the limit.
 *
 * A delivery is one message line received by one member. At the end it
 * prints one line of key=value pairs: deliveries per second and the
 * server's CPU time per delivery (utime + stime from /proc/PID/stat, in
 * clock ticks of sysconf(_SC_CLK_TCK), the same as `getconf CLK_TCK`).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BURST 16
#define READ_SIZE (256 * 1024)

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static double wall_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

/* utime + stime of a process, in clock ticks. */
static long long cpu_ticks(int pid) {
    char path[64], buf[4096];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) die("open /proc/PID/stat");
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    /* Fields after the command name, which is in parentheses. */
    char *p = strrchr(buf, ')');
    if (!p) die("parse /proc/PID/stat");
    long long utime = 0, stime = 0;
    /* state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime */
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lld %lld", &utime, &stime) != 2)
        die("parse /proc/PID/stat");
    return utime + stime;
}

static double self_cpu_s(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 + ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
}

static int members, senders;
static int *fds;
static long long *lines; /* per member */
static long long delivered, closed;
static char *rbuf;

/* Read everything a member has; count its lines. */
static void drain(int i) {
    for (;;) {
        ssize_t n = read(fds[i], rbuf, READ_SIZE);
        if (n > 0) {
            long long count = 0;
            for (char *p = rbuf, *end = rbuf + n; (p = memchr(p, '\n', end - p)); p++) count++;
            lines[i] += count;
            delivered += count;
            if (n < READ_SIZE) return;
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        if (n < 0 && errno == EAGAIN) return;
        /* End of stream or an error: the server dropped this member. */
        closed++;
        close(fds[i]);
        fds[i] = -1;
        return;
    }
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: %s IP PORT MEMBERS SENDERS SECONDS SERVER_PID [TEXT_BYTES] [WINDOW]\n", argv[0]);
        return 2;
    }
    const char *ip = argv[1];
    int port = atoi(argv[2]);
    members = atoi(argv[3]);
    senders = atoi(argv[4]);
    double seconds = atof(argv[5]);
    int server_pid = atoi(argv[6]);
    int text_bytes = argc > 7 ? atoi(argv[7]) : 32;
    long long window = argc > 8 ? atoll(argv[8]) : 1024;
    if (members < 1 || senders < 1 || senders > members || text_bytes < 8) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    fds = calloc(members, sizeof *fds);
    lines = calloc(members, sizeof *lines);
    rbuf = malloc(READ_SIZE);
    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");

    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    inet_pton(AF_INET, ip, &sa.sin_addr);
    for (int i = 0; i < members; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) die("socket");
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) die("connect");
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
        struct epoll_event ev = {.events = EPOLLIN, .data.u32 = (uint32_t)i};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll_ctl");
        fds[i] = fd;
    }

    struct epoll_event events[1024];
    /* Phase 1: every joined notice. */
    long long want = (long long)members * (members + 1) / 2;
    double give_up = now_s() + 60;
    while (delivered < want) {
        if (now_s() > give_up || closed) {
            fprintf(stderr, "fanout: joins incomplete (%lld of %lld lines, %lld closed)\n", delivered, want, closed);
            return 1;
        }
        int n = epoll_wait(ep, events, 1024, 100);
        for (int e = 0; e < n; e++) drain(events[e].data.u32);
    }
    delivered = 0;
    for (int i = 0; i < members; i++) lines[i] = 0;

    /* One burst of BURST messages per write, the same bytes every time: the
     * server prefixes the sender's nickname; only line counts matter. */
    int line_len = text_bytes + 1;
    char *burst = malloc((size_t)BURST * line_len);
    for (int b = 0; b < BURST; b++) {
        char *l = burst + (size_t)b * line_len;
        memset(l, 'x', text_bytes);
        memcpy(l, "msg ", 4);
        l[text_bytes] = '\n';
    }
    size_t burst_len = (size_t)BURST * line_len;
    size_t *partial = calloc(senders, sizeof *partial); /* bytes of the current burst written */

    long long sent = 0; /* whole messages written */
    double start = now_s(), measure_from = start + 1, until = measure_from + seconds;
    int measuring = 0, turn = 0;
    long long d0 = 0, c0 = 0, s0 = 0;
    double t0 = 0, w0 = 0, self0 = 0;
    for (;;) {
        double t = now_s();
        if (!measuring && t >= measure_from) {
            measuring = 1;
            d0 = delivered, s0 = sent, c0 = cpu_ticks(server_pid), t0 = t, w0 = wall_s(), self0 = self_cpu_s();
        }
        if (t >= until) break;
        /* Send while the window has room: each sender in turn. */
        int wrote = 0;
        for (int k = 0; k < senders && sent * members - delivered < window * members; k++) {
            int s = turn;
            turn = (turn + 1) % senders;
            if (fds[s] < 0) continue;
            ssize_t n = write(fds[s], burst + partial[s], burst_len - partial[s]);
            if (n < 0) continue; /* EAGAIN: its send buffer is full */
            size_t before = partial[s] / line_len;
            partial[s] += n;
            sent += partial[s] / line_len - before;
            if (partial[s] == burst_len) partial[s] = 0;
            wrote = 1;
        }
        int n = epoll_wait(ep, events, 1024, wrote ? 0 : 1);
        for (int e = 0; e < n; e++) drain(events[e].data.u32);
        if (closed == members) break;
    }
    double t1 = now_s(), w1 = wall_s();
    long long c1 = cpu_ticks(server_pid);
    double self1 = self_cpu_s();
    long long deliveries = delivered - d0;
    double elapsed = t1 - t0;
    double server_cpu = (double)(c1 - c0) / sysconf(_SC_CLK_TCK);
    printf("members=%d senders=%d seconds=%.2f messages=%lld deliveries=%lld deliveries_per_s=%.0f "
           "server_cpu_s=%.2f server_ns_per_delivery=%.1f driver_cpu_pct=%.0f closed=%lld "
           "measure_wall_from=%.6f measure_wall_to=%.6f line_bytes=%d\n",
           members, senders, elapsed, sent - s0, deliveries, deliveries / elapsed, server_cpu,
           deliveries ? server_cpu * 1e9 / deliveries : 0.0, 100 * (self1 - self0) / elapsed, closed, w0, w1,
           line_len);
    return closed ? 1 : 0;
}
