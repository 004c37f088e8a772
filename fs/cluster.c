/*
 * cluster.c - the remote tier (cache/remote.h) in the core: where the
 * single flight of a machine (flight.c, job.c) reaches the fleet's.
 *
 *   a slot (flight.c fill):   local cache -> the id's manifest in the
 *       bucket (values verified) -> local production; an id completed
 *       here is published in the background (unmount waits for it).
 *   a calibrated job (job.c): local cache -> the bucket's manifest ->
 *       the lease: held, the job runs here, resumes from the latest
 *       checkpoint a dead holder left, publishes a checkpoint after each
 *       layer and the manifest at the end; someone else's, the job waits,
 *       following its progress and importing its checkpoints (so early
 *       layers are served before the last is done), and takes over when
 *       the lease expires.
 *   a calibration set (job_calib.c): the bucket's, else sampled here and
 *       published, created once, so the first machine's becomes the
 *       cluster's.
 * Which node does what: remote.h's roles.  A bucket that does not answer
 * never fails a read: the remote calls return -EAGAIN and production is
 * local (unpublished).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cluster.h"
#include "job_i.h"

/* A calibrated job's side of the tier, owned by the job's thread;
 * renewer runs beside it while the lease is held. */
struct qf_cjob {
	struct qf_fs *fs;
	struct qf_var *var;
	int (*cached)(struct qf_fs *, struct qf_var *);
	struct qf_remote_lease rl;
	pthread_mutex_t lock;		/* rl.l, stop */
	pthread_cond_t cond;
	pthread_t renewer;
	bool renewing;			/* renewer started */
	bool stop;
	bool held;			/* the job runs under our lease */
	bool lost;			/* someone took it over */
	int imported;			/* checkpoint step imported, -1 */
};

static bool produces_calibrated(const struct qf_fs *fs)
{
	return qf_remote_role(fs->remote) == QF_REMOTE_PRODUCE;
}

/* counted as a publication from now on: `quantfs warm` and unmount
 * wait for its manifest */
static void pub_count(struct qf_fs *fs, int d)
{
	pthread_mutex_lock(&fs->job_lock);
	fs->npub += d;
	pthread_cond_broadcast(&fs->job_cond);
	pthread_mutex_unlock(&fs->job_lock);
}

/* --- slots ------------------------------------------------------------ */

/*
 * A variant found in the bucket is likely read whole (loaders read every
 * tensor): the rest of its slots are fetched ahead by PREFETCH threads,
 * each slot through the flight (qf_flight_fetch), so a reader wanting one
 * waits for it instead of fetching it twice, and GETs overlap.
 */
#define PREFETCH 4

struct pre {
	struct qf_fs *fs;
	struct qf_flight *fl;
	size_t k;
};

static void *pre_main(void *arg)
{
	struct pre *p = arg;
	size_t i;

	for (i = p->k; i < p->fl->n && !qf_fs_stopping(p->fs); i += PREFETCH)
		if (qf_flight_fetch(p->fs, p->fl, i) == -EAGAIN)
			break;		/* the bucket went away */
	pub_count(p->fs, -1);
	free(p);
	return NULL;
}

static void prefetch(struct qf_fs *fs, struct qf_flight *fl)
{
	pthread_t th;
	bool first;
	size_t k;

	pthread_mutex_lock(&fl->lock);
	first = !fl->prefetch;
	fl->prefetch = true;
	pthread_mutex_unlock(&fl->lock);
	for (k = 0; first && k < PREFETCH && k < fl->n; k++) {
		struct pre *p = malloc(sizeof(*p));

		if (!p)
			return;
		*p = (struct pre){ fs, fl, k };
		pub_count(fs, 1);
		if (pthread_create(&th, NULL, pre_main, p) != 0) {
			pub_count(fs, -1);
			free(p);
			return;
		}
		pthread_detach(th);
	}
}

