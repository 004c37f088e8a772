/*
 * remote.h - the remote tier: an S3-compatible bucket below the local
 * cache, shared by every machine of a fleet.
 *
 * What the bucket holds, under s3://BUCKET/PREFIX/v1/:
 *   values/<sha256>       a value's bytes, named by their SHA-256: written
 *                         by anyone, any number of times, the same bytes
 *   manifests/<id>        a published id (a variant, a GGUF view, a
 *                         calibration set): its values by name with their
 *                         SHA-256 and length, and its cache record;
 *                         created once (If-None-Match), after its values
 *   ckpt/<id>/<NNNNN>     a calibrated job's checkpoint after NNNNN
 *                         layers, the same format, created once
 *   leases/<id>           who produces id now, and how far it got
 *                         (lease.h), created once and renewed by
 *                         compare-and-swap
 * A reader trusts nothing it fetched until its SHA-256 matches the
 * manifest's; a value that does not is never served (the caller produces
 * it locally).  Who may write the bucket decides what every node serves:
 * inference nodes get read-only credentials (role read).
 *
 * The bucket unreachable or answering 5xx: every call returns -EAGAIN at
 * once for a back-off period (5 s doubling to 5 min), said once in the
 * log, and the caller serves from local production.
 */
#ifndef QF_REMOTE_H
#define QF_REMOTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache.h"
#include "common.h"
#include "lease.h"

struct qf_remote;

enum qf_remote_role {
	QF_REMOTE_PRODUCE,		/* makes and publishes everything */
	QF_REMOTE_CHEAP,		/* makes and publishes uncalibrated
					 * variants; calibrated ones only
					 * from the bucket */
	QF_REMOTE_READ,			/* GET and HEAD only: never writes,
					 * never takes a lease */
};

struct qf_remote_cfg {
	const char *url;		/* s3://BUCKET[/PREFIX] */
	const char *endpoint;		/* NULL: $AWS_ENDPOINT_URL_S3,
					 * $AWS_ENDPOINT_URL, else AWS's */
	const char *region;		/* NULL: $AWS_REGION, ... */
	const char *creds_file;		/* NULL: env, then ~/.aws/credentials */
	enum qf_remote_role role;
	double lease_s;			/* 0: 60 */
	bool probe;			/* test conditional writes at open */
};

/* "s3://b/p" into bucket and prefix ("" or "p/"); 0 or -EINVAL. */
int qf_remote_parse_url(const char *url, char **bucket, char **prefix);

/*
 * Credentials, the client, and (writers, cfg->probe) a probe of the
 * bucket's conditional writes: a server that ignores them cannot keep
 * single flight, and the tier then acts as role read (said in the log).
 * An unreachable bucket is no error here (said once; retried later).
 * Returns 0, -EINVAL (a bad URL), -ENOENT / -EPERM (credentials),
 * -ENOMEM.
 */
int qf_remote_open(const struct qf_remote_cfg *cfg, struct qf_remote **out);
void qf_remote_close(struct qf_remote *r);
/* What the tier does: the role in effect (after the probe). */
enum qf_remote_role qf_remote_role(const struct qf_remote *r);
const char *qf_remote_describe(const struct qf_remote *r);
/* This node's name in leases and manifests: "host pid N". */
const char *qf_remote_host(const struct qf_remote *r);

/* A manifest (or checkpoint): values sorted by name. */
struct qf_rvalue {
	char *name;
	uint8_t sha[32];
	uint64_t len;
};
struct qf_rmanifest {
	uint8_t id[QF_CACHE_VID];
	char *label;			/* "org/model/variant", for people */
	char *host;			/* who published it */
	char *record;			/* the id's cache record (JSON) or NULL */
	double created;
	int step;			/* checkpoints: layers done; else -1 */
	struct qf_rvalue *v;
	size_t n;
};
/* Bounded parser (16 MiB, 1M values, names up to 1024 bytes, 64-hex
 * sums, no duplicates): 0, QF_EFORMAT, -ENOMEM.  Free with _free. */
