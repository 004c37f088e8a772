/*
 * stash.c - an RTN variant's first groups, made while its source is
 * fingerprinted.
 *
 * A variant's cache id names the source's fingerprint, the SHA-256 of
 * its weights (src_fp.c), so the first variant of a source this machine
 * has not hashed yet waits for the hash before it can store anything:
 * 0.74-1.0 s for 0.95 GB here, on one core, at libcrypto's own SHA-NI
 * speed, about as long as producing the whole RTN variant.  The rounding
 * needs only the weights, not the id: so while one core hashes, the
 * other makes the variant's groups, in the order its model.safetensors
 * holds them, into memory; var.c's produce() takes a group from here
 * instead of making it again, and stores it as it would have (same
 * function, same weights: the same bytes).  Issue #23: the first read of
 * an uncached RTN variant through a fresh mount, end to end.
 *
 * The thread rounds on one core (qf_variant_threads(1)), the hash has
 * the other: on two cores neither waits for the other.
 * Only for plain RTN (and its _fake), only when the fingerprint is not
 * known yet, at most STASH_MAX bytes (memory), and only while the hash
 * runs: after it the reader and the worker of ahead.c produce as usual.
 * A group made from bytes that changed meanwhile is never used: no shard
 * may have been written between the stash's start and the take.  What no read takes within STASH_KEEP_S
 * seconds (a lookup that read nothing) is freed.
 *
 * The groups live in one arena of huge pages (qf_big_alloc), cut in
 * order and given back whole once every group is taken and stored
 * (qf_stash_done()): each 4 KiB page of a buffer kept from malloc was a
 * page fault, and at some 10 us a fault on this project's machines that
 * halved the thread's rate (bench_produce: 0.74 GB/s of source into
 * fresh buffers kept, 1.45 into buffers malloc reuses).  Under
 * AddressSanitizer each buffer is its own malloc, so overruns stay
 * caught.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "fs_i.h"

#define STASH_MAX (256ull << 20)	/* bytes of output kept, at most */
#define ALIGN 64			/* each buffer's start in the arena */
#define STASH_KEEP_S 30		/* then what was not taken is freed */

struct stash_group {
	void **bufs;			/* its tensors, NULL: not made */
	uint32_t n;
	bool taken;			/* by a reader: in use until done */
};

struct qf_stash {
	struct qf_variant *v;		/* the variant's plan, its own copy */
	struct qf_model *m;		/* borrowed: the model's generation */
	struct stat *st;		/* [m->nshard]: each shard at begin */
	struct stash_group *g;		/* [v->ng] */
	uint32_t *order;		/* groups in file order */
	char *arena;			/* STASH_MAX bytes, or NULL: malloc */
	uint64_t used;			/* of the arena */
	pthread_t th;
	pthread_mutex_t lock;		/* the fields below, and g[] */
	pthread_cond_t cond;
	bool hashed;			/* the fingerprint is known */
	bool stop;			/* freeing */
	size_t made, taken, done;
	uint64_t bytes;
};

/*
 * No shard was written since the stash began: every write sets a file's
 * ctime, so the groups come from the bytes the fingerprint hashed (the
 * hash is taken again when its file changes while it reads).
 */
static bool unchanged(const struct qf_stash *s)
{
	size_t i;

	for (i = 0; i < s->m->nshard; i++) {
		const struct stat *a = &s->st[i];
		struct stat b;

		if (fstat(s->m->shard[i]->fd, &b) < 0 ||
		    a->st_dev != b.st_dev || a->st_ino != b.st_ino ||
		    a->st_size != b.st_size ||
		    a->st_mtim.tv_sec != b.st_mtim.tv_sec ||
		    a->st_mtim.tv_nsec != b.st_mtim.tv_nsec ||
		    a->st_ctim.tv_sec != b.st_ctim.tv_sec ||
		    a->st_ctim.tv_nsec != b.st_ctim.tv_nsec)
			return false;
	}
	return true;
}

static const char *group_name(const struct qf_variant *v, uint32_t gi)
{
	return v->t[v->g[gi].first].name;
}

