/*
 * flight.c - single flight of cache slots across threads and processes,
 * for every producer of the core: a variant's tensor groups (var.c), a
 * GGUF view's tensors (gguf_view.c), and the lock, record and reads of
 * a calibrated job (job.c).  flight.h says what is locked when.
 *
 * The sequence for a slot: wait while another thread has it BUSY; done
 * if DONE; make sure of what it needs (ops->prepare); take a production
 * slot if it is not in the cache; mark it BUSY; check its checksums (a
 * damaged value is logged and deleted); if absent, take its byte of the
 * lock file, check again (another process may have written it while we
 * waited) and produce; mark it DONE.  The first production writes the
 * owner's record, so `ls` and the cache tools see the id; the one that
 * completes the last slot syncs the cache and trims it to cache_max.
 *
 * A calibrated job produces whole layers in a thread of its own and
 * readers wait for its progress (job.c), not for a slot: it uses the
 * lock file (QF_LOCK_JOB), the record and qf_flight_verify() from here.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fs_i.h"

int qf_flight_init(struct qf_flight *fl, const struct qf_flight_ops *ops,
		   void *arg, const uint8_t *vid, const char *label, size_t n)
{
	memset(fl, 0, sizeof(*fl));
	fl->ops = ops;
	fl->arg = arg;
	fl->vid = vid;
	fl->label = label;
	fl->n = n;
	fl->lockfd = -1;
	fl->state = calloc(n ? n : 1, 1);
	pthread_mutex_init(&fl->lock, NULL);
	pthread_cond_init(&fl->cond, NULL);
	return fl->state ? 0 : -ENOMEM;
}

void qf_flight_free(struct qf_flight *fl)
{
	if (!fl->ops)
		return;			/* never initialized */
	if (fl->lockfd >= 0)
		close(fl->lockfd);
	free(fl->state);
	pthread_mutex_destroy(&fl->lock);
	pthread_cond_destroy(&fl->cond);
	fl->ops = NULL;
}

static int lock_fd(struct qf_fs *fs, struct qf_flight *fl)
{
	int fd;

	pthread_mutex_lock(&fl->lock);
	if (fl->lockfd < 0) {
		fd = qf_cache_lock_open(fs->cache, fl->vid);
		if (fd >= 0)
			fl->lockfd = fd;
	} else {
		fd = fl->lockfd;
	}
	pthread_mutex_unlock(&fl->lock);
	return fd;
}

int qf_flight_lock(struct qf_fs *fs, struct qf_flight *fl, int64_t slot)
{
	struct flock lk = { .l_type = F_WRLCK, .l_whence = SEEK_SET,
			    .l_start = slot, .l_len = 1 };
	int fd = lock_fd(fs, fl);

	if (fd < 0)
		return fd;
	/* poll, so an unmount does not wait for another process's job */
	while (fcntl(fd, F_OFD_SETLK, &lk) < 0) {
		struct timespec ts = { 0, 100 * 1000 * 1000 };

		if (errno != EAGAIN && errno != EACCES)
			return -errno;
		if (qf_fs_stopping(fs))
			return -EINTR;
		nanosleep(&ts, NULL);
	}
	return 0;
}

void qf_flight_unlock(struct qf_flight *fl, int64_t slot)
{
	struct flock lk = { .l_type = F_UNLCK, .l_whence = SEEK_SET,
			    .l_start = slot, .l_len = 1 };
	int fd;

	pthread_mutex_lock(&fl->lock);
	fd = fl->lockfd;
	pthread_mutex_unlock(&fl->lock);
	if (fd >= 0)
		fcntl(fd, F_OFD_SETLK, &lk);
}

int qf_flight_share(struct qf_fs *fs, struct qf_flight *fl, int64_t slot)
{
	struct flock lk = { .l_type = F_RDLCK, .l_whence = SEEK_SET,
			    .l_start = slot, .l_len = 1 };
	int fd = lock_fd(fs, fl);

	if (fd < 0)
		return 0;	/* no lock file: nothing to mark */
	return fcntl(fd, F_OFD_SETLKW, &lk) < 0 ? -errno : 0;
}