int qf_rmanifest_parse(const char *text, size_t len,
		       struct qf_rmanifest *out);
int qf_rmanifest_print(const struct qf_rmanifest *m, struct qf_buf *out);
void qf_rmanifest_free(struct qf_rmanifest *m);
const struct qf_rvalue *qf_rmanifest_find(const struct qf_rmanifest *m,
					  const char *name);

/*
 * id's manifest: borrowed, immutable, valid until qf_remote_close().
 * Absence is remembered for a few seconds.  Returns 0, -ENOENT,
 * -EAGAIN (unreachable), QF_EFORMAT (a manifest that does not parse or
 * names another id: logged, treated as absent by callers).
 */
int qf_remote_manifest(struct qf_remote *r, const uint8_t *id,
		       const struct qf_rmanifest **out);
/* The latest checkpoint of id (caller frees): 0, -ENOENT, -EAGAIN,
 * QF_EFORMAT. */
int qf_remote_checkpoint(struct qf_remote *r, const uint8_t *id,
			 struct qf_rmanifest *out);
/*
 * Value v's bytes into *data (malloc'd, caller frees), SHA-256 and length
 * checked; a mismatch is logged (label names what it was for) and
 * fetched once more.  Returns 0, -ENOENT, -EAGAIN, QF_ECORRUPT, -ENOMEM.
 */
int qf_remote_value(struct qf_remote *r, const struct qf_rvalue *v,
		    const char *label, void **data);
/*
 * Copy the values of m that the local cache lacks (names: only those,
 * NULL: all) into it, verified, in transactions of bounded size.  *got
 * (may be NULL) counts the values copied.  Returns 0, -ENOENT (a value
 * is missing in the bucket), -EAGAIN, QF_ECORRUPT, -ENOSPC, QF_ECACHE.
 */
int qf_remote_import(struct qf_remote *r, struct qf_cache *c,
		     const struct qf_rmanifest *m, const char *const *names,
		     size_t nnames, size_t *got);

enum {
	QF_PUBLISH_MANIFEST = -1,	/* step: the final manifest */
};
/*
 * Publish every value of id in the local cache: the values the bucket
 * lacks, then the manifest (step QF_PUBLISH_MANIFEST) or checkpoint
 * step, created once.  record: the id's cache record or NULL.  Returns
 * 0, -EEXIST (that manifest or checkpoint was there already), -EAGAIN,
 * -EACCES (not a writer), QF_ECACHE, -ENOMEM.
 */
int qf_remote_publish(struct qf_remote *r, struct qf_cache *c,
		      const uint8_t *id, int step, const char *label,
		      const char *record);

/* Leases (lease.h): ops that reach leases/<id> and manifests/<id>. */
struct qf_remote_lease {
	struct qf_remote *r;
	uint8_t id[QF_CACHE_VID];
	struct qf_lease l;
};
void qf_remote_lease_init(struct qf_remote *r, const uint8_t *id,
			  struct qf_remote_lease *rl);
/* A lease body: this node, a fresh nonce, the ttl and the progress. */
int qf_remote_lease_body(struct qf_remote *r, const char *label, int done,
			 int total, double eta, double started,
			 struct qf_buf *out);
/* Delete the lease (after the manifest is published). */
void qf_remote_lease_drop(struct qf_remote_lease *rl);

/* Requests and bytes so far, for status and benchmarks. */
struct qf_remote_stats {
	uint64_t get, head, put, list, del;
	uint64_t bytes_in, bytes_out;
	uint64_t imported;		/* values copied into the cache */
	uint64_t published;		/* values uploaded */
	uint64_t bad;			/* values that failed verification */
	bool down;			/* in a back-off period now */
};
void qf_remote_stats(struct qf_remote *r, struct qf_remote_stats *out);

#endif /* QF_REMOTE_H */
