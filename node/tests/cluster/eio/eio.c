/*
 * A disk that fails, for the cluster tests (`eio.rs`): loaded with LD_PRELOAD into a node,
 * it makes every write and sync of a file under $QPQ_EIO_DIR fail with EIO while the file
 * $QPQ_EIO_TRIGGER exists. SQLite and the node see exactly what a failing device gives them
 * (`disk I/O error`), at the libc boundary; other files (logs, sockets) are untouched.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

static int failing(int fd) {
    int saved = errno;
    const char *dir = getenv("QPQ_EIO_DIR");
    const char *trigger = getenv("QPQ_EIO_TRIGGER");
    int fail = 0;
    if (dir && trigger && access(trigger, F_OK) == 0) {
        char link[64], target[PATH_MAX];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, target, sizeof target - 1);
        if (n > 0) {
            size_t len = strlen(dir);
            target[n] = 0;
            fail = strncmp(target, dir, len) == 0 && (target[len] == '/' || target[len] == 0);
        }
    }
    errno = saved;
    return fail;
}

#define NEXT(name) static __typeof__(name) *next; if (!next) next = (__typeof__(name) *)dlsym(RTLD_NEXT, #name)
#define EIO_IF_FAILING(fd) if (failing(fd)) { errno = EIO; return -1; }

ssize_t write(int fd, const void *buf, size_t n) { NEXT(write); EIO_IF_FAILING(fd); return next(fd, buf, n); }
ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) { NEXT(pwrite); EIO_IF_FAILING(fd); return next(fd, buf, n, off); }
ssize_t pwrite64(int fd, const void *buf, size_t n, off64_t off) { NEXT(pwrite64); EIO_IF_FAILING(fd); return next(fd, buf, n, off); }
ssize_t writev(int fd, const struct iovec *iov, int cnt) { NEXT(writev); EIO_IF_FAILING(fd); return next(fd, iov, cnt); }
ssize_t pwritev(int fd, const struct iovec *iov, int cnt, off_t off) { NEXT(pwritev); EIO_IF_FAILING(fd); return next(fd, iov, cnt, off); }
int fsync(int fd) { NEXT(fsync); EIO_IF_FAILING(fd); return next(fd); }
int fdatasync(int fd) { NEXT(fdatasync); EIO_IF_FAILING(fd); return next(fd); }
