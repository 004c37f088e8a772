/*
 * cache.h - the LMDB store shared by every mount of a machine.
 *
 * Named databases in one environment:
 *   "t": key = variant id (16 bytes) + tensor name, value = tensor bytes
 *   "s": key as "t", value = the value's 8-byte checksum
 *   "v": key = variant id, value = a JSON record describing the variant
 *   "m": key = a string, value = a few bytes the machine remembers
 *        about its own files (meta.c: a source file's SHA-256)
 * The variant id is a hash of whatever identifies a variant (the caller
 * decides: source fingerprint, canonical spec, calibration hash); this
 * module stores keys and bytes and knows nothing about quantization.
 *
 * Multi-process and multi-thread safe.  The map grows when full (no
 * MDB_MAP_FULL reaches callers); other processes adopt the new size on
 * MDB_MAP_RESIZED.  Writes are MDB_NOSYNC: a killed process never leaves a
 * torn entry (LMDB commits are atomic); the environment is synced when a
 * variant completes and at close, so a power loss can only lose the last
 * entries, never corrupt older ones on a file system that keeps write
 * order.
 *
 * A full disk: writes fail with -ENOSPC and leave nothing behind (a
 * failed commit stores nothing); deletions free space even then (read
 * files first, and <dir>/reserve, cache.c).  data.mdb never shrinks:
 * LMDB reuses the pages of deleted values for later ones.
 */
#ifndef QF_CACHE_H
#define QF_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"

struct qf_cache;
struct qf_cache_txn;

#define QF_CACHE_VID 16

/* The default cache directory: /var/cache/quantfs for root and for
 * anyone who may write it (the machine's shared cache), else
 * $XDG_CACHE_HOME/quantfs or ~/.cache/quantfs.  Caller frees. */
char *qf_cache_default_dir(void);

/*
 * Open (creating dir and the environment if needed).  map_size is the
 * initial map in bytes (0 = 1 GiB); it grows by doubling.
 * Caller owns *out; free with qf_cache_close().
 * Returns 0, -errno, QF_ECACHE (logged).
 */
int qf_cache_open(const char *dir, uint64_t map_size, struct qf_cache **out);
void qf_cache_close(struct qf_cache *c);
uint64_t qf_cache_map_size(struct qf_cache *c);

/* vid = first 16 bytes of SHA-256 over the NUL-separated parts. */
void qf_cache_vid(const char *const *parts, size_t n,
		  uint8_t vid[QF_CACHE_VID]);

struct qf_cache_item {
	const char *name;		/* tensor name */
	const void *data;
	size_t len;
};

/*
 * Store n items under vid in one transaction: all or none become
 * visible.  Returns 0, -ENOSPC (the disk or quota is full: nothing was
 * stored; not logged, the caller says what was lost), QF_ECACHE (logged).
 */
int qf_cache_put(struct qf_cache *c, const uint8_t vid[QF_CACHE_VID],
		 const struct qf_cache_item *items, size_t n);
/* Store / replace the variant record (JSON text). */
int qf_cache_put_record(struct qf_cache *c, const uint8_t vid[QF_CACHE_VID],
			const char *json);
/* Flush to disk (after a variant completes). */
int qf_cache_sync(struct qf_cache *c);

/*
 * Read transactions start and end inside one callback; pointers returned
 * by qf_cache_get() are borrowed from the map (not aligned: copy before
 * reading them as typed arrays) and valid until
 * qf_cache_read_end().
 */
int qf_cache_read_begin(struct qf_cache *c, struct qf_cache_txn **out);
void qf_cache_read_end(struct qf_cache_txn *t);
/* Returns 0, -ENOENT, QF_ECACHE. */
int qf_cache_get(struct qf_cache_txn *t, const uint8_t vid[QF_CACHE_VID],
		 const char *name, const void **data, size_t *len);
/* The cache holds vid's value name, of exactly len bytes (unverified). */
bool qf_cache_has(struct qf_cache *c, const uint8_t vid[QF_CACHE_VID],
		  const char *name, size_t len);
/*
 * Where the len bytes at p (from qf_cache_get(), same transaction) live in
 * the data file, so they can be spliced from fd at off without a copy.
 * Returns 0, or QF_ECACHE when p does not look like a map pointer.
 */
