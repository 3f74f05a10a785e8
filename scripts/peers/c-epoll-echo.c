/*
 * c-epoll-echo: a small, strong, single-threaded edge-triggered epoll echo
 * server in plain C, used as a peer to benchmark edgeloop against.
 *
 *   usage: c-epoll-echo IP:PORT        (port 0 = pick a free port)
 *   build: cc -O2 -Wall -Wextra -o c-epoll-echo c-epoll-echo.c
 *
 * Design (the fast path is epoll_wait + read + send per echoed message):
 *  - every connection is registered once with EPOLLIN|EPOLLOUT|EPOLLRDHUP|
 *    EPOLLET and never modified (no epoll_ctl on the hot path);
 *  - on readability we read into one shared 64 KiB buffer; a read that
 *    returns less than asked means the socket is drained, so the extra read
 *    that would return EAGAIN is skipped.  This is safe because EPOLLRDHUP is
 *    registered: data or a FIN that arrives after the event was reported
 *    re-arms the edge and produces a new event.  Once a FIN has been seen
 *    (EPOLLRDHUP) we read until read() returns 0;
 *  - the bytes are written back at once with a single send(MSG_NOSIGNAL);
 *    only what the kernel refused is copied to a malloc'd pending buffer and
 *    written on the next EPOLLOUT edge;
 *  - if the pending output exceeds 4 MiB we stop reading that connection
 *    until it drains (bounded memory), then resume reading;
 *  - half-close: on EOF we finish writing what is owed, then close;
 *  - an idle connection costs one 32-byte struct and nothing else.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#define READ_BUF (64 * 1024)
#define PENDING_LIMIT (4u * 1024 * 1024)
#define MAX_EVENTS 256

enum { F_EOF = 1, F_RDHUP = 2, F_PAUSED = 4 };

struct conn {
    char *pend;        /* bytes owed to the peer (NULL when none) */
    uint32_t off;      /* first unsent byte in pend */
    uint32_t len;      /* end of valid bytes in pend */
    uint32_t cap;      /* allocated size of pend */
    int fd;
    uint32_t flags;
};

static char rbuf[READ_BUF];
static volatile sig_atomic_t stop_flag;
static int listen_marker; /* address used as epoll data for the listener */

static void on_signal(int sig) { (void)sig; stop_flag = 1; }

static void conn_close(struct conn *c)
{
    close(c->fd);
    free(c->pend);
    free(c);
}

/* Append bytes the kernel did not take; returns -1 on allocation failure. */
static int pend_append(struct conn *c, const char *p, size_t n)
{
    if (c->off == c->len) {
        c->off = c->len = 0;
    } else if (c->off > 0 && c->len + n > c->cap) {
        memmove(c->pend, c->pend + c->off, c->len - c->off);
        c->len -= c->off;
        c->off = 0;
    }
    if (c->len + n > c->cap) {
        size_t cap = c->cap ? c->cap : 4096;
        while (cap < c->len + n)
            cap *= 2;
        char *np = realloc(c->pend, cap);
        if (!np)
            return -1;
        c->pend = np;
        c->cap = (uint32_t)cap;
    }
    memcpy(c->pend + c->len, p, n);
    c->len += (uint32_t)n;
    return 0;
}

/* Try to send pending bytes. Returns 0 if all sent, 1 if some remain, -1 on error. */
static int pend_flush(struct conn *c)
{
    while (c->off < c->len) {
        ssize_t w = send(c->fd, c->pend + c->off, c->len - c->off, MSG_NOSIGNAL);
        if (w > 0) {
            c->off += (uint32_t)w;
        } else if (w < 0 && errno == EINTR) {
            continue;
        } else if (w < 0 && errno == EAGAIN) {
            return 1;
        } else {
            return -1;
        }
    }
    /* Drained: release the buffer so idle connections stay small. */
    free(c->pend);
    c->pend = NULL;
    c->off = c->len = c->cap = 0;
    return 0;
}

/* Read and echo until the socket is drained, EOF, or we must pause.
 * Returns -1 if the connection must be closed now. */
