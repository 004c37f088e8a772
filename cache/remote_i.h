/*
 * remote_i.h - private to the remote tier's files: remote.c (requests,
 * back-off, manifests, values, import), remote_pub.c (open, probe,
 * publish, leases) and remote_admin.c (the bucket's view for `quantfs
 * cache --remote`).
 */
#ifndef QF_REMOTE_I_H
#define QF_REMOTE_I_H

#include <pthread.h>

#include "remote.h"
#include "s3.h"

/* A manifest fetched (kept: they never change), or when it was absent. */
struct qf_rmcache {
	uint8_t id[QF_CACHE_VID];
	struct qf_rmanifest *m;		/* NULL: absent at absent_t */
	double absent_t;
};

struct qf_remote {
	struct qf_s3 *s3;
	struct qf_s3_creds creds;
	char *bucket;
	char *prefix;			/* "" or "p/" */
	char desc[512];			/* "s3://b/p at URL" */
	char host[160];			/* "host pid N" */
	enum qf_remote_role role;	/* in effect */
	double lease_s;
	pthread_mutex_t lock;		/* everything below */
	double down_until;		/* back-off ends (qf_now) */
	double backoff;			/* seconds, 0: answering */
	bool down_said;
	bool probed;			/* conditional writes checked */
	struct qf_rmcache *mc;
	size_t nmc, capmc;
	struct qf_remote_stats st;
	uint64_t *known;		/* values the bucket holds (first 8
					 * bytes of their sum; 0 = empty), an
					 * open-addressing set */
	size_t nknown, capknown;
	double known_t0;		/* when the set began (qf_now) */
};

enum { QF_RQ_GET, QF_RQ_HEAD, QF_RQ_PUT, QF_RQ_DELETE };

/*
 * One request through the back-off: 0 when the bucket answered (status in
 * resp; caller frees resp->body), -EAGAIN (no answer now or during a
 * back-off), -EFBIG (a GET body over max).
 */
int qf_remote_request(struct qf_remote *r, int op, const char *key,
		      const void *data, size_t len, uint64_t max,
		      const struct qf_s3_cond *cond, struct qf_s3_resp *resp);
/* <prefix>v1/<kind>/<hex of id>[/<step, 5 digits>] */
void qf_remote_key(const struct qf_remote *r, const char *kind,
		   const uint8_t *id, size_t idlen, int step, char *out,
		   size_t cap);
/* qf_remote_manifest(), asking the bucket again when fresh (a known
 * manifest is never asked for again: they do not change). */
int qf_remote_manifest_at(struct qf_remote *r, const uint8_t *id, bool fresh,
			  const struct qf_rmanifest **out);
/* id was just published here: forget that its manifest was absent. */
void qf_remote_published(struct qf_remote *r, const uint8_t *id);

/*
 * GET and parse the manifest-format object at key (a manifest or a
 * checkpoint) for id; caller frees *m.  0, -ENOENT, -EAGAIN, -EACCES,
 * -EIO, QF_EFORMAT (does not parse, or names another id: logged).
 */
int qf_remote_fetch(struct qf_remote *r, const char *key, const uint8_t *id,
		    struct qf_rmanifest *m);

#endif /* QF_REMOTE_I_H */
