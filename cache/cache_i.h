/*
 * cache_i.h - private to cache/: the read files of files.c (by
 * directory), and the LMDB figures cache.c gives admin.c.
 */
#ifndef QF_CACHE_I_H
#define QF_CACHE_I_H

#include "cache.h"

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
