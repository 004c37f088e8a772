/*
 * safetensors.c - bounds-checked safetensors reader.
 *
 * A safetensors file is an 8-byte little-endian header length N, N bytes of
 * UTF-8 JSON naming every tensor's dtype, shape and byte span, then the data
 * area.  The header comes from whoever made the model, so everything in it
 * is validated before any offset is used: the rules follow the reference
 * reader (huggingface/safetensors tensor.rs, see FORMATS.md), and are a
 * little stricter where it costs nothing (only spaces as padding, no
 * duplicate keys anywhere, integers below 2^53).
 *
 * Every rejection has its own static message so a user can tell from the
 * log which rule a file broke.  Work is bounded by N, which is capped at
 * QF_ST_MAX_HEADER; cJSON caps nesting depth on its own.
 */
#include <fcntl.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "io.h"

#define ST_MAX_NAME 4096
/*
 * Numbers reach us as doubles.  Above 2^53 a double no longer names one
 * integer (9007199254740993 parses as ...992), so 2^53 itself is refused
 * too: no real tensor or offset comes near it.
 */
#define ST_INT_LIMIT 9007199254740992.0

static uint64_t load_le64(const uint8_t *p)
{
	uint64_t v = 0;
	int i;

	for (i = 7; i >= 0; i--)
		v = v << 8 | p[i];
	return v;
}

/*
 * Check the header text for what cJSON lets through: invalid UTF-8 (it
 * copies bytes as they come), control bytes (it skips every byte <= 32 as
 * whitespace, and takes raw ones inside strings) and the \u0000 escape,
 * which would cut a tensor name short at the NUL and let two distinct
 * JSON names collide as C strings.  Tracks just enough of the JSON lexis to
 * know whether a byte sits inside a string.
 */
static const char *check_text(const uint8_t *s, size_t n)
{
	bool in_str = false;
	size_t len;
	size_t i = 0;

	while (i < n) {
		if (s[i] >= 0x80) {
			uint32_t cp;

			len = qf_utf8_decode(s + i, n - i, &cp);
			if (cp == QF_UTF8_BAD)
				return "header is not valid utf-8";
			i += len;
			continue;
		}
		if (s[i] < 0x20) {
			if (in_str || (s[i] != '\t' && s[i] != '\n' &&
				       s[i] != '\r'))
				return "control character in header";
		} else if (s[i] == '"') {
			in_str = !in_str;
		} else if (in_str && s[i] == '\\' && i + 1 < n) {
			if (n - i >= 6 && memcmp(s + i + 1, "u0000", 5) == 0)
				return "\\u0000 escape in header";
			/* Skip an escaped quote or backslash; the rest of an
			 * escape is plain ascii and needs no special case. */
			if (s[i + 1] == '"' || s[i + 1] == '\\')
				i++;
		}
		i++;
	}
	return NULL;
}

/* A JSON number that is an integer in [0, 2^53). */
static bool get_uint(const cJSON *v, uint64_t *out)
{
	double d;

	if (!cJSON_IsNumber(v))
		return false;
	d = v->valuedouble;
	/* Written so that NaN fails too. */
	if (!(d >= 0.0 && d < ST_INT_LIMIT))
		return false;
	if (d != (double)(uint64_t)d)
		return false;
	*out = (uint64_t)d;
	return true;
}

/* Pick dtype, shape and data_offsets out of e, each at most once. */
static const char *entry_fields(const cJSON *e, const cJSON **dtype,
				const cJSON **shape, const cJSON **offs)
{
	const cJSON *c;
	const cJSON **slot;

	*dtype = *shape = *offs = NULL;
	cJSON_ArrayForEach(c, e) {
		if (strcmp(c->string, "dtype") == 0)
			slot = dtype;
		else if (strcmp(c->string, "shape") == 0)
			slot = shape;
		else if (strcmp(c->string, "data_offsets") == 0)
			slot = offs;
		else
			continue;	/* ignored, as serde does */
		if (*slot)
			return "duplicate key in tensor entry";
		*slot = c;
	}
	return NULL;
}

