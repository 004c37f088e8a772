/*
 * gguf_read.c - read a GGUF file's header (metadata, tensor infos) and
 * decode its tensors, for files that may be malformed or hostile.
 *
 * Layout (ggml docs/gguf.md, ggml/src/gguf.cpp): "GGUF", u32 version,
 * u64 tensor count, u64 key/value count; each pair a string key, a u32
 * value type and the value (strings: u64 length + bytes; arrays: u32
 * element type, u64 count, elements, which may be arrays again); each
 * tensor info a string name, u32 dimension count, u64 dimensions
 * innermost first, u32 ggml type and a u64 offset relative to the data
 * start, which is the end of the infos aligned up to general.alignment.
 *
 * The header is read through a window with pread, never mapped whole: the
 * file may sit on a FUSE mount and be larger than memory.  Every count is
 * bounded by the bytes left in the file before anything is allocated for
 * it, every sum and product is checked before it can overflow, and arrays
 * are skipped element by element (each consuming bytes) with their depth
 * bounded, so a malformed file costs at most time and memory in
 * proportion to its size.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "gguf.h"

#define WIN_BYTES (1u << 20)		/* pread window over the header */
#define MIN_KV_BYTES 14			/* key len, 1 key byte, type, u8 */
#define MIN_INFO_BYTES 33		/* name len + 1, ndim, ne, type, off */
#define TYPE_IDS_GGML 64		/* ids below: ggml's, maybe not ours */

struct rd {
	struct qf_gguf_file *g;
	uint64_t pos;			/* next byte to read */
	uint8_t *win;			/* fd: bytes [win_off, +win_len) */
	uint64_t win_off;
	size_t win_len;
	const char *why;		/* the first problem found */
};

#define FAIL(r, code, msg)                                                   \
	do {                                                                 \
		(r)->why = (msg);                                            \
		return (code);                                               \
	} while (0)

/* pread exactly n bytes at off: 0, -errno or QF_ECORRUPT (shrank). */
static int pread_all(int fd, void *dst, size_t n, uint64_t off)
{
	uint8_t *d = dst;
	ssize_t k;

	while (n) {
		k = pread(fd, d, n, (off_t)off);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return -errno;
		if (k == 0)
			return QF_ECORRUPT;
		d += k;
		n -= (size_t)k;
		off += (uint64_t)k;
	}
	return 0;
}

static int fill(struct rd *r)
{
	uint64_t left = r->g->size - r->pos;
	size_t want = left < WIN_BYTES ? (size_t)left : WIN_BYTES;
	int ret;

	ret = pread_all(r->g->fd, r->win, want, r->pos);
	if (ret == QF_ECORRUPT)
		FAIL(r, ret, "the file shrank while it was read");
	if (ret)
		return ret;
	r->win_off = r->pos;
	r->win_len = want;
	return 0;
}

static int get(struct rd *r, void *dst, uint64_t n)
{
	uint8_t *d = dst;
	uint64_t at, k;
	int ret;

	if (n > r->g->size - r->pos)
		FAIL(r, QF_EFORMAT, "truncated");
	if (!n)
		return 0;
	if (r->g->mem) {
		memcpy(d, r->g->mem + r->pos, n);
		r->pos += n;
		return 0;
	}
	while (n) {
		if (r->pos < r->win_off || r->pos - r->win_off >= r->win_len) {
			ret = fill(r);
			if (ret)
				return ret;
		}
		at = r->pos - r->win_off;
		k = r->win_len - at < n ? r->win_len - at : n;
		memcpy(d, r->win + at, k);
		d += k;
		n -= k;
		r->pos += k;
	}
	return 0;
}

static int skip(struct rd *r, uint64_t n)
{
	if (n > r->g->size - r->pos)
		FAIL(r, QF_EFORMAT, "truncated");
	r->pos += n;
	return 0;
}

