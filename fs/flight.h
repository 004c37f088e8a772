/*
 * flight.h - single flight of cache slots (see flight.c).
 *
 * A slot is (vid, i): the values one producer call writes to the cache
 * in one transaction (a variant's tensor group, one tensor of a GGUF
 * view).  qf_flight_ensure() makes sure slot i is in the cache with good
 * checksums, producing it at most once at a time per machine.
 *
 * What is locked when:
 *   fl->lock (a mutex) guards state[], ndone, recorded, t0 and lockfd;
 *     it is never held across a callback or a cache transaction.
 *   A slot is BUSY while one thread checks or produces it; other threads
 *     of the process wait on fl->cond (not interruptible: the owner
 *     finishes or fails).
 *   Byte i of the lock file <cache>/locks/<vid> (an OFD lock, dropped by
 *     the kernel when a process dies) is held while the slot is checked
 *     again and produced, so two processes do not produce it twice.
 *   A production slot (qf_fs_prod_begin, -o max_productions) is taken
 *     before the slot is marked BUSY, and only when the slot was not in
 *     the cache: a thread waiting on a BUSY slot may hold a production
 *     slot, so the owner of a BUSY slot must never wait for one.
 *
 * The remote tier (cluster.c): a slot the cache lacks is looked for in
 * the bucket (verified) before it is produced; an id completed here
 * with nothing from the bucket is published.  No producer knows.
 */
#ifndef QF_FLIGHT_H
#define QF_FLIGHT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache.h"

struct qf_flight;
struct qf_fs;
struct qf_vtensor;
struct qf_variant;

#define QF_FLIGHT_MAXV 8		/* values of one slot at most */

/*
 * The remote tier below the cache, when the mount has one: cluster.c's,
 * reached through fs->flight_remote (set by fs.c) so that flight.c and
 * cluster.c, which fetches ahead through qf_flight_fetch(), do not call
 * each other.
 */
struct qf_flight_remote {
	/* Slot i from the bucket into the cache: 0, or produce it. */
	int (*fetch)(struct qf_fs *fs, struct qf_flight *fl, size_t i);
	/* Every slot was made here: share them. */
	void (*publish)(struct qf_fs *fs, const uint8_t *vid,
			const char *label);
};

/* What a producer supplies; arg is qf_flight_init()'s. */
struct qf_flight_ops {
	/* Slot i's values are all present (no checksum read): a quick
	 * look that decides whether a production slot is needed. */
	bool (*cached)(struct qf_fs *fs, void *arg, size_t i);
	/* Names of slot i's values into names[QF_FLIGHT_MAXV]: count. */
	size_t (*names)(void *arg, size_t i, const char **names);
	/* Optional: what slot i needs first (a _fake group's base layer,
	 * a repacked tensor's variant group), made sure of before any
	 * production slot is taken.  0 or an error, returned as is. */
	int (*prepare)(struct qf_fs *fs, void *arg, size_t i);
	/* Produce slot i and put it in the cache (qf_fs_cache_put); logs
	 * its own failures.  Called with i BUSY, its lock-file byte held
	 * (unless the lock file could not be opened) and a production
	 * slot taken. */
	int (*produce)(struct qf_fs *fs, void *arg, size_t i);
	/* Write the owner's cache record (after its first production,
	 * again after a failed try or an eviction). */
	int (*record)(struct qf_fs *fs, void *arg);
	/* Optional: every slot is done and this call produced the last;
	 * after the cache was synced and trimmed.  seconds since the
	 * first slot began. */
	void (*complete)(struct qf_fs *fs, void *arg, double seconds);
};

enum {
	QF_FLIGHT_NONE,
	QF_FLIGHT_BUSY,
	QF_FLIGHT_DONE,			/* in the cache, checksums checked (or
					 * SHA-256 verified on import) */
};

/* The slots of one cache id (owned by a variant or a GGUF view). */
struct qf_flight {
	const struct qf_flight_ops *ops;
	void *arg;
	const uint8_t *vid;		/* owner's, fixed before first use */
	const char *label;		/* owner's, for logs ("org/model/v") */
	size_t n;			/* slots */
	pthread_mutex_t lock;
	pthread_cond_t cond;
	uint8_t *state;			/* [n] QF_FLIGHT_*, lock */
	size_t ndone;			/* slots DONE, lock */
	size_t nfetched;		/* of them from the remote tier, lock */
	bool prefetch;			/* a prefetch began (cluster.c), lock */
	bool recorded;			/* record written, lock */
	double t0;			/* lock: first slot began, 0 none */
	int lockfd;			/* lock file, -1 until opened, lock */
};

