/*
 * fanout: a load driver for `edgeloop chat` — M members in one room, K of
 * them sending, everyone counting the lines it receives.
 *
 *   fanout IP PORTS MEMBERS SENDERS SECONDS SERVER_PIDS [TEXT_BYTES] [WINDOW]
 *
 * PORTS and SERVER_PIDS are comma-separated: with several servers (chat
 * servers sharing one Redis), member i connects to PORTS[i % n], and the
 * server CPU is the sum over SERVER_PIDS. FANOUT_OTHER_PID (environment)
 * names one more process whose CPU is reported apart (Redis).
 *
 * Single-threaded, level-triggered epoll (this is the client, not the
 * subject). Phases:
 *   1. connect MEMBERS sockets; wait until every `* guestN joined` notice
 *      has arrived (member i receives MEMBERS - i of them);
 *   2. one second of warm-up load, then SECONDS of measured load.
 * The senders (members 0..K-1) take turns writing bursts of 64 messages
 * of TEXT_BYTES (default 32) bytes, plus the difference where a sender's
 * nickname is shorter than another's (every line a member receives then
 * has one length). FANOUT_BURST (environment) sets the burst; with 16,
 * at 10 members the driver's own writes, not the server, were the limit
 * (BENCHMARKS.md, "Chat fan-out"). At most WINDOW (default 1024) messages are
 * in flight: sent but not yet received by every member, counted as
 * sent * MEMBERS - delivered. That keeps every member's queue on the
 * server far below --max-outbuf, so nobody is disconnected as a slow
 * consumer; the server, not the window, should be the limit.
 *
 * A delivery is one message line received by one member. Under the
 * measured load the members discard what they receive unread (recv with
 * MSG_TRUNC, which TCP honours by dropping the bytes without a copy) and
 * count lines by length, which is exact while every line has the same
 * length (all senders' nicknames equally long; otherwise, and with
 * FANOUT_READ_ALL=1, they read and count line ends). At the end it
 * prints one line of key=value pairs: deliveries per second and the
 * server's CPU time per delivery (utime + stime from /proc/PID/stat, in
 * clock ticks of sysconf(_SC_CLK_TCK), the same as `getconf CLK_TCK`).
 *
 * Own-line latency (phase 3, after the measurement, once every line has
 * arrived): sender 0 alone sends one line at a time, waits for its own
 * line to come back, and the next goes — up to 2 000 lines or 2 s, but
 * at least 1 000 lines within 10 s, with every member still receiving
 * each. Under the flat-out load of phase 2 a
 * sender's wait is only the window divided by the throughput (Little's
 * law), so this measures the path instead: the time a sender waits to see
 * its own line in a busy room that is not saturated. A sender recognises
 * its own lines by their "NICK: " (it learns its nickname from the first
 * line it receives, its own joined notice). Percentiles come from a
 * histogram of 1-microsecond buckets up to 1 s.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Messages per write of a sender (FANOUT_BURST in the environment). */
static int burst_msgs = 64;
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

#define HIST_US 1000000

/* A sender's view of its own lines. */
struct sender {
    char prefix[64]; /* "NICK: " */
    int plen;        /* 0 until its nickname is known */
    int match;       /* bytes of the prefix matched at this line's start */
    int skip;        /* inside a line already classified */
    double *sent_at; /* ring of write times of its messages in flight */
    char *burst;     /* burst_msgs messages, "msg xxx...\n" of line_len bytes each */
    int line_len;
    size_t burst_len;
    long head, tail, cap;
};

static int members, senders, measuring;
static struct sender *snd;
static long long *hist, own_samples, own_over;
static int *fds;
static long long delivered, closed;
static char *rbuf;
/* Under load (phase 2) every member discards what it receives unread
 * (MSG_TRUNC) and counts it by length: every line is then "NICK: TEXT\n"
 * of the same length, DISCARD_LEN. 0 when the nicknames' lengths differ,
 * and outside phase 2. */
static long long discard_len, *discarded;

/* One of sender s's own lines came back. */
static void own_line(int s) {
    struct sender *S = &snd[s];
    if (S->head == S->tail) return; /* sent before the measurement began */
    double at = S->sent_at[S->head % S->cap];
    S->head++;
    if (!measuring) return;
    long us = (long)((now_s() - at) * 1e6);
    if (us < HIST_US) hist[us]++;
    else own_over++;
    own_samples++;
}

