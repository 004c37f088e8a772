/*
 * test_lease.c - the lease state machine (cache/lease.c) against a fake
 * bucket and a fake clock: one producer at a time, take-over only after
 * the holder's own ttl has passed on the server's clock (whatever the
 * machines' clocks say), exactly one of two contenders, a zombie holder
 * loses, a bucket that does not answer.
 */
#include <errno.h>
#include <stdio.h>

#include "check.h"
#include "lease.h"

/* One lease object on a server whose clock is server_t. */
struct bucket {
	double server_t;
	bool exists, manifest, down;
	unsigned gen;			/* ETag counter */
	double modified;
	char body[64];
	int writes;
};

/* A machine: its view of the bucket, its clock skew and its name. */
struct machine {
	struct bucket *b;
	const char *name;
	double skew;			/* local clock - server clock */
	double promise;			/* the ttl its bodies carry */
	struct qf_lease l;
};

static int observe(void *arg, struct qf_lease_obs *o)
{
	struct machine *m = arg;
	struct bucket *b = m->b;
	double ttl;

	if (b->down)
		return -ETIMEDOUT;
	o->manifest = b->manifest;
	o->exists = b->exists;
	if (b->exists) {
		snprintf(o->etag, sizeof(o->etag), "e%u", b->gen);
		/* what an HTTP answer gives: whole seconds */
		o->age = (double)(long)b->server_t - (double)(long)b->modified;
		snprintf(o->info.holder, sizeof(o->info.holder), "%s",
			 b->body);
		sscanf(b->body, "%*s %lf", &ttl);
		o->info.ttl = ttl;
	}
	return 0;
}

static int write_lease(void *arg, const char *if_match, const char *body,
		       char etag[QF_ETAG_MAX])
{
	struct machine *m = arg;
	struct bucket *b = m->b;
	char cur[32];

	if (b->down)
		return -ETIMEDOUT;
	snprintf(cur, sizeof(cur), "e%u", b->gen);
	if (!if_match ? b->exists : !b->exists || strcmp(if_match, cur))
		return -EEXIST;
	b->exists = true;
	b->gen++;
	b->modified = b->server_t;
	b->writes++;
	snprintf(b->body, sizeof(b->body), "%s", body);
	snprintf(etag, QF_ETAG_MAX, "e%u", b->gen);
	return 0;
}

static const struct qf_lease_ops ops = { observe, write_lease };

static void machine(struct machine *m, struct bucket *b, const char *name,
		    double skew, double ttl)
{
	m->b = b;
	m->name = name;
	m->skew = skew;
	m->promise = ttl;
	qf_lease_init(&m->l, &ops, m, ttl);
}

static double now_of(const struct machine *m)
{
	return m->b->server_t + m->skew;
}

static const char *body_of(const struct machine *m)
{
	static char s[64];

	snprintf(s, sizeof(s), "%s %g", m->name, m->promise);
	return s;
}

static int acquire(struct machine *m)
{
	return qf_lease_acquire(&m->l, now_of(m), body_of(m));
}

static int renew(struct machine *m, bool force)
{
	return qf_lease_renew(&m->l, now_of(m), body_of(m), force);
}

/* A renews on time for 10 ttl; B, 1000 s ahead, polls every second. */
static void test_holder_keeps_it(void)
{
	struct bucket b = { .server_t = 5000 };
	struct machine a, w;
	int i, waits = 0;

	machine(&a, &b, "A", 0, 6);
	machine(&w, &b, "B", 1000, 60);
	CHECK(acquire(&a), ==, QF_LEASE_R_HELD);
	CHECK(a.l.took_over, ==, 0);
	for (i = 0; i < 600; i++) {
		b.server_t += 0.1;
		CHECK(renew(&a, false), ==, QF_LEASE_R_HELD);
		if (i % 10 == 0)
			waits += acquire(&w) == QF_LEASE_R_WAIT;
	}
	CHECK(waits, ==, 60);
	CHECK_STR(w.l.seen.info.holder, "A 6");
	/* renewed every ttl/3 = 2 s over 60 s: about 30 writes */
	CHECK(b.writes, >=, 28);
	CHECK(b.writes, <=, 32);
	/* a forced renewal (new progress) writes at once */
	i = b.writes;
	CHECK(renew(&a, true), ==, QF_LEASE_R_HELD);
	CHECK(b.writes, ==, i + 1);
}

