/*
 * admin.c - what is in the cache, and eviction: `quantfs cache ls/du/rm/gc`
 * and the mount option cache_max.
 *
 * A variant is listed from its record ("v") and sized from its values
 * ("t") and files (its read files, and temporary ones); values whose id
 * has no record (calibration token sets, a variant whose first group is
 * still being written) are listed as such and never evicted by gc.  Eviction is least recently accessed first and skips any
 * variant another process has locked: a mount with one of its files open,
 * or a producer (qf_cache_evict), so a reader in progress never loses its
 * bytes.
 */
#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "cache_i.h"

struct lister {
	struct qf_cache_entry *e;
	size_t n;
	size_t cap;
	size_t nrec;			/* e[0..nrec) are records, sorted */
	int err;
};

static struct qf_cache_entry *add_entry(struct lister *l, const uint8_t *vid)
{
	struct qf_cache_entry *e;

	if (l->n == l->cap) {
		size_t cap = l->cap ? 2 * l->cap : 16;

		e = realloc(l->e, cap * sizeof(*e));
		if (!e) {
			l->err = -ENOMEM;
			return NULL;
		}
		l->e = e;
		l->cap = cap;
	}
	e = &l->e[l->n++];
	memset(e, 0, sizeof(*e));
	memcpy(e->vid, vid, QF_CACHE_VID);
	qf_hex(vid, QF_CACHE_VID, e->vid_hex);
	return e;
}

static char *str_of(cJSON *r, const char *key)
{
	const char *s = cJSON_GetStringValue(cJSON_GetObjectItem(r, key));

	return strdup(s ? s : "");
}

static int on_record(void *arg, const uint8_t *vid, const char *json,
		     size_t len)
{
	struct lister *l = arg;
	struct qf_cache_entry *e = add_entry(l, vid);
	cJSON *r;

	if (!e)
		return 1;
	r = cJSON_ParseWithLength(json, len);
	e->recorded = true;
	e->model = str_of(r, "model");
	e->variant = str_of(r, "variant");
	e->source = str_of(r, "source");
	e->calib = str_of(r, "calib");
	e->created = cJSON_GetNumberValue(cJSON_GetObjectItem(r, "created"));
	e->accessed = cJSON_GetNumberValue(cJSON_GetObjectItem(r,
							       "accessed"));
	if (e->accessed != e->accessed)		/* NaN: older record */
		e->accessed = e->created;
	cJSON_Delete(r);
	if (!e->model || !e->variant || !e->source || !e->calib)
		l->err = -ENOMEM;
	return l->err != 0;
}

static int cmp_vid(const void *a, const void *b)
{
	return memcmp(((const struct qf_cache_entry *)a)->vid,
		      ((const struct qf_cache_entry *)b)->vid, QF_CACHE_VID);
}

static int on_vid(void *arg, const uint8_t *vid, uint64_t bytes,
		  uint64_t count)
{
	struct lister *l = arg;
	struct qf_cache_entry key, *e;

	memcpy(key.vid, vid, QF_CACHE_VID);
	e = l->nrec ? bsearch(&key, l->e, l->nrec, sizeof(*e), cmp_vid) :
		      NULL;
	if (!e) {			/* no record: not a finished variant */
		e = add_entry(l, vid);
		if (!e)
			return 1;
	}
	e->bytes = bytes;
	e->values = count;
	return 0;
}

/* A file of <dir>/files, counted with its variant's entry. */
static int on_file(void *arg, const uint8_t *vid,
		   enum qf_cache_file_kind kind, uint64_t bytes)
{
	struct lister *l = arg;
	struct qf_cache_entry key, *e;

	memcpy(key.vid, vid, QF_CACHE_VID);
	e = l->n ? bsearch(&key, l->e, l->n, sizeof(*e), cmp_vid) : NULL;
	if (!e)
		return 0;	/* a variant without values: not listed */
	if (kind == QF_CACHE_FILE_READ)
		e->file_bytes += bytes;
	else
		e->tmp_bytes += bytes;
	return 0;
}

