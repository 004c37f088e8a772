/*
 * test_fs.c - the filesystem core driven without a mount (fs_do.h): the
 * calls ll_ops.c makes for the kernel, made here by hand on a model that
 * mkmodel writes into a temporary directory.  Lookups (twice: the same
 * node), attributes, listings, byte ranges of an RTN variant's
 * model.safetensors against a file built here from qf_variant_produce(),
 * config.json, and two readers racing for one group (produced once).
 */
#include <fcntl.h>
#include <sys/stat.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "fs_do.h"
#include "fs_i.h"

#define VARIANT "rtn_w4_g128"

static char dir[] = "/tmp/qf_test_fs.XXXXXX";

/* A file of the variant, as the test expects it. */
struct want {
	struct qf_model *m;
	struct qf_variant *v;
	uint8_t *bytes;			/* model.safetensors */
	uint64_t size;
	uint64_t *bound;		/* tensor starts in the file */
	size_t nbound;
	struct qf_buf config;
};

/*
 * model.safetensors of VARIANT built here, apart from the fs core: the
 * plan of the quant library, each group from qf_variant_produce(), kept
 * tensors from the source shard.
 */
static int want_build(const char *mdir, struct want *w)
{
	struct qf_st_plan_entry *e;
	struct qf_buf hdr = QF_BUF_INIT;
	struct qf_spec sp;
	uint64_t total;
	size_t i, k;
	int ret;

	memset(w, 0, sizeof(*w));
	ret = qf_model_open(mdir, &w->m);
	if (!ret)
		ret = qf_spec_parse(VARIANT, &sp, NULL);
	if (!ret)
		ret = qf_variant_init(w->m, &sp, &w->v);
	if (ret < 0)
		return ret;
	e = calloc(w->v->nt, sizeof(*e));
	w->bound = calloc(w->v->nt, sizeof(*w->bound));
	if (!e || !w->bound)
		abort();
	for (i = 0; i < w->v->nt; i++) {
		e[i].name = w->v->t[i].name;
		e[i].dtype = w->v->t[i].dtype;
		e[i].ndim = w->v->t[i].ndim;
		e[i].shape[0] = w->v->t[i].shape[0];
		e[i].shape[1] = w->v->t[i].shape[1];
		e[i].user = &w->v->t[i];
	}
	ret = qf_st_plan(e, w->v->nt, NULL, 0, &hdr, &total);
	if (ret < 0)
		abort();
	w->size = hdr.len + total;
	w->bytes = calloc(1, w->size);
	if (!w->bytes)
		abort();
	memcpy(w->bytes, hdr.data, hdr.len);
	for (i = 0; i < w->v->nt; i++) {
		const struct qf_vtensor *t = e[i].user;
		uint8_t *dst = w->bytes + hdr.len + e[i].begin;

		w->bound[w->nbound++] = hdr.len + e[i].begin;
		if (t->group == QF_VT_PASSTHROUGH)
			memcpy(dst, qf_st_data(t->src->shard, t->src->t),
			       e[i].nbytes);
	}
	for (i = 0; i < w->v->ng; i++) {
		const struct qf_vgroup *g = &w->v->g[i];
		void *out[8];

		CHECK(g->n <= 8, ==, 1);
		for (k = 0; k < g->n && k < 8; k++) {
			size_t j;

			for (j = 0; j < w->v->nt; j++)
				if (e[j].user == &w->v->t[g->first + k])
					break;
			out[k] = w->bytes + hdr.len + e[j].begin;
		}
		CHECK(qf_variant_produce(w->v, i, out, NULL), ==, 0);
	}
	CHECK(qf_variant_config(w->v, &w->config), ==, 0);
	qf_buf_release(&hdr);
	free(e);
	return 0;
}

static void want_free(struct want *w)
{
	qf_variant_free(w->v);
	qf_model_close(w->m);
	free(w->bytes);
	free(w->bound);
	qf_buf_release(&w->config);
}

static uint64_t lookup(struct qf_fs *fs, uint64_t parent, const char *name)
{
	struct qf_fs_entry e, again;

	CHECK(qf_fs_do_lookup(fs, parent, name, &e), ==, 0);
	/* a second lookup of the same name: the same node */
	CHECK(qf_fs_do_lookup(fs, parent, name, &again), ==, 0);
	CHECK(again.ino, ==, e.ino);
	CHECK(e.st.st_ino, ==, e.ino);
	CHECK(e.ino, >, QF_FS_ROOT_INO);
	return e.ino;
}

