/*
 * test_forward.c - the fp32 forward pass (quant/nn/forward.c, tf_kernels.c)
 * against an independent float64 numpy oracle (forward_ref.py) and the
 * run.c reference logits of stories260K.
 *
 *   test_forward [SHARED [FORWARD_REF_PY]]
 *
 * SHARED defaults to $QF_SHARED, then /work/shared; the oracle script to
 * $QF_FORWARD_REF, then forward_ref.py next to this source file.  Cases
 * needing /usr/bin/python3 with numpy, or a model under SHARED, are
 * skipped with a message when those are missing; exit 77 when nothing ran.
 *
 * (a) generated tiny llama (GQA), llama3 rope_scaling + biases, mistral
 *     (sliding window < seqlen), qwen2 (q/k/v biases), qwen3 (q/k norms,
 *     head_dim != hidden/heads, tied embeddings), each F32 and BF16:
 *     logits of 3 x 17 tokens, max |diff| / max |logit| < 1e-4;
 *     config parsing and QF_EFORMAT / QF_EUNSUPPORTED paths.
 * (b) stories260K vs run.c (204 positions, max abs diff < 1e-3, argmax
 *     204/204) and tinystories-llama-5m vs the oracle on 2 x 64 tokens.
 * (c) the hook: 7 calls per layer in enum order, q/k/v share one input,
 *     layer 0 q input = rmsnorm(embed), down input as the oracle's, an
 *     aborting hook's value comes back.
 */
#include <cblas.h>
#include <cjson/cJSON.h>
#include <dirent.h>
#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "nn.h"
#include "tf_kernels.h"

#define NSEQ 3
#define SEQLEN 17
#define NTOK (NSEQ * SEQLEN)

static const char *shared_dir;
static char refpy[PATH_MAX];
static char tmpdir[] = "/tmp/qf_test_forward_XXXXXX";
static bool have_py;
static int ran;		/* cases that ran */

static int py(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Run forward_ref.py with the given arguments; 0 on success. */
static int py(const char *fmt, ...)
{
	char args[2048], cmd[PATH_MAX + 2200];
	va_list ap;
	int r;

	va_start(ap, fmt);
	vsnprintf(args, sizeof(args), fmt, ap);
	va_end(ap);
	snprintf(cmd, sizeof(cmd), "OPENBLAS_NUM_THREADS=1 /usr/bin/python3 "
		 "'%s' %s", refpy, args);
	r = system(cmd);
	if (r != 0)
		fprintf(stderr, "failed (%d): %s\n", r, cmd);
	return r;
}

/* n float64 values from path, or NULL. */
static double *read_f64(const char *path, size_t n)
{
	double *p = malloc(n * sizeof(double));
	FILE *f = fopen(path, "rb");
	size_t got = 0;

	if (f) {
		got = fread(p, sizeof(double), n + 1, f);
		fclose(f);
	}
	if (got != n) {
		fprintf(stderr, "%s: want %zu doubles, got %zu\n", path, n, got);
		free(p);
		return NULL;
	}
	return p;
}

static int write_ids(const char *path, const int32_t *ids, size_t n)
{
	FILE *f = fopen(path, "wb");
	size_t w;

	if (!f)
		return -1;
	w = fwrite(ids, sizeof(*ids), n, f);
	return fclose(f) == 0 && w == n ? 0 : -1;
}

static void rand_ids(int32_t *ids, size_t n, int vocab, uint64_t seed)
{
	size_t i;

	for (i = 0; i < n; i++) {
		seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
		ids[i] = (int32_t)((seed >> 33) % (uint64_t)vocab);
	}
}

/* max |a - b| and max |b| over n values. */
static double max_diff(const float *a, const double *b, size_t n,
		       double *bmax)
{
	double d = 0, m = 0;
	size_t i;

	for (i = 0; i < n; i++) {
		d = fmax(d, fabs(a[i] - b[i]));
		m = fmax(m, fabs(b[i]));
	}
	*bmax = m;
	return d;
}

static int argmax_f(const float *x, int n)
{
	int i, b = 0;

	for (i = 1; i < n; i++)
		if (x[i] > x[b])
			b = i;
	return b;
}

static int argmax_d(const double *x, int n)
{
	int i, b = 0;

	for (i = 1; i < n; i++)
		if (x[i] > x[b])
			b = i;
	return b;
}

/* Oracle results for a model dir and ids: logits, q input, down input. */
struct oracle {
	double *logits;		/* [n, vocab] */
	double *qin;		/* [n, hidden] */
	double *downin;		/* [n, inter] */
};

static int oracle_run(const char *dir, const struct qf_tf_config *c,
		      const int32_t *ids, int nseq, int seqlen,
		      struct oracle *o)
{
	char ip[PATH_MAX], op[PATH_MAX], fp[PATH_MAX + 16];
	size_t n = (size_t)nseq * seqlen;

	memset(o, 0, sizeof(*o));
	snprintf(ip, sizeof(ip), "%s/ids.bin", tmpdir);
	snprintf(op, sizeof(op), "%s/ref", tmpdir);
	if (write_ids(ip, ids, n) || py("ref '%s' '%s' %d %d '%s'", dir, ip,
					  nseq, seqlen, op))
		return -1;
	snprintf(fp, sizeof(fp), "%s.logits", op);
	o->logits = read_f64(fp, n * c->vocab);
	snprintf(fp, sizeof(fp), "%s.qin", op);
	o->qin = read_f64(fp, n * c->hidden);
	snprintf(fp, sizeof(fp), "%s.downin", op);
	o->downin = read_f64(fp, n * c->inter);
	return o->logits && o->qin && o->downin ? 0 : -1;
}

static void oracle_free(struct oracle *o)
{
	free(o->logits);
	free(o->qin);
	free(o->downin);
}

/* Remove the files of a generated model directory, then the directory. */
static void rm_dir(const char *dir)
{
	char p[PATH_MAX + 256];
	struct dirent *e;
	DIR *d = opendir(dir);

	if (!d)
		return;
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
			snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
			unlink(p);
		}
	closedir(d);
	rmdir(dir);
}

