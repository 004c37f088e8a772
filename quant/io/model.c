/*
 * model.c - a Hugging Face model directory: config.json, the safetensors
 * weights (single file or sharded by model.safetensors.index.json), a
 * merged tensor index and the source fingerprint (from each weight
 * file's SHA-256, which the caller hashes here or remembers: fs/src_fp.c
 * keeps it in the cache, and a mount hashes a file once, when a variant
 * of it is first wanted).
 *
 * Everything here reads untrusted files: sizes are bounded, names from the
 * index are checked not to leave the directory, and the shards are
 * validated by qf_st_open().
 */
#include <cjson/cJSON.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io.h"

#define CONFIG_MAX (4u << 20)		/* config.json bytes */
#define INDEX_MAX (64u << 20)		/* index.json bytes */
#define SHARDS_MAX 4096
#define HASH_BUF (256u << 10)		/* bytes read and hashed at a time */
#define HASH_SAY_S 5.0			/* seconds between progress lines */
#define READ_CHUNK (64u << 10)		/* bytes of source per pread */
#define HASH_LOG_BYTES (1ULL << 30)	/* a file this large: its own line */

static int cmp_mt(const void *a, const void *b)
{
	const struct qf_model_tensor *x = a;
	const struct qf_model_tensor *y = b;

	return strcmp(x->name, y->name);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static char *path_join(const char *dir, const char *name)
{
	struct qf_buf b = QF_BUF_INIT;

	if (qf_buf_addf(&b, "%s/%s", dir, name) < 0)
		return NULL;
	return qf_buf_detach(&b, NULL);
}

/* A shard name from the index must be a plain file name in the dir. */
static bool shard_name_ok(const char *s)
{
	size_t n = strlen(s);

	return n > 0 && n < 256 && !strchr(s, '/') && strcmp(s, ".") &&
	       strcmp(s, "..") && n > 12 && !strcmp(s + n - 12, ".safetensors");
}

static int open_shards(struct qf_model *m, char **names, size_t n)
{
	size_t i;
	int ret;

	m->shard = calloc(n, sizeof(*m->shard));
	if (!m->shard)
		return -ENOMEM;
	for (i = 0; i < n; i++) {
		char *p = path_join(m->dir, names[i]);
		struct stat st;
		int fd;

		if (!p)
			return -ENOMEM;
		fd = qf_src_openat(m->dirfd, names[i], 0, &st);
		if (fd < 0) {
			qf_err("%s: %s", p, qf_strerror(fd));
			free(p);
			return fd;
		}
		ret = qf_st_open_fd(fd, p, &m->shard[i]);
		free(p);
		if (ret < 0)
			return ret;
		m->nshard++;
	}
	return 0;
}

int qf_model_index_parse(const char *buf, size_t len, const char *what,
			 void **index, char ***names, size_t *n)
{
	cJSON *root;
	cJSON *map;
	cJSON *it;
	char **v = NULL;
	size_t k = 0;
	size_t i;
	int ret = QF_EFORMAT;

	*index = NULL;
	root = cJSON_ParseWithLength(buf ? buf : "", len);
	map = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") :
		     NULL;
	if (!cJSON_IsObject(map)) {
		qf_err("%s: no \"weight_map\" object", what);
		goto out_free;
	}
	cJSON_ArrayForEach(it, map) {
		char **nv;

		if (!cJSON_IsString(it) || !shard_name_ok(it->valuestring)) {
			qf_err("%s: bad shard name for '%s'", what,
			       it->string ? it->string : "?");
			goto out_free;
		}
		for (i = 0; i < k; i++)
			if (!strcmp(v[i], it->valuestring))
				break;
		if (i < k)
			continue;
		if (k == SHARDS_MAX) {
			qf_err("%s: more than %d shards", what, SHARDS_MAX);
			goto out_free;
		}
		nv = realloc(v, (k + 1) * sizeof(*v));
		if (!nv) {
			ret = -ENOMEM;
			goto out_free;
		}
		v = nv;
		v[k++] = it->valuestring;
	}
	if (!k) {
		qf_err("%s: empty weight_map", what);
		goto out_free;
	}
	qsort(v, k, sizeof(*v), cmp_str);
	*index = root;
	*names = v;
	*n = k;
	return 0;

out_free:
	free(v);
	cJSON_Delete(root);
	return ret;
}

/* Names of the shards the index lists (unique, sorted). */
static int read_index(struct qf_model *m, const char *ipath, char ***names,
		      size_t *n, cJSON **index)
{
	struct qf_buf b = QF_BUF_INIT;
	void *root = NULL;
	int ret;

	ret = qf_src_read(m->dirfd, "model.safetensors.index.json", INDEX_MAX,
			  &b);
	if (ret < 0) {
		qf_err("%s: %s", ipath, qf_strerror(ret));
		return ret;
	}
	ret = qf_model_index_parse(b.data, b.len, ipath, &root, names, n);
	*index = root;
	qf_buf_release(&b);
	return ret;
}

static int build_index(struct qf_model *m, cJSON *index)
{
	const struct qf_model_tensor *dup;
	size_t total = 0;
	size_t i, j, k = 0;
	cJSON *map;

	for (i = 0; i < m->nshard; i++)
		total += m->shard[i]->hdr.n;
	m->t = calloc(total ? total : 1, sizeof(*m->t));
	if (!m->t)
		return -ENOMEM;
	for (i = 0; i < m->nshard; i++) {
		struct qf_st_file *f = m->shard[i];

		for (j = 0; j < f->hdr.n; j++) {
			m->t[k].name = f->hdr.t[j].name;
			m->t[k].shard = f;
			m->t[k].t = &f->hdr.t[j];
			m->weight_bytes += f->hdr.t[j].nbytes;
			k++;
		}
	}
	m->nt = k;
	qsort(m->t, m->nt, sizeof(*m->t), cmp_mt);
	for (i = 1; i < m->nt; i++)
		if (!strcmp(m->t[i].name, m->t[i - 1].name)) {
			qf_err("%s: tensor '%s' is in two shards", m->dir,
			       m->t[i].name);
			return QF_EFORMAT;
		}
	if (!index)
		return 0;
	/* Every tensor the index names must be in the shard it names. */
	map = cJSON_GetObjectItemCaseSensitive(index, "weight_map");
	cJSON_ArrayForEach(map, map) {
		dup = qf_model_find(m, map->string);
		if (!dup || strcmp(strrchr(dup->shard->path, '/') + 1,
				   map->valuestring)) {
			qf_err("%s: index names '%s' in '%s' but it is not "
			       "there", m->dir, map->string, map->valuestring);
			return QF_EFORMAT;
		}
	}
	return 0;
}

/* v as 8 little-endian bytes: the same on every machine. */
static void hash_u64(struct qf_sha256 *c, uint64_t v)
{
	uint8_t b[8];
	int k;

	for (k = 0; k < 8; k++)
		b[k] = (uint8_t)(v >> (8 * k));
	qf_sha256_update(c, b, sizeof(b));
}

void qf_model_set_fingerprint(struct qf_model *m,
			      const uint8_t (*shard_sha)[32])
{
	struct qf_sha256 c;
	size_t i;

	qf_sha256_init(&c);
	qf_sha256_update(&c, "quantfs-fp-v2", 14);
	hash_u64(&c, m->config_text.len);
	qf_sha256_update(&c, m->config_text.data, m->config_text.len);
	for (i = 0; i < m->nshard; i++) {
		const struct qf_st_file *f = m->shard[i];
		const char *base = strrchr(f->path, '/') + 1;

		qf_sha256_update(&c, base, strlen(base) + 1);
		hash_u64(&c, f->size);
		qf_sha256_update(&c, shard_sha[i], 32);
	}
	qf_sha256_final(&c, m->fp);
	qf_hex(m->fp, 32, m->fp_hex);
	m->fp_set = true;
}

int qf_model_shard_sha256(const struct qf_model *m, size_t i,
			  uint8_t out[32])
{
	const struct qf_st_file *f = m->shard[i];
	double t0 = qf_now(), said = t0, dt;
	struct qf_sha256 c;
	uint64_t off, n;
	uint8_t *buf = malloc(HASH_BUF);
	int ret = buf ? 0 : -ENOMEM;

	qf_sha256_init(&c);
	for (off = 0; off < f->size && !ret; off += n) {
		n = f->size - off < HASH_BUF ? f->size - off : HASH_BUF;
		ret = qf_pread_all(f->fd, buf, (size_t)n, off);
		if (ret < 0)
			break;
		qf_sha256_update(&c, buf, (size_t)n);
		if (qf_now() - said >= HASH_SAY_S) {
			said = qf_now();
			qf_info("%s: hashing for the fingerprint: %.1f of "
				"%.1f GB", f->path, (off + n) / 1e9,
				f->size / 1e9);
		}
	}
	free(buf);
	if (ret < 0)	/* a short read: the file shrank */
		return ret == -EIO ? QF_ECORRUPT : ret;
	qf_sha256_final(&c, out);
	if (qf_st_faulted(f))
		return QF_ECORRUPT;
	dt = qf_now() - t0;
	if (f->size >= HASH_LOG_BYTES)
		qf_info("%s: hashed %.2f GB in %.1f s (%.2f GB/s)", f->path,
			f->size / 1e9, dt, f->size / 1e9 / (dt > 0 ? dt : 1e-9));
	return 0;
}

int qf_model_fingerprint(struct qf_model *m)
{
	uint8_t (*sha)[32];
	size_t i;
	int ret = 0;

	sha = calloc(m->nshard, sizeof(*sha));
	if (!sha)
		return -ENOMEM;
	for (i = 0; i < m->nshard && !ret; i++)
		ret = qf_model_shard_sha256(m, i, sha[i]);
	if (!ret)
		qf_model_set_fingerprint(m, (const uint8_t (*)[32])sha);
	free(sha);
	return ret;
}

/* The floating dtype holding the most bytes: what _fake variants use. */
static void dominant_dtype(struct qf_model *m)
{
	uint64_t by[QF_DT_COUNT] = { 0 };
	size_t i;

	for (i = 0; i < m->nt; i++)
		by[m->t[i].t->dtype] += m->t[i].t->nbytes;
	m->dtype = QF_DT_BF16;
	if (by[QF_DT_F16] > by[m->dtype])
		m->dtype = QF_DT_F16;
	if (by[QF_DT_F32] > by[m->dtype])
		m->dtype = QF_DT_F32;
}

int qf_model_open(const char *dir, struct qf_model **out)
{
	const char *base = strrchr(dir, '/');
	char *real = realpath(dir, NULL);
	int fd, ret;

	if (!real)
		return -errno;
	fd = open(real, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0) {
		ret = -errno;
		free(real);
		return ret;
	}
	base = strrchr(real, '/');
	ret = qf_model_open_at(fd, real, base && base[1] ? base + 1 : real,
			       out);
	close(fd);
	free(real);
	return ret;
}

int qf_model_open_at(int dirfd, const char *dir, const char *name,
		     struct qf_model **out)
{
	struct qf_model *m;
	struct stat st;
	cJSON *index = NULL;
	size_t i;
	char **names = NULL;
	char *single = "model.safetensors";
	size_t nnames = 0;
	char *p;
	int ret;

	m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->dirfd = fcntl(dirfd, F_DUPFD_CLOEXEC, 0);
	m->dir = strdup(dir);
	m->name = strdup(name);
	if (m->dirfd < 0 || !m->dir || !m->name) {
		ret = m->dirfd < 0 ? -errno : -ENOMEM;
		goto out_free;
	}
	ret = qf_src_read(m->dirfd, "config.json", CONFIG_MAX, &m->config_text);
	if (ret < 0) {
		qf_err("%s: cannot read config.json: %s", m->dir,
		       qf_strerror(ret));
		goto out_free;
	}
	p = path_join(m->dir, "config.json");
	if (!p) {
		ret = -ENOMEM;
		goto out_free;
	}
	m->config = cJSON_ParseWithLength(m->config_text.data,
					  m->config_text.len);
	if (!cJSON_IsObject((cJSON *)m->config)) {
		qf_err("%s: config.json is not a JSON object", p);
		free(p);
		ret = QF_EFORMAT;
		goto out_free;
	}
	free(p);
	p = path_join(m->dir, "model.safetensors.index.json");
	if (!p) {
		ret = -ENOMEM;
		goto out_free;
	}
	ret = qf_src_statat(m->dirfd, "model.safetensors.index.json", &st);
	if (ret != -ENOENT) {
		ret = read_index(m, p, &names, &nnames, &index);
	} else {
		names = &single;
		nnames = 1;
		ret = 0;
	}
	free(p);
	if (ret < 0) {
		cJSON_Delete(index);
		goto out_free;
	}
	ret = open_shards(m, names, nnames);
	if (ret == 0)
		ret = build_index(m, index);
	if (names != &single)
		free(names);
	cJSON_Delete(index);
	if (ret < 0)
		goto out_free;
	for (i = 0; i < m->nshard; i++)
		if (qf_st_faulted(m->shard[i])) {
			ret = QF_ECORRUPT;
			goto out_free;
		}
	dominant_dtype(m);
	*out = m;
	return 0;

out_free:
	qf_model_close(m);
	return ret;
}

void qf_model_close(struct qf_model *m)
{
	size_t i;

	if (!m)
		return;
	for (i = 0; i < m->nshard; i++)
		qf_st_close(m->shard[i]);
	free(m->shard);
	free(m->t);
	cJSON_Delete(m->config);
	qf_buf_release(&m->config_text);
	if (m->dirfd >= 0)
		close(m->dirfd);
	free(m->dir);
	free(m->name);
	free(m);
}

const struct qf_model_tensor *qf_model_find(const struct qf_model *m,
					    const char *name)
{
	struct qf_model_tensor key = { .name = name };

	if (!name)
		return NULL;
	return bsearch(&key, m->t, m->nt, sizeof(*m->t), cmp_mt);
}

bool qf_model_unchanged(const struct qf_model *m)
{
	struct qf_buf b = QF_BUF_INIT;
	bool same;
	size_t i;

	for (i = 0; i < m->nshard; i++)
		if (!qf_st_unchanged(m->shard[i]))
			return false;
	same = qf_src_read(m->dirfd, "config.json", CONFIG_MAX, &b) == 0 &&
	       b.len == m->config_text.len &&
	       !memcmp(b.data, m->config_text.data, b.len);
	qf_buf_release(&b);
	return same;
}

long qf_model_cfg_int(const struct qf_model *m, const char *key, long def)
{
	cJSON *it = cJSON_GetObjectItemCaseSensitive(m->config, key);

	if (!cJSON_IsNumber(it) || it->valuedouble != floor(it->valuedouble) ||
	    fabs(it->valuedouble) > (double)LONG_MAX / 2)
		return def;
	return (long)it->valuedouble;
}

/*
 * Elements [e0, e0 + n) of mt as f32 into dst, read with pread a chunk of
 * READ_CHUNK bytes at a time and converted while the chunk is in cache.
 * Reading the map instead cost a fault every 16 pages, and the pages had
 * to be given back (madvise, a TLB flush of every thread) so that a model
 * larger than memory was not held: bench_produce read the 0.94 GB bench
 * model at 1.55 GB/s through the map, 7.61 GB/s so (issue #23).  A file
 * cut short meanwhile is a short read: QF_ECORRUPT.
 */
static int read_f32(const struct qf_model_tensor *mt, uint64_t e0, uint64_t n,
		    float *dst)
{
	size_t esz = qf_dtype_size(mt->t->dtype);
	uint64_t off = mt->shard->hdr.data_off + mt->t->begin + e0 * esz;
	uint64_t per = READ_CHUNK / esz, done, k;
	uint8_t raw[READ_CHUNK] __attribute__((aligned(64)));
	int ret;

	for (done = 0; done < n; done += k) {
		k = n - done < per ? n - done : per;
		ret = qf_pread_all(mt->shard->fd, raw, (size_t)(k * esz),
				   off + done * esz);
		if (ret < 0)
			return ret == -EIO ? QF_ECORRUPT : ret;
		ret = qf_to_f32(mt->t->dtype, raw, (size_t)k, dst + done);
		if (ret < 0)
			return ret;
	}
	return 0;
}

int qf_model_read_f32_rows(const struct qf_model_tensor *mt, int64_t row0,
			   int64_t nrows, float *dst)
{
	int64_t cols = mt->t->ndim >= 2 ? (int64_t)(qf_st_numel(mt->t) /
					  (uint64_t)mt->t->shape[0]) : 1;
	uint64_t n = (uint64_t)(nrows * cols);
	uint64_t i;
	int ret;

	if (!qf_st_unchanged(mt->shard)) {
		qf_err("%s: changed on disk while in use: not read (the next "
		       "open serves the new version)", mt->shard->path);
		return QF_ECORRUPT;
	}
	ret = read_f32(mt, (uint64_t)(row0 * cols), n, dst);
	if (ret == QF_ECORRUPT)
		qf_st_shrank(mt->shard);
	if (ret < 0)
		return ret;
	/* rewritten in place meanwhile: what was read may be either */
	if (qf_st_faulted(mt->shard))
		return QF_ECORRUPT;
	if (qf_all_finite(dst, (size_t)n))
		return 0;
	for (i = 0; i < n; i++)
		if (!isfinite(dst[i])) {
			qf_err("%s: tensor '%s' has a non-finite value at "
			       "element %llu", mt->shard->path, mt->name,
			       (unsigned long long)((uint64_t)(row0 * cols) + i));
			return QF_ENUMERIC;
		}
	return 0;
}

int qf_model_read_f32(const struct qf_model_tensor *mt, float *dst)
{
	int64_t rows = mt->t->ndim >= 1 ? mt->t->shape[0] : 1;

	if (mt->t->ndim == 0 || qf_st_numel(mt->t) == 0) {
		int ret = qf_to_f32(mt->t->dtype, qf_st_data(mt->shard, mt->t),
				    qf_st_numel(mt->t), dst);

		return ret < 0 ? ret : qf_st_faulted(mt->shard) ? QF_ECORRUPT :
								  0;
	}
	return qf_model_read_f32_rows(mt, 0, rows, dst);
}
