/*
 * limits.c - what one mount may take from the machine: disk for the
 * cache (-o cache_max) and concurrent productions (-o max_productions).
 *
 * Disk: before anything is written to the cache (a tensor group, a
 * calibrated layer, a read file) qf_fs_room() evicts least recently used
 * variants, as `quantfs cache gc` does, so that the cache stays within
 * its bound with the new bytes.  The default bound (auto) is half of the
 * cache's filesystem, and never less than a tenth of the filesystem left
 * free: that part is hard, a production that would take it after every
 * evictable variant is gone fails with ENOSPC, so no reader of an
 * allow_other mount can fill the disk.  Freed LMDB pages count as room
 * for values (data.mdb never shrinks: LMDB reuses them), not for read
 * files.  A quick test (one statvfs and an estimate) answers most calls;
 * the cache is measured again when it fails or every REMEASURE seconds.
 *
 * Productions: RTN groups and GGUF tensors are produced by the reader
 * threads that need them, and variant setups run in lookups, so one user
 * reading many variant names could keep every core busy.  At most
 * max_productions run at once; others queue, users with fewer running
 * first (a request's uid), then in arrival order, and a wait ends with
 * EINTR when its request is interrupted.  Nested calls on one thread
 * (a GGUF tensor producing its variant's group, a _fake setup setting up
 * its base) share the thread's slot, so the queue cannot deadlock.
 *
 * Waits of the core: the FUSE layer registers qf_fs_req_hooks (which
 * request a thread serves, whether it was interrupted); the core asks
 * them through fs->req and never calls into the FUSE files.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "fs_i.h"

#define SHARE_DIV 2		/* auto: at most 1/2 of the filesystem */
#define FLOOR_DIV 10		/* auto: 1/10 of it always left free */
#define REMEASURE 30.0		/* seconds an estimate of it lasts */
#define QUIET 10.0		/* seconds between two equal log lines */

struct qf_prod_wait {
	uid_t uid;
	uint64_t ticket;
	struct qf_prod_wait *next;
};

struct qf_prod_user {
	uid_t uid;
	int running;
};

/* Slots this thread holds (nested begins share the first one), and
 * for whom it took the first. */
static __thread int prod_depth;
static __thread uid_t prod_uid;

void qf_fs_limits_init(struct qf_fs *fs)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	pthread_mutex_init(&fs->room_lock, NULL);
	pthread_mutex_init(&fs->prod_lock, NULL);
	pthread_cond_init(&fs->prod_cond, NULL);
	fs->prod_max = fs->o.max_productions > 0 ? fs->o.max_productions :
		       n > 0 ? (int)n : 1;
}

void qf_fs_limits_free(struct qf_fs *fs)
{
	pthread_mutex_destroy(&fs->room_lock);
	pthread_mutex_destroy(&fs->prod_lock);
	pthread_cond_destroy(&fs->prod_cond);
	free(fs->prod_users);
}

/* A log line at most once per QUIET seconds; caller holds room_lock. */
static bool say(double *last)
{
	double now = qf_now();

	if (*last > 0 && now - *last < QUIET)
		return false;
	*last = now;
	return true;
}

/*
 * Evict what the bound asks for before incoming bytes are written (file:
 * a read file, which freed LMDB pages do not make room for).  Caller
 * holds room_lock.
 */