static uint64_t le(const uint8_t *b, int n)
{
	uint64_t v = 0;

	while (n--)
		v = v << 8 | b[n];
	return v;
}

static int get_u32(struct rd *r, uint32_t *v)
{
	uint8_t b[4];
	int ret = get(r, b, 4);

	*v = (uint32_t)le(b, 4);
	return ret;
}

static int get_u64(struct rd *r, uint64_t *v)
{
	uint8_t b[8];
	int ret = get(r, b, 8);

	*v = le(b, 8);
	return ret;
}

/* Bytes of a scalar value type; 0 for strings, arrays and unknown ids. */
static size_t scalar_size(uint32_t t)
{
	switch (t) {
	case QF_GGUF_UINT8:
	case QF_GGUF_INT8:
	case QF_GGUF_BOOL:
		return 1;
	case QF_GGUF_UINT16:
	case QF_GGUF_INT16:
		return 2;
	case QF_GGUF_UINT32:
	case QF_GGUF_INT32:
	case QF_GGUF_FLOAT32:
		return 4;
	case QF_GGUF_UINT64:
	case QF_GGUF_INT64:
	case QF_GGUF_FLOAT64:
		return 8;
	}
	return 0;
}

/* An array's type and count, its elements skipped (nested: depth). */
static int skip_array(struct rd *r, int depth, uint32_t *elem, uint64_t *n)
{
	uint64_t i, len, left;
	size_t sz;
	int ret;

	if (depth > QF_GGUF_MAX_DEPTH)
		FAIL(r, QF_EFORMAT, "arrays nested too deep");
	ret = get_u32(r, elem);
	if (!ret)
		ret = get_u64(r, n);
	if (ret)
		return ret;
	left = r->g->size - r->pos;
	sz = scalar_size(*elem);
	if (sz) {
		if (*n > left / sz)
			FAIL(r, QF_EFORMAT, "an array runs past the file end");
		return skip(r, *n * sz);
	}
	if (*elem != QF_GGUF_STRING && *elem != QF_GGUF_ARRAY)
		FAIL(r, QF_EFORMAT, "an array of an unknown value type");
	/* each element holds at least a u64 length or a u32 + u64 */
	if (*n > left / (*elem == QF_GGUF_STRING ? 8 : 12))
		FAIL(r, QF_EFORMAT, "an array runs past the file end");
	for (i = 0; i < *n && !ret; i++) {
		uint32_t e2;

		if (*elem == QF_GGUF_STRING) {
			ret = get_u64(r, &len);
			if (!ret)
				ret = skip(r, len);
		} else {
			ret = skip_array(r, depth + 1, &e2, &len);
		}
	}
	return ret;
}

/* A string of 1..max bytes without NUL, into a new allocation. */
static int get_name(struct rd *r, uint64_t max, char **out)
{
	uint64_t n;
	char *s;
	int ret;

	ret = get_u64(r, &n);
	if (ret)
		return ret;
	if (n == 0 || n > max)
		FAIL(r, QF_EFORMAT, "a key is empty or over 65535 bytes");
	if (n > r->g->size - r->pos)
		FAIL(r, QF_EFORMAT, "truncated");
	s = malloc(n + 1);
	if (!s)
		return -ENOMEM;
	ret = get(r, s, n);
	s[n] = 0;
	if (!ret && memchr(s, 0, n)) {
		r->why = "a key holds a NUL byte";
		ret = QF_EFORMAT;
	}
	if (ret) {
		free(s);
		return ret;
	}
	*out = s;
	return 0;
}