static int fetch(struct qf_fs *fs, struct qf_flight *fl, size_t i)
{
	const struct qf_rmanifest *m;
	const char *names[QF_FLIGHT_MAXV];
	size_t n, k, got;
	int ret;

	if (!fs->remote)
		return -ENOENT;
	ret = qf_remote_manifest(fs->remote, fl->vid, &m);
	if (ret < 0)
		return ret;
	n = fl->ops->names(fl->arg, i, names);
	for (k = 0; k < n; k++)
		if (!qf_rmanifest_find(m, names[k]))
			return -ENOENT;	/* not this build's values */
	ret = qf_remote_import(fs->remote, fs->cache, m, names, n, &got);
	/* the lengths this plan wants (a manifest of another plan under
	 * this id would be a bug or a forgery: never served) */
	if (!ret && !fl->ops->cached(fs, fl->arg, i)) {
		qf_cache_del(fs->cache, fl->vid, names, n);
		ret = QF_ECORRUPT;
	}
	if (ret < 0 && ret != -EAGAIN)
		qf_warn("%s: from the remote tier: %s; producing it here",
			fl->label, qf_strerror(ret));
	if (!ret)
		prefetch(fs, fl);
	return ret;
}

struct pub {
	struct qf_fs *fs;
	uint8_t vid[QF_CACHE_VID];
	char *label;
};

static char *record_of(struct qf_fs *fs, const uint8_t *vid)
{
	struct qf_cache_txn *txn;
	const char *json;
	char *rec = NULL;
	size_t len;

	if (qf_cache_read_begin(fs->cache, &txn) < 0)
		return NULL;
	if (qf_cache_get_record(txn, vid, &json, &len) == 0)
		rec = strndup(json, len);
	qf_cache_read_end(txn);
	return rec;
}

static int publish(struct qf_fs *fs, const uint8_t *vid, int step,
		   const char *label)
{
	char *rec = step < 0 ? record_of(fs, vid) : NULL;
	int ret;

	ret = qf_remote_publish(fs->remote, fs->cache, vid, step, label, rec);
	free(rec);
	if (ret < 0 && ret != -EEXIST && ret != -EACCES && ret != -EAGAIN)
		qf_warn("%s: not published to the remote tier: %s", label,
			qf_strerror(ret));
	return ret;
}

static void *pub_main(void *arg)
{
	struct pub *p = arg;
	struct qf_fs *fs = p->fs;

	publish(fs, p->vid, -1, p->label);
	free(p->label);
	free(p);
	pub_count(fs, -1);
	return NULL;
}

static void publish_bg(struct qf_fs *fs, const uint8_t *vid,
		       const char *label)
{
	struct pub *p;
	pthread_t th;

	if (!fs->remote || qf_remote_role(fs->remote) == QF_REMOTE_READ)
		return;
	p = calloc(1, sizeof(*p));
	if (!p || !(p->label = strdup(label))) {
		free(p);
		return;
	}
	p->fs = fs;
	memcpy(p->vid, vid, QF_CACHE_VID);
	pub_count(fs, 1);
	if (pthread_create(&th, NULL, pub_main, p) != 0) {
		pub_count(fs, -1);
		free(p->label);
		free(p);
		return;
	}
	pthread_detach(th);
}

const struct qf_flight_remote qf_cluster_flight = { fetch, publish_bg };

void qf_cluster_drain(struct qf_fs *fs)
{
	bool said = false;

	pthread_mutex_lock(&fs->job_lock);
	while (fs->npub > 0) {
		if (!said)
			qf_info("%d publication%s or fetch%s with the remote "
				"tier to finish before unmounting", fs->npub,
				fs->npub > 1 ? "s" : "",
				fs->npub > 1 ? "es" : "");
		said = true;
		pthread_cond_wait(&fs->job_cond, &fs->job_lock);
	}
	pthread_mutex_unlock(&fs->job_lock);
}

