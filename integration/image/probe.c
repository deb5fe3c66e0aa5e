/* Syscall probe baked into the test image: each subcommand tries one thing a hardened
 * container must not be able to do and prints "allowed" or "denied <errno name>".
 * The "*32" tests enter the kernel through the i386 ABI (int $0x80) from this 64-bit
 * process, as an attacker would to get around filters written for x86-64. */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <netinet/in.h>
#include <stdint.h>
#include <sys/mman.h>
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

/* i386 syscall numbers and socketcall's call number for socket(2). */
#define I386_SOCKETCALL 102
#define I386_UNSHARE 310
#define I386_SOCKET 359
#define SYS_SOCKET_CALL 1

static long int80(long nr, long a, long b, long c) {
    long ret;
    __asm__ volatile("int $0x80" : "=a"(ret) : "a"(nr), "b"(a), "c"(b), "d"(c) : "memory");
    return ret;
}

/* The kernel's -errno, as libc would report it. */
static long as_libc(long rc) {
    if (rc < 0 && rc > -4096) { errno = (int)-rc; return -1; }
    return rc;
}

/* socketcall(SYS_SOCKET, args): the family sits in memory, out of seccomp's sight. The
 * arguments must be below 4 GiB for the 32-bit ABI. */
static long socketcall32(int family, int type) {
    uint32_t *a = mmap(0, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_32BIT, -1, 0);
    if (a == MAP_FAILED) { perror("mmap"); _exit(2); }
    a[0] = (uint32_t)family; a[1] = (uint32_t)type; a[2] = 0;
    return as_libc(int80(I386_SOCKETCALL, SYS_SOCKET_CALL, (long)(uintptr_t)a, 0));
}

/* clone3 with CLONE_NEWUSER (struct clone_args, version 0: 64 bytes). */
static long clone3_userns(void) {
    uint64_t args[8] = {0};
    args[0] = CLONE_NEWUSER;
    args[4] = SIGCHLD;
    long rc = syscall(SYS_clone3, args, sizeof args);
    if (rc == 0) _exit(0);
    return rc;
}

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
    if (!strcmp(t, "clone3-userns")) return report(clone3_userns());
    if (!strcmp(t, "vsock32")) return report(socketcall32(AF_VSOCK, SOCK_STREAM));
    if (!strcmp(t, "alg32")) return report(socketcall32(AF_ALG, SOCK_SEQPACKET));
    if (!strcmp(t, "inet32")) return report(socketcall32(AF_INET, SOCK_STREAM));
    if (!strcmp(t, "vsock32-direct")) return report(as_libc(int80(I386_SOCKET, AF_VSOCK, SOCK_STREAM, 0)));
    if (!strcmp(t, "inet32-direct")) return report(as_libc(int80(I386_SOCKET, AF_INET, SOCK_STREAM, 0)));
    if (!strcmp(t, "userns32")) return report(as_libc(int80(I386_UNSHARE, CLONE_NEWUSER, 0, 0)));
    if (!strcmp(t, "io_uring")) return report(syscall(SYS_io_uring_setup, 8, (void *)0));
    if (!strcmp(t, "bpf")) return report(syscall(SYS_bpf, 0, (void *)0, 0));
    if (!strcmp(t, "keyctl")) return report(syscall(SYS_keyctl, 0, 0, 0, 0, 0));
    if (!strcmp(t, "userfaultfd")) return report(syscall(SYS_userfaultfd, 0));
    if (!strcmp(t, "perf")) return report(syscall(SYS_perf_event_open, (void *)0, 0, -1, -1, 0));
    fprintf(stderr, "unknown test %s\n", t);
    return 2;
}