/* Fill t (but its name) from the JSON entry e. */
static const char *parse_entry(const cJSON *e, struct qf_st_tensor *t)
{
	const cJSON *dtype;
	const cJSON *shape;
	const cJSON *offs;
	const cJSON *c;
	const char *msg;
	uint64_t numel = 1;
	uint64_t size;
	uint64_t d;
	uint64_t begin;
	uint64_t end;

	if (!cJSON_IsObject(e))
		return "tensor entry is not an object";
	msg = entry_fields(e, &dtype, &shape, &offs);
	if (msg)
		return msg;
	if (!dtype)
		return "tensor entry has no dtype";
	if (!cJSON_IsString(dtype))
		return "dtype is not a string";
	if (qf_dtype_parse(dtype->valuestring, &t->dtype) < 0)
		return "unknown dtype";
	if (!shape)
		return "tensor entry has no shape";
	if (!cJSON_IsArray(shape))
		return "shape is not an array";
	t->ndim = 0;
	cJSON_ArrayForEach(c, shape) {
		if (t->ndim == QF_ST_MAX_DIMS)
			return "shape has more than 8 dimensions";
		if (!get_uint(c, &d))
			return "shape dimension is not a non-negative integer";
		if (d && numel > UINT64_MAX / d)
			return "shape element count overflows";
		numel *= d;
		t->shape[t->ndim++] = (int64_t)d;
	}
	size = qf_dtype_size(t->dtype);
	if (numel > UINT64_MAX / size)
		return "tensor byte size overflows";
	if (!offs)
		return "tensor entry has no data_offsets";
	if (!cJSON_IsArray(offs) || !offs->child || !offs->child->next ||
	    offs->child->next->next)
		return "data_offsets is not an array of two numbers";
	if (!get_uint(offs->child, &begin) ||
	    !get_uint(offs->child->next, &end))
		return "data offset is not a non-negative integer";
	if (end < begin)
		return "data_offsets end before they begin";
	if (end - begin != numel * size)
		return "byte span does not match shape and dtype";
	t->begin = begin;
	t->nbytes = end - begin;
	return NULL;
}

