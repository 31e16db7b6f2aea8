// The few glibc calls Swift's Glibc module cannot reach: glibc declares them only under _GNU_SOURCE
// (memfd_create, fallocate, accept4, signalfd), or they are variadic (syscall). Thin wrappers, compiled
// with _GNU_SOURCE, checked by the compiler and linker like any call; BallonetLinux is their one caller.
#ifndef CBALLONET_LINUX_H
#define CBALLONET_LINUX_H

#include <stdint.h>
#include <signal.h>
#include <sys/socket.h>

int cballonet_memfd_create(const char *name, unsigned int flags);
int cballonet_fallocate(int fd, int mode, int64_t offset, int64_t length);
int cballonet_accept4(int fd, struct sockaddr *address, socklen_t *length, int flags);
int cballonet_signalfd(int fd, const sigset_t *mask, int flags);
// System calls glibc 2.36 (Debian 12's) has no wrapper for; -1 and errno on failure, as syscall(2).
long cballonet_pidfd_open(int pid, unsigned int flags);
long cballonet_process_madvise(int pidfd, const void *vectors, unsigned long count, int advice, unsigned int flags);

// statfs(2)'s f_type of the file system holding `path` (Swift's Glibc module lacks sys/vfs.h); -1 and errno on failure.
long cballonet_filesystem_type(const char *path);

// Flag values glibc hides behind _GNU_SOURCE.
extern const unsigned int cballonet_MFD_CLOEXEC;
extern const int cballonet_SFD_CLOEXEC;
extern const int cballonet_SFD_NONBLOCK;
extern const short cballonet_POLLRDHUP;

#endif
