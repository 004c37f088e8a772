/*
 * test_calib.c - calibration: X^T X and channel statistics against a
 * direct double computation, the token-set hash against Python's
 * hashlib, the driver's memory bound on a generated model, and AWQ's
 * folded scales leaving each fp layer's function unchanged.
 *
 * usage: test_calib QUANTFS   (to generate the model)
 */
#include <malloc.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "method.h"

static uint64_t rng = 42;

static float frand(void)
{
	rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
	return (float)((double)(rng >> 11) * 0x1.0p-53) * 2 - 1;
}

static void test_stats(void)
{
	int64_t n = 1000, in = 96, i, j, k;
	float *x = malloc((size_t)(n * in) * sizeof(*x));
	double *h = calloc((size_t)(in * in), sizeof(*h));
	struct qf_lin_stats s;
	double worst = 0, sa = 0, sq = 0;

	for (i = 0; i < n * in; i++)
		x[i] = frand() * (i % in == 3 ? 10 : 1);
	CHECK(qf_lin_stats_init(&s, in, true), ==, 0);
	/* in uneven chunks, as the driver feeds batches */
	qf_lin_stats_add(&s, x, 1);
	qf_lin_stats_add(&s, x + in, 600);
	qf_lin_stats_add(&s, x + 601 * in, n - 601);
	qf_lin_stats_finish(&s);
	CHECK(s.n, ==, n);
	for (i = 0; i < n; i++)
		for (j = 0; j < in; j++)
			for (k = 0; k < in; k++)
				h[j * in + k] += (double)x[i * in + j] *
						 x[i * in + k];
	for (j = 0; j < in * in; j++) {
		double e = fabs(s.h[j] - h[j]) / (fabs(h[j]) + 1);

		worst = e > worst ? e : worst;
	}
	CHECK_NEAR(worst, 0, 1e-4);	/* fp32 sums of 1000 rows */
	for (i = 0; i < n; i++) {
		sa += fabs(x[i * in + 3]);
		sq += (double)x[i * in + 3] * x[i * in + 3];
	}
	CHECK_NEAR(s.sum_abs[3], sa, 1e-6 * sa);
	CHECK_NEAR(s.sum_sq[3], sq, 1e-6 * sq);
	qf_lin_stats_free(&s);
	free(x);
	free(h);
}

static void test_hash(void)
{
	struct qf_calib cs = { 0 };
	char cmd[512], out[80] = "";
	FILE *p;
	int i;

	cs.nseq = 3;
	cs.seqlen = 5;
	cs.ids = malloc(15 * sizeof(*cs.ids));
	for (i = 0; i < 15; i++)
		cs.ids[i] = i * 1000 + 7;
	qf_calib_hash(&cs);
	/* independent: Python's hashlib over the documented serialization */
	snprintf(cmd, sizeof(cmd), "/usr/bin/python3 -c \"import hashlib,"
		 "struct; print(hashlib.sha256(b'quantfs-calib-v1\\0' + "
		 "struct.pack('<2I', 3, 5) + struct.pack('<15i', "
		 "*[i * 1000 + 7 for i in range(15)])).hexdigest())\"");
	p = popen(cmd, "r");
	if (p && fgets(out, sizeof(out), p))
		out[strcspn(out, "\n")] = 0;
	if (p)
		pclose(p);
	CHECK_STR(cs.hash_hex, out);
	cs.ids[14]++;
	{
		char before[65];

		memcpy(before, cs.hash_hex, 65);
		qf_calib_hash(&cs);
		CHECK(strcmp(before, cs.hash_hex), !=, 0);
	}
	qf_calib_free(&cs);
}

struct mem_probe {
	long peak;
	int calls;
};

static int probe_quantize(void *arg, int layer, struct qf_tf_layer *ly,
			  const enum qf_tf_linear *lin, int n,
			  struct qf_lin_stats *stats)
{
	struct mem_probe *m = arg;
	long r = qf_vm_kb("RssAnon", false);

	(void)layer, (void)ly, (void)lin, (void)n, (void)stats;
	m->peak = r > m->peak ? r : m->peak;
	m->calls++;
	return 0;
}

