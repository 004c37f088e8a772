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

/* ------------------------------------------------------------------ */
/* The bucket's view, for `quantfs cache ls|rm|gc --remote`            */
/* (remote_admin.c).  Administration, not serving: no back-off        */
/* shortcuts, every listing taken whole.                              */

/*
 * Publishers write a value again when the copy they found is older than
 * this before a manifest names it (remote_pub.c), so gc, which deletes
 * values no manifest names once older than its grace, never deletes one
 * a publisher is about to name as long as the grace is at least twice
 * this.
 */
#define QF_REMOTE_REFRESH_S (6 * 3600.0)
#define QF_REMOTE_GC_GRACE_MIN (2 * QF_REMOTE_REFRESH_S)
#define QF_REMOTE_GC_GRACE_DEFAULT 86400.0

enum qf_remote_state {
	QF_RSTATE_PUBLISHED,		/* manifests/<id> is there */
	QF_RSTATE_UNREADABLE,		/* it is there but does not parse */
	QF_RSTATE_PRODUCING,		/* no manifest, a live lease */
	QF_RSTATE_EXPIRED,		/* no manifest, a lease past its ttl */
	QF_RSTATE_ABANDONED,		/* checkpoints, no manifest, no lease */
};

/* One id the bucket knows of: a manifest, checkpoints or a lease. */
struct qf_remote_entry {
	uint8_t id[QF_CACHE_VID];
	char hex[2 * QF_CACHE_VID + 1];
	enum qf_remote_state state;
	const struct qf_rmanifest *m;	/* PUBLISHED: borrowed, valid until
					 * qf_remote_close(); else NULL */
	const char *label;		/* m's, else the latest checkpoint's,
					 * else ""; borrowed from the view */
	char *model, *variant, *calib;	/* m's record; NULL when none */
	uint64_t bytes;			/* sum of m's value lengths */
	size_t ckpt0, nckpt;		/* its checkpoints: view indices */
	int ckpt_step;			/* the latest's layers done, -1 */
	double ckpt_age;		/* seconds since the newest was
					 * written (server clock) */
	bool leased;			/* leases/<id> is there */
	double lease_age;		/* seconds since its last renewal
					 * (server clock) */
	struct qf_lease_info lease;	/* its body (state PRODUCING or
					 * EXPIRED only) */
};

/* Totals of values/ and probe/. */
struct qf_remote_totals {
	uint64_t values, value_bytes;	/* objects under values/ */
	uint64_t garbage, garbage_bytes;	/* named by no manifest and
						 * no checkpoint */
	uint64_t foreign;		/* keys under values/ that are not a
					 * SHA-256: never touched */
	uint64_t probes;		/* objects under probe/ */
	uint64_t unreadable;		/* manifests and checkpoints that do
					 * not parse */
};

struct qf_remote_lists;
struct qf_remote_view {
	struct qf_remote_entry *e;	/* sorted by id */
	size_t n;
	struct qf_remote_totals t;
	double date;			/* the server's clock at listing */
	struct qf_remote_lists *lists;	/* private: the listings */
};

/*
 * List manifests/, ckpt/, leases/, values/ and probe/ and read every
 * manifest, checkpoint and (ids without a manifest) lease.  A manifest
 * or checkpoint that does not parse is counted, not fatal.  Returns 0,
 * -EAGAIN (no answer), -EACCES (refused), -ENOENT (no such bucket), -EIO,
 * -ENOMEM; the reason is logged.  Free with qf_remote_view_free (also
 * after a failure).
 */
int qf_remote_view(struct qf_remote *r, struct qf_remote_view *out);
void qf_remote_view_free(struct qf_remote_view *v);

/* What qf_remote_rm deleted. */
struct qf_remote_rm_result {
	bool manifest;
	size_t ckpts;
	bool lease;
};
/*
 * Delete entry e's manifest, then its checkpoints, then its lease;
 * values stay for gc (content-addressed: other ids may name them).
 * -EBUSY when it is in production (no manifest, a live lease): nothing
 * deleted.  Else 0, -EAGAIN, -EACCES or -EIO (a delete failed: *out says
 * how far it got).
 */
int qf_remote_rm(struct qf_remote *r, const struct qf_remote_view *v,
		 const struct qf_remote_entry *e,
		 struct qf_remote_rm_result *out);

struct qf_remote_gc_result {
	size_t ckpt_superseded;		/* of published ids */
	size_t ckpt_abandoned;		/* no manifest, no live lease, older
					 * than the grace */
	uint64_t ckpt_bytes;
	size_t leases;			/* of published ids, or abandoned */
	size_t values_kept;		/* named by a manifest or a kept
					 * checkpoint */
	uint64_t values_kept_bytes;
	size_t values_young;		/* named by none, younger than the
					 * grace: kept */
	uint64_t values_young_bytes;
	size_t values_deleted;		/* named by none, older */
	uint64_t values_deleted_bytes;
	size_t probes;			/* probe objects older than grace */
	size_t failed;			/* deletes that did not go through */
	bool swept;			/* false: values not swept, some
					 * manifest or kept checkpoint could
					 * not be read */
};
/*
 * Mark and sweep over view v (taken just before): checkpoints of
 * published ids and abandoned ones (neither a manifest nor a live lease,
 * the latest older than grace) go first with their leases, then values
 * that no manifest and no kept checkpoint names and that are older than
 * grace seconds (server clock), then probe objects older than grace.
 * A grace of 0 spares nothing.  dry_run: deletes nothing, counts what
 * would go.  Returns 0 (out->swept false when a manifest or a kept
 * checkpoint does not parse: no value deleted, logged), or the first
 * delete's error (-EAGAIN, -EACCES, -EIO; nothing more deleted) with
 * *out counting what went; -ENOMEM.
 */
int qf_remote_gc(struct qf_remote *r, const struct qf_remote_view *v,
		 double grace, bool dry_run, struct qf_remote_gc_result *out);

#endif /* QF_REMOTE_H */