static bool in_bucket(struct qf_fs *fs, const uint8_t *id)
{
	struct qf_remote_lease rl;
	struct qf_lease_obs o;

	memset(&o, 0, sizeof(o));
	qf_remote_lease_init(fs->remote, id, &rl);
	return rl.l.ops->observe(rl.l.arg, &o) == 0 && (o.manifest || o.exists);
}

bool qf_cluster_prefer(struct qf_fs *fs, const uint8_t *own,
		       const uint8_t *alt)
{
	return !in_bucket(fs, own) && in_bucket(fs, alt);
}

/* --- calibration sets ------------------------------------------------- */

int qf_cluster_calib_fetch(struct qf_fs *fs, struct qf_var *var)
{
	const struct qf_rmanifest *m;
	int ret;

	if (!fs->remote)
		return -ENOENT;
	ret = qf_remote_manifest(fs->remote, var->calib_vid, &m);
	if (!ret)
		ret = qf_remote_import(fs->remote, fs->cache, m, NULL, 0, NULL);
	if (!ret)
		qf_info("%s: calibration set from the remote tier (%s)",
			var->mdl->name, m->host);
	return ret;
}

int qf_cluster_calib_publish(struct qf_fs *fs, struct qf_var *var,
			     const void *ids, size_t len)
{
	struct qf_cache_item it = { "__ids__", ids, len };
	const struct qf_rmanifest *m;
	const struct qf_rvalue *v;
	struct qf_sha256 h;
	uint8_t sum[32];
	char label[512];
	int ret;

	if (!fs->remote)
		return 0;
	snprintf(label, sizeof(label), "%s/calibration set", var->mdl->name);
	ret = publish(fs, var->calib_vid, -1, label);
	if (ret != -EEXIST ||
	    qf_remote_manifest(fs->remote, var->calib_vid, &m) < 0 ||
	    !(v = qf_rmanifest_find(m, "__ids__")))
		return 0;
	qf_sha256_init(&h);
	qf_sha256_update(&h, ids, len);
	qf_sha256_final(&h, sum);
	if (v->len == len && !memcmp(v->sha, sum, 32))
		return 0;		/* sampled the same: the usual case */
	/* another machine's set came first: it is the cluster's */
	qf_info("%s: another machine published a calibration set for these "
		"settings first: using it", var->mdl->name);
	qf_cache_del(fs->cache, var->calib_vid, &it.name, 1);
	if (qf_cluster_calib_fetch(fs, var) == 0)
		return 1;
	qf_fs_cache_put(fs, var->calib_vid, &it, 1);	/* ours, then */
	return 0;
}

/* --- calibrated jobs -------------------------------------------------- */

static void lease_body(struct qf_cjob *c, struct qf_buf *b)
{
	struct qf_var *var = c->var;
	int done, total;
	double eta = -1, now = qf_now(), t0, began;

	pthread_mutex_lock(&var->lock);
	done = var->job->layers_done;
	total = var->job->nlayers;
	t0 = var->job->first_t;
	began = var->job->t0;
	if (done > var->job->first && var->job->running)
		eta = (now - t0) / (done - var->job->first) * (total - done);
	pthread_mutex_unlock(&var->lock);
	/* when the job began, on the wall clock */
	qf_remote_lease_body(c->fs->remote, var->label, done, total, eta,
			     (double)time(NULL) - (now - began), b);
}

static void *renewer(void *arg)
{
	struct qf_cjob *c = arg;
	struct qf_buf body = QF_BUF_INIT;

	pthread_mutex_lock(&c->lock);
	while (!c->stop && !c->lost) {
		struct timespec ts;
		double wait = c->rl.l.renew_at - qf_now();
		int r;

		if (wait > 0) {
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_sec += (time_t)wait;
			ts.tv_nsec += (long)((wait - (double)(time_t)wait) *
					     1e9);
			if (ts.tv_nsec >= 1000000000L) {
				ts.tv_sec++;
				ts.tv_nsec -= 1000000000L;
			}
			pthread_cond_timedwait(&c->cond, &c->lock, &ts);
			continue;
		}
		pthread_mutex_unlock(&c->lock);
		lease_body(c, &body);
		pthread_mutex_lock(&c->lock);
		r = qf_lease_renew(&c->rl.l, qf_now(), body.data, false);
		if (r == QF_LEASE_R_LOST && !c->lost) {
			c->lost = true;
			qf_warn("%s: lost the remote lease (another machine "
				"took it over): finishing here without "
				"publishing", c->var->label);
		}
	}
	pthread_mutex_unlock(&c->lock);
	qf_buf_release(&body);
	return NULL;
}