static void test_memory_bound(const char *quantfs)
{
	char dir[] = "/tmp/qfcalib.XXXXXX", cmd[512];
	struct qf_calib_ops ops = { .hessian = true, .sequential = true,
				    .quantize = probe_quantize };
	struct mem_probe mp = { 0, 0 };
	struct qf_tf_config c;
	struct qf_calib cs = { 0 };
	struct qf_model *m;
	long base, layer_kb, act_kb, h_kb, model_kb;
	int i;

	if (!mkdtemp(dir))
		return;
	snprintf(cmd, sizeof(cmd), "%s mkmodel %s/m --hidden 512 --inter 1536 "
		 "--layers 16 --heads 8 --kv-heads 4 --vocab 512", quantfs, dir);
	CHECK(system(cmd), ==, 0);
	snprintf(cmd, sizeof(cmd), "%s/m", dir);
	CHECK(qf_model_open(cmd, &m), ==, 0);
	CHECK(qf_tf_config_parse(m, &c), ==, 0);
	cs.nseq = 8;
	cs.seqlen = 128;
	cs.ids = malloc(8 * 128 * sizeof(*cs.ids));
	for (i = 0; i < 8 * 128; i++)
		cs.ids[i] = (i * 37) % 512;
	base = qf_vm_kb("RssAnon", false);
	CHECK(qf_calib_run(m, &c, &cs, &ops, &mp), ==, 0);
	CHECK(mp.calls, ==, 16 * 4);	/* 4 true-sequential stages */
	layer_kb = (long)(4 * 512 * 512 + 3 * 512 * 1536) * 4 / 1024;
	act_kb = 2L * 8 * 128 * 512 * 4 / 1024;
	h_kb = 1536L * 1536 * 4 / 1024;
	model_kb = 16 * layer_kb;
	fprintf(stderr, "driver peak RssAnon +%ld KiB: one fp32 layer %ld, "
		"activations x2 %ld, largest H %ld, whole model fp32 %ld\n",
		mp.peak - base, layer_kb, act_kb, h_kb, model_kb);
	/* one layer + activations + stats (+ forward scratch), never the
	 * model: the whole fp32 model alone is 4x this bound */
	CHECK(mp.peak - base, <, 2 * (layer_kb + act_kb + h_kb));
	CHECK(2 * (layer_kb + act_kb + h_kb), <, model_kb);
	qf_calib_free(&cs);
	qf_model_close(m);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	CHECK(system(cmd), ==, 0);
}

#define NSEQ 48			/* 3 chunks of QF_TF_ROWS tokens */
#define NTOK (NSEQ * 32)

struct ident {
	float *last;		/* copy of the last layer's output */
	int64_t n;
	int calls;
	int layers_done;
};

static int ident_quantize(void *arg, int layer, struct qf_tf_layer *ly,
			  const enum qf_tf_linear *lin, int n,
			  struct qf_lin_stats *stats)
{
	struct ident *id = arg;
	int i;

	(void)layer, (void)ly;
	for (i = 0; i < n; i++)	/* every linear gets its own full stats */
		if (stats[lin[i]].n != NTOK || !stats[lin[i]].h)
			return -EINVAL;
	id->calls++;
	return 0;
}

static int ident_done(void *arg, int layer, const float *x, int64_t ntok,
		      double seconds)
{
	struct ident *id = arg;

	(void)seconds;
	/* spilled (spill_dir): the last layer's output only */
	if (x)
		memcpy(id->last, x, (size_t)id->n * sizeof(float));
	else if (layer == 2)
		return -EINVAL;
	id->layers_done++;
	(void)ntok;
	return 0;
}

/*
 * With quantizers that change nothing, the driver is the forward pass:
 * in one pass and streamed, sequential or not.  arch: mkmodel's (Gemma
 * 3's sliding layers have their own rope base).
 */