/* ------------------------------------------------------------------ */
/* (c) the hook                                                        */

struct hook_rec {
	int calls;
	int bad_order;		/* calls out of (layer, enum) order */
	int bad_shape;		/* wrong ntok or in */
	const float *qkv_ptr;	/* this layer's q input */
	int qkv_same;		/* k, v saw the q pointer */
	const struct qf_tf_config *c;
	float *qin;		/* [ntok, hidden] layer 0 q input copy */
	float *downin;		/* [ntok, inter] layer 0 down input copy */
	int abort_at;		/* call index returning 7, or -1 */
};

static int rec_hook(void *arg, int layer, enum qf_tf_linear lin,
		    const float *x, int64_t ntok, int64_t in)
{
	struct hook_rec *r = arg;
	const struct qf_tf_config *c = r->c;
	int64_t want = lin == QF_TF_O ? (int64_t)c->heads * c->head_dim :
		       lin == QF_TF_DOWN ? c->inter : c->hidden;

	if (r->calls == r->abort_at)
		return 7;
	if (r->calls != layer * QF_TF_NLINEAR + (int)lin)
		r->bad_order++;
	if (ntok != NTOK || in != want)
		r->bad_shape++;
	if (lin == QF_TF_Q)
		r->qkv_ptr = x;
	if ((lin == QF_TF_K || lin == QF_TF_V) && x == r->qkv_ptr)
		r->qkv_same++;
	if (layer == 0 && lin == QF_TF_Q)
		memcpy(r->qin, x, sizeof(float) * (size_t)(ntok * in));
	if (layer == 0 && lin == QF_TF_DOWN)
		memcpy(r->downin, x, sizeof(float) * (size_t)(ntok * in));
	r->calls++;
	return 0;
}

/* Layer by layer with the hook; returns the first error. */
static int hooked_logits(const struct qf_model *m, const struct qf_tf_config *c,
			 const int32_t *ids, struct hook_rec *r,
			 float *logits)
{
	float *x = malloc(sizeof(float) * NTOK * (size_t)c->hidden);
	struct qf_tf_layer ly;
	int l, ret;

	ret = qf_tf_embed(m, c, ids, NTOK, x);
	for (l = 0; l < c->layers && ret == 0; l++) {
		ret = qf_tf_layer_load(m, c, l, &ly);
		if (ret == 0)
			ret = qf_tf_layer_forward(c, &ly, l, x, NSEQ, SEQLEN,
						  rec_hook, r);
		qf_tf_layer_free(&ly);
	}
	if (ret == 0)
		ret = qf_tf_head(m, c, x, NTOK, logits);
	free(x);
	return ret;
}