/* Count the layers the cache holds; readers of them are woken. */
static void recount(struct qf_cjob *c)
{
	struct qf_var *var = c->var;
	int l = c->cached(c->fs, var);

	pthread_mutex_lock(&var->lock);
	if (l > var->job->layers_done)
		var->job->layers_done = l;
	pthread_cond_broadcast(&var->cond);
	pthread_mutex_unlock(&var->lock);
}

/* The latest checkpoint into the cache, when newer than the last. */
static void import_ckpt(struct qf_cjob *c)
{
	struct qf_rmanifest m;
	int ret;

	ret = qf_remote_checkpoint(c->fs->remote, c->var->vid, &m);
	qf_debug("%s: latest checkpoint: %s (step %d)", c->var->label,
		 qf_strerror(ret), m.step);
	if (ret < 0)
		return;
	if (m.step > c->imported &&
	    qf_remote_import(c->fs->remote, c->fs->cache, &m, NULL, 0,
			     NULL) == 0) {
		c->imported = m.step;
		recount(c);
	}
	qf_rmanifest_free(&m);
}

static void show_holder(struct qf_var *var, const struct qf_lease_obs *o)
{
	pthread_mutex_lock(&var->lock);
	snprintf(var->job->remote_holder, sizeof(var->job->remote_holder),
		 "%s", o->exists ? o->info.holder : "");
	var->job->remote_done = o->info.done;
	var->job->remote_total = o->info.total;
	var->job->remote_eta = o->info.eta;
	var->job->phase = o->exists ? "produced by another machine" :
			  var->job->phase;
	pthread_mutex_unlock(&var->lock);
}

/* The manifest is there: everything into the cache. */
static int take_manifest(struct qf_cjob *c)
{
	const struct qf_rmanifest *m;
	size_t got = 0;
	int ret;

	ret = qf_remote_manifest(c->fs->remote, c->var->vid, &m);
	if (!ret)
		ret = qf_remote_import(c->fs->remote, c->fs->cache, m, NULL, 0,
				       &got);
	if (!ret) {
		qf_info("%s: from the remote tier (published by %s): %zu "
			"values", c->var->label, m->host, got);
		recount(c);
	} else if (ret != -EAGAIN) {
		qf_warn("%s: the remote tier's copy is unusable (%s): "
			"producing it here", c->var->label, qf_strerror(ret));
	}
	return ret;
}

static int start_renewer(struct qf_cjob *c)
{
	c->held = true;
	pub_count(c->fs, 1);
	if (pthread_create(&c->renewer, NULL, renewer, c) == 0)
		c->renewing = true;
	if (c->rl.l.took_over)
		qf_info("%s: took over the remote lease of %s (expired)",
			c->var->label, c->rl.l.seen.info.holder);
	import_ckpt(c);
	if (c->imported >= 0)
		qf_info("%s: resuming from a checkpoint after %d layers",
			c->var->label, c->imported);
	return 0;
}

int qf_cluster_job_begin(struct qf_fs *fs, struct qf_var *var,
			 int (*cached)(struct qf_fs *, struct qf_var *),
			 struct qf_cjob **out)
{
	struct qf_buf body = QF_BUF_INIT;
	struct qf_cjob *c;
	bool said = false;
	int r, ret = 0;

