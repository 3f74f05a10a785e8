/*
 * pingpong: a tiny closed-loop echo client for measuring peers.
 *
 *   usage: pingpong IP:PORT [CONNS=50] [MSG_BYTES=64] [TOTAL_MSGS=200000]
 *   build: cc -O2 -Wall -Wextra -o pingpong pingpong.c
 *
 * CONNS connections each keep exactly one MSG_BYTES message in flight; a
 * connection sends its next message once the whole echo has come back.
 * Stops after TOTAL_MSGS echoes, checks the echoed bytes, prints the rate.
 * Loopback only; gives up after 120 s.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct pc {
    int fd;
    size_t got;
};

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s IP:PORT [CONNS] [MSG_BYTES] [TOTAL_MSGS]\n", argv[0]);
        return 2;
    }
    int conns = argc > 2 ? atoi(argv[2]) : 50;
    size_t msz = argc > 3 ? (size_t)atol(argv[3]) : 64;
    long total = argc > 4 ? atol(argv[4]) : 200000;
    if (conns < 1 || msz < 1 || msz > 65536 || total < 1)
        return 2;

    char host[64];
    const char *colon = strrchr(argv[1], ':');
    if (!colon || (size_t)(colon - argv[1]) >= sizeof host)
        return 2;
    memcpy(host, argv[1], (size_t)(colon - argv[1]));
    host[colon - argv[1]] = 0;
    struct sockaddr_in sa = { .sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(colon + 1)) };
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        return 2;

    char *msg = malloc(msz), *buf = malloc(65536);
    for (size_t i = 0; i < msz; i++)
        msg[i] = (char)('a' + i % 26);

    int ep = epoll_create1(0);
    struct pc *pcs = calloc((size_t)conns, sizeof *pcs);
    for (int i = 0; i < conns; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
            perror("connect");
            return 1;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        pcs[i].fd = fd;
        struct epoll_event e = { .events = EPOLLIN, .data.ptr = &pcs[i] };
        epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e);
    }

    long sent = 0, done = 0;
    double t0 = now();
    for (int i = 0; i < conns && sent < total; i++, sent++)
        if (write(pcs[i].fd, msg, msz) != (ssize_t)msz) {
            perror("write");
            return 1;
        }

    struct epoll_event evs[256];
    while (done < total) {
        int n = epoll_wait(ep, evs, 256, 1000);
        if (n < 0 && errno != EINTR) {
            perror("epoll_wait");
            return 1;
        }
        if (now() - t0 > 120) {
            fprintf(stderr, "timeout after %ld messages\n", done);
            return 1;
        }
        for (int i = 0; i < n; i++) {
            struct pc *c = evs[i].data.ptr;
            ssize_t r = read(c->fd, buf, msz - c->got);
            if (r <= 0) {
                fprintf(stderr, "read: %s\n", r == 0 ? "EOF" : strerror(errno));
                return 1;
            }
            if (memcmp(buf, msg + c->got, (size_t)r) != 0) {
                fprintf(stderr, "corrupt echo\n");
                return 1;
            }
            c->got += (size_t)r;
            if (c->got < msz)
                continue;
            c->got = 0;
            done++;
            if (sent < total) {
                sent++;
                if (write(c->fd, msg, msz) != (ssize_t)msz) {
                    perror("write");
                    return 1;
                }
            }
        }
    }
    double dt = now() - t0;
    printf("%ld messages of %zu bytes over %d connections in %.3f s: %.0f msg/s\n", done, msz,
           conns, dt, (double)done / dt);
    return 0;
}