static int conn_read(struct conn *c)
{
    for (;;) {
        if (c->flags & (F_PAUSED | F_EOF))
            return 0;
        ssize_t n = read(c->fd, rbuf, sizeof rbuf);
        if (n > 0) {
            if (c->pend == NULL) {
                ssize_t w = send(c->fd, rbuf, (size_t)n, MSG_NOSIGNAL);
                if (w < 0) {
                    if (errno != EAGAIN && errno != EINTR)
                        return -1;
                    w = 0;
                }
                if (w < n && pend_append(c, rbuf + w, (size_t)(n - w)) < 0)
                    return -1;
            } else {
                /* Output is already queued: keep order, wait for EPOLLOUT. */
                if (pend_append(c, rbuf, (size_t)n) < 0)
                    return -1;
            }
            if (c->pend && c->len - c->off > PENDING_LIMIT) {
                c->flags |= F_PAUSED;
                return 0;
            }
            if ((size_t)n < sizeof rbuf && !(c->flags & F_RDHUP))
                return 0; /* short read: drained; a new edge will come */
        } else if (n == 0) {
            c->flags |= F_EOF;
            return c->pend ? 0 : -1; /* nothing owed: close now */
        } else if (errno == EINTR) {
            continue;
        } else if (errno == EAGAIN) {
            return 0;
        } else {
            return -1;
        }
    }
}

static void conn_event(struct conn *c, uint32_t ev)
{
    if (ev & EPOLLRDHUP)
        c->flags |= F_RDHUP;
    if (c->pend && (ev & (EPOLLOUT | EPOLLERR | EPOLLHUP))) {
        int r = pend_flush(c);
        if (r < 0)
            goto close;
        if (r == 0) {
            if (c->flags & F_EOF)
                goto close; /* half-close: everything owed is written */
            if (c->flags & F_PAUSED) {
                /* Bytes left unread while paused raise no new edge: read now. */
                c->flags &= ~(uint32_t)F_PAUSED;
                ev |= EPOLLIN;
            }
        }
    }
    if ((ev & (EPOLLERR | EPOLLHUP)) && (c->flags & F_EOF))
        goto close; /* peer gone while we still owed bytes */
    if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) {
        if (conn_read(c) < 0)
            goto close;
    }
    return;
close:
    conn_close(c);
}

static void do_accept(int lfd, int ep)
{
    for (;;) {
        int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno != EAGAIN)
                perror("accept4");
            return;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        struct conn *c = calloc(1, sizeof *c);
        if (!c) {
            close(fd);
            continue;
        }
        c->fd = fd;
        struct epoll_event e = { .events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET,
                                 .data.ptr = c };
        if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) < 0) {
            perror("epoll_ctl");
            conn_close(c);
        }
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s IP:PORT\n", argv[0]);
        return 2;
    }
    char host[64];
    const char *colon = strrchr(argv[1], ':');
    if (!colon || (size_t)(colon - argv[1]) >= sizeof host) {
        fprintf(stderr, "bad address: %s\n", argv[1]);
        return 2;
    }
    memcpy(host, argv[1], (size_t)(colon - argv[1]));
    host[colon - argv[1]] = 0;
    struct sockaddr_in sa = { .sin_family = AF_INET };
    char *end;
    long port = strtol(colon + 1, &end, 10);
    if (*end || port < 0 || port > 65535 || inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        fprintf(stderr, "bad address: %s\n", argv[1]);
        return 2;
    }
    sa.sin_port = htons((uint16_t)port);

    /* Allow many connections. */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    signal(SIGPIPE, SIG_IGN);
    /* SIGTERM/SIGINT are blocked except inside epoll_pwait: race-free exit. */
    struct sigaction sact;
    memset(&sact, 0, sizeof sact);
    sact.sa_handler = on_signal;
    sigemptyset(&sact.sa_mask);
    sigaction(SIGTERM, &sact, NULL);
    sigaction(SIGINT, &sact, NULL);
    sigset_t block, waitmask;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGINT);
    sigprocmask(SIG_BLOCK, &block, &waitmask);
    sigdelset(&waitmask, SIGTERM);
    sigdelset(&waitmask, SIGINT);

    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0) {
        perror("socket");
        return 1;
    }
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        perror("bind");
        return 1;
    }
    if (listen(lfd, 1024) < 0) {
        perror("listen");
        return 1;
    }
    socklen_t sl = sizeof sa;
    getsockname(lfd, (struct sockaddr *)&sa, &sl);
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &sa.sin_addr, ip, sizeof ip);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) {
        perror("epoll_create1");
        return 1;
    }
    struct epoll_event le = { .events = EPOLLIN | EPOLLET, .data.ptr = &listen_marker };
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &le) < 0) {
        perror("epoll_ctl");
        return 1;
    }

    printf("listening on %s:%u\n", ip, (unsigned)ntohs(sa.sin_port));
    fflush(stdout);

    struct epoll_event evs[MAX_EVENTS];
    while (!stop_flag) {
        int n = epoll_pwait(ep, evs, MAX_EVENTS, -1, &waitmask);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            perror("epoll_pwait");
            return 1;
        }
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr == &listen_marker)
                do_accept(lfd, ep);
            else
                conn_event(evs[i].data.ptr, evs[i].events);
        }
    }
    return 0;
}