static void test_hook(const struct qf_model *m, const struct qf_tf_config *c,
		      const int32_t *ids, const struct oracle *o,
		      const float *logits)
{
	struct hook_rec r = { .c = c, .abort_at = -1 };
	float *lg = malloc(sizeof(float) * NTOK * (size_t)c->vocab);
	double dq, dd, mq, md, dl, ml;

	r.qin = malloc(sizeof(float) * NTOK * (size_t)c->hidden);
	r.downin = malloc(sizeof(float) * NTOK * (size_t)c->inter);
	CHECK(hooked_logits(m, c, ids, &r, lg), ==, 0);
	CHECK(r.calls, ==, QF_TF_NLINEAR * c->layers);
	CHECK(r.bad_order, ==, 0);
	CHECK(r.bad_shape, ==, 0);
	CHECK(r.qkv_same, ==, 2 * c->layers);
	dq = max_diff(r.qin, o->qin, NTOK * (size_t)c->hidden, &mq);
	dd = max_diff(r.downin, o->downin, NTOK * (size_t)c->inter, &md);
	dl = max_diff(lg, o->logits, NTOK * (size_t)c->vocab, &ml);
	printf("  hook: %d calls; layer 0 q input rel diff %.3g, down input "
	       "rel diff %.3g; hooked logits rel diff %.3g\n", r.calls,
	       dq / mq, dd / md, dl / ml);
	CHECK(dq / mq < 1e-5, ==, 1);
	CHECK(dd / md < 1e-5, ==, 1);
	/* the same kernels as qf_tf_logits: bit-identical */
	CHECK(memcmp(lg, logits, sizeof(float) * NTOK * (size_t)c->vocab), ==,
	      0);
	/* each layer on the scratch the one before left (kept): the
	 * forward reads nothing of it it did not write */
	r.calls = 0;
	qf_tf_scratch_keep(true);
	CHECK(hooked_logits(m, c, ids, &r, lg), ==, 0);
	qf_tf_scratch_keep(false);
	CHECK(memcmp(lg, logits, sizeof(float) * NTOK * (size_t)c->vocab), ==,
	      0);
	/* a non-zero hook value aborts and comes back */
	r.calls = 0;
	r.abort_at = QF_TF_NLINEAR + QF_TF_UP;
	CHECK(hooked_logits(m, c, ids, &r, lg), ==, 7);
	CHECK(r.calls, ==, QF_TF_NLINEAR + QF_TF_UP);
	free(r.qin);
	free(r.downin);
	free(lg);
}

/* ------------------------------------------------------------------ */
/* (a) generated models                                                */

static void check_config(const char *kind, const struct qf_tf_config *c)
{
	if (!strcmp(kind, "llama")) {
		CHECK_STR(c->model_type, "llama");
		CHECK(c->head_dim, ==, 16);
		CHECK(c->kv_heads, ==, 2);
		CHECK(c->tie, ==, 0);
		CHECK(c->attn_bias, ==, 0);
	} else if (!strcmp(kind, "llama3")) {
		CHECK_NEAR(c->rope_factor, 8, 0);
		CHECK(c->rope_orig_max_pos, ==, 64);
		CHECK(c->attn_bias, ==, 1);
		CHECK(c->kv_heads, ==, 1);
	} else if (!strcmp(kind, "mistral")) {
		CHECK_STR(c->model_type, "mistral");
		CHECK(c->heads, ==, 8);
	} else if (!strcmp(kind, "qwen2")) {
		CHECK(c->attn_bias, ==, 1);
		CHECK(c->qk_norm, ==, 0);
	} else if (!strcmp(kind, "qwen3")) {
		CHECK(c->head_dim, ==, 32);
		CHECK(c->qk_norm, ==, 1);
		CHECK(c->tie, ==, 1);
		CHECK(c->attn_bias, ==, 0);
	}
}