static void test_driver_identity(const char *quantfs, const char *arch)
{
	char dir[] = "/tmp/qfdrv.XXXXXX", cmd[512];
	struct qf_tf_config c;
	struct qf_calib cs = { 0 };
	struct qf_model *m;
	float *x;
	int seq, i, l;

	if (!mkdtemp(dir))
		return;
	snprintf(cmd, sizeof(cmd), "%s mkmodel %s/m --layers 3 --seed 5 %s",
		 quantfs, dir, arch);
	CHECK(system(cmd), ==, 0);
	snprintf(cmd, sizeof(cmd), "%s/m", dir);
	CHECK(qf_model_open(cmd, &m), ==, 0);
	CHECK(qf_tf_config_parse(m, &c), ==, 0);
	cs.nseq = NSEQ;
	cs.seqlen = 32;
	cs.ids = malloc(NTOK * sizeof(*cs.ids));
	for (i = 0; i < NTOK; i++)
		cs.ids[i] = (i * 53 + 1) % 512;
	x = malloc((size_t)NTOK * c.hidden * sizeof(*x));
	CHECK(qf_tf_embed(m, &c, cs.ids, NTOK, x), ==, 0);
	for (l = 0; l < c.layers; l++) {
		struct qf_tf_layer ly;

		CHECK(qf_tf_layer_load(m, &c, l, &ly), ==, 0);
		CHECK(qf_tf_layer_forward(&c, &ly, l, x, NSEQ, 32, NULL, NULL),
		      ==, 0);
		qf_tf_layer_free(&ly);
	}
	/* one chunk, and streamed QF_TF_ROWS tokens at a time, the fewest
	 * (1 byte: the layer input in a temporary file too), whatever the
	 * BLAS kernels (OpenBLAS's Haswell SGEMM rounds a row otherwise
	 * with the rows beside it) */
	CHECK(qf_calib_chunk_seqs(&c, NSEQ, 32, 1), ==, QF_TF_ROWS / 32);
	CHECK(qf_calib_chunk_seqs(&c, NSEQ, 32, 0), ==, NSEQ);
	CHECK(qf_calib_chunk_seqs(&c, NSEQ, 48, 1), ==, QF_TF_ROWS / 16);
	CHECK(qf_calib_chunk_seqs(&c, 4, 32, 1), ==, 4);
	for (seq = 0; seq < 4; seq++) {
		struct ident id = { malloc((size_t)NTOK * c.hidden * 4),
				    NTOK * c.hidden, 0, 0 };
		struct qf_calib_ops ops = { .hessian = true,
					    .sequential = seq & 1,
					    .quantize = ident_quantize,
					    .layer_done = ident_done,
					    .mem_bytes = seq & 2 ? 1 : 0 };

		CHECK(qf_calib_run(m, &c, &cs, &ops, &id), ==, 0);
		CHECK(id.calls, ==, 3 * 4);
		CHECK(id.layers_done, ==, 3);
		CHECK(memcmp(id.last, x, (size_t)id.n * 4), ==, 0);
		free(id.last);
	}
	free(x);
	qf_calib_free(&cs);
	qf_model_close(m);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	CHECK(system(cmd), ==, 0);
}

static int noop_quantize(void *arg, int layer, struct qf_tf_layer *ly,
			 const enum qf_tf_linear *lin, int n,
			 struct qf_lin_stats *stats)
{
	(void)arg, (void)layer, (void)ly, (void)lin, (void)n, (void)stats;
	return 0;
}

/*
 * Streamed calibration's peak (VmHWM) against its formula: the layer
 * input of all tokens once (none when it is spilled to a file), one
 * chunk's forward scratch and copy, one fp32 layer; run on all tokens
 * at once the same pass holds the intermediate activations of every
 * token and exceeds it.
 */
static void test_stream_memory(const char *quantfs)
{
	char dir[] = "/tmp/qfstream.XXXXXX", cmd[512];
	struct qf_tf_config c;
	struct qf_calib cs = { 0 };
	struct qf_model *m;
	/* spilled, streamed with the input in memory, one pass */
	static const int64_t mem[3] = { 4 << 20, 32 << 20, 0 };
	long base, peak[3], bound[3];
	int64_t ntok = 64 * 128;
	int i;

	if (!mkdtemp(dir))
		return;
	snprintf(cmd, sizeof(cmd), "%s mkmodel %s/m --hidden 256 --inter 4096 "
		 "--layers 2 --heads 4 --kv-heads 2 --vocab 512", quantfs, dir);
	CHECK(system(cmd), ==, 0);
	snprintf(cmd, sizeof(cmd), "%s/m", dir);
	CHECK(qf_model_open(cmd, &m), ==, 0);
	CHECK(qf_tf_config_parse(m, &c), ==, 0);
	cs.nseq = 64;
	cs.seqlen = 128;
	cs.ids = malloc((size_t)ntok * sizeof(*cs.ids));
	for (i = 0; i < ntok; i++)
		cs.ids[i] = (i * 29 + 3) % 512;
	for (i = 0; i < 3; i++) {
		/* true sequential, no X^T X: what remains is activations */
		struct qf_calib_ops ops = { .sequential = true,
					    .quantize = noop_quantize,
					    .mem_bytes = mem[i] };
		int cn = qf_calib_chunk_seqs(&c, 64, 128, ops.mem_bytes);
		bool spilled = qf_calib_spill_bytes(&c, &cs, &ops) > 0;

		CHECK(spilled, ==, i == 0);
		malloc_trim(0);	/* the last run's freed heap: not resident */
		qf_vm_kb(NULL, true);
		base = qf_vm_kb("VmRSS", false);
		CHECK(qf_calib_run(m, &c, &cs, &ops, NULL), ==, 0);
		peak[i] = qf_vm_kb("VmHWM", false) - base;
		bound[i] = (long)(((spilled ? 0 : ntok * c.hidden * 4) + cn *
				   (qf_tf_layer_scratch_bytes(&c, 128) +
				    128 * c.hidden * 4) +
				   (2 * 256 * 256 + 2 * 256 * 128 +
				    3 * 256 * 4096) * 4) / 1024);
		fprintf(stderr, "calibration pass, %d sequences per chunk%s: "
			"peak +%ld KiB (streamed bound %ld KiB)\n", cn,
			spilled ? ", input in a file" : "", peak[i], bound[i]);
	}
	/* + half of it for the allocator: glibc keeps freed scratch below
	 * its (raised) mmap threshold in the heap; spilled, the input's
	 * 8 MiB are not held; one pass is 7x over */
	CHECK(peak[0], <=, bound[0] + bound[0] / 2);
	CHECK(peak[1], <=, bound[1] + bound[1] / 2);
	CHECK(peak[0] + (long)(ntok * c.hidden * 4 / 1024) / 2, <, peak[1]);
	CHECK(peak[2], >, 3 * bound[1]);
	qf_calib_free(&cs);
	qf_model_close(m);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	CHECK(system(cmd), ==, 0);
}

