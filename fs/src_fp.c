/*
 * src_fp.c - a model's content fingerprint, on first need.
 *
 * The fingerprint names every variant, calibration set and GGUF view of
 * a model (var.c, job_calib.c, gguf_view.c), and comes from the bytes
 * alone (quant/io: qf_model_set_fingerprint()), so the same model on two
 * machines gets the same ids.  Hashing the weights costs about a second
 * per GB, so it is done:
 *   - lazily: when a variant (or original/model.gguf) is first wanted,
 *     never for a lookup or `ls` of the root, an org or a model
 *     directory (those take only what the cache already knows);
 *   - once per file and machine: each shard's SHA-256 is kept in the
 *     cache's "m" store under what identifies its bytes here without
 *     reading them, (st_dev, st_ino, st_size, st_mtim, st_ctim); the
 *     ctime catches a rewrite that puts the mtime back;
 *   - once per model generation (struct qf_mdl): the first thread hashes
 *     while others wait on mdl->fp_cond.
 * Whether the source changed while mounted is src.c's signature, which
 * is separate (mdl->sig) and stays stat-based.
 *
 * A file changed while it is hashed is hashed again (the key is taken
 * before and checked after); a hash whose file changed within the
 * timestamp granularity of now is used but not kept (a write in the same
 * clock tick would leave the key as it was: git's "racily clean").
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "fs_i.h"

#define TRIES 3				/* hashes of a file that keeps
					 * changing while it is read */
#define RACY_S 0.1			/* a change this recent: not kept */
#define RACY_COARSE_S 2.0		/* the same, on a file system with
					 * whole-second times */

struct fp_run {
	bool hash;			/* may read the weights */
	uint64_t hashed;		/* bytes hashed */
	size_t nhashed;			/* files hashed */
};

/* The "m" key of the bytes st names on this machine. */
static void id_key(const struct stat *st, char *key, size_t len)
{
	snprintf(key, len, "sha256 %llu %llu %lld %lld.%09ld %lld.%09ld",
		 (unsigned long long)st->st_dev,
		 (unsigned long long)st->st_ino, (long long)st->st_size,
		 (long long)st->st_mtim.tv_sec, st->st_mtim.tv_nsec,
		 (long long)st->st_ctim.tv_sec, st->st_ctim.tv_nsec);
}

static bool same_id(const struct stat *a, const struct stat *b)
{
	return a->st_dev == b->st_dev && a->st_ino == b->st_ino &&
	       a->st_size == b->st_size &&
	       a->st_mtim.tv_sec == b->st_mtim.tv_sec &&
	       a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
	       a->st_ctim.tv_sec == b->st_ctim.tv_sec &&
	       a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

static double ts(const struct timespec *t)
{
	return (double)t->tv_sec + t->tv_nsec / 1e9;
}

/* st changed so recently that a write now could keep its times. */
static bool racy(const struct stat *st)
{
	struct timespec now;
	double last = ts(&st->st_mtim) > ts(&st->st_ctim) ? ts(&st->st_mtim) :
							    ts(&st->st_ctim);
	bool coarse = !st->st_mtim.tv_nsec && !st->st_ctim.tv_nsec;

	clock_gettime(CLOCK_REALTIME, &now);
	return ts(&now) - last < (coarse ? RACY_COARSE_S : RACY_S);
}

/*
 * Shard i's SHA-256 into out: from the cache, or hashed (when r->hash)
 * and kept.  Returns 0, -EAGAIN (not in the cache and !r->hash, or the
 * file kept changing), -ESTALE (its size is not the one opened: a new
 * generation serves it), QF_ECORRUPT, -errno.
 */
static int shard_sha(struct qf_fs *fs, struct qf_mdl *mdl, size_t i,
		     struct fp_run *r, uint8_t out[32])
{
	const struct qf_st_file *f = mdl->m->shard[i];
	struct stat a, b;
	char key[160];
	int k, ret;

	for (k = 0; k < TRIES; k++) {
		if (fstat(f->fd, &a) < 0)
			return -errno;
		if ((uint64_t)a.st_size != f->size)
			return -ESTALE;
		id_key(&a, key, sizeof(key));
		ret = qf_cache_meta_get(fs->cache, key, out, 32);
		if (!ret || !r->hash)
			return ret ? -EAGAIN : 0;
		ret = qf_model_shard_sha256(mdl->m, i, out);
		if (ret < 0)
			return ret;
		r->hashed += f->size;
		r->nhashed++;
		if (fstat(f->fd, &b) < 0)
			return -errno;
		if (!same_id(&a, &b)) {
			qf_info("%s: changed while it was hashed: hashed "
				"again", f->path);
			continue;
		}
		if (racy(&b))
			return 0;
		ret = qf_cache_meta_put(fs->cache, key, out, 32);
		if (ret < 0)	/* hashed again by the next mount */
			qf_warn("%s: cannot keep its hash in the cache: %s",
				f->path, qf_strerror(ret));
		return 0;
	}
	qf_warn("%s: changed each time it was hashed", f->path);
	return -EAGAIN;
}

/* Every shard's hash into sha[]; see shard_sha(). */
static int shard_shas(struct qf_fs *fs, struct qf_mdl *mdl,
		      struct fp_run *r, uint8_t (*sha)[32])
{
	size_t i;
	int ret = 0;

	for (i = 0; i < mdl->m->nshard && !ret; i++)
		ret = shard_sha(fs, mdl, i, r, sha[i]);
	return ret;
}

int qf_src_fp(struct qf_fs *fs, struct qf_mdl *mdl, bool hash)
{
	struct fp_run r = { .hash = hash };
	uint8_t (*sha)[32];
	double t0 = qf_now();
	int ret;

	if (!mdl->m)
		return mdl->open_err;
	pthread_mutex_lock(&mdl->fp_lock);
	while (mdl->fp_busy && hash)
		pthread_cond_wait(&mdl->fp_cond, &mdl->fp_lock);
	ret = mdl->m->fp_set ? 0 : mdl->fp_busy ? -EAGAIN : 1;
	if (ret == 1)		/* (a look while another hashes: still busy) */
		mdl->fp_busy = true;
	pthread_mutex_unlock(&mdl->fp_lock);
	if (ret <= 0)
		return ret;
	sha = calloc(mdl->m->nshard, sizeof(*sha));
	ret = sha ? shard_shas(fs, mdl, &r, sha) : -ENOMEM;
	pthread_mutex_lock(&mdl->fp_lock);
	if (!ret)
		qf_model_set_fingerprint(mdl->m, (const uint8_t (*)[32])sha);
	mdl->fp_busy = false;
	pthread_cond_broadcast(&mdl->fp_cond);
	pthread_mutex_unlock(&mdl->fp_lock);
	free(sha);
	if (!ret && r.nhashed)
		qf_info("%s: fingerprint %.16s: hashed %llu bytes of %zu "
			"file(s) in %.2f s", mdl->name, mdl->m->fp_hex,
			(unsigned long long)r.hashed, r.nhashed,
			qf_now() - t0);
	else if (!ret)
		qf_info("%s: fingerprint %.16s (file hashes from the cache)",
			mdl->name, mdl->m->fp_hex);
	else if (hash)
		qf_err("%s: no fingerprint: %s", mdl->name, qf_strerror(ret));
	return ret;
}