static void test_generated(const char *kind, const char *dtype, int seed,
			   int nseq, int seqlen)
{
	int64_t n = (int64_t)nseq * seqlen;
	char dir[PATH_MAX];
	struct qf_model *m = NULL;
	struct qf_tf_config c;
	struct oracle o;
	int32_t *ids = malloc(sizeof(int32_t) * (size_t)n);
	float *logits;
	double d, mx;
	int i, agree = 0;

	snprintf(dir, sizeof(dir), "%s/%s_%s", tmpdir, kind, dtype);
	if (py("gen '%s' --kind %s --dtype %s --seed %d", dir, kind, dtype,
	       seed)) {
		CHECK(0, ==, 1);
		return;
	}
	CHECK(qf_model_open(dir, &m), ==, 0);
	if (!m)
		return;
	CHECK(qf_tf_config_parse(m, &c), ==, 0);
	check_config(kind, &c);
	rand_ids(ids, (size_t)n, c.vocab, (uint64_t)seed);
	logits = malloc(sizeof(float) * (size_t)(n * c.vocab));
	CHECK(qf_tf_logits(m, &c, ids, nseq, seqlen, logits), ==, 0);
	if (oracle_run(dir, &c, ids, nseq, seqlen, &o) == 0) {
		d = max_diff(logits, o.logits, (size_t)(n * c.vocab), &mx);
		for (i = 0; i < n; i++)
			agree += argmax_f(logits + i * c.vocab, c.vocab) ==
				 argmax_d(o.logits + i * c.vocab, c.vocab);
		printf("(a) %-7s %-4s %dx%d: max abs diff %.3g, max |logit| "
		       "%.3g, rel %.3g, argmax %d/%d\n", kind, dtype, nseq,
		       seqlen, d, mx, d / mx, agree, (int)n);
		CHECK(d / mx < 1e-4, ==, 1);
		CHECK(agree, >=, n - 1);	/* ties at 1e-6 may flip */
		if (!strcmp(kind, "llama") && !strcmp(dtype, "F32") &&
		    n == NTOK)
			test_hook(m, &c, ids, &o, logits);
		ran++;
	} else {
		CHECK(0, ==, 1);
	}
	oracle_free(&o);
	free(logits);
	free(ids);
	qf_model_close(m);
	rm_dir(dir);
}

/* A broken model: the load fails with QF_EFORMAT at layer bad_layer. */
static void test_broken(const char *how, const char *name, int bad_layer)
{
	char dir[PATH_MAX];
	struct qf_model *m = NULL;
	struct qf_tf_config c;
	struct qf_tf_layer ly;
	int32_t ids[NTOK] = { 0 };
	float *logits;

	snprintf(dir, sizeof(dir), "%s/broken", tmpdir);
	if (py("gen '%s' --kind llama --dtype F32 --seed 3 --%s %s", dir, how,
	       name)) {
		CHECK(0, ==, 1);
		return;
	}
	CHECK(qf_model_open(dir, &m), ==, 0);
	if (!m)
		return;
	CHECK(qf_tf_config_parse(m, &c), ==, 0);
	CHECK(qf_tf_layer_load(m, &c, bad_layer ? 0 : 1, &ly), ==, 0);
	qf_tf_layer_free(&ly);
	fprintf(stderr, "expect an error naming %s:\n", name);
	CHECK(qf_tf_layer_load(m, &c, bad_layer, &ly), ==, QF_EFORMAT);
	CHECK(ly.w[QF_TF_Q] == NULL, ==, 1);
	logits = malloc(sizeof(float) * NTOK * (size_t)c.vocab);
	CHECK(qf_tf_logits(m, &c, ids, NSEQ, SEQLEN, logits), ==, QF_EFORMAT);
	free(logits);
	qf_model_close(m);
	rm_dir(dir);
}