/*
 * A whole-layer method's calls, down first or not: what each call sees
 * held (weights, X^T X) and the peak of the pass.
 */
struct held {
	int calls;
	int n[4];			/* linears per call */
	unsigned w[4], h[4];		/* bit k: ly->w[k], stats[k].h held */
};

static int held_quantize(void *arg, int layer, struct qf_tf_layer *ly,
			 const enum qf_tf_linear *lin, int n,
			 struct qf_lin_stats *stats)
{
	struct held *hd = arg;
	int k, i = hd->calls++;

	(void)lin;
	if (layer != 0 || i >= 4)
		return 0;
	hd->n[i] = n;
	for (k = 0; k < QF_TF_NLINEAR; k++) {
		hd->w[i] |= (unsigned)(ly->w[k] != NULL) << k;
		hd->h[i] |= (unsigned)(stats[k].h != NULL) << k;
	}
	return 0;
}

/*
 * Down first (qf_calib_down_first): down's call holds down's weights and
 * X^T X only, the rest's call every weight and no X^T X of down; the
 * pass's peak is below one call's by about down's X^T X (16.8 MB here:
 * hidden 1024, intermediate 2048), the chunks the same in both runs (4
 * sequences of 128 in one).
 */
static void test_down_first(const char *quantfs, bool measure)
{
	char dir[] = "/tmp/qfdown.XXXXXX", cmd[512];
	struct qf_tf_config c;
	struct qf_calib cs = { 0 };
	struct qf_model *m;
	static const int64_t mem[2] = { 0, 64 << 20 };
	const unsigned all = (1u << QF_TF_NLINEAR) - 1;
	const unsigned down = 1u << QF_TF_DOWN;
	long peak[2];
	int64_t ntok = 4 * 128;
	int i;

	if (!mkdtemp(dir))
		return;
	snprintf(cmd, sizeof(cmd), "%s mkmodel %s/m --hidden 1024 --inter "
		 "2048 --layers 2 --heads 8 --kv-heads 2 --vocab 512", quantfs,
		 dir);
	CHECK(system(cmd), ==, 0);
	snprintf(cmd, sizeof(cmd), "%s/m", dir);
	CHECK(qf_model_open(cmd, &m), ==, 0);
	CHECK(qf_tf_config_parse(m, &c), ==, 0);
	cs.nseq = 4;
	cs.seqlen = 128;
	cs.ids = malloc((size_t)ntok * sizeof(*cs.ids));
	for (i = 0; i < ntok; i++)
		cs.ids[i] = (i * 31 + 7) % 512;
	for (i = 0; i < 2; i++) {
		struct held hd = { 0 };
		struct qf_calib_ops ops = { .hessian = true,
					    .whole_layer = true,
					    .quantize = held_quantize,
					    .mem_bytes = mem[i] };

		CHECK(qf_calib_down_first(&c, &ops), ==, i == 1);
		CHECK(qf_calib_chunk_seqs(&c, 4, 128, ops.mem_bytes), ==, 4);
		malloc_trim(0);
		qf_vm_kb(NULL, true);
		peak[i] = qf_vm_kb("VmRSS", false);
		CHECK(qf_calib_run(m, &c, &cs, &ops, &hd), ==, 0);
		peak[i] = qf_vm_kb("VmHWM", false) - peak[i];
		CHECK(hd.calls, ==, 2 * (i + 1));
		if (i == 0) {
			CHECK(hd.n[0], ==, QF_TF_NLINEAR);
			CHECK(hd.w[0], ==, all);
			CHECK(hd.h[0], ==, all);
			continue;
		}
		CHECK(hd.n[0], ==, 1);
		CHECK(hd.w[0], ==, down);
		CHECK(hd.h[0], ==, down);
		CHECK(hd.n[1], ==, QF_TF_NLINEAR - 1);
		CHECK(hd.w[1], ==, all);
		/* q's X^T X lent to k and v, gate's to up */
		CHECK(hd.h[1], ==, (all & ~down));
	}
	fprintf(stderr, "whole-layer pass: peak +%ld KiB in one call, +%ld "
		"KiB down first\n", peak[0], peak[1]);
	if (measure)
		CHECK(peak[1] + 2048L * 2048 * 4 / 1024 / 2, <, peak[0]);
	qf_calib_free(&cs);
	qf_model_close(m);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	CHECK(system(cmd), ==, 0);
}