/*
 * Check the checksums of slot i's values; a damaged one is logged and
 * the slot deleted, so it is produced again.  Returns 0, -ENOENT,
 * QF_ECORRUPT (deleted), QF_ECACHE.
 */
static int check(struct qf_fs *fs, struct qf_flight *fl, size_t i)
{
	const char *names[QF_FLIGHT_MAXV];
	struct qf_cache_txn *txn;
	size_t k, n = fl->ops->names(fl->arg, i, names);
	int ret;

	QF_ASSERT(n <= QF_FLIGHT_MAXV);
	ret = qf_cache_read_begin(fs->cache, &txn);
	for (k = 0; k < n && !ret; k++)
		ret = qf_cache_check(txn, fl->vid, names[k]);
	qf_cache_read_end(txn);
	if (ret != QF_ECORRUPT)
		return ret;
	qf_err("%s: cache value %s is damaged (checksum): discarded, "
	       "producing it again", fl->label, names[k - 1]);
	qf_cache_del(fs->cache, fl->vid, names, n);
	return QF_ECORRUPT;
}

bool qf_flight_done(struct qf_flight *fl, size_t i)
{
	bool done;

	pthread_mutex_lock(&fl->lock);
	done = fl->state[i] == QF_FLIGHT_DONE;
	pthread_mutex_unlock(&fl->lock);
	return done;
}

bool qf_flight_cached(struct qf_fs *fs, struct qf_flight *fl, size_t i)
{
	return fl->ops->cached(fs, fl->arg, i);
}

int qf_flight_verify(struct qf_fs *fs, struct qf_flight *fl, size_t i)
{
	int ret;

	if (qf_flight_done(fl, i))
		return 0;
	ret = check(fs, fl, i);
	pthread_mutex_lock(&fl->lock);
	if (!ret && fl->state[i] == QF_FLIGHT_NONE) {
		fl->state[i] = QF_FLIGHT_DONE;
		fl->ndone++;
	}
	pthread_mutex_unlock(&fl->lock);
	return ret;
}

/* Caller holds fl->lock. */
static void forget_one(struct qf_flight *fl, size_t i)
{
	if (fl->state[i] == QF_FLIGHT_DONE) {
		fl->state[i] = QF_FLIGHT_NONE;
		fl->ndone--;
	}
}

void qf_flight_forget(struct qf_flight *fl, size_t i)
{
	size_t k;

	pthread_mutex_lock(&fl->lock);
	if (i != SIZE_MAX) {
		forget_one(fl, i);
	} else {
		for (k = 0; k < fl->n; k++)
			forget_one(fl, k);
		fl->t0 = 0;
		fl->nfetched = 0;
		fl->prefetch = false;
	}
	fl->recorded = false;		/* eviction takes the record too */
	pthread_mutex_unlock(&fl->lock);
}

int qf_flight_record(struct qf_fs *fs, struct qf_flight *fl)
{
	return fl->ops->record(fs, fl->arg);
}

bool qf_flight_recorded(struct qf_flight *fl)
{
	bool r;

	pthread_mutex_lock(&fl->lock);
	r = fl->recorded;
	pthread_mutex_unlock(&fl->lock);
	return r;
}

/*
 * Wait while slot i is BUSY; true when it is DONE.  Caller holds
 * fl->lock.
 */
static bool wait_idle(struct qf_flight *fl, size_t i)
{
	while (fl->state[i] == QF_FLIGHT_BUSY)
		pthread_cond_wait(&fl->cond, &fl->lock);
	return fl->state[i] == QF_FLIGHT_DONE;
}

/*
 * Slot i is ours (BUSY): check it, and unless present, fetch it from the
 * remote tier or produce it.  *made: 1 produced here, 2 fetched.
 */