/* [off, off + size) of ino through the core into a new buffer. */
static uint8_t *read_range(struct qf_fs *fs, uint64_t ino, uint64_t fh,
			   uint64_t off, uint64_t size, uint64_t *got)
{
	uint8_t *buf = malloc(size + 1);
	struct qf_fs_rd rd;
	uint64_t n = 0;
	size_t i;

	if (!buf)
		abort();
	*got = UINT64_MAX;
	CHECK(qf_fs_do_read(fs, ino, fh, off, size, &rd), ==, 0);
	for (i = 0; i < rd.n; i++)
		n += rd.seg[i].len;
	CHECK(n <= size, ==, 1);
	if (n <= size && qf_fs_rd_copy(&rd, buf, got) < 0)
		*got = UINT64_MAX;
	qf_fs_rd_release(&rd);
	return buf;
}

/* Read [off, off + size) and compare with the bytes it should have. */
static void check_range(struct qf_fs *fs, uint64_t ino, uint64_t fh,
			const uint8_t *want, uint64_t want_size, uint64_t off,
			uint64_t size)
{
	uint64_t got, expect = off >= want_size ? 0 :
			       off + size > want_size ? want_size - off : size;
	uint8_t *buf = read_range(fs, ino, fh, off, size, &got);

	CHECK(got, ==, expect);
	if (got == expect)
		CHECK(memcmp(buf, want + (off < want_size ? off : 0),
			     (size_t)expect), ==, 0);
	free(buf);
}

/* The listing of ino holds name (and starts with . and ..). */
static bool listed(struct qf_fs *fs, uint64_t ino, const char *name)
{
	struct qf_fs_dir *d = NULL;
	bool found = false;
	size_t i;

	CHECK(qf_fs_do_opendir(fs, ino, &d), ==, 0);
	if (!d)
		return false;
	CHECK(d->n, >=, 2);
	CHECK_STR(d->ent[0].name, ".");
	CHECK_STR(d->ent[1].name, "..");
	for (i = 2; i < d->n; i++)
		found = found || !strcmp(d->ent[i].name, name);
	qf_fs_do_releasedir(d);
	return found;
}

struct racer {
	struct qf_fs *fs;
	uint64_t ino, off, size;
	pthread_barrier_t *go;
	uint8_t *buf;
	uint64_t got;
};

static void *race_main(void *arg)
{
	struct racer *r = arg;

	pthread_barrier_wait(r->go);
	r->buf = read_range(r->fs, r->ino, 0, r->off, r->size, &r->got);
	return NULL;
}

/* The segment of var's first output tensor of group gi. */
static size_t seg_of(const struct qf_var *var, size_t gi)
{
	size_t s;

	for (s = 0; s < var->nseg; s++)
		if (var->seg[s].t == &var->v->t[var->v->g[gi].first])
			break;
	return s;
}

/*
 * Two readers of one tensor of group gi, which nobody has produced yet:
 * both get its bytes, and the group is produced once (the variant's
 * count of source bytes quantized grows by one group's).
 */
static void race(struct qf_fs *fs, uint64_t ino, const struct want *w,
		 size_t gi)
{
	struct qf_var *var = qf_ns_get(fs, ino)->var;
	size_t s = seg_of(var, gi);
	struct racer r[2];
	pthread_barrier_t go;
	pthread_t th[2];
	uint64_t src0, src1, len;
	int i;

	CHECK(s < var->nseg, ==, 1);
	if (s == var->nseg)
		return;
	len = var->seg[s].len;
	CHECK(qf_flight_cached(fs, &var->fl, (size_t)gi), ==, 0);
	pthread_mutex_lock(&var->lock);
	src0 = var->prod_src;
	pthread_mutex_unlock(&var->lock);
	pthread_barrier_init(&go, NULL, 2);
	for (i = 0; i < 2; i++) {
		r[i] = (struct racer){ fs, ino, var->seg[s].off, len, &go,
				       NULL, 0 };
		CHECK(pthread_create(&th[i], NULL, race_main, &r[i]), ==, 0);
	}
	for (i = 0; i < 2; i++)
		pthread_join(th[i], NULL);
	pthread_barrier_destroy(&go);
	CHECK(r[0].got, ==, len);
	CHECK(r[1].got, ==, len);
	if (r[0].got == len && r[1].got == len) {
		CHECK(memcmp(r[0].buf, r[1].buf, len), ==, 0);
		CHECK(memcmp(r[0].buf, w->bytes + var->seg[s].off, len), ==, 0);
	}
	pthread_mutex_lock(&var->lock);
	src1 = var->prod_src;
	pthread_mutex_unlock(&var->lock);
	CHECK(src1 - src0, ==, w->v->g[gi].src_bytes);
	CHECK(qf_flight_cached(fs, &var->fl, (size_t)gi), ==, 1);
	free(r[0].buf);
	free(r[1].buf);
}

