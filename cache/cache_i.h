/*
 * cache_i.h - private to cache/: the environment and its databases (for
 * meta.c), the read files of files.c (by directory), and the LMDB
 * figures cache.c gives admin.c.
 */
#ifndef QF_CACHE_I_H
#define QF_CACHE_I_H

#include <lmdb.h>
#include <pthread.h>

#include "cache.h"

struct qf_cache {
	MDB_env *env;
	MDB_dbi tensors;		/* "t" */
	MDB_dbi records;		/* "v" */
	MDB_dbi sums;			/* "s": key as "t", 8-byte checksum */
	MDB_dbi meta;			/* "m": meta.c */
	pthread_rwlock_t resize;	/* readers: any txn; writer: resize */
	char *dir;
	size_t psize;			/* LMDB page size */
};

struct qf_cache_txn {
	struct qf_cache *c;
	MDB_txn *txn;
};

/*
 * cache.c: run fn in a write transaction and commit what it did; on
 * MDB_MAP_FULL the map grows (room for need more bytes) and fn runs
 * again in a new one.  fn returns an LMDB code (0: commit).  Returns 0,
 * -ENOSPC, QF_ECACHE (logged).
 */
int qf_cache_write(struct qf_cache *c, uint64_t need,
		   int (*fn)(struct qf_cache *c, MDB_txn *txn, void *arg),
		   void *arg);

/*
 * files.c, given the cache directory dir: qf_cache_file_path(),
 * qf_cache_file_create() and qf_cache_files() (cache.h) without the
 * cache object.
 */
int qf_files_path(const char *dir, const uint8_t vid[QF_CACHE_VID],
		  const char *tag, bool tmp, struct qf_buf *out);
int qf_files_create(const char *dir, const uint8_t vid[QF_CACHE_VID],
		    const char *tag, struct qf_buf *tmp);
int qf_files_count(const char *dir, const uint8_t *vid, unsigned flags,
		   struct qf_cache_files_stat *st);
/*
 * Call fn for every file of vid (NULL: of every id) in <dir>/files with
 * its id, kind and bytes, after the deletions flags ask for (QF_FILES_*);
 * fn returning non-zero stops the walk.  Returns 0 or -errno.
 */
int qf_files_each(const char *dir, const uint8_t *vid, unsigned flags,
		  int (*fn)(void *arg, const uint8_t *vid,
			    enum qf_cache_file_kind kind, uint64_t bytes),
		  void *arg);

/* Value bytes of "t", and bytes of data.mdb's pages free for reuse. */
int qf_cache_mdb_usage(struct qf_cache *c, uint64_t *values,
		       uint64_t *mdb_free);

#endif /* QF_CACHE_I_H */