static int cmp_str_ptr(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Check __metadata__ and keep it as compact JSON in *out. */
static int parse_metadata(const cJSON *m, char **out, const char **why)
{
	const char **keys;
	const cJSON *c;
	size_t n = 0;
	size_t i;
	int ret = 0;

	if (!cJSON_IsObject(m)) {
		*why = "__metadata__ is not an object";
		return QF_EFORMAT;
	}
	cJSON_ArrayForEach(c, m) {
		if (!cJSON_IsString(c)) {
			*why = "__metadata__ value is not a string";
			return QF_EFORMAT;
		}
		n++;
	}
	keys = malloc((n ? n : 1) * sizeof(*keys));
	if (!keys)
		return -ENOMEM;
	n = 0;
	cJSON_ArrayForEach(c, m)
		keys[n++] = c->string;
	qsort(keys, n, sizeof(*keys), cmp_str_ptr);
	for (i = 1; i < n; i++) {
		if (strcmp(keys[i - 1], keys[i]) == 0) {
			*why = "duplicate key in __metadata__";
			ret = QF_EFORMAT;
			break;
		}
	}
	free(keys);
	if (ret < 0)
		return ret;
	*out = cJSON_PrintUnformatted(m);
	return *out ? 0 : -ENOMEM;
}

static void free_tensors(struct qf_st_tensor *t, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		free(t[i].name);
	free(t);
}

static int cmp_name(const void *a, const void *b)
{
	const struct qf_st_tensor *x = a;
	const struct qf_st_tensor *y = b;

	return strcmp(x->name, y->name);
}

/* Walk the root object into h->t (sorted by name) and h->metadata. */
static int parse_entries(const cJSON *root, struct qf_st_header *h,
			 const char **why)
{
	struct qf_st_tensor *t;
	const cJSON *c;
	size_t len;
	size_t n = 0;
	int ret;

	cJSON_ArrayForEach(c, root)
		n++;
	h->t = calloc(n ? n : 1, sizeof(*h->t));
	if (!h->t)
		return -ENOMEM;
	cJSON_ArrayForEach(c, root) {
		if (strcmp(c->string, "__metadata__") == 0) {
			if (h->metadata) {
				*why = "duplicate __metadata__";
				return QF_EFORMAT;
			}
			ret = parse_metadata(c, &h->metadata, why);
			if (ret < 0)
				return ret;
			continue;
		}
		len = strlen(c->string);
		if (len == 0) {
			*why = "empty tensor name";
			return QF_EFORMAT;
		}
		if (len > ST_MAX_NAME) {
			*why = "tensor name longer than 4096 bytes";
			return QF_EFORMAT;
		}
		t = &h->t[h->n];
		*why = parse_entry(c, t);
		if (*why)
			return QF_EFORMAT;
		t->name = strdup(c->string);
		if (!t->name)
			return -ENOMEM;
		h->n++;
	}
	qsort(h->t, h->n, sizeof(*h->t), cmp_name);
	for (n = 1; n < h->n; n++) {
		if (strcmp(h->t[n - 1].name, h->t[n].name) == 0) {
			*why = "duplicate tensor name";
			return QF_EFORMAT;
		}
	}
	return 0;
}

/* Zero-sized spans sort before a real one at the same offset. */
static int cmp_span(const void *a, const void *b)
{
	const struct qf_st_tensor *x = *(const struct qf_st_tensor *const *)a;
	const struct qf_st_tensor *y = *(const struct qf_st_tensor *const *)b;

	if (x->begin != y->begin)
		return x->begin < y->begin ? -1 : 1;
	if (x->nbytes != y->nbytes)
		return x->nbytes < y->nbytes ? -1 : 1;
	return 0;
}

/*
 * The spans, in offset order, must tile [0, data_len) exactly: a hole
 * would be bytes nobody accounts for, an overlap two tensors aliasing.
 */
static int check_spans(const struct qf_st_header *h, const char **why)
{
	const struct qf_st_tensor **by_off;
	uint64_t pos = 0;
	size_t i;

	*why = NULL;
	by_off = malloc((h->n ? h->n : 1) * sizeof(*by_off));
	if (!by_off)
		return -ENOMEM;
	for (i = 0; i < h->n; i++)
		by_off[i] = &h->t[i];
	qsort(by_off, h->n, sizeof(*by_off), cmp_span);
	for (i = 0; i < h->n && !*why; i++) {
		if (by_off[i]->begin < pos)
			*why = "tensor spans overlap";
		else if (by_off[i]->begin > pos && i == 0)
			*why = "first tensor does not start at offset 0";
		else if (by_off[i]->begin > pos)
			*why = "hole between tensor spans";
		pos = by_off[i]->begin + by_off[i]->nbytes;
	}
	free(by_off);
	if (!*why && pos < h->data_len)
		*why = "data area longer than the tensors (not fully covered)";
	if (!*why && pos > h->data_len)
		*why = "tensor data extends past the end of the file";
	return *why ? QF_EFORMAT : 0;
}

/* Bytes left after the JSON value may only be padding spaces. */
static bool only_spaces(const char *p, const char *end)
{
	while (p < end)
		if (*p++ != ' ')
			return false;
	return true;
}

int qf_st_parse(const void *buf, size_t avail, uint64_t file_len,
		struct qf_st_header *out, const char **why)
{
	const uint8_t *p = buf;
	const char *text;
	const char *end = NULL;
	const char *msg = NULL;
	cJSON *root;
	uint64_t n;
	int ret = QF_EFORMAT;

	memset(out, 0, sizeof(*out));
	if (file_len < 8) {
		msg = "file shorter than 8 bytes";
		goto out_why;
	}
	if (avail < 8) {
		msg = "header length not in the bytes read";
		goto out_why;
	}
	n = load_le64(p);
	if (n == 0)
		msg = "header length is zero";
	else if (n > QF_ST_MAX_HEADER)
		msg = "header length over 100000000 bytes";
	else if (n > file_len - 8)
		msg = "header extends past the end of the file";
	else if (n > avail - 8)
		msg = "header extends past the bytes read";
	if (msg)
		goto out_why;
	text = (const char *)p + 8;
	/* cJSON would skip a BOM and leading blanks; the format has none. */
	if (text[0] != '{') {
		msg = "header is not a json object";
		goto out_why;
	}
	msg = check_text(p + 8, n);
	if (msg)
		goto out_why;
	root = cJSON_ParseWithLengthOpts(text, n, &end, false);
	if (!root) {
		/* cJSON does not tell a syntax error from ENOMEM. */
		msg = "header is not valid json";
		goto out_why;
	}
	if (!cJSON_IsObject(root)) {
		msg = "header is not a json object";
		goto out_delete_json;
	}
	if (!end || !only_spaces(end, text + n)) {
		msg = "trailing bytes after the header json";
		goto out_delete_json;
	}
	out->header_len = n;
	out->data_off = 8 + n;
	out->data_len = file_len - 8 - n;
	ret = parse_entries(root, out, &msg);
	if (ret < 0)
		goto out_free_header;
	ret = check_spans(out, &msg);
	if (ret < 0)
		goto out_free_header;
	cJSON_Delete(root);
	return 0;

out_free_header:
	qf_st_header_free(out);
out_delete_json:
	cJSON_Delete(root);
out_why:
	if (ret == -ENOMEM)
		msg = "out of memory";
	if (why)
		*why = msg;
	return ret;
}

void qf_st_header_free(struct qf_st_header *h)
{
	if (!h)
		return;
	free_tensors(h->t, h->n);
	cJSON_free(h->metadata);
	memset(h, 0, sizeof(*h));
}

const struct qf_st_tensor *qf_st_find(const struct qf_st_header *h,
				      const char *name)
{
	size_t lo = 0;
	size_t hi = h->n;
	size_t mid;
	int c;

	while (lo < hi) {
		mid = lo + (hi - lo) / 2;
		c = strcmp(name, h->t[mid].name);
		if (c == 0)
			return &h->t[mid];
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

/* Cannot overflow for a parsed tensor: parse checked the product. */
uint64_t qf_st_numel(const struct qf_st_tensor *t)
{
	uint64_t numel = 1;
	int i;

	for (i = 0; i < t->ndim; i++)
		numel *= (uint64_t)t->shape[i];
	return numel;
}

/*
 * The map is MAP_SHARED so the page cache is shared with every other
 * reader of the model.  The price is SIGBUS if someone truncates the file
 * while it is open; qf_st_unchanged() lets callers notice a replaced file.
 */
int qf_st_open(const char *path, struct qf_st_file **out)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	return qf_st_open_fd(fd, path, out);
}

int qf_st_open_fd(int fd, const char *path, struct qf_st_file **out)
{
	struct qf_st_file *f;
	const char *why = NULL;
	void *map;
	int ret;

	f = calloc(1, sizeof(*f));
	if (!f) {
		close(fd);
		return -ENOMEM;
	}
	f->fd = fd;
	f->path = strdup(path);
	if (!f->path) {
		ret = -ENOMEM;
		goto out_close;
	}
	if (fstat(f->fd, &f->st) < 0) {
		ret = -errno;
		goto out_close;
	}
	ret = QF_EFORMAT;
	if (!S_ISREG(f->st.st_mode)) {
		why = "not a regular file";
		goto out_close;
	}
	if (f->st.st_size < 8) {
		why = "file shorter than 8 bytes";
		goto out_close;
	}
#if SIZE_MAX < UINT64_MAX
	if ((uint64_t)f->st.st_size > SIZE_MAX) {
		why = "file too large to map";
		goto out_close;
	}
#endif
	f->size = (uint64_t)f->st.st_size;
	map = mmap(NULL, (size_t)f->size, PROT_READ, MAP_SHARED, f->fd, 0);
	if (map == MAP_FAILED) {
		ret = -errno;
		goto out_close;
	}
	f->map = map;
	f->guard = qf_guard_add(map, (size_t)f->size);
	ret = qf_st_parse(f->map, (size_t)f->size, f->size, &f->hdr, &why);
	if (ret == 0 && qf_st_faulted(f)) {
		qf_st_header_free(&f->hdr);
		ret = QF_ECORRUPT;
	}
	if (ret < 0)
		goto out_unmap;
	*out = f;
	return 0;

out_unmap:
	qf_guard_remove(f->guard);
	munmap(map, (size_t)f->size);
out_close:
	close(f->fd);
	if (ret == QF_EFORMAT)
		qf_err("'%s' is not a valid safetensors file: %s", path, why);
	free(f->path);
	free(f);
	return ret;
}

void qf_st_close(struct qf_st_file *f)
{
	if (!f)
		return;
	qf_st_header_free(&f->hdr);
	qf_guard_remove(f->guard);
	munmap((void *)f->map, (size_t)f->size);
	close(f->fd);
	free(f->path);
	free(f);
}

const void *qf_st_data(const struct qf_st_file *f,
		       const struct qf_st_tensor *t)
{
	return f->map + f->hdr.data_off + t->begin;
}

void qf_st_release(const struct qf_st_file *f, const void *p, size_t n)
{
	uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
	uintptr_t a = ((uintptr_t)p + page - 1) & ~(page - 1);
	uintptr_t b = ((uintptr_t)p + n) & ~(page - 1);

	(void)f;
	if (b > a)	/* advice only: nothing to do when it fails */
		(void)madvise((void *)a, b - a, MADV_DONTNEED);
}

/*
 * A truncation that lands inside a page leaves the rest of that page
 * readable as zeros, without SIGBUS: so a read is also suspect when the
 * file is no longer the one opened (size, inode or mtime), checked after
 * the read.
 */
static void say(const struct qf_st_file *f, const char *what)
{
	if (!atomic_exchange(&((struct qf_st_file *)f)->said, true))
		qf_err("'%s' %s while it was read (truncated or rewritten in "
		       "place?): I/O errors until it is whole again", f->path,
		       what);
}

bool qf_st_faulted(const struct qf_st_file *f)
{
	bool bus = qf_guard_faults(f->guard);

	if (!bus && qf_st_unchanged(f))
		return false;
	say(f, bus ? "shrank" : "changed");
	return true;
}

void qf_st_shrank(const struct qf_st_file *f)
{
	say(f, "shrank");
}

bool qf_st_unchanged(const struct qf_st_file *f)
{
	struct stat st;

	if (stat(f->path, &st) < 0)
		return false;
	return st.st_size == f->st.st_size && st.st_ino == f->st.st_ino &&
	       st.st_dev == f->st.st_dev &&
	       st.st_mtim.tv_sec == f->st.st_mtim.tv_sec &&
	       st.st_mtim.tv_nsec == f->st.st_mtim.tv_nsec;
}