static int cmp_group(const void *a, const void *b, void *v)
{
	return strcmp(group_name(v, *(const uint32_t *)a),
		      group_name(v, *(const uint32_t *)b));
}

/* len bytes for a buffer; NULL: over STASH_MAX (or no memory). */
static void *get(struct qf_stash *s, uint64_t len)
{
	uint64_t at = (s->used + ALIGN - 1) / ALIGN * ALIGN;

	if (at + len > STASH_MAX)
		return NULL;
	s->used = at + len;
	return s->arena ? s->arena + at : malloc(len ? len : 1);
}

static void drop_group(struct qf_stash *s, struct stash_group *g)
{
	uint32_t k;

	if (!g->bufs)
		return;
	for (k = 0; k < g->n && !s->arena; k++)
		free(g->bufs[k]);
	free(g->bufs);
	g->bufs = NULL;
}

/* Group gi into bufs (allocated); 0 or a negative code. */
static int make(struct qf_stash *s, uint32_t gi, void ***out)
{
	const struct qf_vgroup *g = &s->v->g[gi];
	struct stash_group sg = { calloc(g->n, sizeof(void *)), g->n, false };
	uint32_t k;
	int ret = sg.bufs ? 0 : -ENOMEM;

	for (k = 0; k < g->n && !ret; k++) {
		sg.bufs[k] = get(s, qf_vtensor_bytes(&s->v->t[g->first + k]));
		if (!sg.bufs[k])
			ret = -ENOMEM;
	}
	if (!ret)
		ret = qf_variant_produce(s->v, gi, sg.bufs, NULL);
	if (ret < 0) {
		drop_group(s, &sg);
		return ret;
	}
	*out = sg.bufs;
	return 0;
}

static bool more(struct qf_stash *s, size_t i)
{
	return i < s->v->ng && !s->hashed && !s->stop;
}

static void *stash_main(void *arg)
{
	struct qf_stash *s = arg;
	struct timespec until;
	size_t i = 0;
	uint32_t k;

	/* one core: the hash has the other */
	qf_variant_threads(1);
	pthread_mutex_lock(&s->lock);
	for (; more(s, i); i++) {
		uint32_t gi = s->order[i];
		void **bufs = NULL;
		uint64_t len = 0;

		pthread_mutex_unlock(&s->lock);
		if (make(s, gi, &bufs) < 0 || !unchanged(s)) {
			struct stash_group sg = { bufs, s->v->g[gi].n, false };

			drop_group(s, &sg);	/* made again by a reader */
			pthread_mutex_lock(&s->lock);
			break;
		}
		for (k = 0; k < s->v->g[gi].n; k++)
			len += qf_vtensor_bytes(&s->v->t[s->v->g[gi].first + k]);
		pthread_mutex_lock(&s->lock);
		s->g[gi].bufs = bufs;
		s->bytes += len;
		s->made++;
	}
	/* what readers have not taken in a while goes; what they took,
	 * once stored (the arena goes whole) */
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += STASH_KEEP_S;
	while (!s->stop && s->taken < s->made &&
	       pthread_cond_timedwait(&s->cond, &s->lock, &until) == 0)
		;
	while (s->done < s->taken)
		pthread_cond_wait(&s->cond, &s->lock);
	if (s->made)
		qf_debug("%s: %zu of %zu group(s) (%.1f MB) made while the "
			 "source was hashed, %zu taken", s->v->name, s->made,
			 s->v->ng, s->bytes / 1e6, s->taken);
	for (i = 0; i < s->v->ng; i++)
		drop_group(s, &s->g[i]);
	if (s->arena)
		qf_big_free(s->arena, STASH_MAX);
	s->arena = NULL;
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

static bool wanted(struct qf_fs *fs, struct qf_mdl *mdl,
		   const struct qf_spec *spec)
{
	if (spec->method != QF_METHOD_RTN || (spec->flags & QF_SPEC_ROT) ||
	    !mdl->m)
		return false;
	/* not known, from the cache either: it is hashed now */
	return qf_src_fp(fs, mdl, false) == -EAGAIN;
}

/* What qf_stash_begin() allocated, the thread gone (or never there). */
static void release(struct qf_stash *s)
{
	if (s->arena)
		qf_big_free(s->arena, STASH_MAX);
	free(s->st);
	free(s->g);
	free(s->order);
	qf_variant_free(s->v);
	free(s);
}

struct qf_stash *qf_stash_begin(struct qf_fs *fs, struct qf_mdl *mdl,
				const struct qf_spec *spec)
{
	struct qf_stash *s;
	size_t i;

	if (!wanted(fs, mdl, spec))
		return NULL;
	s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->m = mdl->m;
#ifndef __SANITIZE_ADDRESS__
	s->arena = qf_big_alloc(STASH_MAX);	/* (pages as touched) */
	if (!s->arena)
		goto out_free;
#endif
	s->st = calloc(mdl->m->nshard ? mdl->m->nshard : 1, sizeof(*s->st));
	if (!s->st || qf_variant_init(mdl->m, spec, &s->v) < 0)
		goto out_free;
	for (i = 0; i < mdl->m->nshard; i++)
		if (fstat(mdl->m->shard[i]->fd, &s->st[i]) < 0)
			goto out_free;
	s->g = calloc(s->v->ng ? s->v->ng : 1, sizeof(*s->g));
	s->order = calloc(s->v->ng ? s->v->ng : 1, sizeof(*s->order));
	if (!s->g || !s->order)
		goto out_free;
	for (i = 0; i < s->v->ng; i++) {
		s->order[i] = (uint32_t)i;
		s->g[i].n = s->v->g[i].n;
	}
	/* the file's order (the plan sorts tensors by name within a
	 * width): a sequential reader meets them so */
	qsort_r(s->order, s->v->ng, sizeof(*s->order), cmp_group, s->v);
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cond, NULL);
	if (pthread_create(&s->th, NULL, stash_main, s) != 0) {
		pthread_mutex_destroy(&s->lock);
		pthread_cond_destroy(&s->cond);
		goto out_free;
	}
	return s;

out_free:
	release(s);
	return NULL;
}

