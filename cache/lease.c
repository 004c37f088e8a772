/*
 * lease.c - the lease state machine (lease.h).  No I/O of its own: the
 * bucket is reached through l->ops, the time comes from the caller.
 *
 * Why the age comes from the server: a holder renews by writing the
 * object, which sets its Last-Modified on the server's clock; a watcher
 * reads the server's Date in the same answer.  Both are the server's,
 * so a watcher whose own clock is minutes off still sees the true age.
 * The holder's promise (ttl) travels in the body, so watchers with other
 * settings agree on when it expires.  A holder renews every ttl/3 and
 * gives up its claim when no renewal went through for a whole ttl: by
 * then a watcher may have taken over, so it must stop publishing.
 */
#include <errno.h>
#include <string.h>

#include "lease.h"

void qf_lease_init(struct qf_lease *l, const struct qf_lease_ops *ops,
		   void *arg, double ttl)
{
	memset(l, 0, sizeof(*l));
	l->ops = ops;
	l->arg = arg;
	l->ttl = ttl > 0 ? ttl : 60;
	l->state = QF_LEASE_WATCH;
}

static int won(struct qf_lease *l, double now, const char *etag,
	       bool took_over)
{
	l->state = QF_LEASE_HELD;
	memcpy(l->etag, etag, QF_ETAG_MAX);
	l->etag[QF_ETAG_MAX - 1] = 0;
	l->ok_at = now;
	l->renew_at = now + l->ttl / 3;
	l->took_over = took_over;
	return QF_LEASE_R_HELD;
}

/* A holder that promised nothing sensible is held to ours. */
double qf_lease_ttl(const struct qf_lease_obs *o, double ttl)
{
	return o->info.ttl > 0 && o->info.ttl < 86400 ? o->info.ttl : ttl;
}

bool qf_lease_alive(const struct qf_lease_obs *o, double ttl)
{
	return o->exists && o->age <= qf_lease_ttl(o, ttl);
}

int qf_lease_acquire(struct qf_lease *l, double now, const char *body)
{
	struct qf_lease_obs o;
	char etag[QF_ETAG_MAX];
	int ret;

	if (l->state == QF_LEASE_HELD)
		return QF_LEASE_R_HELD;
	if (l->state == QF_LEASE_DONE)
		return QF_LEASE_R_DONE;
	memset(&o, 0, sizeof(o));
	ret = l->ops->observe(l->arg, &o);
	if (ret < 0)
		return QF_LEASE_R_DOWN;
	l->seen = o;
	if (o.manifest) {
		l->state = QF_LEASE_DONE;
		return QF_LEASE_R_DONE;
	}
	l->state = QF_LEASE_WATCH;
	if (qf_lease_alive(&o, l->ttl))
		return QF_LEASE_R_WAIT;
	/* free, or its holder stopped renewing: exactly one contender's
	 * conditional write goes through */
	ret = l->ops->write(l->arg, o.exists ? o.etag : NULL, body, etag);
	if (ret == 0)
		return won(l, now, etag, o.exists);
	return ret == -EEXIST ? QF_LEASE_R_WAIT : QF_LEASE_R_DOWN;
}

int qf_lease_renew(struct qf_lease *l, double now, const char *body,
		   bool force)
{
	char etag[QF_ETAG_MAX];
	int ret;

	if (l->state != QF_LEASE_HELD)
		return QF_LEASE_R_LOST;
	if (!force && now < l->renew_at)
		return QF_LEASE_R_HELD;
	ret = l->ops->write(l->arg, l->etag, body, etag);
	if (ret == 0) {
		memcpy(l->etag, etag, QF_ETAG_MAX);
		l->ok_at = now;
		l->renew_at = now + l->ttl / 3;
		return QF_LEASE_R_HELD;
	}
	if (ret == -EEXIST || now - l->ok_at >= l->ttl) {
		l->state = QF_LEASE_LOST;
		return QF_LEASE_R_LOST;
	}
	/* no answer: try again soon, still ours for now */
	l->renew_at = now + 1;
	return QF_LEASE_R_HELD;
}