static void set_scalar(struct qf_gguf_kv *kv, const uint8_t *b, size_t sz)
{
	uint64_t u = le(b, (int)sz);
	uint32_t u32 = (uint32_t)u;
	float f;

	switch (kv->type) {
	case QF_GGUF_INT8:
	case QF_GGUF_INT16:
	case QF_GGUF_INT32:
	case QF_GGUF_INT64:
		/* sign-extend from sz bytes */
		kv->v.i = sz == 8 ? (int64_t)u :
			  (int64_t)(u ^ (UINT64_C(1) << (8 * sz - 1))) -
			  (int64_t)(UINT64_C(1) << (8 * sz - 1));
		break;
	case QF_GGUF_FLOAT32:
		memcpy(&f, &u32, 4);
		kv->v.f = f;
		break;
	case QF_GGUF_FLOAT64:
		memcpy(&kv->v.f, &u, 8);
		break;
	default:
		kv->v.u = u;
	}
}

static int read_kv(struct rd *r, struct qf_gguf_kv *kv)
{
	uint8_t b[8];
	uint32_t t, e;
	size_t sz;
	int ret;

	ret = get_name(r, QF_GGUF_MAX_KEY, &kv->key);
	if (!ret)
		ret = get_u32(r, &t);
	if (ret)
		return ret;
	kv->type = (enum qf_gguf_vtype)t;
	sz = scalar_size(t);
	if (sz) {
		ret = get(r, b, sz);
		if (!ret)
			set_scalar(kv, b, sz);
		return ret;
	}
	if (t == QF_GGUF_ARRAY) {
		ret = skip_array(r, 1, &e, &kv->n);
		kv->elem = (enum qf_gguf_vtype)e;
		return ret;
	}
	if (t != QF_GGUF_STRING)
		FAIL(r, QF_EFORMAT, "a value of an unknown type");
	ret = get_u64(r, &kv->n);
	if (ret || kv->n >= QF_GGUF_KEEP_STR)
		return ret ? ret : skip(r, kv->n);
	if (kv->n > r->g->size - r->pos)
		FAIL(r, QF_EFORMAT, "truncated");
	kv->str = malloc(kv->n + 1);
	if (!kv->str)
		return -ENOMEM;
	ret = get(r, kv->str, kv->n);
	kv->str[kv->n] = 0;
	if (!ret && memchr(kv->str, 0, kv->n)) {
		free(kv->str);		/* not a C string: not kept */
		kv->str = NULL;
	}
	return ret;
}

/* Dimensions, element count and type of one tensor info. */
static int read_shape(struct rd *r, struct qf_gguf_info *t)
{
	uint64_t ne, numel = 1, blocks;
	uint32_t nd, ty;
	int d, ret;

	ret = get_u32(r, &nd);
	if (ret)
		return ret;
	if (nd < 1 || nd > QF_GGUF_MAX_DIMS)
		FAIL(r, QF_EFORMAT, "a tensor has 0 or more than 4 dimensions");
	t->ndim = (int)nd;
	for (d = 0; d < QF_GGUF_MAX_DIMS; d++) {
		ne = 1;
		if (d < t->ndim && (ret = get_u64(r, &ne)))
			return ret;
		if (ne == 0 || ne > INT64_MAX || numel > INT64_MAX / ne)
			FAIL(r, QF_EFORMAT, "a tensor dimension is 0 or its "
			     "element count exceeds 2^63");
		numel *= ne;
		t->ne[d] = (int64_t)ne;
	}
	ret = get_u32(r, &ty);
	if (ret)
		return ret;
	t->type = (enum qf_ggml_type)ty;
	if (!qf_ggml_type_known(t->type)) {
		if (ty < TYPE_IDS_GGML)
			FAIL(r, QF_EUNSUPPORTED, "a tensor type quantfs does "
			     "not decode");
		FAIL(r, QF_EFORMAT, "an unknown tensor type");
	}
	if (t->ne[0] % qf_ggml_block_size(t->type))
		FAIL(r, QF_EFORMAT, "a tensor row is not whole blocks");
	blocks = numel / (uint64_t)qf_ggml_block_size(t->type);
	if (blocks > r->g->size / qf_ggml_block_bytes(t->type))
		FAIL(r, QF_EFORMAT, "a tensor is larger than the file");
	t->nbytes = blocks * qf_ggml_block_bytes(t->type);
	return 0;
}