static int make_room(struct qf_fs *fs, uint64_t incoming, bool file)
{
	bool is_auto = fs->o.cache_max == QF_CACHE_MAX_AUTO;
	struct qf_cache_gc_result r = { 0 };
	uint64_t share, floor, hard, used, want;
	struct qf_cache_space sp;
	int ret;

	ret = qf_cache_space(fs->cache, false, &sp);
	if (ret < 0)
		return 0;		/* cannot tell: the write will */
	share = is_auto ? sp.fs_bytes / SHARE_DIV : fs->o.cache_max;
	floor = is_auto ? sp.fs_bytes / FLOOR_DIV : 0;
	if (fs->room_t > 0 && qf_now() - fs->room_t < REMEASURE &&
	    fs->room_used + incoming <= share &&
	    sp.fs_avail >= floor + incoming) {
		fs->room_used += incoming;
		return 0;
	}
	ret = qf_cache_space(fs->cache, true, &sp);
	if (ret < 0)
		return 0;
	used = sp.values + sp.files;
	/*
	 * The most the cache may take while leaving floor free: for values,
	 * data.mdb's free pages are room too.  A read file needs disk, which
	 * evicting values does not give: it is written only where the disk
	 * has room (below), and evicts for the share alone.
	 */
	hard = UINT64_MAX;
	if (is_auto && !file) {
		uint64_t room = sp.fs_avail + sp.mdb_free;

		/* others filled the disk: the cache gives way */
		if (room >= floor)
			hard = used + (room - floor);
		else
			hard = used > floor - room ? used - (floor - room) : 0;
	}
	want = share < hard ? share : hard;
	if (used + incoming > want) {
		ret = qf_cache_gc(fs->cache, want > incoming ?
				  want - incoming : 0, &r);
		used -= r.freed < used ? r.freed : used;
	}
	fs->room_used = used + incoming;
	fs->room_t = qf_now();
	if (ret < 0)
		return 0;		/* logged by the cache */
	if (file && is_auto && (qf_cache_space(fs->cache, false, &sp) < 0 ||
				sp.fs_avail < floor + incoming))
		return -ENOSPC;		/* (not logged: only no read file) */
	if (used + incoming > hard) {
		if (say(&fs->nospace_t))
			qf_err("cache '%s': %.1f MB free of %.1f MB, and "
			       "%.1f MB more would take the last tenth of "
			       "its filesystem, which -o cache_max=auto keeps "
			       "free (%zu variant(s) in use, kept): not "
			       "written (ENOSPC)", fs->cache_dir,
			       sp.fs_avail / 1e6, sp.fs_bytes / 1e6,
			       incoming / 1e6, r.busy);
		return -ENOSPC;
	}
	if (used + incoming > share && say(&fs->over_t))
		qf_warn("cache: %.1f MB after eviction, above %s %.1f MB "
			"(%zu variant(s) in use)", (used + incoming) / 1e6,
			is_auto ? "half its filesystem" : "cache_max",
			share / 1e6, r.busy);
	return 0;
}

int qf_fs_room(struct qf_fs *fs, uint64_t incoming, bool file)
{
	int ret;

	if (fs->o.cache_max == QF_CACHE_MAX_NONE)
		return 0;
	pthread_mutex_lock(&fs->room_lock);
	ret = make_room(fs, incoming, file);
	pthread_mutex_unlock(&fs->room_lock);
	return ret;
}

void qf_fs_trim_cache(struct qf_fs *fs)
{
	if (fs->o.cache_max == QF_CACHE_MAX_NONE)
		return;
	pthread_mutex_lock(&fs->room_lock);
	fs->room_t = 0;			/* measure */
	make_room(fs, 0, false);
	pthread_mutex_unlock(&fs->room_lock);
}

int qf_fs_cache_put(struct qf_fs *fs, const uint8_t *vid,
		    const struct qf_cache_item *items, size_t n)
{
	struct qf_cache_space sp;
	uint64_t bytes = 0;
	size_t i;
	int ret;

	for (i = 0; i < n; i++)
		bytes += items[i].len;
	ret = qf_fs_room(fs, bytes, false);
	if (!ret)
		ret = qf_cache_put(fs->cache, vid, items, n);
	if (ret == -ENOSPC && qf_cache_space(fs->cache, false, &sp) == 0) {
		pthread_mutex_lock(&fs->room_lock);
		if (sp.fs_free < bytes + (1u << 20) && say(&fs->nospace_t))
			qf_err("cache '%s': no space left on its filesystem "
			       "(%.1f MB free of %.1f MB): %s and the rest of "
			       "its group (%.1f MB) not stored; reads that "
			       "need them fail with ENOSPC until space is "
			       "freed (quantfs cache gc)", fs->cache_dir,
			       sp.fs_free / 1e6, sp.fs_bytes / 1e6,
			       n ? items[0].name : "-", bytes / 1e6);
		pthread_mutex_unlock(&fs->room_lock);
	}
	return ret;
}

/* Caller holds prod_lock. */
static struct qf_prod_user *user_of(struct qf_fs *fs, uid_t uid)
{
	struct qf_prod_user *u;
	size_t i;

	for (i = 0; i < fs->nprod_users; i++)
		if (fs->prod_users[i].uid == uid)
			return &fs->prod_users[i];
	u = realloc(fs->prod_users, (fs->nprod_users + 1) * sizeof(*u));
	if (!u)
		return NULL;
	fs->prod_users = u;
	u = &fs->prod_users[fs->nprod_users++];
	u->uid = uid;
	u->running = 0;
	return u;
}

