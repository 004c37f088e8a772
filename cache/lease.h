/*
 * lease.h - one producer per variant across machines: a lease object in
 * the bucket, created once (If-None-Match: *), renewed and taken over by
 * compare-and-swap (If-Match on its ETag), its age read off the server's
 * own clock (the Date of an answer minus the object's Last-Modified), so
 * machines whose clocks disagree still agree on who holds it.
 *
 * This file is the state machine only: what to do next given what was
 * observed.  The I/O comes through qf_lease_ops (remote.c gives the
 * bucket's; tests/unit/test_lease.c a fake bucket and a fake clock), so
 * the rules are tested without a server.
 *
 *   WATCH --(no lease)--> create --won--> HELD --renew ok--> HELD
 *     |  <--------------------lost (412)--'   `--412 or no answer for a
 *     |                                         whole ttl--> LOST
 *     |--(lease, age <= its ttl)--> wait (follow its progress)
 *     |--(lease, age >  its ttl)--> take over (If-Match) --won--> HELD
 *     `--(manifest there)--> DONE
 */
#ifndef QF_LEASE_H
#define QF_LEASE_H

#include <stdbool.h>
#include <stddef.h>

#define QF_ETAG_MAX 96

/* What a lease's body says (remote.c writes and parses it). */
struct qf_lease_info {
	char holder[128];		/* "host pid N" */
	double ttl;			/* seconds the holder promised */
	int done;			/* layers (or steps) done, -1 unknown */
	int total;
	double eta;			/* seconds, -1 unknown */
	double started;			/* Unix seconds (holder's clock) */
};

/* One look at the bucket. */
struct qf_lease_obs {
	bool manifest;			/* the variant is published */
	bool exists;			/* a lease object is there */
	char etag[QF_ETAG_MAX];
	double age;			/* server Date - Last-Modified */
	struct qf_lease_info info;	/* its body, when exists */
};

struct qf_lease_ops {
	/* 0 and *obs, or -errno when the bucket did not answer. */
	int (*observe)(void *arg, struct qf_lease_obs *obs);
	/* Write body: create when if_match is NULL, else replace the
	 * object whose ETag is if_match.  0 (written, *etag its new
	 * ETag), -EEXIST (the condition failed: someone else won), or
	 * -errno (no answer). */
	int (*write)(void *arg, const char *if_match, const char *body,
		     char etag[QF_ETAG_MAX]);
};

enum qf_lease_state {
	QF_LEASE_WATCH,			/* not ours: observe, wait, contend */
	QF_LEASE_HELD,			/* ours: produce, renew */
	QF_LEASE_LOST,			/* was ours, someone took it over */
	QF_LEASE_DONE,			/* the manifest is there */
};

struct qf_lease {
	const struct qf_lease_ops *ops;
	void *arg;
	double ttl;			/* ours, when we hold it */
	enum qf_lease_state state;
	char etag[QF_ETAG_MAX];		/* HELD: our object's ETag */
	double renew_at;		/* HELD: next renewal (local clock) */
	double ok_at;			/* HELD: last confirmed (local clock) */
	struct qf_lease_obs seen;	/* WATCH: the last observation */
	bool took_over;			/* HELD after an expired holder */
};

/* Results of the steps below. */
enum {
	QF_LEASE_R_HELD,		/* produce (renew with _renew) */
	QF_LEASE_R_WAIT,		/* another holder is alive: l->seen */
	QF_LEASE_R_DONE,		/* fetch the manifest */
	QF_LEASE_R_DOWN,		/* the bucket did not answer */
	QF_LEASE_R_LOST,		/* HELD no more */
};

void qf_lease_init(struct qf_lease *l, const struct qf_lease_ops *ops,
		   void *arg, double ttl);
/* The ttl o's holder promised (ours, ttl, when it promised nothing
 * sensible), and whether its lease is still alive by it. */
double qf_lease_ttl(const struct qf_lease_obs *o, double ttl);
bool qf_lease_alive(const struct qf_lease_obs *o, double ttl);
/*
 * WATCH: observe once and contend when free or expired.  body is what
 * a won lease holds.  Returns a QF_LEASE_R_* value.
 */
int qf_lease_acquire(struct qf_lease *l, double now, const char *body);
/*
 * HELD: renew when due (every ttl/3) or when force (the progress in
 * body changed).  R_HELD, or R_LOST when someone else took it over or no
 * renewal went through for a whole ttl (then another machine may
 * already have).
 */
int qf_lease_renew(struct qf_lease *l, double now, const char *body,
		   bool force);

#endif /* QF_LEASE_H */
