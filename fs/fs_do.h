/*
 * fs_do.h - the filesystem's operations without FUSE (do.c, range.c).
 *
 * Each FUSE op in ll_ops.c is a thin wrapper around one qf_fs_do_<op>():
 * the core finds the node, does the work and hands back plain results (a
 * stat, a list of names, where the bytes of a read are); the ll_ side
 * turns them into fuse_reply_*.  tests/unit/test_fs.c calls the same
 * functions with no mount.  Nodes are named by inode number (the root is
 * QF_FS_ROOT_INO); every call returns 0 or -errno.
 */
#ifndef QF_FS_DO_H
#define QF_FS_DO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <sys/statvfs.h>

#include "common.h"
#include "fs.h"

struct qf_cache_txn;

#define QF_FS_ROOT_INO 1

/* A node as a lookup or getattr answers it. */
struct qf_fs_entry {
	uint64_t ino;
	struct stat st;
	double timeout;			/* entry and attribute, seconds */
};

/*
 * Before a lookup of name in parent: a mixed_dyn / mixed_b directory's
 * sensitivities measured (or found in the cache), outside the namespace
 * lock and outside the request (ll_ops.c calls it before it marks the
 * thread as serving the request).  Returns 0, -ENOTDIR, -ESTALE.
 */
int qf_fs_do_measure(struct qf_fs *fs, uint64_t parent, const char *name);
/*
 * parent/name, created on its first lookup: the same name gives the same
 * node until its source changes.  Returns 0, -ENOTDIR, -ESTALE (walk
 * again: the model's source changed), -ENOENT, other -errno.
 */
int qf_fs_do_lookup(struct qf_fs *fs, uint64_t parent, const char *name,
		    struct qf_fs_entry *e);
/* The kernel forgets nlookup lookups of ino. */
void qf_fs_do_forget(struct qf_fs *fs, uint64_t ino, uint64_t nlookup);
/* Returns 0, -ENOENT. */
int qf_fs_do_getattr(struct qf_fs *fs, uint64_t ino, struct qf_fs_entry *e);

/* A directory listing, made at opendir: ".", ".." and the names. */
struct qf_fs_dirent {
	const char *name;		/* into the listing's names */
	uint64_t ino;			/* readdir's d_ino */
	mode_t type;			/* S_IFDIR, S_IFREG, 0: ask */
};
struct qf_fs_dir {
	struct qf_buf names;		/* "\0"-separated */
	struct qf_fs_dirent *ent;	/* [n] */
	size_t n;
};
/* Caller owns *out: qf_fs_do_releasedir().  Returns 0, -ENOTDIR, ... */
int qf_fs_do_opendir(struct qf_fs *fs, uint64_t ino, struct qf_fs_dir **out);
void qf_fs_do_releasedir(struct qf_fs_dir *d);

/* What an open gives: the handle reads and the release get back. */
struct qf_fs_open {
	uint64_t fh;
	int backing;			/* > 0: the kernel reads this
					 * backing file (passthrough) */
	bool keep_cache;
	bool direct_io;
};
/*
 * Open ino with open(2) flags (read-only).  Every successful open is
 * paired with one qf_fs_do_release().  Returns 0, -ENOENT, -EISDIR,
 * -EROFS, -ESTALE, -EIO, other -errno.
 */
int qf_fs_do_open(struct qf_fs *fs, uint64_t ino, int flags,
		  struct qf_fs_open *o);
void qf_fs_do_release(struct qf_fs *fs, uint64_t ino, uint64_t fh);

/*
 * The bytes of a read as segments in file order: a file range (fd >= 0,
 * spliced) or memory.  Held resources (an LMDB read transaction whose
 * pages the segments point into, bytes made for this read) live until
 * qf_fs_rd_release().
 */
struct qf_fs_seg {
	int fd;				/* -1: mem */
	uint64_t pos;			/* in fd */
	const void *mem;
	uint64_t len;
};
struct qf_fs_rd {
	struct qf_fs_seg *seg;		/* [n]: &one or malloc'd */
	size_t n;
	bool move;			/* pages may be moved (a source file's;
					 * its last segment may end short, at
					 * the file's end) */
	struct qf_fs_seg one;
	struct qf_cache_txn *txn;
	struct qf_buf buf;		/* bytes made for this read */
};
/*
 * Up to size bytes of ino at off (fh: from the open) into *rd, which the
 * caller releases with qf_fs_rd_release() whatever the result.  Short at
 * the end of the file; nothing past it.  Returns 0, -ENOENT, -EISDIR,
 * -EIO, -EBADF (a source file with no fh), -EINTR, other -errno.
 */
int qf_fs_do_read(struct qf_fs *fs, uint64_t ino, uint64_t fh, uint64_t off,
		  uint64_t size, struct qf_fs_rd *rd);
void qf_fs_rd_release(struct qf_fs_rd *rd);
/* The read's bytes into dst (room for the sum of the segments'
 * lengths); *len gets how many.  Returns 0, -errno, QF_ECORRUPT. */
int qf_fs_rd_copy(const struct qf_fs_rd *rd, uint8_t *dst, uint64_t *len);

/* Extended attribute name of ino into out.  Returns 0, -ENODATA,
 * -ENOENT, -ENOMEM. */
int qf_fs_do_getxattr(struct qf_fs *fs, uint64_t ino, const char *name,
		      struct qf_buf *out);
/* The attribute names of ino, "\0"-terminated each: static text. */
int qf_fs_do_listxattr(struct qf_fs *fs, uint64_t ino, const char **names,
		       size_t *len);
void qf_fs_do_statfs(struct qf_fs *fs, struct statvfs *sv);

#endif /* QF_FS_DO_H */