/* Config edge cases, by editing an opened model's parsed config. */
static void test_config_errors(void)
{
	char dir[PATH_MAX];
	struct qf_model *m = NULL;
	struct qf_tf_config c;
	cJSON *cfg;

	snprintf(dir, sizeof(dir), "%s/cfg", tmpdir);
	if (py("gen '%s' --kind llama3 --dtype BF16 --seed 4", dir)) {
		CHECK(0, ==, 1);
		return;
	}
	CHECK(qf_model_open(dir, &m), ==, 0);
	if (!m)
		return;
	cfg = m->config;
	cJSON_ReplaceItemInObject(cfg, "model_type", cJSON_CreateString("gpt2"));
	CHECK(qf_tf_config_parse(m, &c), ==, QF_EUNSUPPORTED);
	cJSON_ReplaceItemInObject(cfg, "model_type", cJSON_CreateString("llama"));
	CHECK(qf_tf_config_parse(m, &c), ==, 0);
	cJSON_ReplaceItemInObject(cJSON_GetObjectItem(cfg, "rope_scaling"),
				  "rope_type", cJSON_CreateString("yarn"));
	CHECK(qf_tf_config_parse(m, &c), ==, QF_EUNSUPPORTED);
	cJSON_ReplaceItemInObject(cfg, "rope_scaling", cJSON_CreateNull());
	CHECK(qf_tf_config_parse(m, &c), ==, 0);
	CHECK_NEAR(c.rope_factor, 0, 0);
	cJSON_ReplaceItemInObject(cfg, "num_key_value_heads",
				  cJSON_CreateNumber(3));
	CHECK(qf_tf_config_parse(m, &c), ==, QF_EFORMAT);
	cJSON_DeleteItemFromObject(cfg, "num_key_value_heads");
	CHECK(qf_tf_config_parse(m, &c), ==, 0);
	CHECK(c.kv_heads, ==, c.heads);
	cJSON_DeleteItemFromObject(cfg, "hidden_size");
	CHECK(qf_tf_config_parse(m, &c), ==, QF_EFORMAT);
	CHECK_STR(qf_tf_linear_name(QF_TF_Q), "self_attn.q_proj");
	CHECK_STR(qf_tf_linear_name(QF_TF_DOWN), "mlp.down_proj");
	CHECK(qf_tf_linear_name(QF_TF_NLINEAR) == NULL, ==, 1);
	qf_model_close(m);
	rm_dir(dir);
}

/* ------------------------------------------------------------------ */
/* (b) real models                                                     */

/* prompt_ids_with_bos + greedy_new_ids; returns the count or -1. */
static int greedy_ids(const char *path, int32_t *ids, int cap)
{
	struct qf_buf b = QF_BUF_INIT;
	const char *keys[2] = { "prompt_ids_with_bos", "greedy_new_ids" };
	cJSON *j, *it;
	int n = 0, k;

	if (qf_read_file(path, 1 << 20, &b) < 0)
		return -1;
	j = cJSON_ParseWithLength(b.data, b.len);
	qf_buf_release(&b);
	for (k = 0; k < 2; k++)
		cJSON_ArrayForEach(it, cJSON_GetObjectItem(j, keys[k]))
			if (n < cap && cJSON_IsNumber(it))
				ids[n++] = (int32_t)it->valueint;
	cJSON_Delete(j);
	return n;
}

static void test_stories260k(void)
{
	char dir[PATH_MAX], p[PATH_MAX];
	enum { T = 204, V = 512 };
	struct qf_model *m = NULL;
	struct qf_tf_config c;
	int32_t ids[T + 1];
	float *ours, *ref;
	double d = 0, mx = 0;
	int i, agree = 0, greedy = 0;
	FILE *f;

	snprintf(dir, sizeof(dir), "%s/data/models/stories260K", shared_dir);
	snprintf(p, sizeof(p), "%s/data/reference/stories260K_greedy.json",
		 shared_dir);
	if (access(dir, F_OK) || access(p, F_OK)) {
		printf("(b) stories260K: skipped, %s absent\n", dir);
		return;
	}
	CHECK(greedy_ids(p, ids, T + 1), ==, T + 1);
	CHECK(qf_model_open(dir, &m), ==, 0);
	if (!m)
		return;
	CHECK(qf_tf_config_parse(m, &c), ==, 0);
	CHECK(c.vocab, ==, V);
	CHECK(c.tie, ==, 1);
	ours = malloc(sizeof(float) * T * V);
	ref = malloc(sizeof(float) * T * V);
	CHECK(qf_tf_logits(m, &c, ids, 1, T, ours), ==, 0);
	snprintf(p, sizeof(p),
		 "%s/data/reference/stories260K_runc_logits_f32le_204x512.bin",
		 shared_dir);
	f = fopen(p, "rb");
	CHECK(f && fread(ref, sizeof(float), T * V, f) == T * V, ==, 1);
	if (f)
		fclose(f);
	for (i = 0; i < T * V; i++) {
		d = fmax(d, fabs(ours[i] - ref[i]));
		mx = fmax(mx, fabs(ref[i]));
	}
	for (i = 0; i < T; i++) {
		agree += argmax_f(ours + i * V, V) == argmax_f(ref + i * V, V);
		greedy += i >= 4 && argmax_f(ours + i * V, V) == ids[i + 1];
	}
	printf("(b) stories260K vs run.c: max abs diff %.3g (max |logit| "
	       "%.4g), argmax %d/%d, greedy ids %d/%d\n", d, mx, agree, T,
	       greedy, T - 4);
	CHECK(d < 1e-3, ==, 1);
	CHECK(agree, ==, T);
	CHECK(greedy, ==, T - 4);
	free(ours);
	free(ref);
	qf_model_close(m);
	ran++;
}