int qf_cache_locate(struct qf_cache *c, const void *p, size_t len, int *fd,
		    uint64_t *off);
/* Returns 0, -ENOENT, QF_ECACHE. */
int qf_cache_get_record(struct qf_cache_txn *t,
			const uint8_t vid[QF_CACHE_VID], const char **json,
			size_t *len);
/* Call fn for every variant record; stops when fn returns non-zero. */
int qf_cache_each_record(struct qf_cache_txn *t,
			 int (*fn)(void *arg, const uint8_t *vid,
				   const char *json, size_t len),
			 void *arg);


/*
 * Integrity: qf_cache_put() stores a checksum beside every value.
 * qf_cache_check() recomputes it: 0, -ENOENT (absent), QF_ECORRUPT (the
 * bytes or the checksum are damaged or missing), QF_ECACHE.  Callers
 * check a value once per process, before first serving it.
 */
int qf_cache_check(struct qf_cache_txn *t, const uint8_t vid[QF_CACHE_VID],
		   const char *name);
/*
 * Delete the n named values of vid (absent ones are fine), in one
 * transaction.  Returns 0, -ENOSPC, QF_ECACHE.
 */
int qf_cache_del(struct qf_cache *c, const uint8_t vid[QF_CACHE_VID],
		 const char *const *names, size_t n);
/*
 * Delete vid's read files (and stray temporary files), then every value
 * of vid in steps of bounded size, its record last; *freed = value and
 * file bytes.  Works on a full disk.  Returns 0, -errno, QF_ECACHE.
 */
int qf_cache_drop(struct qf_cache *c, const uint8_t vid[QF_CACHE_VID],
		  uint64_t *freed);
/* Call fn once per variant id that has values: their bytes and count. */
int qf_cache_each_vid(struct qf_cache_txn *t,
		      int (*fn)(void *arg, const uint8_t *vid, uint64_t bytes,
				uint64_t count),
		      void *arg);
/*
 * Call fn for every value of vid, in name order, with its bytes
 * (borrowed from this transaction's map); names too long for a key
 * (stored hashed) are skipped.  Stops at fn's first non-zero result and
 * returns it; else 0 or QF_ECACHE.
 */
int qf_cache_each_value(struct qf_cache_txn *t,
			const uint8_t vid[QF_CACHE_VID],
			int (*fn)(void *arg, const char *name,
				  const void *data, size_t len),
			void *arg);
/* Disk bytes of data.mdb and bytes of its pages in use. */
int qf_cache_file_bytes(struct qf_cache *c, uint64_t *file, uint64_t *used);

struct qf_cache_space {
	uint64_t fs_bytes;		/* size of the cache's filesystem */
	uint64_t fs_avail;		/* free on it for any user */
	uint64_t fs_free;		/* free on it for this process */
	uint64_t values;		/* value bytes, as gc counts them */
	uint64_t mdb_free;		/* data.mdb bytes free for reuse */
	uint64_t files;			/* read and temporary files */
};
/*
 * Where the cache stands on its filesystem: the fs_* fields only (one
 * statvfs), or everything when full (a walk of the keys and files).
 * Returns 0, -errno, QF_ECACHE.
 */
int qf_cache_space(struct qf_cache *c, bool full, struct qf_cache_space *out);
const char *qf_cache_dir(const struct qf_cache *c);

/*
 * Cross-process coordination per variant: <dir>/locks/<vid hex>, locked
 * with open-file-description locks (the kernel drops them when a process
 * dies).  Byte slots: a group index (its producer), QF_LOCK_JOB (the
 * calibrated job), QF_LOCK_USE (shared: a mount has a file of the variant
 * open).  Returns an fd or -errno.
 */
#define QF_LOCK_JOB (1LL << 40)
#define QF_LOCK_USE (1LL << 41)
int qf_cache_lock_open(struct qf_cache *c, const uint8_t vid[QF_CACHE_VID]);
/*
 * Drop vid unless some other open file holds any lock on its lock file
 * (a reader or a producer): then -EBUSY and nothing changes.
 */