/* Find sender s's own lines in what it read: the lines that start with
 * its "NICK: " (a line may be split across reads). */
static void scan_own(int s, const char *buf, size_t n) {
    struct sender *S = &snd[s];
    size_t i = 0;
    if (S->plen == 0) {
        /* Its first line is its own "* NICK joined". */
        const char *nl = memchr(buf, '\n', n);
        if (n > 2 && buf[0] == '*' && nl) {
            const char *end = memmem(buf, nl - buf, " joined", 7);
            int len = end ? (int)(end - buf - 2) : 0;
            if (len > 0 && len < (int)sizeof S->prefix - 2) {
                memcpy(S->prefix, buf + 2, len);
                memcpy(S->prefix + len, ": ", 2);
                S->plen = len + 2;
            }
        }
        return;
    }
    while (i < n) {
        if (S->skip) {
            const char *nl = memchr(buf + i, '\n', n - i);
            if (!nl) return;
            i = nl - buf + 1;
            S->skip = 0;
            S->match = 0;
            continue;
        }
        while (i < n && S->match < S->plen && buf[i] == S->prefix[S->match]) i++, S->match++;
        if (S->match == S->plen) {
            own_line(s);
            S->skip = 1;
        } else if (i < n) {
            S->skip = 1; /* not its own; buf[i] may end the line */
        }
    }
}

/* Read everything a member has; count its lines. */
/* The line ends in a read. A plain loop, which the compiler vectorizes
 * (-O3): a memchr call per 41-byte line cost the driver more than the
 * read itself at tens of millions of lines a second, and where the
 * driver is the limit that is what a server's figures would measure. */
static long long count_lines(const char *buf, ssize_t n) {
    long long count = 0;
    for (ssize_t k = 0; k < n; k++) count += buf[k] == '\n';
    return count;
}