/* ------------------------------------------------------------------ */
/* AWQ's folded scales leave the fp layer's function unchanged         */

struct fold {
	const struct qf_tf_config *c;
	int checked;
	double worst;			/* max |y' - y| / max |y| */
	double moved;			/* max relative change of a weight */
	double moved_v;			/* of o_proj (v->o fold) */
};

static float *fdup(const float *p, int64_t n)
{
	float *q = p ? malloc((size_t)n * sizeof(float)) : NULL;

	if (q)
		memcpy(q, p, (size_t)n * sizeof(float));
	return q;
}

static int64_t lout(const struct qf_tf_config *c, int k)
{
	return k == QF_TF_Q ? (int64_t)c->heads * c->head_dim :
	       k == QF_TF_K || k == QF_TF_V ? (int64_t)c->kv_heads *
					      c->head_dim :
	       k == QF_TF_GATE || k == QF_TF_UP ? c->inter : c->hidden;
}

static int64_t lin_in_of(const struct qf_tf_config *c, int k)
{
	return k == QF_TF_O ? (int64_t)c->heads * c->head_dim :
	       k == QF_TF_DOWN ? c->inter : c->hidden;
}

static double max_rel_change(const float *a, const float *b, int64_t n)
{
	double m = 0;
	int64_t i;

	for (i = 0; i < n; i++) {
		double d = fabs((double)a[i] - b[i]) / (fabs(a[i]) + 1e-12);

		m = d > m ? d : m;
	}
	return m;
}

static int fold_quantize(void *arg, int layer, struct qf_tf_layer *ly,
			 const enum qf_tf_linear *lin, int n,
			 struct qf_lin_stats *stats)
{
	struct fold *f = arg;
	const struct qf_tf_config *c = f->c;
	struct qf_tf_layer o = *ly;
	struct qf_awq_opts ao;
	struct qf_awq_layer_opts lo = { .fold_in = true, .fold_post = true,
					.fold_only = true };
	struct qf_awq_layer_res res;
	int64_t nt = 64, i, k;
	float *x1 = malloc((size_t)(nt * c->hidden) * sizeof(float));
	float *x2 = malloc((size_t)(nt * c->hidden) * sizeof(float));
	double ymax = 0, dmax = 0;
	int ret;

