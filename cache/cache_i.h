/*
 * cache_i.h - private to cache/: the file walk admin.c shares with
 * files.c, and the LMDB figures cache.c gives admin.c.
 */
#ifndef QF_CACHE_I_H
#define QF_CACHE_I_H

#include "cache.h"

/*
 * Call fn for every file of vid (NULL: of every id) in <dir>/files with
 * its id, kind and bytes, after the deletions flags ask for (QF_FILES_*);
 * fn returning non-zero stops the walk.  Returns 0 or -errno.
 */
int qf_cache_files_each(struct qf_cache *c, const uint8_t *vid,
			unsigned flags,
			int (*fn)(void *arg, const uint8_t *vid,
				  enum qf_cache_file_kind kind,
				  uint64_t bytes),
			void *arg);

/* Value bytes of "t", and bytes of data.mdb's pages free for reuse. */
int qf_cache_mdb_usage(struct qf_cache *c, uint64_t *values,
		       uint64_t *mdb_free);

#endif /* QF_CACHE_I_H */