/* A dies: B takes over after A's promise (6 s), not its own (60 s), and
 * not before; A comes back and finds it lost. */
static void test_take_over(void)
{
	struct bucket b = { .server_t = 100 };
	struct machine a, w;
	double died, took = -1;
	int i;

	machine(&a, &b, "A", -3600, 6);
	machine(&w, &b, "B", 7200, 60);
	CHECK(acquire(&a), ==, QF_LEASE_R_HELD);
	b.server_t += 1.5;
	CHECK(renew(&a, true), ==, QF_LEASE_R_HELD);
	died = b.server_t;
	for (i = 0; i < 300 && took < 0; i++) {
		b.server_t += 0.25;
		if (acquire(&w) == QF_LEASE_R_HELD)
			took = b.server_t;
	}
	CHECK(took > died + 6, ==, 1);
	CHECK(took <= died + 8, ==, 1);
	CHECK(w.l.took_over, ==, 1);
	CHECK_STR(b.body, "B 60");
	/* the zombie's renewal fails its condition: it stops */
	CHECK(renew(&a, true), ==, QF_LEASE_R_LOST);
	CHECK(a.l.state, ==, QF_LEASE_LOST);
	CHECK(renew(&w, true), ==, QF_LEASE_R_HELD);
}

/* Two watchers see the same expired lease: one conditional write wins. */
static void test_one_of_two(void)
{
	struct bucket b = { .server_t = 0, .exists = true, .gen = 7,
			    .modified = 0 };
	struct machine x, y;
	struct qf_lease_obs ox, oy;
	char e1[QF_ETAG_MAX], e2[QF_ETAG_MAX];

	snprintf(b.body, sizeof(b.body), "dead 5");
	b.server_t = 30;
	machine(&x, &b, "X", 0, 5);
	machine(&y, &b, "Y", 0, 5);
	/* both observe before either writes */
	CHECK(observe(&x, &ox), ==, 0);
	CHECK(observe(&y, &oy), ==, 0);
	CHECK_STR(ox.etag, oy.etag);
	CHECK(write_lease(&x, ox.etag, "X 5", e1), ==, 0);
	CHECK(write_lease(&y, oy.etag, "Y 5", e2), ==, -EEXIST);
	/* and through the state machine: whoever comes second waits */
	b.server_t += 100;
	CHECK(acquire(&y), ==, QF_LEASE_R_HELD);
	CHECK(acquire(&x), ==, QF_LEASE_R_WAIT);
	CHECK_STR(x.l.seen.info.holder, "Y 5");
}

/* A published manifest ends every contention; a silent bucket is DOWN,
 * and a holder cut off for a whole ttl gives the lease up. */
static void test_done_and_down(void)
{
	struct bucket b = { .server_t = 10 };
	struct machine a, w;
	int i, r = QF_LEASE_R_HELD;

	machine(&a, &b, "A", 0, 9);
	machine(&w, &b, "B", 0, 9);
	CHECK(acquire(&a), ==, QF_LEASE_R_HELD);
	b.manifest = true;
	CHECK(acquire(&w), ==, QF_LEASE_R_DONE);
	CHECK(w.l.state, ==, QF_LEASE_DONE);
	CHECK(acquire(&w), ==, QF_LEASE_R_DONE);

	b.down = true;
	machine(&w, &b, "C", 0, 9);
	CHECK(acquire(&w), ==, QF_LEASE_R_DOWN);
	/* a short outage: still held */
	b.server_t += 4;
	CHECK(renew(&a, false), ==, QF_LEASE_R_HELD);
	b.down = false;
	b.server_t += 1.5;
	CHECK(renew(&a, false), ==, QF_LEASE_R_HELD);
	/* a long one: lost after a whole ttl without a renewal */
	b.down = true;
	for (i = 0; i < 40 && r == QF_LEASE_R_HELD; i++) {
		b.server_t += 0.5;
		r = renew(&a, false);
	}
	CHECK(r, ==, QF_LEASE_R_LOST);
	CHECK(i, >=, 17);
	CHECK(i, <=, 20);
}

int main(void)
{
	test_holder_keeps_it();
	test_take_over();
	test_one_of_two();
	test_done_and_down();
	return qf_check_exit();
}