int qf_cache_evict(struct qf_cache *c, const uint8_t vid[QF_CACHE_VID],
		   uint64_t *freed);

/*
 * files.c: read files, <dir>/files/<vid hex>.<tag>: a served file's bytes
 * whole, for kernel passthrough.  Path of vid's file tag (tmp: this
 * process's temporary name for it; the files directory is created).
 */
int qf_cache_file_path(const struct qf_cache *c,
		       const uint8_t vid[QF_CACHE_VID], const char *tag,
		       bool tmp, struct qf_buf *out);
/*
 * Create vid's temporary file for tag (its path into *tmp), locked for
 * as long as the returned fd stays open, so no one takes it for stray;
 * rename it into place before closing it.  Returns an fd or -errno.
 */
int qf_cache_file_create(const struct qf_cache *c,
			 const uint8_t vid[QF_CACHE_VID], const char *tag,
			 struct qf_buf *tmp);

enum qf_cache_file_kind {
	QF_CACHE_FILE_READ,		/* a read file, complete */
	QF_CACHE_FILE_TMP,		/* temporary, being written */
	QF_CACHE_FILE_STRAY,		/* temporary, its writer gone */
	QF_CACHE_FILE_KINDS,
};
struct qf_cache_files_stat {
	uint64_t bytes[QF_CACHE_FILE_KINDS];
	size_t count[QF_CACHE_FILE_KINDS];
};
#define QF_FILES_DROP 1u		/* delete vid's read files */
#define QF_FILES_CLEAN 2u		/* delete stray temporary files */
/*
 * vid's files (vid NULL: every file) counted by kind into *st (may be
 * NULL), after deleting what flags say (DROP needs a vid).  Returns 0 or
 * the -errno of a failed deletion.
 */
int qf_cache_files(struct qf_cache *c, const uint8_t *vid, unsigned flags,
		   struct qf_cache_files_stat *st);

/*
 * meta.c: small values the machine keeps about itself, such as the
 * SHA-256 of a source file keyed by what identifies its bytes here
 * (device, inode, size, times).  key is a string of at most 511 bytes
 * that names its kind first ("sha256 ..."); values are not checksummed
 * and never evicted (each is a few dozen bytes).
 * qf_cache_meta_get() copies exactly len bytes into val.  Returns 0,
 * -ENOENT (absent), -EINVAL (a bad key), QF_ECORRUPT (a value of another
 * length), QF_ECACHE (logged).
 */
int qf_cache_meta_get(struct qf_cache *c, const char *key, void *val,
		      size_t len);
/* Store or replace key's value.  Returns 0, -EINVAL, -ENOSPC, QF_ECACHE. */
int qf_cache_meta_put(struct qf_cache *c, const char *key, const void *val,
		      size_t len);

/* admin.c: what the cache holds, and eviction */
struct qf_cache_entry {
	uint8_t vid[QF_CACHE_VID];
	char vid_hex[2 * QF_CACHE_VID + 1];
	bool recorded;			/* false: values without a record */
	char *model;			/* from the record ("" when none) */
	char *variant;
	char *source;
	char *calib;			/* calibration set id, "" = none */
	double created;			/* Unix seconds */
	double accessed;
	uint64_t bytes;			/* value bytes */
	uint64_t values;		/* value count */
	uint64_t file_bytes;		/* read files (files.c) */
	uint64_t tmp_bytes;		/* its temporary files, stray ones
					 * included */
};
/* Every variant id with a record or values.  Free with _list_free. */
int qf_cache_list(struct qf_cache *c, struct qf_cache_entry **out,
		  size_t *n);
void qf_cache_list_free(struct qf_cache_entry *e, size_t n);

struct qf_cache_gc_result {
	size_t evicted;
	size_t busy;			/* skipped: open or being produced */
	uint64_t freed;			/* value and file bytes */
	uint64_t remaining;		/* value and file bytes left */
};
/*
 * Evict recorded variants, least recently accessed first, until the
 * values and their files take at most max_bytes (or only busy ones are
 * left).  Returns 0, -errno, QF_ECACHE.
 */
int qf_cache_gc(struct qf_cache *c, uint64_t max_bytes,
		struct qf_cache_gc_result *res);

#endif /* QF_CACHE_H */