/* n slots of cache id vid; 0 or -ENOMEM.  vid and label are borrowed. */
int qf_flight_init(struct qf_flight *fl, const struct qf_flight_ops *ops,
		   void *arg, const uint8_t *vid, const char *label, size_t n);
void qf_flight_free(struct qf_flight *fl);

/*
 * Slot i in the cache, checked, produced here unless another thread or
 * process did.  Returns 0, -EINTR (interrupted while waiting for a
 * production slot, or unmounting) or the producer's error.
 */
int qf_flight_ensure(struct qf_fs *fs, struct qf_flight *fl, size_t i);
/*
 * Slot i from the remote tier only (a prefetch, cluster.c): nothing if
 * another thread has it or it is DONE; never produces.  0 (in the cache
 * now, or someone else's), or why not.
 */
int qf_flight_fetch(struct qf_fs *fs, struct qf_flight *fl, size_t i);
/* Slot i is DONE in this process. */
bool qf_flight_done(struct qf_flight *fl, size_t i);
/* Slot i is present (ops->cached). */
bool qf_flight_cached(struct qf_fs *fs, struct qf_flight *fl, size_t i);
/*
 * For slots produced elsewhere (a calibrated job): check slot i's
 * checksums once and mark it DONE.  A damaged slot is logged and
 * deleted.  Returns 0, -ENOENT, QF_ECORRUPT (deleted), QF_ECACHE.
 */
int qf_flight_verify(struct qf_fs *fs, struct qf_flight *fl, size_t i);
/* Slot i (all slots: SIZE_MAX) left the cache: produced again. */
void qf_flight_forget(struct qf_flight *fl, size_t i);
/* Write the owner's record now (ops->record). */
int qf_flight_record(struct qf_fs *fs, struct qf_flight *fl);
/* The owner's record was written (it is refreshed while in use). */
bool qf_flight_recorded(struct qf_flight *fl);

/*
 * Cross-process locks: an exclusive OFD lock on byte `slot` of the lock
 * file (a slot's index, or QF_LOCK_JOB for a calibrated job).  Waits
 * polling, so unmounting stops it (-EINTR); returns 0 or -errno, and
 * then the caller proceeds unlocked.
 */
int qf_flight_lock(struct qf_fs *fs, struct qf_flight *fl, int64_t slot);
void qf_flight_unlock(struct qf_flight *fl, int64_t slot);
/* A shared lock on byte slot (QF_LOCK_USE: eviction skips the id),
 * waiting while it is held exclusively.  0 (also when the lock file
 * cannot be opened) or -errno. */
int qf_flight_share(struct qf_fs *fs, struct qf_flight *fl, int64_t slot);

/*
 * Reading values back (fs/ fetches bytes; quant/unpack.c decodes them).
 * t's value of vid, checksum verified, copied into dst (qf_vtensor_bytes
 * of t).  Returns 0, -ENOENT, QF_ECORRUPT, QF_ECACHE.
 */
int qf_flight_get(struct qf_fs *fs, const uint8_t *vid,
		  const struct qf_vtensor *t, void *dst);
/* The same, converted to f32. */
int qf_flight_get_f32(struct qf_fs *fs, const uint8_t *vid,
		      const struct qf_vtensor *t, float *dst);
/*
 * Group gi of packed variant v (GPTQ v1 or AWQ) from vid's values,
 * decoded: q [out, in], sc/z [out, ngroups] (true zeros), g_idx [in].
 * Returns 0, -ENOENT, QF_ECORRUPT, QF_ECACHE, -ENOMEM.
 */
int qf_flight_unpack(struct qf_fs *fs, const uint8_t *vid,
		     const struct qf_variant *v, size_t gi, uint8_t *q,
		     uint16_t *sc, int32_t *z, int32_t *g_idx);

#endif /* QF_FLIGHT_H */