/* Races for the largest groups (the MLP's): their production is long
 * enough for the two readers to meet. */
static void test_race(struct qf_fs *fs, uint64_t ino, const struct want *w)
{
	uint64_t most = 0;
	size_t gi, n = 0;

	for (gi = 0; gi < w->v->ng; gi++)
		if (w->v->g[gi].src_bytes > most)
			most = w->v->g[gi].src_bytes;
	for (gi = 0; gi < w->v->ng; gi++)
		if (w->v->g[gi].src_bytes == most && n++ < 4)
			race(fs, ino, w, gi);
	CHECK(n, >=, 2);
}

/* original/config.json: the source's bytes, from its file. */
static void test_source(struct qf_fs *fs, uint64_t mdl)
{
	uint64_t orig = lookup(fs, mdl, "original");
	uint64_t f = lookup(fs, orig, "config.json");
	struct qf_buf path = QF_BUF_INIT, text = QF_BUF_INIT;
	struct qf_fs_entry e;
	struct qf_fs_open op;
	struct qf_fs_rd rd;

	CHECK(qf_buf_addf(&path, "%s/src/tiny/config.json", dir), ==, 0);
	CHECK(qf_read_file(path.data, 1 << 20, &text), ==, 0);
	CHECK(qf_fs_do_getattr(fs, f, &e), ==, 0);
	CHECK(e.st.st_size, ==, text.len);
	CHECK(qf_fs_do_open(fs, f, O_RDONLY, &op), ==, 0);
	CHECK(op.fh, >, 0);		/* its file, open */
	check_range(fs, f, op.fh, (const uint8_t *)text.data, text.len, 0,
		    1 << 16);
	check_range(fs, f, op.fh, (const uint8_t *)text.data, text.len, 3,
		    20);
	qf_fs_do_release(fs, f, op.fh);
	CHECK(qf_fs_do_read(fs, f, 0, 0, 10, &rd), ==, -EBADF);
	qf_fs_rd_release(&rd);
	qf_buf_release(&path);
	qf_buf_release(&text);
}