static int read_info(struct rd *r, struct qf_gguf_info *t, uint64_t *rel)
{
	uint64_t n;
	int ret;

	ret = get_u64(r, &n);
	if (ret)
		return ret;
	if (n == 0 || n >= QF_GGUF_NAME_MAX)
		FAIL(r, QF_EFORMAT, "a tensor name is empty or longer than "
		     "63 bytes");
	ret = get(r, t->name, n);
	if (ret)
		return ret;
	t->name[n] = 0;
	if (memchr(t->name, 0, n))
		FAIL(r, QF_EFORMAT, "a tensor name holds a NUL byte");
	ret = read_shape(r, t);
	return ret ? ret : get_u64(r, rel);
}

static int cmp_kv(const void *a, const void *b)
{
	return strcmp(((const struct qf_gguf_kv *)a)->key,
		      ((const struct qf_gguf_kv *)b)->key);
}

static int cmp_name(const void *a, const void *b)
{
	return strcmp((*(const struct qf_gguf_info *const *)a)->name,
		      (*(const struct qf_gguf_info *const *)b)->name);
}

static int cmp_off(const void *a, const void *b)
{
	uint64_t x = (*(const struct qf_gguf_info *const *)a)->offset;
	uint64_t y = (*(const struct qf_gguf_info *const *)b)->offset;

	return x < y ? -1 : x > y;
}

/* Keys, then alignment and data start; no duplicate keys. */
static int read_kvs(struct rd *r, uint64_t nkv)
{
	struct qf_gguf_file *g = r->g;
	const struct qf_gguf_kv *a;
	size_t i;
	int ret = 0;

	if (nkv > QF_GGUF_MAX_KV || nkv > (g->size - r->pos) / MIN_KV_BYTES)
		FAIL(r, QF_EFORMAT, "more key/value pairs than the file holds");
	g->kv = calloc(nkv ? nkv : 1, sizeof(*g->kv));
	if (!g->kv)
		return -ENOMEM;
	for (i = 0; i < nkv && !ret; i++) {
		ret = read_kv(r, &g->kv[i]);
		g->nkv = i + 1;		/* freed by qf_gguf_close() */
	}
	if (ret)
		return ret;
	qsort(g->kv, g->nkv, sizeof(*g->kv), cmp_kv);
	for (i = 1; i < g->nkv; i++)
		if (!strcmp(g->kv[i - 1].key, g->kv[i].key))
			FAIL(r, QF_EFORMAT, "a duplicate key");
	g->align = QF_GGUF_ALIGN;
	a = qf_gguf_kv_find(g, "general.alignment");
	if (a && (a->type != QF_GGUF_UINT32 || a->v.u == 0 ||
		  (a->v.u & (a->v.u - 1))))
		FAIL(r, QF_EFORMAT, "general.alignment is not a u32 power "
		     "of two");
	if (a)
		g->align = (uint32_t)a->v.u;
	return 0;
}

/* Data ranges inside the file, aligned, disjoint; names unique. */
static int place_tensors(struct rd *r, const uint64_t *rel)
{
	struct qf_gguf_file *g = r->g;
	const struct qf_gguf_info **ord = g->by_name;
	uint64_t room;
	size_t i;

	g->data_off = g->info_end + (g->align - g->info_end % g->align) %
				    g->align;
	if (g->data_off > g->size)
		FAIL(r, QF_EFORMAT, "the padding before the tensor data is "
		     "missing");
	room = g->size - g->data_off;
	for (i = 0; i < g->nt; i++) {
		struct qf_gguf_info *t = &g->t[i];

		if (rel[i] % g->align)
			FAIL(r, QF_EFORMAT, "tensor data is not aligned");
		if (rel[i] > room || t->nbytes > room - rel[i])
			FAIL(r, QF_EFORMAT, "tensor data runs past the end");
		t->offset = g->data_off + rel[i];
		g->data_bytes += t->nbytes;
		ord[i] = t;
	}
	qsort(ord, g->nt, sizeof(*ord), cmp_off);
	for (i = 1; i < g->nt; i++)
		if (ord[i - 1]->offset + ord[i - 1]->nbytes > ord[i]->offset)
			FAIL(r, QF_EFORMAT, "the data of two tensors overlap");
	qsort(ord, g->nt, sizeof(*ord), cmp_name);
	for (i = 1; i < g->nt; i++)
		if (!strcmp(ord[i - 1]->name, ord[i]->name))
			FAIL(r, QF_EFORMAT, "a duplicate tensor name");
	return 0;
}

