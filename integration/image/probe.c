/* Syscall probe baked into the test image: each subcommand tries one thing a hardened
 * container must not be able to do and prints "allowed" or "denied <errno name>". */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef AF_VSOCK
#define AF_VSOCK 40
#endif
#ifndef AF_ALG
#define AF_ALG 38
#endif

static int report(long rc) {
    if (rc >= 0) { puts("allowed"); return 0; }
    printf("denied %s\n", strerrorname_np(errno) ? strerrorname_np(errno) : "?");
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: probe <test>\n"); return 2; }
    const char *t = argv[1];
    if (!strcmp(t, "vsock")) return report(socket(AF_VSOCK, SOCK_STREAM, 0));
    if (!strcmp(t, "alg")) return report(socket(AF_ALG, SOCK_SEQPACKET, 0));
    if (!strcmp(t, "inet")) return report(socket(AF_INET, SOCK_STREAM, 0));
    if (!strcmp(t, "raw")) return report(socket(AF_INET, SOCK_RAW, IPPROTO_ICMP));
    if (!strcmp(t, "mknod")) return report(mknod("/tmp/probe-null", S_IFCHR | 0600, makedev(1, 3)));
    if (!strcmp(t, "userns")) return report(unshare(CLONE_NEWUSER));
    if (!strcmp(t, "netns")) return report(unshare(CLONE_NEWNET));
    if (!strcmp(t, "clone-userns")) {
        long rc = syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0);
        if (rc == 0) _exit(0);
        return report(rc);
    }
    if (!strcmp(t, "io_uring")) return report(syscall(SYS_io_uring_setup, 8, (void *)0));
    if (!strcmp(t, "bpf")) return report(syscall(SYS_bpf, 0, (void *)0, 0));
    if (!strcmp(t, "keyctl")) return report(syscall(SYS_keyctl, 0, 0, 0, 0, 0));
    if (!strcmp(t, "userfaultfd")) return report(syscall(SYS_userfaultfd, 0));
    if (!strcmp(t, "perf")) return report(syscall(SYS_perf_event_open, (void *)0, 0, -1, -1, 0));
    fprintf(stderr, "unknown test %s\n", t);
    return 2;
}