	*out = NULL;
	if (!fs->remote)
		return 0;
	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->fs = fs;
	c->var = var;
	c->cached = cached;
	c->imported = -1;
	pthread_mutex_init(&c->lock, NULL);
	pthread_cond_init(&c->cond, NULL);
	qf_remote_lease_init(fs->remote, var->vid, &c->rl);
	*out = c;
	for (;;) {
		if (qf_fs_stopping(fs))
			return -EINTR;
		lease_body(c, &body);
		if (produces_calibrated(fs)) {
			r = qf_lease_acquire(&c->rl.l, qf_now(), body.data);
		} else {
			/* look, never contend */
			memset(&c->rl.l.seen, 0, sizeof(c->rl.l.seen));
			r = c->rl.l.ops->observe(c->rl.l.arg, &c->rl.l.seen);
			r = r < 0 ? QF_LEASE_R_DOWN :
			    c->rl.l.seen.manifest ? QF_LEASE_R_DONE :
			    QF_LEASE_R_WAIT;
			/* a producer that died: no one makes it now */
			if (!qf_lease_alive(&c->rl.l.seen, c->rl.l.ttl))
				c->rl.l.seen.exists = false;
		}
		if (r == QF_LEASE_R_DONE) {
			/* imported; or a copy that does not verify (logged)
			 * or a bucket gone: what the cache lacks is produced
			 * here, whatever the role, as a read never fails for
			 * the bucket's sake */
			take_manifest(c);
			ret = 0;
			break;
		}
		if (r == QF_LEASE_R_DOWN) {
			ret = 0;
			break;
		}
		if (r == QF_LEASE_R_HELD) {
			ret = start_renewer(c);
			break;
		}
		if (!c->rl.l.seen.exists) {
			qf_err("%s: not in the remote tier and no machine is "
			       "producing it; this node (remote_role=%s) "
			       "does not produce calibrated variants: run "
			       "`quantfs warm` on a producer", var->label,
			       qf_remote_role(fs->remote) == QF_REMOTE_READ ?
			       "read" : "cheap");
			ret = -EIO;
			break;
		}
		if (!said)
			qf_info("%s: %s produces it; following its progress",
				var->label, c->rl.l.seen.info.holder);
		said = true;
		show_holder(var, &c->rl.l.seen);
		import_ckpt(c);
		if (cached(fs, var) == var->job->nlayers)
			break;	/* its last checkpoint is everything */
		sleep(1);
	}
	qf_buf_release(&body);
	return ret;
}

void qf_cluster_job_layer(struct qf_fs *fs, struct qf_cjob *c, int done)
{
	struct qf_buf body = QF_BUF_INIT;
	bool lost;

	if (!c || !c->held)
		return;
	pthread_mutex_lock(&c->lock);
	lost = c->lost;
	pthread_mutex_unlock(&c->lock);
	if (lost || publish(fs, c->var->vid, done, c->var->label) == -EACCES)
		return;
	lease_body(c, &body);
	pthread_mutex_lock(&c->lock);
	qf_lease_renew(&c->rl.l, qf_now(), body.data, true);
	pthread_mutex_unlock(&c->lock);
	qf_buf_release(&body);
}

void qf_cluster_job_end(struct qf_fs *fs, struct qf_cjob *c, int ret)
{
	bool lost;

	if (!c)
		return;
	pthread_mutex_lock(&c->lock);
	c->stop = true;
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->lock);
	if (c->renewing)
		pthread_join(c->renewer, NULL);
	lost = c->lost;
	if (c->held && !ret && !lost)
		publish(fs, c->var->vid, -1, c->var->label);
	/* published or failed: either way, no one need wait for us */
	if (c->held && !lost)
		qf_remote_lease_drop(&c->rl);
	pthread_mutex_lock(&c->var->lock);
	c->var->job->remote_holder[0] = 0;
	pthread_mutex_unlock(&c->var->lock);
	if (c->held)
		pub_count(fs, -1);
	pthread_mutex_destroy(&c->lock);
	pthread_cond_destroy(&c->cond);
	free(c);
}