	(void)lin;
	if (n != QF_TF_NLINEAR)
		return -EINVAL;
	memset(&res, 0, sizeof(res));
	for (k = 0; k < QF_TF_NLINEAR; k++) {
		lo.quantize[k] = true;
		o.w[k] = fdup(ly->w[k], lout(c, k) * lin_in_of(c, (int)k));
		o.b[k] = fdup(ly->b[k], lout(c, k));
	}
	o.in_norm = fdup(ly->in_norm, c->hidden);
	o.post_norm = fdup(ly->post_norm, c->hidden);
	o.q_norm = fdup(ly->q_norm, c->head_dim);
	o.k_norm = fdup(ly->k_norm, c->head_dim);
	qf_awq_defaults(&ao, 4, 64);
	ret = qf_awq_layer(c, ly, stats, &ao, &lo, &res);
	for (i = 0; i < nt * c->hidden; i++)
		x1[i] = x2[i] = frand();
	if (!ret)
		ret = qf_tf_layer_forward(c, &o, layer, x1, 2, 32, NULL, NULL);
	if (!ret)
		ret = qf_tf_layer_forward(c, ly, layer, x2, 2, 32, NULL, NULL);
	for (i = 0; i < nt * c->hidden && !ret; i++) {
		ymax = fabs(x1[i]) > ymax ? fabs(x1[i]) : ymax;
		dmax = fabs(x1[i] - x2[i]) > dmax ? fabs(x1[i] - x2[i]) : dmax;
	}
	if (!ret) {
		f->worst = dmax / ymax > f->worst ? dmax / ymax : f->worst;
		f->moved = fmax(f->moved, max_rel_change(o.in_norm,
							 ly->in_norm,
							 c->hidden));
		f->moved = fmax(f->moved, max_rel_change(o.w[QF_TF_DOWN],
					ly->w[QF_TF_DOWN],
					c->hidden * (int64_t)c->inter));
		/* o_proj changes only when v->o scales fold */
		f->moved_v = fmax(f->moved_v, max_rel_change(o.w[QF_TF_O],
					ly->w[QF_TF_O], c->hidden *
					lin_in_of(c, QF_TF_O)));
		f->checked++;
	}
	qf_tf_layer_free(&o);
	free(x1);
	free(x2);
	return ret;
}

static void test_awq_fold(const char *quantfs)
{
	static const char *const shapes[] = {
		"--heads 4 --kv-heads 4",	/* v->o folds too */
		"--heads 8 --kv-heads 2",	/* GQA: it does not */
	};
	char dir[] = "/tmp/qffold.XXXXXX", cmd[512];
	int t, i;

	if (!mkdtemp(dir))
		return;
	for (t = 0; t < 2; t++) {
		struct qf_tf_config c;
		struct qf_calib cs = { 0 };
		struct qf_model *m;
		struct fold f = { &c, 0, 0, 0, 0 };
		struct qf_calib_ops ops = { .hessian = true,
					    .whole_layer = true,
					    .quantize = fold_quantize };

		snprintf(cmd, sizeof(cmd), "%s mkmodel %s/m%d --layers 2 "
			 "--seed %d %s", quantfs, dir, t, 7 + t, shapes[t]);
		CHECK(system(cmd), ==, 0);
		snprintf(cmd, sizeof(cmd), "%s/m%d", dir, t);
		CHECK(qf_model_open(cmd, &m), ==, 0);
		CHECK(qf_tf_config_parse(m, &c), ==, 0);
		cs.nseq = 4;
		cs.seqlen = 32;
		cs.ids = malloc(128 * sizeof(*cs.ids));
		for (i = 0; i < 128; i++)
			cs.ids[i] = (i * 37 + 5) % 512;
		CHECK(qf_calib_run(m, &c, &cs, &ops, &f), ==, 0);
		CHECK(f.checked, ==, 2);
		fprintf(stderr, "awq fold %s: max |y' - y| / max |y| = %.2e, "
			"weights moved by up to %.0f%%, o_proj by %.0f%%\n",
			shapes[t], f.worst, 100 * f.moved, 100 * f.moved_v);
		CHECK_NEAR(f.worst, 0, 2e-5);
		CHECK(f.moved > 0.05, ==, 1);	/* scales were folded */
		CHECK(f.moved_v > 0.05, ==, t == 0);
		qf_calib_free(&cs);
		qf_model_close(m);
	}
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	CHECK(system(cmd), ==, 0);
}

int main(int argc, char **argv)
{
	test_stats();
	test_hash();
	if (argc > 1)
		test_driver_identity(argv[1], "");
	if (argc > 1)
		test_driver_identity(argv[1], "--arch gemma3_text");
	if (argc > 1)
		test_awq_fold(argv[1]);
#ifdef __SANITIZE_ADDRESS__
	if (argc > 1)
		test_down_first(argv[1], false);
	/* ASan's shadow and quarantine make RssAnon meaningless */
	fprintf(stderr, "memory bound: skipped under AddressSanitizer\n");
	argc = 1;
#endif
	if (argc > 1)
		test_memory_bound(argv[1]);
	if (argc > 1)
		test_stream_memory(argv[1]);
#ifndef __SANITIZE_ADDRESS__
	if (argc > 1)
		test_down_first(argv[1], true);
#endif
	return qf_check_exit();
}