static void drain(int i) {
    for (;;) {
        ssize_t n = discard_len ? recv(fds[i], rbuf, READ_SIZE, MSG_TRUNC) : read(fds[i], rbuf, READ_SIZE);
        if (n > 0) {
            long long count;
            if (discard_len) {
                /* Whole lines only: the '\n' of a line cut here is
                 * counted by the read that takes its rest. */
                count = (discarded[i] + n) / discard_len - discarded[i] / discard_len;
                discarded[i] += n;
            } else {
                count = count_lines(rbuf, n);
                if (i < senders) scan_own(i, rbuf, n);
            }
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
        fprintf(stderr, "usage: %s IP PORTS MEMBERS SENDERS SECONDS SERVER_PIDS [TEXT_BYTES] [WINDOW]\n", argv[0]);
        return 2;
    }
    const char *ip = argv[1];
    int ports[8], nports = 0, pids[8], npids = 0;
    for (char *p = argv[2]; *p && nports < 8; p += strcspn(p, ",") + (p[strcspn(p, ",")] == ',')) ports[nports++] = atoi(p);
    for (char *p = argv[6]; *p && npids < 8; p += strcspn(p, ",") + (p[strcspn(p, ",")] == ',')) pids[npids++] = atoi(p);
    members = atoi(argv[3]);
    senders = atoi(argv[4]);
    double seconds = atof(argv[5]);
    int other_pid = getenv("FANOUT_OTHER_PID") ? atoi(getenv("FANOUT_OTHER_PID")) : 0;
    if (getenv("FANOUT_BURST")) burst_msgs = atoi(getenv("FANOUT_BURST"));
    int text_bytes = argc > 7 ? atoi(argv[7]) : 32;
    long long window = argc > 8 ? atoll(argv[8]) : 1024;
    if (members < 1 || senders < 1 || senders > members || text_bytes < 8 || nports < 1 || npids < 1 || burst_msgs < 1) {
        fprintf(stderr, "bad arguments\n");
        return 2;
    }

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    snd = calloc(senders, sizeof *snd);
    for (int s = 0; s < senders; s++) {
        snd[s].cap = window + 4 * burst_msgs;
        snd[s].sent_at = calloc(snd[s].cap, sizeof(double));
    }
    hist = calloc(HIST_US, sizeof *hist);
    fds = calloc(members, sizeof *fds);
    discarded = calloc(members, sizeof *discarded);
    rbuf = malloc(READ_SIZE);
    int ep = epoll_create1(0);
    if (ep < 0) die("epoll_create1");

    struct sockaddr_in sa = {.sin_family = AF_INET};
    inet_pton(AF_INET, ip, &sa.sin_addr);
    for (int i = 0; i < members; i++) {
        sa.sin_port = htons(ports[i % nports]);
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

    /* One burst of burst_msgs messages per write, the same bytes every time: the
     * server prefixes the sender's nickname; only line counts matter. A
     * sender with a shorter nickname sends a text longer by the
     * difference (guest9 against guest10: TEXT_BYTES + 1), so that every
     * line the members receive, "NICK: TEXT\n", has the same length. */
    int longest = 0, known = 1;
    for (int k = 0; k < senders; k++) {
        if (snd[k].plen > longest) longest = snd[k].plen;
        if (snd[k].plen == 0) known = 0;
    }
    for (int k = 0; k < senders; k++) {
        struct sender *S = &snd[k];
        S->line_len = text_bytes + (known ? longest - S->plen : 0) + 1;
        S->burst_len = (size_t)burst_msgs * S->line_len;
        S->burst = malloc(S->burst_len);
        for (int b = 0; b < burst_msgs; b++) {
            char *l = S->burst + (size_t)b * S->line_len;
            memset(l, 'x', S->line_len - 1);
            memcpy(l, "msg ", 4);
            l[S->line_len - 1] = '\n';
        }
    }
    size_t *partial = calloc(senders, sizeof *partial); /* bytes of the current burst written */

    /* Every member is at a line boundary now (all joins arrived, nothing
     * sent yet): from here lines can be counted by their length. Copying
     * and scanning tens of millions of 41-byte lines a second cost the
     * driver more than the sending cost a server: reading them, the
     * driver was the limit below 1 000 members, and a server that waits
     * for a busy driver writes smaller batches. FANOUT_READ_ALL=1 reads
     * them. */
    discard_len = getenv("FANOUT_READ_ALL") || !known ? 0 : longest + text_bytes + 1;

    long long sent = 0; /* whole messages written */
    double start = now_s(), measure_from = start + 1, until = measure_from + seconds;
    int turn = 0;
    long long d0 = 0, c0 = 0, s0 = 0, o0 = 0;
    double t0 = 0, w0 = 0, self0 = 0;
    for (;;) {
        double t = now_s();
        if (!measuring && t >= measure_from) {
            measuring = 1;
            d0 = delivered, s0 = sent, c0 = 0, t0 = t, w0 = wall_s(), self0 = self_cpu_s();
            for (int p = 0; p < npids; p++) c0 += cpu_ticks(pids[p]);
            if (other_pid) o0 = cpu_ticks(other_pid);
        }
        if (t >= until) break;
        /* Send while the window has room: each sender in turn. */
        int wrote = 0;
        for (int k = 0; k < senders && sent * members - delivered < window * members; k++) {
            int s = turn;
            turn = (turn + 1) % senders;
            if (fds[s] < 0) continue;
            struct sender *S = &snd[s];
            ssize_t n = write(fds[s], S->burst + partial[s], S->burst_len - partial[s]);
            if (n < 0) continue; /* EAGAIN: its send buffer is full */
            size_t before = partial[s] / S->line_len;
            partial[s] += n;
            size_t whole = partial[s] / S->line_len - before;
            sent += whole;
            double at = now_s();
            for (size_t w = 0; w < whole && snd[s].tail - snd[s].head < snd[s].cap; w++)
                snd[s].sent_at[snd[s].tail++ % snd[s].cap] = at;
            if (partial[s] == S->burst_len) partial[s] = 0;
            wrote = 1;
        }
        int n = epoll_wait(ep, events, 1024, wrote ? 0 : 1);
        for (int e = 0; e < n; e++) drain(events[e].data.u32);
        if (closed == members) break;
    }
    double t1 = now_s(), w1 = wall_s(), self1 = self_cpu_s();
    discard_len = 0;
    long long c1 = 0, o1 = other_pid ? cpu_ticks(other_pid) : 0;
    for (int p = 0; p < npids; p++) c1 += cpu_ticks(pids[p]);
    long long deliveries = delivered - d0;

    /* Phase 3: finish the bursts begun, let everything arrive, then one
     * line at a time from sender 0. */
    double give_up3 = now_s() + 20;
    for (int k = 0; k < senders; k++) {
        while (fds[k] >= 0 && partial[k] != 0 && now_s() < give_up3) {
            struct sender *S = &snd[k];
            ssize_t n = write(fds[k], S->burst + partial[k], S->burst_len - partial[k]);
            if (n > 0) {
                size_t before = partial[k] / S->line_len;
                partial[k] += n;
                size_t whole = partial[k] / S->line_len - before;
                sent += whole;
                for (size_t w = 0; w < whole && snd[k].tail - snd[k].head < snd[k].cap; w++)
                    snd[k].sent_at[snd[k].tail++ % snd[k].cap] = now_s();
                if (partial[k] == S->burst_len) partial[k] = 0;
            }
            int m = epoll_wait(ep, events, 1024, 1);
            for (int e = 0; e < m; e++) drain(events[e].data.u32);
        }
    }
    while (sent * members - closed * sent > delivered && now_s() < give_up3) {
        int m = epoll_wait(ep, events, 1024, 10);
        for (int e = 0; e < m; e++) drain(events[e].data.u32);
    }
    /* Everything has arrived: nothing of a sender's is in flight (its
     * lines under load were not scanned), and every stream is at a line
     * boundary. */
    for (int k = 0; k < senders; k++) snd[k].head = snd[k].tail, snd[k].match = snd[k].skip = 0;
    memset(hist, 0, HIST_US * sizeof *hist);
    own_samples = own_over = 0;
    /* At least 1 000 lines (a p99 from fewer is one or two samples), so
     * at large M, where each line takes milliseconds to reach everyone,
     * up to 10 s. */
    double lat_from = now_s(), lat_until = lat_from + 10;
    for (int k = 0; k < 2000 && fds[0] >= 0 && now_s() < lat_until && (k < 1000 || now_s() < lat_from + 2); k++) {
        long want = snd[0].head + 1;
        long long everyone = delivered + members - closed;
        if (write(fds[0], snd[0].burst, snd[0].line_len) != snd[0].line_len) break; /* an empty send buffer takes it whole */
        snd[0].sent_at[snd[0].tail++ % snd[0].cap] = now_s();
        /* The sender waits on its own socket alone, as a client of its
         * own would: an epoll_wait over every member would first collect
         * the readiness of hundreds of sockets the server wrote after the
         * sender's (tens of microseconds per hundred), and time the
         * driver instead of the path. The others are read afterwards. */
        struct pollfd own = {.fd = fds[0], .events = POLLIN};
        while (snd[0].head < want && fds[0] >= 0 && now_s() < lat_until + 1)
            if (poll(&own, 1, 10) > 0) drain(0);
        /* Every member has the line before the next one goes: each is
         * timed from a quiet room. */
        while (delivered < everyone && now_s() < lat_until + 1) {
            int m = epoll_wait(ep, events, 1024, 10);
            for (int e = 0; e < m; e++) drain(events[e].data.u32);
        }
    }
    /* Own-line latency percentiles. */
    double p50 = -1, p99 = -1;
    long long acc = 0;
    for (long us = 0; us < HIST_US && own_samples; us++) {
        acc += hist[us];
        if (p50 < 0 && acc * 2 >= own_samples) p50 = us;
        if (p99 < 0 && acc * 100 >= own_samples * 99) p99 = us;
    }
    double elapsed = t1 - t0;
    /* The bytes of one delivered line: "NICK: " + text + "\n", averaged
     * over the senders. */
    double wire = 0;
    for (int k = 0; k < senders; k++) wire += (double)(snd[k].plen + snd[k].line_len) / senders;
    double server_cpu = (double)(c1 - c0) / sysconf(_SC_CLK_TCK);
    printf("members=%d senders=%d seconds=%.2f messages=%lld deliveries=%lld deliveries_per_s=%.0f "
           "server_cpu_s=%.2f server_ns_per_delivery=%.1f driver_cpu_pct=%.0f closed=%lld "
           "measure_wall_from=%.6f measure_wall_to=%.6f line_bytes=%d own_samples=%lld own_p50_us=%.0f "
           "own_p99_us=%.0f own_over_1s=%lld other_cpu_s=%.2f wire_bytes=%.1f\n",
           members, senders, elapsed, sent - s0, deliveries, deliveries / elapsed, server_cpu,
           deliveries ? server_cpu * 1e9 / deliveries : 0.0, 100 * (self1 - self0) / elapsed, closed, w0, w1,
           text_bytes + 1, own_samples, p50, p99, own_over, (double)(o1 - o0) / sysconf(_SC_CLK_TCK), wire);
    return closed ? 1 : 0;
}