static int parse(struct rd *r)
{
	struct qf_gguf_file *g = r->g;
	uint64_t nt, nkv, *rel = NULL;
	uint8_t magic[4];
	size_t i;
	int ret;

	ret = get(r, magic, 4);
	if (ret || memcmp(magic, "GGUF", 4))
		FAIL(r, QF_EFORMAT, "not a GGUF file (no \"GGUF\" magic)");
	ret = get_u32(r, &g->version);
	if (!ret && g->version != 2 && g->version != 3)
		FAIL(r, QF_EUNSUPPORTED, "a GGUF version other than 2 and 3");
	if (!ret)
		ret = get_u64(r, &nt);
	if (!ret)
		ret = get_u64(r, &nkv);
	if (!ret)
		ret = read_kvs(r, nkv);
	if (ret)
		return ret;
	if (nt > QF_GGUF_MAX_TENSORS || nt > (g->size - r->pos) /
					     MIN_INFO_BYTES)
		FAIL(r, QF_EFORMAT, "more tensors than the file holds");
	g->t = calloc(nt ? nt : 1, sizeof(*g->t));
	g->by_name = calloc(nt ? nt : 1, sizeof(*g->by_name));
	rel = calloc(nt ? nt : 1, sizeof(*rel));
	if (!g->t || !g->by_name || !rel) {
		free(rel);
		return -ENOMEM;
	}
	for (i = 0; i < nt && !ret; i++)
		ret = read_info(r, &g->t[i], &rel[i]);
	g->nt = nt;
	g->info_end = r->pos;
	if (!ret)
		ret = place_tensors(r, rel);
	free(rel);
	return ret;
}

/* Parse g (fd or mem and size set); on failure g is closed. */
static int parse_file(struct qf_gguf_file *g, struct qf_gguf_file **out,
		      const char **why)
{
	struct rd r = { .g = g };
	int ret;

	if (g->fd >= 0) {
		r.win = malloc(WIN_BYTES);
		if (!r.win) {
			qf_gguf_close(g);
			return -ENOMEM;
		}
	}
	ret = parse(&r);
	free(r.win);
	if (why)
		*why = r.why ? r.why : qf_strerror(ret);
	if (ret) {
		qf_gguf_close(g);
		return ret;
	}
	*out = g;
	return 0;
}

int qf_gguf_open(const char *path, struct qf_gguf_file **out,
		 const char **why)
{
	struct qf_gguf_file *g;
	const char *w = NULL;
	struct stat st;
	int ret;

	g = calloc(1, sizeof(*g));
	if (!g)
		return -ENOMEM;
	g->fd = open(path, O_RDONLY | O_CLOEXEC);
	if (g->fd < 0 || fstat(g->fd, &st) < 0) {
		ret = -errno;
		qf_gguf_close(g);
		return ret;
	}
	if (!S_ISREG(st.st_mode)) {
		qf_gguf_close(g);
		return -EINVAL;
	}
	g->size = (uint64_t)st.st_size;
	ret = parse_file(g, out, &w);
	if (ret == QF_EFORMAT || ret == QF_EUNSUPPORTED || ret == QF_ECORRUPT)
		qf_err("%s: %s", path, w);
	if (why)
		*why = w;
	return ret;
}

