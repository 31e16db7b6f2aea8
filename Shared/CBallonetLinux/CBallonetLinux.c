#define _GNU_SOURCE
#include "CBallonetLinux.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <unistd.h>

// Added in Linux 5.3 and 5.10; one number on every architecture but alpha.
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_process_madvise
#define SYS_process_madvise 440
#endif

int cballonet_memfd_create(const char *name, unsigned int flags) { return memfd_create(name, flags); }
int cballonet_fallocate(int fd, int mode, int64_t offset, int64_t length) { return fallocate(fd, mode, offset, length); }
int cballonet_accept4(int fd, struct sockaddr *address, socklen_t *length, int flags) {
    return accept4(fd, address, length, flags);
}
int cballonet_signalfd(int fd, const sigset_t *mask, int flags) { return signalfd(fd, mask, flags); }
long cballonet_pidfd_open(int pid, unsigned int flags) { return syscall(SYS_pidfd_open, pid, flags); }
long cballonet_process_madvise(int pidfd, const void *vectors, unsigned long count, int advice, unsigned int flags) {
    return syscall(SYS_process_madvise, pidfd, vectors, count, advice, flags);
}

long cballonet_filesystem_type(const char *path) {
    struct statfs info;
    if (statfs(path, &info) != 0) return -1;
    return (long)info.f_type;
}

const unsigned int cballonet_MFD_CLOEXEC = MFD_CLOEXEC;
const int cballonet_SFD_CLOEXEC = SFD_CLOEXEC;
const int cballonet_SFD_NONBLOCK = SFD_NONBLOCK;
const short cballonet_POLLRDHUP = POLLRDHUP;