static void test_tinystories5m(void)
{
	char dir[PATH_MAX];
	enum { NS = 2, SL = 64 };
	struct qf_model *m = NULL;
	struct qf_tf_config c;
	int32_t ids[NS * SL];
	struct oracle o;
	float *ours;
	double d, mx;
	int i, agree = 0;

	snprintf(dir, sizeof(dir), "%s/data/models/tinystories-llama-5m",
		 shared_dir);
	if (access(dir, F_OK)) {
		printf("(b) tinystories-llama-5m: skipped, %s absent\n", dir);
		return;
	}
	if (!have_py) {
		printf("(b) tinystories-llama-5m: skipped, no python oracle\n");
		return;
	}
	CHECK(qf_model_open(dir, &m), ==, 0);
	if (!m)
		return;
	CHECK(qf_tf_config_parse(m, &c), ==, 0);
	CHECK(c.tie, ==, 0);
	rand_ids(ids, NS * SL, c.vocab, 99);
	ids[0] = ids[SL] = 1;	/* BOS */
	ours = malloc(sizeof(float) * NS * SL * (size_t)c.vocab);
	CHECK(qf_tf_logits(m, &c, ids, NS, SL, ours), ==, 0);
	if (oracle_run(dir, &c, ids, NS, SL, &o) == 0) {
		d = max_diff(ours, o.logits, NS * SL * (size_t)c.vocab, &mx);
		for (i = 0; i < NS * SL; i++)
			agree += argmax_f(ours + i * c.vocab, c.vocab) ==
				 argmax_d(o.logits + i * c.vocab, c.vocab);
		printf("(b) tinystories-llama-5m vs oracle: max abs diff "
		       "%.3g, max |logit| %.3g, rel %.3g, argmax %d/%d\n", d,
		       mx, d / mx, agree, NS * SL);
		CHECK(d / mx < 1e-4, ==, 1);
		CHECK(agree, ==, NS * SL);
		ran++;
	} else {
		CHECK(0, ==, 1);
	}
	oracle_free(&o);
	free(ours);
	qf_model_close(m);
}

/*
 * KL against one reference, its side once (mixed precision's trials):
 * qf_logits_kl's values bit for bit, and qf_logits_kl_rows' too.
 */
static void test_kl_ref(void)
{
	enum { ROWS = 37, V = 1001, NB = 3 };
	float *a = malloc(sizeof(float) * ROWS * V);
	float *b = malloc(sizeof(float) * NB * ROWS * V);
	double *ea = malloc(sizeof(double) * ROWS * V);
	double ma[ROWS], sa[ROWS], got[ROWS], rows[ROWS];
	uint64_t st = 12345;
	int i, r, t, same = 0, pos = 0;

	for (i = 0; i < ROWS * V; i++) {
		st = st * 6364136223846793005ULL + 1442695040888963407ULL;
		a[i] = (float)((int64_t)(st >> 40) % 4000) / 100.0f - 20.0f;
	}
	for (i = 0; i < NB * ROWS * V; i++)	/* near a, ties, far */
		b[i] = i % 7 == 0 ? a[i % (ROWS * V)] :
		       a[i % (ROWS * V)] + (float)(i % 13 - 6) * 0.37f;
	qf_logits_ref_rows(a, ROWS, V, ea, ma, sa);
	for (t = 0; t < NB; t++) {
		qf_logits_kl_ref_rows(a, ea, ma, sa, b + t * ROWS * V, ROWS, V,
				      got);
		qf_logits_kl_rows(a, b + t * ROWS * V, ROWS, V, rows);
		for (r = 0; r < ROWS; r++) {
			double want = qf_logits_kl(a + r * V,
						   b + (t * ROWS + r) * V, V);

			same += !memcmp(&got[r], &want, sizeof(want)) &&
				!memcmp(&rows[r], &want, sizeof(want));
			pos += want > 0;
		}
	}
	printf("KL against a reference: %d of %d rows bit for bit, %d "
	       "positive\n", same, NB * ROWS, pos);
	CHECK(same, ==, NB * ROWS);
	CHECK(pos, ==, NB * ROWS);
	free(a);
	free(b);
	free(ea);
}