int qf_cache_list(struct qf_cache *c, struct qf_cache_entry **out,
		  size_t *n)
{
	struct lister l = { 0 };
	struct qf_cache_txn *txn;
	int ret;

	ret = qf_cache_read_begin(c, &txn);
	if (ret < 0)
		return ret;
	ret = qf_cache_each_record(txn, on_record, &l);
	if (!ret && !l.err) {
		if (l.n)	/* (qsort wants a base even for nothing) */
			qsort(l.e, l.n, sizeof(*l.e), cmp_vid);
		l.nrec = l.n;	/* ids without a record append after */
		ret = qf_cache_each_vid(txn, on_vid, &l);
	}
	qf_cache_read_end(txn);
	if (!ret)
		ret = l.err;
	if (!ret && l.n) {
		/* one walk of the files for all */
		qsort(l.e, l.n, sizeof(*l.e), cmp_vid);
		qf_files_each(qf_cache_dir(c), NULL, 0, on_file, &l);
	}
	if (ret < 0) {
		qf_cache_list_free(l.e, l.n);
		return ret;
	}
	*out = l.e;
	*n = l.n;
	return 0;
}

void qf_cache_list_free(struct qf_cache_entry *e, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++) {
		free(e[i].model);
		free(e[i].variant);
		free(e[i].source);
		free(e[i].calib);
	}
	free(e);
}

static int cmp_lru(const void *a, const void *b)
{
	const struct qf_cache_entry *x = a, *y = b;

	return x->accessed < y->accessed ? -1 : x->accessed > y->accessed;
}

int qf_cache_gc(struct qf_cache *c, uint64_t max_bytes,
		struct qf_cache_gc_result *res)
{
	struct qf_cache_entry *e;
	uint64_t total = 0;
	size_t n, i;
	int ret;

	memset(res, 0, sizeof(*res));
	ret = qf_cache_list(c, &e, &n);
	if (ret < 0)
		return ret;
	for (i = 0; i < n; i++)
		total += e[i].bytes + e[i].file_bytes + e[i].tmp_bytes;
	if (n)
		qsort(e, n, sizeof(*e), cmp_lru);
	for (i = 0; i < n && total > max_bytes; i++) {
		uint64_t freed = 0;

		if (!e[i].recorded)
			continue;
		ret = qf_cache_evict(c, e[i].vid, &freed);
		if (ret == -EBUSY) {
			res->busy++;
			continue;
		}
		if (ret < 0)
			break;
		qf_info("cache: evicted %s/%s (%.1f MB, last access %.0f s "
			"ago)", e[i].model, e[i].variant, e[i].bytes / 1e6,
			(double)time(NULL) - e[i].accessed);
		total -= freed < total ? freed : total;
		res->evicted++;
		res->freed += freed;
	}
	res->remaining = total;
	qf_cache_list_free(e, n);
	return ret == -EBUSY ? 0 : ret;
}

int qf_cache_space(struct qf_cache *c, bool full, struct qf_cache_space *out)
{
	struct qf_cache_files_stat fst;
	struct statvfs sv;
	int ret;

	memset(out, 0, sizeof(*out));
	if (statvfs(qf_cache_dir(c), &sv) < 0)
		return -errno;
	out->fs_bytes = (uint64_t)sv.f_blocks * sv.f_frsize;
	out->fs_avail = (uint64_t)sv.f_bavail * sv.f_frsize;
	out->fs_free = geteuid() == 0 ? (uint64_t)sv.f_bfree * sv.f_frsize :
					out->fs_avail;
	if (!full)
		return 0;
	ret = qf_cache_mdb_usage(c, &out->values, &out->mdb_free);
	if (!ret)
		ret = qf_cache_files(c, NULL, 0, &fst);
	if (!ret)
		out->files = fst.bytes[QF_CACHE_FILE_READ] +
			     fst.bytes[QF_CACHE_FILE_TMP] +
			     fst.bytes[QF_CACHE_FILE_STRAY];
	return ret;
}