static int running_of(struct qf_fs *fs, uid_t uid)
{
	struct qf_prod_user *u = user_of(fs, uid);

	return u ? u->running : 0;
}

/* w goes next: a slot is free and no waiter comes before it. */
static bool my_turn(struct qf_fs *fs, const struct qf_prod_wait *w)
{
	const struct qf_prod_wait *x;
	int mine = running_of(fs, w->uid);

	if (fs->prod_running >= fs->prod_max)
		return false;
	for (x = fs->prod_waiters; x; x = x->next) {
		int theirs = running_of(fs, x->uid);

		if (x != w && (theirs < mine ||
			       (theirs == mine && x->ticket < w->ticket)))
			return false;
	}
	return true;
}

int qf_fs_prod_begin(struct qf_fs *fs)
{
	struct qf_prod_wait w = { qf_fs_req_uid(fs), 0, NULL };
	struct qf_prod_wait **p;
	struct qf_prod_user *u;
	bool waited = false;
	int ret = 0;

	if (prod_depth++)
		return 0;
	pthread_mutex_lock(&fs->prod_lock);
	w.ticket = fs->prod_next++;
	w.next = fs->prod_waiters;
	fs->prod_waiters = &w;
	while (!my_turn(fs, &w)) {
		if (!waited)
			qf_debug("productions: %d/%d running, uid %u waits "
				 "(%d waiting)", fs->prod_running,
				 fs->prod_max, (unsigned)w.uid,
				 ++fs->prod_waiting);
		waited = true;
		ret = qf_fs_wait(fs, &fs->prod_cond, &fs->prod_lock);
		if (ret < 0 || qf_fs_stopping(fs)) {
			ret = -EINTR;
			break;
		}
	}
	for (p = &fs->prod_waiters; *p != &w; p = &(*p)->next)
		;
	*p = w.next;
	if (waited)
		fs->prod_waiting--;
	if (!ret) {
		u = user_of(fs, w.uid);
		if (u)
			u->running++;
		fs->prod_running++;
		prod_uid = w.uid;
		qf_debug("productions: %d/%d running (uid %u began one)",
			 fs->prod_running, fs->prod_max, (unsigned)w.uid);
	} else {
		prod_depth--;
	}
	pthread_cond_broadcast(&fs->prod_cond);
	pthread_mutex_unlock(&fs->prod_lock);
	return ret;
}

void qf_fs_prod_end(struct qf_fs *fs)
{
	struct qf_prod_user *u;

	QF_ASSERT(prod_depth > 0);
	if (--prod_depth)
		return;
	pthread_mutex_lock(&fs->prod_lock);
	fs->prod_running--;
	u = user_of(fs, prod_uid);
	if (u && u->running > 0)
		u->running--;
	pthread_cond_broadcast(&fs->prod_cond);
	pthread_mutex_unlock(&fs->prod_lock);
}

bool qf_fs_prod_free(struct qf_fs *fs)
{
	bool free_;

	pthread_mutex_lock(&fs->prod_lock);
	free_ = fs->prod_running < fs->prod_max && !fs->prod_waiters;
	pthread_mutex_unlock(&fs->prod_lock);
	return free_;
}

void qf_fs_set_req_hooks(struct qf_fs *fs, const struct qf_fs_req_hooks *h)
{
	fs->req = h;
}

uid_t qf_fs_req_uid(const struct qf_fs *fs)
{
	return fs->req ? fs->req->uid(fs) : fs->uid;
}

bool qf_fs_stopping(struct qf_fs *fs)
{
	bool stop;

	pthread_mutex_lock(&fs->job_lock);
	stop = fs->stopping;
	pthread_mutex_unlock(&fs->job_lock);
	return stop;
}

int qf_fs_wait(struct qf_fs *fs, pthread_cond_t *cond, pthread_mutex_t *lock)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += 200 * 1000 * 1000;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_cond_timedwait(cond, lock, &ts);
	return fs->req && fs->req->interrupted(fs) ? -EINTR : 0;
}

void qf_fs_clean_files(struct qf_fs *fs)
{
	struct qf_cache_files_stat st;

	if (qf_cache_files(fs->cache, NULL, QF_FILES_CLEAN, &st) < 0)
		return;
	if (st.count[QF_CACHE_FILE_STRAY])
		qf_info("cache '%s': removed %zu temporary file(s) of killed "
			"writers (%.1f MB)", fs->cache_dir,
			st.count[QF_CACHE_FILE_STRAY],
			st.bytes[QF_CACHE_FILE_STRAY] / 1e6);
}