void qf_stash_hashed(struct qf_stash *s)
{
	if (!s)
		return;
	pthread_mutex_lock(&s->lock);
	s->hashed = true;
	pthread_mutex_unlock(&s->lock);
}

/* Group gi of v is the stash's group gi: the same tensors. */
static bool same_group(const struct qf_stash *s, const struct qf_variant *v,
		       uint32_t gi)
{
	const struct qf_vgroup *a = &s->v->g[gi], *b = &v->g[gi];
	uint32_t k;

	if (gi >= v->ng || a->n != b->n)
		return false;
	for (k = 0; k < a->n; k++) {
		const struct qf_vtensor *x = &s->v->t[a->first + k];
		const struct qf_vtensor *y = &v->t[b->first + k];

		if (strcmp(x->name, y->name) ||
		    qf_vtensor_bytes(x) != qf_vtensor_bytes(y))
			return false;
	}
	return true;
}

bool qf_stash_take(struct qf_stash *s, const struct qf_variant *v,
		   uint32_t gi, void **bufs)
{
	bool got = false;
	uint32_t k;

	if (!s)
		return false;
	pthread_mutex_lock(&s->lock);
	if (gi < s->v->ng && s->g[gi].bufs && !s->g[gi].taken &&
	    same_group(s, v, gi) && unchanged(s)) {
		for (k = 0; k < s->g[gi].n; k++)
			bufs[k] = s->g[gi].bufs[k];
		s->g[gi].taken = true;
		s->taken++;
		got = true;
	}
	pthread_mutex_unlock(&s->lock);
	return got;
}

void qf_stash_done(struct qf_stash *s)
{
	pthread_mutex_lock(&s->lock);
	s->done++;
	pthread_cond_signal(&s->cond);
	pthread_mutex_unlock(&s->lock);
}

void qf_stash_free(struct qf_stash *s)
{
	if (!s)
		return;
	pthread_mutex_lock(&s->lock);
	s->stop = true;
	pthread_cond_signal(&s->cond);
	pthread_mutex_unlock(&s->lock);
	pthread_join(s->th, NULL);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->cond);
	release(s);
}