static int fill(struct qf_fs *fs, struct qf_flight *fl, size_t i, int *made)
{
	bool locked;
	int ret;

	*made = 0;
	ret = check(fs, fl, i);
	if (ret != -ENOENT && ret != QF_ECORRUPT)
		return ret;
	/* another process may be producing it: wait for its lock, then
	 * look in the cache again */
	locked = qf_flight_lock(fs, fl, (int64_t)i) == 0;
	ret = check(fs, fl, i);
	/* from the bucket: verified by SHA-256 on the way in, so not
	 * checked again here */
	if ((ret == -ENOENT || ret == QF_ECORRUPT) && fs->flight_remote &&
	    fs->flight_remote->fetch(fs, fl, i) == 0) {
		ret = 0;
		*made = 2;
	}
	if (ret == -ENOENT || ret == QF_ECORRUPT) {
		ret = fl->ops->produce(fs, fl->arg, i);
		*made = ret ? 0 : 1;
	}
	if (locked)
		qf_flight_unlock(fl, (int64_t)i);
	return ret;
}

static void settle(struct qf_fs *fs, struct qf_flight *fl, size_t i, int ret,
		   int made);

int qf_flight_ensure(struct qf_fs *fs, struct qf_flight *fl, size_t i)
{
	bool done, slot = false;
	int made, ret = 0;

	pthread_mutex_lock(&fl->lock);
	done = wait_idle(fl, i);
	pthread_mutex_unlock(&fl->lock);
	if (done)
		return 0;
	if (fl->ops->prepare)
		ret = fl->ops->prepare(fs, fl->arg, i);
	if (!ret && !fl->ops->cached(fs, fl->arg, i)) {
		ret = qf_fs_prod_begin(fs);
		slot = !ret;
	}
	if (ret < 0)
		return ret;

	pthread_mutex_lock(&fl->lock);
	if (wait_idle(fl, i)) {
		pthread_mutex_unlock(&fl->lock);
		if (slot)
			qf_fs_prod_end(fs);
		return 0;
	}
	fl->state[i] = QF_FLIGHT_BUSY;
	if (!fl->t0)
		fl->t0 = qf_now();
	pthread_mutex_unlock(&fl->lock);

	ret = fill(fs, fl, i, &made);
	if (slot)
		qf_fs_prod_end(fs);
	settle(fs, fl, i, ret, made);
	return ret;
}

/*
 * Slot i (BUSY, ours) ended with ret, made as fill() says: mark it, wake
 * its waiters, write the owner's record after its first production, and
 * after the last slot sync, trim, and publish what was all made here.
 */
static void settle(struct qf_fs *fs, struct qf_flight *fl, size_t i, int ret,
		   int made)
{
	bool record, complete, mine;
	double secs;

	pthread_mutex_lock(&fl->lock);
	fl->state[i] = ret < 0 ? QF_FLIGHT_NONE : QF_FLIGHT_DONE;
	if (!ret)
		fl->ndone++;
	fl->nfetched += made == 2;
	complete = made && fl->ndone == fl->n;
	/* made here, none of it from the bucket: the fleet's to share */
	mine = complete && !fl->nfetched;
	secs = qf_now() - fl->t0;
	record = made && !fl->recorded;
	if (record)
		fl->recorded = true;
	pthread_cond_broadcast(&fl->cond);
	pthread_mutex_unlock(&fl->lock);

	/* no record (a full disk): the next slot writes it, else gc would
	 * never see these values */
	if (record && fl->ops->record(fs, fl->arg) < 0) {
		pthread_mutex_lock(&fl->lock);
		fl->recorded = false;
		pthread_mutex_unlock(&fl->lock);
	}
	if (complete) {
		qf_cache_sync(fs->cache);
		qf_fs_trim_cache(fs);
		if (fl->nfetched == fl->n)
			qf_info("%s: every value from the remote tier, "
				"verified, in %.2f s", fl->label, secs);
		else if (fl->ops->complete)
			fl->ops->complete(fs, fl->arg, secs);
		if (mine && fs->flight_remote)
			fs->flight_remote->publish(fs, fl->vid, fl->label);
	}
}

