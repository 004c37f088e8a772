/*
 * ahead.c - production ahead of a reader, for variants whose groups are
 * slots of their own flight (RTN, mixed_static, uncalibrated _fake):
 * not calibrated ones (mixed_b and mixed_dyn among them: GPTQ at their
 * measured widths), whose layer job runs in a thread of its own anyway
 * (job.c).
 *
 * A reader's thread produces the groups its read touches (range.c), then
 * replies.  Alone it leaves a core idle: the two threads of a large
 * linear's rounding (quant/variant) are one part of a group's time, its
 * packing, LMDB commit and the reply another, each on one core.  So a
 * sequential read (past the header, from byte 0 or where the last one
 * ended) also hands
 * the groups of the next AHEAD_SRC bytes of source in file order to the
 * variant's worker thread, which produces them through
 * the same flight (a reader that wants one it is making waits for it,
 * never makes it twice): a sequential reader finds its groups made
 * while it was replying, and both cores stay busy (issue #23).
 *
 * The worker yields to readers: it takes a production only while a slot
 * of -o max_productions is free and nobody waits for one, so readers of
 * other variants or users never queue behind production nobody asked
 * for yet; it gives up a window on an error (the reader then produces
 * that group itself and sees the error), when no file of the variant is
 * open any more (nothing keeps `cache gc` from it then) and when the
 * mount is stopping.
 * One thread per variant that was read, started on its first read,
 * joined when the variant is freed.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "fs_i.h"

#define AHEAD_SRC (96ull << 20)	/* source bytes made ahead of a read */
#define YIELD_NS (10 * 1000 * 1000)	/* recheck a busy slot after */

struct qf_ahead {
	struct qf_fs *fs;
	struct qf_var *var;
	pthread_t th;
	pthread_mutex_t lock;		/* the fields below */
	pthread_cond_t cond;		/* until moved, or stop */
	size_t next;			/* segment the worker looks at next */
	size_t until;			/* ... and the one it stops before */
	uint64_t last_end;		/* where the last read ended */
	bool stop;
};

/* Group of segment s, or -1 (the header, a source tensor passed through) */
static int64_t seg_group(const struct qf_var *var, size_t s)
{
	const struct qf_vtensor *t = var->seg[s].t;

	return t && t->group != QF_VT_PASSTHROUGH ? (int64_t)t->group : -1;
}

/* Wait for the window to move or a moment, with a->lock held; false
 * when the worker should end. */
static bool pause_a_moment(struct qf_ahead *a, bool timed)
{
	struct timespec ts;

	if (!timed) {
		pthread_cond_wait(&a->cond, &a->lock);
		return !a->stop;
	}
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_nsec += YIELD_NS;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_cond_timedwait(&a->cond, &a->lock, &ts);
	return !a->stop;
}

/* A file of it is open: its QF_LOCK_USE is held, so `cache gc` leaves
 * it alone while the worker adds to it. */
static bool open_files(struct qf_var *var)
{
	bool open;

	pthread_mutex_lock(&var->lock);
	open = var->nopen > 0;
	pthread_mutex_unlock(&var->lock);
	return open;
}

static void *worker(void *arg)
{
	struct qf_ahead *a = arg;
	struct qf_var *var = a->var;
	struct qf_fs *fs = a->fs;

	pthread_mutex_lock(&a->lock);
	while (!a->stop) {
		size_t s = a->next;
		int64_t gi;
		int ret;

		if (s >= a->until || qf_fs_stopping(fs)) {
			if (!pause_a_moment(a, qf_fs_stopping(fs)))
				break;
			continue;
		}
		gi = seg_group(var, s);
		if (gi < 0 || qf_flight_done(&var->fl, (size_t)gi)) {
			a->next = s + 1;
			continue;
		}
		if (!open_files(var)) {	/* eviction may take it now */
			a->until = s;
			continue;
		}
		if (!qf_fs_prod_free(fs)) {	/* readers first */
			if (!pause_a_moment(a, true))
				break;
			continue;
		}
		pthread_mutex_unlock(&a->lock);
		ret = qf_var_ensure(fs, var, (uint32_t)gi);
		pthread_mutex_lock(&a->lock);
		if (ret < 0)		/* the reader will see it */
			a->until = a->next;
		else if (a->next == s)
			a->next = s + 1;
	}
	pthread_mutex_unlock(&a->lock);
	return NULL;
}

/* The segment after AHEAD_SRC bytes of source of groups from s on. */
static size_t window_end(const struct qf_var *var, size_t s)
{
	uint64_t src = 0;
	int64_t last = -1;

	for (; s < var->nseg && src < AHEAD_SRC; s++) {
		int64_t gi = seg_group(var, s);

		if (gi >= 0 && gi != last)
			src += var->v->g[gi].src_bytes;
		if (gi >= 0)
			last = gi;
	}
	return s;
}

static struct qf_ahead *ahead_start(struct qf_fs *fs, struct qf_var *var)
{
	struct qf_ahead *a = calloc(1, sizeof(*a));

	if (!a)
		return NULL;
	a->fs = fs;
	a->var = var;
	pthread_mutex_init(&a->lock, NULL);
	pthread_cond_init(&a->cond, NULL);
	if (pthread_create(&a->th, NULL, worker, a) != 0) {
		pthread_mutex_destroy(&a->lock);
		pthread_cond_destroy(&a->cond);
		free(a);
		return NULL;
	}
	return a;
}

void qf_var_ahead(struct qf_fs *fs, struct qf_var *var, uint64_t off,
		  uint64_t end)
{
	struct qf_ahead *a;
	size_t s, until;
	bool seq;

	if (var->job || var->base || !end || end >= var->size)
		return;
	pthread_mutex_lock(&var->lock);
	if (!var->ahead)		/* no thread: read as before */
		var->ahead = ahead_start(fs, var);
	a = var->ahead;
	pthread_mutex_unlock(&var->lock);
	if (!a)
		return;
	s = qf_var_seg_at(var, end - 1) + 1;
	until = window_end(var, s);
	pthread_mutex_lock(&a->lock);
	/* the header alone, in one read or more (a tool that lists
	 * tensors), asks for nothing */
	seq = end > var->header.len && (!off || off == a->last_end);
	a->last_end = end;
	if (!seq) {			/* a loader's pick: that alone */
		pthread_mutex_unlock(&a->lock);
		return;
	}
	/* a reader behind the worker (a seek back) restarts it there */
	if (s > a->next || until <= a->next)
		a->next = s;
	a->until = until;
	pthread_cond_signal(&a->cond);
	pthread_mutex_unlock(&a->lock);
}

void qf_var_ahead_stop(struct qf_var *var)
{
	struct qf_ahead *a = var->ahead;

	if (!a)
		return;
	pthread_mutex_lock(&a->lock);
	a->stop = true;
	pthread_cond_signal(&a->cond);
	pthread_mutex_unlock(&a->lock);
	pthread_join(a->th, NULL);
	pthread_mutex_destroy(&a->lock);
	pthread_cond_destroy(&a->cond);
	free(a);
	var->ahead = NULL;
}

void qf_fs_ahead_stop_all(struct qf_fs *fs)
{
	struct qf_mdl *m;
	struct qf_var *v;

	/* nothing on a production's way takes fs->lock */
	pthread_mutex_lock(&fs->lock);
	for (m = fs->mdls; m; m = m->next)
		for (v = m->vars; v; v = v->next)
			qf_var_ahead_stop(v);
	pthread_mutex_unlock(&fs->lock);
}