/* SwiGLU over more elements than one thread takes: the same bytes as in
 * pieces each below it (the split starts on multiples of 8). */
static void test_swiglu_split(void)
{
	enum { N = 600011 };
	float *g = malloc(sizeof(float) * N), *h = malloc(sizeof(float) * N);
	float *u = malloc(sizeof(float) * N);
	int i;

	for (i = 0; i < N; i++) {
		g[i] = h[i] = -9.0f + 18.0f * (float)(((int64_t)i * 7919) % N) / N;
		u[i] = 0.5f + (float)(i % 3);
	}
	qf_tf_swiglu(g, u, N);
	for (i = 0; i < N; i += 40000)	/* pieces of 40000: one part each */
		qf_tf_swiglu(h + i, u + i, N - i < 40000 ? N - i : 40000);
	CHECK(memcmp(g, h, sizeof(float) * N), ==, 0);
	free(g);
	free(h);
	free(u);
}

/* The vectorized exp inside SwiGLU against expf. */
static void test_swiglu(void)
{
	enum { N = 4003 };
	float *g = malloc(sizeof(float) * N), *u = malloc(sizeof(float) * N);
	float *x = malloc(sizeof(float) * N);
	double worst = 0, want;
	int i;

	for (i = 0; i < N; i++) {
		x[i] = g[i] = -90.0f + 180.0f * (float)i / (N - 1);
		u[i] = 1.0f + (float)(i % 5);
	}
	qf_tf_swiglu(g, u, N);
	for (i = 0; i < N; i++) {
		want = x[i] / (1 + exp(-(double)x[i])) * u[i];
		worst = fmax(worst, fabs(g[i] - want) / fmax(fabs(want), 1e-20));
	}
	printf("swiglu: max rel error %.3g over [-90, 90] (outputs under "
	       "1e-20 count as 1e-20)\n", worst);
	CHECK(worst < 1e-6, ==, 1);
	free(x);
	free(g);
	free(u);
}

static void find_refpy(int argc, char **argv)
{
	const char *env = getenv("QF_FORWARD_REF");
	const char *slash;

	if (argc > 2)
		snprintf(refpy, sizeof(refpy), "%s", argv[2]);
	else if (env)
		snprintf(refpy, sizeof(refpy), "%s", env);
	else if ((slash = strrchr(__FILE__, '/')))
		snprintf(refpy, sizeof(refpy), "%.*s/forward_ref.py",
			 (int)(slash - __FILE__), __FILE__);
	else
		snprintf(refpy, sizeof(refpy), "forward_ref.py");
	have_py = access(refpy, R_OK) == 0 &&
		  system("/usr/bin/python3 -c 'import numpy' 2>/dev/null") == 0;
	if (!have_py)
		printf("no oracle (%s with /usr/bin/python3 + numpy): cases "
		       "(a), (c) and tinystories-llama-5m skipped\n", refpy);
}

int main(int argc, char **argv)
{
	static const char *const kinds[] = { "llama", "llama3", "mistral",
					     "qwen2", "qwen3" };
	size_t k;

	shared_dir = argc > 1 ? argv[1] : getenv("QF_SHARED");
	if (!shared_dir)
		shared_dir = "/work/shared";
	setvbuf(stdout, NULL, _IOLBF, 0);
	setenv("OPENBLAS_NUM_THREADS", "1", 1);
	openblas_set_num_threads(1);
	find_refpy(argc, argv);
	if (!mkdtemp(tmpdir)) {
		perror("mkdtemp");
		return 1;
	}
	test_swiglu();
	test_swiglu_split();
	test_kl_ref();
	if (have_py) {
		for (k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
			test_generated(kinds[k], "F32", 10 + (int)k, NSEQ,
				       SEQLEN);
			test_generated(kinds[k], "BF16", 20 + (int)k, NSEQ,
				       SEQLEN);
		}
		/* more than one attention block, window across blocks */
		test_generated("mistral", "F32", 30, 2, 150);
		test_generated("qwen3", "BF16", 31, 1, 200);
		test_broken("drop", "model.layers.1.mlp.up_proj.weight", 1);
		test_broken("transpose", "model.layers.0.mlp.down_proj.weight",
			    0);
		test_config_errors();
	}
	test_stories260k();
	test_tinystories5m();
	rm_dir(tmpdir);
	if (!ran && !qf_check_failed) {
		printf("nothing to test: skipped\n");
		return 77;
	}
	return qf_check_exit();
}
