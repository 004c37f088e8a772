/*
 * common.h - the few things every module shares: error codes, a growable
 * byte buffer (git's strbuf style), logging and SHA-256.
 *
 * Uses libc only.  Keep this small: anything with a dependency belongs in a
 * module of its own.
 */
#ifndef QF_COMMON_H
#define QF_COMMON_H

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>

/*
 * Errors.  A function that can fail returns 0 or a negative code: -errno, or
 * one of the QF_E* codes below, which sit below -4096 so they never collide
 * with an errno value.  Only fs/ turns them into errno for the kernel.
 */
enum {
	QF_EFORMAT = -4097,	/* malformed input file (model, config, ...) */
	QF_ECORRUPT = -4098,	/* bytes changed under us or checksum failed */
	QF_EUNSUPPORTED = -4099, /* valid input we do not handle */
	QF_ESPEC = -4100,	/* invalid variant name / spec */
	QF_ENUMERIC = -4101,	/* NaN/Inf or other numerical failure */
	QF_ECACHE = -4102,	/* cache store failure (LMDB) */
	QF_ELINK = -4103,	/* a link to another owner's file (srcfile.c) */
};

/* Static string naming err (negative errno or QF_E*). */
const char *qf_strerror(int err);

#define QF_ASSERT(cond)                                                      \
	do {                                                                 \
		if (!(cond))                                                 \
			qf_assert_fail(#cond, __FILE__, __LINE__);           \
	} while (0)
void qf_assert_fail(const char *expr, const char *file, int line)
	__attribute__((noreturn));

/*
 * Growable byte buffer.  Always NUL-terminated so it can be used as a
 * string.  qf_buf_release() frees and leaves the buffer reusable (empty);
 * qf_buf_detach() hands the memory to the caller.
 */
struct qf_buf {
	char *data;	/* NUL-terminated, or NULL when never grown */
	size_t len;	/* bytes used, not counting the NUL */
	size_t cap;	/* bytes allocated */
};
#define QF_BUF_INIT { NULL, 0, 0 }

int qf_buf_grow(struct qf_buf *b, size_t extra);
/*
 * Room for need elements of size bytes in the array whose pointer is at
 * pp (an int32_t ** or any other object pointer's address: POSIX gives
 * them one representation) and whose capacity is *cap: when *cap < need,
 * *cap doubles (from first when 0) until it holds need, and the array is
 * reallocated.  Returns 0 or -ENOMEM (no memory or size overflow; the
 * array and *cap unchanged).
 */
int qf_grow(void *pp, size_t need, size_t *cap, size_t first, size_t size);
int qf_buf_add(struct qf_buf *b, const void *data, size_t len);
int qf_buf_adds(struct qf_buf *b, const char *s);
int qf_buf_addf(struct qf_buf *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
void qf_buf_reset(struct qf_buf *b);	/* len = 0, keeps memory */
void qf_buf_release(struct qf_buf *b);
/* Caller owns the result (free()); the buffer is left empty. */
char *qf_buf_detach(struct qf_buf *b, size_t *len);

/*
 * Read a whole regular file (bounded by max bytes; -EFBIG past it,
 * -EINVAL or -EISDIR when not a regular file), appended to out.
 */
int qf_read_file(const char *path, size_t max, struct qf_buf *out);
/* Exactly len bytes at off (EINTR retried): 0, -errno, or -EIO for a
 * file that ends before them (pread). */
int qf_pread_all(int fd, void *p, size_t len, uint64_t off);
int qf_pwrite_all(int fd, const void *p, size_t len, uint64_t off);
/*
 * An unnamed temporary file for data a process spills from memory
 * (mode 0600, gone with its last descriptor): in dir, else (dir NULL or
 * empty, or not writable there) in $TMPDIR, else /tmp.  Returns its
 * descriptor or -errno.
 */
int qf_spill_open(const char *dir);

/*
 * fn on each of n jobs (an array of n items of size bytes, n <= 8):
 * n - 1 on threads of their own, the last on the caller's; a job whose
 * thread cannot start runs on the caller's too.  Returns when all are
 * done.
 */
void qf_run_jobs(void *(*fn)(void *), void *jobs, size_t size, int n);
/*
 * fn(arg, i0, i1) on parts of [0, n), one per CPU (at most 8), each a
 * multiple of align items (the last takes the rest) and at least min
 * (else fewer parts; one runs on the caller).  For loops whose items do
 * not depend on one another: their results do not depend on the split.
 */
void qf_par_for(void (*fn)(void *arg, int64_t i0, int64_t i1), void *arg,
		int64_t n, int64_t min, int64_t align);

/*
 * Files under SRC and calib_dir (srcfile.c): name is one path component in
 * dirfd (AT_FDCWD allowed), and a symbolic link is followed only when the
 * link and what it leads to have the same owner; otherwise QF_ELINK
 * (logged).  flags: 0 for a regular file (opened read-only; anything else
 * is -EINVAL, a directory -EISDIR), O_DIRECTORY for a directory.
 * st receives what was opened.  Returns an fd the caller closes, or
 * -errno, QF_ELINK.
 */
int qf_src_openat(int dirfd, const char *name, int flags, struct stat *st);
/* The same rule without opening: st of name or of the link's target. */
int qf_src_statat(int dirfd, const char *name, struct stat *st);
/* qf_read_file() of name in dirfd under the rule. */
int qf_src_read(int dirfd, const char *name, size_t max, struct qf_buf *out);
/* The directory holding rel (names separated by '/') below dirfd, each
 * opened under the rule: an fd the caller closes, *leaf the last name. */
int qf_src_parent(int dirfd, const char *rel, const char **leaf);
/* A path: its directory opened as given, its last component under the
 * rule (for -o calib=FILE and calib_dir texts). */
int qf_src_open_path(const char *path, int flags, struct stat *st);
int qf_src_read_path(const char *path, size_t max, struct qf_buf *out);

/*
 * Large transient buffers (bigmem.c): from 4 MiB, an anonymous mapping on
 * transparent huge pages where the kernel has them; below, malloc.  Give
 * qf_big_free the size asked for.  NULL when out of memory.
 */
void *qf_big_alloc(size_t n);
void qf_big_free(void *p, size_t n);

/* mkdir -p; the last component gets mode (parents 0755). */
int qf_mkdir_p(const char *dir, unsigned mode);

/* Logging to stderr (or syslog when daemonized).  Lower-case messages. */
enum qf_log_level {
	QF_LOG_ERR,
	QF_LOG_WARN,
	QF_LOG_INFO,
	QF_LOG_DEBUG,
};
void qf_log_set_level(enum qf_log_level lvl);
void qf_log_set_syslog(bool on);
void qf_log(enum qf_log_level lvl, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
#define qf_err(...) qf_log(QF_LOG_ERR, __VA_ARGS__)
#define qf_warn(...) qf_log(QF_LOG_WARN, __VA_ARGS__)
#define qf_info(...) qf_log(QF_LOG_INFO, __VA_ARGS__)
#define qf_debug(...) qf_log(QF_LOG_DEBUG, __VA_ARGS__)

/*
 * UTF-8 (common/utf8.c).  qf_utf8_decode: the code point at s[0..n), n >=
 * 1, into *cp, and the bytes it takes (>= 1); on a bad sequence *cp =
 * QF_UTF8_BAD and the length of its maximal valid prefix (at least 1), as
 * WHATWG and Rust's from_utf8_lossy count errors.  qf_utf8_valid: strict
 * (no overlong forms, surrogates or code points past U+10FFFF).
 * qf_utf8_encode: cp (<= U+10FFFF) into out, returns 1..4;
 * qf_buf_add_utf8 appends it to b (0, -ENOMEM).
 */
#define QF_UTF8_BAD 0xFFFFFFFFu
size_t qf_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp);
bool qf_utf8_valid(const char *s, size_t n);
size_t qf_utf8_encode(uint32_t cp, char out[4]);
int qf_buf_add_utf8(struct qf_buf *b, uint32_t cp);

/* SHA-256 (FIPS 180-4), libcrypto's: a context by value, no allocation,
 * no failure; init, update any number of times, final once. */
struct qf_sha256 {
	_Alignas(8) unsigned char ctx[128];	/* a SHA256_CTX */
};
void qf_sha256_init(struct qf_sha256 *c);
void qf_sha256_update(struct qf_sha256 *c, const void *data, size_t len);
void qf_sha256_final(struct qf_sha256 *c, uint8_t out[32]);
/*
 * A fast 64-bit checksum of len bytes (four multiply-rotate lanes over
 * 32-byte stripes, then the tail): detects torn or flipped bytes in cache
 * values, not tampering (see quantfs(1), SECURITY).
 */
uint64_t qf_hash64(const void *data, size_t len, uint64_t seed);
/* Lower-case hex of n bytes into out (2n + 1 bytes). */
void qf_hex(const uint8_t *in, size_t n, char *out);
/* Its inverse: the 2n lower-case hex digits at s into n bytes; reads no
 * further than the first that is not one.  0 or -EINVAL. */
int qf_unhex(const char *s, size_t n, uint8_t *out);

/*
 * guard.c: a mapping of a file another process may truncate.  A read past
 * the file's new end gets zeros instead of SIGBUS and counts a fault:
 * check qf_guard_faults() after reading and discard what was read if it
 * grew.  Returns a guard id, or -ENOSPC (the mapping is not guarded).
 */
int qf_guard_add(const void *p, size_t len);
void qf_guard_remove(int id);		/* before munmap */
unsigned qf_guard_faults(int id);

/* Monotonic seconds. */
double qf_now(void);

#endif /* QF_COMMON_H */