int qf_gguf_parse(const void *buf, size_t size, struct qf_gguf_file **out,
		  const char **why)
{
	struct qf_gguf_file *g;

	g = calloc(1, sizeof(*g));
	if (!g)
		return -ENOMEM;
	g->fd = -1;
	g->mem = buf;
	g->size = size;
	return parse_file(g, out, why);
}

void qf_gguf_close(struct qf_gguf_file *g)
{
	size_t i;

	if (!g)
		return;
	for (i = 0; i < g->nkv; i++) {
		free(g->kv[i].key);
		free(g->kv[i].str);
	}
	free(g->kv);
	free(g->t);
	free(g->by_name);
	if (g->fd >= 0)
		close(g->fd);
	free(g);
}

const struct qf_gguf_kv *qf_gguf_kv_find(const struct qf_gguf_file *g,
					 const char *key)
{
	struct qf_gguf_kv k = { .key = (char *)key };

	return g->nkv ? bsearch(&k, g->kv, g->nkv, sizeof(k), cmp_kv) : NULL;
}

int qf_gguf_kv_int(const struct qf_gguf_file *g, const char *key,
		   int64_t *out)
{
	const struct qf_gguf_kv *kv = qf_gguf_kv_find(g, key);

	if (!kv)
		return -ENOENT;
	switch (kv->type) {
	case QF_GGUF_INT8:
	case QF_GGUF_INT16:
	case QF_GGUF_INT32:
	case QF_GGUF_INT64:
		*out = kv->v.i;
		return 0;
	case QF_GGUF_UINT8:
	case QF_GGUF_UINT16:
	case QF_GGUF_UINT32:
	case QF_GGUF_UINT64:
		if (kv->v.u > INT64_MAX)
			return QF_EFORMAT;
		*out = (int64_t)kv->v.u;
		return 0;
	default:
		return QF_EFORMAT;
	}
}

const char *qf_gguf_kv_str(const struct qf_gguf_file *g, const char *key)
{
	const struct qf_gguf_kv *kv = qf_gguf_kv_find(g, key);

	return kv && kv->type == QF_GGUF_STRING ? kv->str : NULL;
}

const struct qf_gguf_info *qf_gguf_find(const struct qf_gguf_file *g,
					const char *name)
{
	struct qf_gguf_info k;
	const struct qf_gguf_info *kp = &k, *const *hit;

	if (strlen(name) >= sizeof(k.name) || !g->nt)
		return NULL;
	strcpy(k.name, name);
	hit = bsearch(&kp, g->by_name, g->nt, sizeof(kp), cmp_name);
	return hit ? *hit : NULL;
}

int64_t qf_gguf_rows(const struct qf_gguf_info *t)
{
	return t->ne[1] * t->ne[2] * t->ne[3];
}

int qf_gguf_read_rows(const struct qf_gguf_file *g,
		      const struct qf_gguf_info *t, int64_t row0,
		      int64_t nrows, float *dst)
{
	uint64_t rb = qf_ggml_row_bytes(t->type, t->ne[0]);
	int64_t rows = qf_gguf_rows(t), r;
	const uint8_t *src;
	uint8_t *buf = NULL;
	int ret = 0;

	if (row0 < 0 || nrows < 0 || row0 > rows || nrows > rows - row0)
		return -EINVAL;
	if (!nrows)
		return 0;
	if (g->mem) {
		src = g->mem + t->offset + (uint64_t)row0 * rb;
	} else {
		buf = malloc((size_t)((uint64_t)nrows * rb));
		if (!buf)
			return -ENOMEM;
		ret = pread_all(g->fd, buf, (size_t)((uint64_t)nrows * rb),
				t->offset + (uint64_t)row0 * rb);
		src = buf;
	}
	for (r = 0; r < nrows && !ret; r++)
		ret = qf_ggml_dequantize_row(t->type, src + (uint64_t)r * rb,
					     t->ne[0], dst + r * t->ne[0]);
	free(buf);
	return ret;
}