static void test_fs(const char *src, const char *cache, struct want *w)
{
	struct qf_fs_opts o = { .src = src, .cache_dir = cache };
	uint64_t mdl, vd, st, cfg, b;
	struct qf_fs_entry e;
	struct qf_fs_open op;
	struct qf_fs *fs = NULL;
	struct qf_fs_rd rd;

	CHECK(qf_fs_new(&o, &fs), ==, 0);
	if (!fs)
		return;
	CHECK(qf_fs_do_getattr(fs, QF_FS_ROOT_INO, &e), ==, 0);
	CHECK(S_ISDIR(e.st.st_mode), ==, 1);
	CHECK(qf_fs_do_getattr(fs, 999999, &e), ==, -ENOENT);
	mdl = lookup(fs, QF_FS_ROOT_INO, "tiny");
	vd = lookup(fs, mdl, VARIANT);
	st = lookup(fs, vd, "model.safetensors");
	cfg = lookup(fs, vd, "config.json");
	CHECK(vd != mdl && st != vd && cfg != st, ==, 1);
	/* names that do not resolve */
	CHECK(qf_fs_do_lookup(fs, QF_FS_ROOT_INO, "nosuch", &e), ==, -ENOENT);
	CHECK(qf_fs_do_lookup(fs, mdl, "rtn_w99_g128", &e), ==, -ENOENT);
	CHECK(qf_fs_do_lookup(fs, mdl, "not a variant", &e), ==, -ENOENT);
	CHECK(qf_fs_do_lookup(fs, vd, "model.bin", &e), ==, -ENOENT);
	CHECK(qf_fs_do_lookup(fs, st, "x", &e), ==, -ENOTDIR);
	/* attributes */
	CHECK(qf_fs_do_getattr(fs, mdl, &e), ==, 0);
	CHECK(S_ISDIR(e.st.st_mode), ==, 1);
	CHECK(qf_fs_do_getattr(fs, st, &e), ==, 0);
	CHECK(S_ISREG(e.st.st_mode), ==, 1);
	CHECK(e.st.st_size, ==, w->size);
	CHECK(qf_fs_do_getattr(fs, cfg, &e), ==, 0);
	CHECK(e.st.st_size, ==, w->config.len);
	/* listings */
	CHECK(listed(fs, QF_FS_ROOT_INO, "tiny"), ==, 1);
	CHECK(listed(fs, QF_FS_ROOT_INO, "nosuch"), ==, 0);
	CHECK(listed(fs, mdl, "original"), ==, 1);
	CHECK(listed(fs, vd, "model.safetensors"), ==, 1);
	CHECK(listed(fs, vd, "config.json"), ==, 1);
	CHECK(listed(fs, vd, "quantization.json"), ==, 1);
	/* opens: read-only files */
	CHECK(qf_fs_do_open(fs, vd, O_RDONLY, &op), ==, -EISDIR);
	CHECK(qf_fs_do_open(fs, st, O_RDWR, &op), ==, -EROFS);
	CHECK(qf_fs_do_open(fs, st, O_RDONLY, &op), ==, 0);
	CHECK(op.backing, ==, 0);	/* no mount: no passthrough */
	test_race(fs, st, w);
	/* byte ranges against the file built here */
	b = w->bound[w->nbound / 2];
	check_range(fs, st, op.fh, w->bytes, w->size, 0, 100);
	check_range(fs, st, op.fh, w->bytes, w->size, b - 50, 100);
	check_range(fs, st, op.fh, w->bytes, w->size, w->size - 100, 100);
	check_range(fs, st, op.fh, w->bytes, w->size, w->size - 10, 100);
	check_range(fs, st, op.fh, w->bytes, w->size, w->size + 5, 100);
	check_range(fs, st, op.fh, w->bytes, w->size, 0, w->size);
	qf_fs_do_release(fs, st, op.fh);
	/* config.json */
	CHECK(qf_fs_do_open(fs, cfg, O_RDONLY, &op), ==, 0);
	check_range(fs, cfg, op.fh, (const uint8_t *)w->config.data,
		    w->config.len, 0, 1 << 20);
	check_range(fs, cfg, op.fh, (const uint8_t *)w->config.data,
		    w->config.len, 7, 10);
	qf_fs_do_release(fs, cfg, op.fh);
	/* a source file, spliced from its own file */
	test_source(fs, mdl);
	/* a directory has no bytes */
	CHECK(qf_fs_do_read(fs, vd, 0, 0, 10, &rd), ==, -EISDIR);
	qf_fs_rd_release(&rd);
	qf_fs_free(fs);
}

int main(void)
{
	struct qf_mkmodel_opts mo;
	char src[300], mdir[300], cache[300], cmd[400];
	struct want w;

	if (!mkdtemp(dir))
		return 1;
	qf_log_set_level(QF_LOG_WARN);
	snprintf(src, sizeof(src), "%s/src", dir);
	snprintf(mdir, sizeof(mdir), "%s/src/tiny", dir);
	snprintf(cache, sizeof(cache), "%s/cache", dir);
	CHECK(mkdir(src, 0755), ==, 0);
	qf_mkmodel_defaults(&mo);
	mo.layers = 2;
	mo.hidden = 512;		/* an MLP group takes milliseconds */
	mo.inter = 2048;
	CHECK(qf_mkmodel_write(mdir, &mo), ==, 0);
	CHECK(want_build(mdir, &w), ==, 0);
	if (w.bytes)
		test_fs(src, cache, &w);
	want_free(&w);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		return 1;
	return qf_check_exit();
}