int qf_flight_fetch(struct qf_fs *fs, struct qf_flight *fl, size_t i)
{
	bool locked;
	int ret;

	pthread_mutex_lock(&fl->lock);
	if (fl->state[i] != QF_FLIGHT_NONE) {
		pthread_mutex_unlock(&fl->lock);
		return 0;		/* done, or someone has it */
	}
	fl->state[i] = QF_FLIGHT_BUSY;
	if (!fl->t0)
		fl->t0 = qf_now();
	pthread_mutex_unlock(&fl->lock);
	ret = check(fs, fl, i);
	if (!ret) {
		settle(fs, fl, i, 0, 0);
		return 0;
	}
	locked = qf_flight_lock(fs, fl, (int64_t)i) == 0;
	ret = check(fs, fl, i);
	if ((ret == -ENOENT || ret == QF_ECORRUPT) && fs->flight_remote) {
		ret = fs->flight_remote->fetch(fs, fl, i);
		if (locked)
			qf_flight_unlock(fl, (int64_t)i);
		settle(fs, fl, i, ret, ret ? 0 : 2);
		return ret;
	}
	if (locked)
		qf_flight_unlock(fl, (int64_t)i);
	settle(fs, fl, i, ret, 0);
	return ret;
}

int qf_flight_get(struct qf_fs *fs, const uint8_t *vid,
		  const struct qf_vtensor *t, void *dst)
{
	struct qf_cache_txn *txn;
	const void *p;
	size_t len;
	int ret;

	ret = qf_cache_read_begin(fs->cache, &txn);
	if (!ret)
		ret = qf_cache_check(txn, vid, t->name);
	if (!ret)
		ret = qf_cache_get(txn, vid, t->name, &p, &len);
	if (!ret && len != qf_vtensor_bytes(t))
		ret = QF_ECORRUPT;
	if (!ret)
		memcpy(dst, p, len);	/* not aligned in the map */
	qf_cache_read_end(txn);
	return ret;
}

int qf_flight_get_f32(struct qf_fs *fs, const uint8_t *vid,
		      const struct qf_vtensor *t, float *dst)
{
	uint64_t len = qf_vtensor_bytes(t);
	void *copy = malloc(len ? len : 1);
	int ret;

	ret = copy ? qf_flight_get(fs, vid, t, copy) : -ENOMEM;
	if (!ret)
		ret = qf_to_f32(t->dtype, copy,
				(size_t)(len / qf_dtype_size(t->dtype)), dst);
	free(copy);
	return ret;
}

int qf_flight_unpack(struct qf_fs *fs, const uint8_t *vid,
		     const struct qf_variant *v, size_t gi, uint8_t *q,
		     uint16_t *sc, int32_t *z, int32_t *g_idx)
{
	const struct qf_vgroup *g = &v->g[gi];
	enum qf_ckpt_format f = v->spec.method == QF_METHOD_AWQ ?
				QF_CKPT_AWQ_GEMM : QF_CKPT_GPTQ_V1;
	int64_t in = g->w->t->shape[1];
	int k, nt = qf_ckpt_ntensors(f);
	void *p[4] = { NULL };
	int ret = 0;

	for (k = 0; k < nt && !ret; k++) {
		const struct qf_vtensor *t = &v->t[g->first + k];
		uint64_t len = qf_vtensor_bytes(t);

		p[k] = malloc(len ? len : 1);
		ret = p[k] ? qf_flight_get(fs, vid, t, p[k]) : -ENOMEM;
	}
	if (!ret)
		ret = qf_ckpt_unpack_group(f, g->pack_bits, g->w->t->shape[0],
					   in, qf_ngroups(in, g->qp.group),
					   g->qp.group, (const void *const *)p,
					   q, sc, z, g_idx);
	for (k = 0; k < 4; k++)
		free(p[k]);
	return ret;
}
