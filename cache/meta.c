/*
 * meta.c - small values a machine keeps about its own files, in the
 * cache's "m" database: today the SHA-256 of each source weight file,
 * keyed by what identifies its bytes on this machine, so that a model's
 * content fingerprint is hashed once per file and not at every mount.
 *
 * Nothing here is evicted with variants, and nothing is checksummed: a
 * damaged value gives a wrong fingerprint, which names variants no one
 * else has (they are produced again from the source), never another
 * model's bytes.
 */
#include <string.h>

#include "cache_i.h"

#define META_KEY_MAX 511		/* LMDB's default max key size */

static bool key_ok(const char *key)
{
	size_t n = key ? strlen(key) : 0;

	return n > 0 && n <= META_KEY_MAX;
}

int qf_cache_meta_get(struct qf_cache *c, const char *key, void *val,
		      size_t len)
{
	struct qf_cache_txn *t;
	MDB_val k, v;
	int rc, ret;

	if (!key_ok(key))
		return -EINVAL;
	ret = qf_cache_read_begin(c, &t);
	if (ret < 0)
		return ret;
	k.mv_data = (void *)key;
	k.mv_size = strlen(key);
	rc = mdb_get(t->txn, c->meta, &k, &v);
	if (rc == MDB_NOTFOUND) {
		ret = -ENOENT;
	} else if (rc) {
		qf_err("cache: meta: %s", mdb_strerror(rc));
		ret = QF_ECACHE;
	} else if (v.mv_size != len) {
		ret = QF_ECORRUPT;
	} else {
		memcpy(val, v.mv_data, len);	/* before the txn ends */
		ret = 0;
	}
	qf_cache_read_end(t);
	return ret;
}

struct meta_put {
	MDB_val k;
	MDB_val v;
};

static int put_txn(struct qf_cache *c, MDB_txn *txn, void *arg)
{
	struct meta_put *p = arg;

	return mdb_put(txn, c->meta, &p->k, &p->v, 0);
}

int qf_cache_meta_put(struct qf_cache *c, const char *key, const void *val,
		      size_t len)
{
	struct meta_put p;

	if (!key_ok(key))
		return -EINVAL;
	p.k.mv_data = (void *)key;
	p.k.mv_size = strlen(key);
	p.v.mv_data = (void *)val;
	p.v.mv_size = len;
	return qf_cache_write(c, strlen(key) + len, put_txn, &p);
}
