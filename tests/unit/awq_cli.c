/*
 * awq_cli.c - run the quant/method/awq.c entry points on raw files, for
 * tests/unit/test_awq.py (which owns the independent numpy reference).
 *
 * usage: awq_cli CMD ARGS... OUTDIR; files are raw little-endian arrays.
 *   grid LOHI.f32 N BITS OUTDIR        sc.f16 zero.i32 rc.i32 [N]
 *   rtn W.f32 OUT IN BITS GROUP OUTDIR q.u8 sc.f16 zero.i32
 *   scale SAL.f32 H.f32 IN BITS GROUP NGRID N W1.f32 OUT1 .. WN OUTN OUTDIR
 *                                      s.f32 res.txt (alpha best plain)
 *   clip W.f32 H.f32 OUT IN BITS GROUP GRID SHRINK OUTDIR   wc.f32
 *   flip W.f32 H.f32 OUT IN BITS GROUP OUTDIR
 *        RTN then flip: q0.u8 q.u8 sc.f16 zero.i32 res.txt
 *        (before after nflips qf_awq_energy-of-result)
 *   reflip WQ WK X SAL IN N HEADS KV HD BITS GROUP MAXFLIP CRIT OUTDIR
 *        RTN of both, then ReFlip: qq0 qk0 qq qk (u8) scq sck (f16)
 *        zq zk (i32) res.txt (before after nflips score0 score1)
 *   pack W.f32 OUT IN GROUP OUTDIR     4-bit RTN, then q.u8 sc.f16
 *        zero.i32 qweight.i32 qzeros.i32 scales.f16, and unpacked
 *        uq.u8 usc.f16 uz.i32
 *   packable BITS IN OUT GROUP         prints 1 or 0
 * Exit 0, 1 on a library error, 2 on bad usage or I/O.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_io.h"
#include "method.h"

/* Dequantized weights of q with their grids. */
static float *dequant(const uint8_t *q, const uint16_t *sc, const int32_t *z,
		      int64_t out, int64_t in, int group)
{
	int64_t ng = qf_ngroups(in, group), gs = ng == 1 ? in : group, r, j;
	float *w = xmalloc((size_t)(out * in) * sizeof(*w));

	for (r = 0; r < out; r++)
		for (j = 0; j < in; j++)
			w[r * in + j] = qf_f16_to_f32(sc[r * ng + j / gs]) *
				((float)q[r * in + j] -
				 (float)z[r * ng + j / gs]);
	return w;
}

/* Quantized linear: levels and grids. */
struct qlin {
	uint8_t *q;
	uint16_t *sc;
	int32_t *z;
};

static void qlin_rtn(struct qlin *l, const float *w, int64_t out, int64_t in,
		     const struct qf_awq_opts *o)
{
	int64_t ng = qf_ngroups(in, o->group);

	l->q = xmalloc((size_t)(out * in));
	l->sc = xmalloc((size_t)(out * ng) * 2);
	l->z = xmalloc((size_t)(out * ng) * 4);
	check(qf_awq_rtn(w, out, in, o, l->q, l->sc, l->z), "rtn");
}

static void qlin_dump(const struct qlin *l, int64_t out, int64_t in,
		      int64_t ng, const char *dir, const char *q,
		      const char *sc, const char *z)
{
	dump(dir, q, l->q, (size_t)(out * in));
	dump(dir, sc, l->sc, (size_t)(out * ng) * 2);
	dump(dir, z, l->z, (size_t)(out * ng) * 4);
}

static void qlin_free(struct qlin *l)
{
	free(l->q);
	free(l->sc);
	free(l->z);
}

static int cmd_grid(int argc, char **argv)
{
	int64_t n, i;
	float *lohi, sc;
	uint16_t *sc16;
	int32_t *z, *rc;

	need(argc, 6);
	n = atoll(argv[3]);
	lohi = slurp(argv[2], (size_t)n * 8);
	sc16 = xmalloc((size_t)n * 2);
	z = xmalloc((size_t)n * 4);
	rc = xmalloc((size_t)n * 4);
	for (i = 0; i < n; i++) {
		sc16[i] = 0;
		z[i] = -1;
		rc[i] = qf_awq_grid(lohi[2 * i], lohi[2 * i + 1],
				    atoi(argv[4]), &sc16[i], &sc, &z[i]);
	}
	dump(argv[5], "sc.f16", sc16, (size_t)n * 2);
	dump(argv[5], "zero.i32", z, (size_t)n * 4);
	dump(argv[5], "rc.i32", rc, (size_t)n * 4);
	free(lohi);
	free(sc16);
	free(z);
	free(rc);
	return 0;
}

static int cmd_rtn(int argc, char **argv)
{
	struct qf_awq_opts o;
	int64_t out, in;
	struct qlin l;
	float *w;

	need(argc, 8);
	out = atoll(argv[3]);
	in = atoll(argv[4]);
	qf_awq_defaults(&o, atoi(argv[5]), atoi(argv[6]));
	w = slurp(argv[2], (size_t)(out * in) * 4);
	qlin_rtn(&l, w, out, in, &o);
	qlin_dump(&l, out, in, qf_ngroups(in, o.group), argv[7], "q.u8",
		  "sc.f16", "zero.i32");
	qlin_free(&l);
	free(w);
	return 0;
}

static int cmd_scale(int argc, char **argv)
{
	const float *w[16];
	int64_t out[16], in;
	struct qf_awq_opts o;
	double alpha, best, plain;
	float *sal, *h, *s;
	const char *dir;
	char buf[256];
	int n, k;

	need(argc, 12);
	in = atoll(argv[4]);
	qf_awq_defaults(&o, atoi(argv[5]), atoi(argv[6]));
	o.n_grid = atoi(argv[7]);
	n = atoi(argv[8]);
	if (n < 1 || n > 16 || argc != 10 + 2 * n)
		need(0, 1);
	dir = argv[9 + 2 * n];
	sal = slurp(argv[2], (size_t)in * 4);
	h = slurp(argv[3], (size_t)(in * in) * 4);
	for (k = 0; k < n; k++) {
		out[k] = atoll(argv[10 + 2 * k]);
		w[k] = slurp(argv[9 + 2 * k], (size_t)(out[k] * in) * 4);
	}
	s = xmalloc((size_t)in * 4);
	check(qf_awq_search_scale(w, out, n, in, sal, h, &o, s, &alpha,
				  &best, &plain), "search_scale");
	dump(dir, "s.f32", s, (size_t)in * 4);
	snprintf(buf, sizeof(buf), "%.17g %.17g %.17g\n", alpha, best, plain);
	dump_text(dir, buf);
	for (k = 0; k < n; k++)
		free((void *)w[k]);
	free(sal);
	free(h);
	free(s);
	return 0;
}

static int cmd_clip(int argc, char **argv)
{
	struct qf_awq_opts o;
	int64_t out, in;
	float *w, *h;

	need(argc, 11);
	out = atoll(argv[4]);
	in = atoll(argv[5]);
	qf_awq_defaults(&o, atoi(argv[6]), atoi(argv[7]));
	o.clip_grid = atoi(argv[8]);
	o.max_shrink = strtof(argv[9], NULL);
	w = slurp(argv[2], (size_t)(out * in) * 4);
	h = slurp(argv[3], (size_t)(in * in) * 4);
	check(qf_awq_search_clip(w, out, in, h, &o), "search_clip");
	dump(argv[10], "wc.f32", w, (size_t)(out * in) * 4);
	free(w);
	free(h);
	return 0;
}

static int cmd_flip(int argc, char **argv)
{
	struct qf_awq_opts o;
	int64_t out, in, ng, nflips;
	double before, after, e;
	float *w, *h, *wd;
	struct qlin l;
	char buf[256];

	need(argc, 9);
	out = atoll(argv[4]);
	in = atoll(argv[5]);
	qf_awq_defaults(&o, atoi(argv[6]), atoi(argv[7]));
	ng = qf_ngroups(in, o.group);
	w = slurp(argv[2], (size_t)(out * in) * 4);
	h = slurp(argv[3], (size_t)(in * in) * 4);
	qlin_rtn(&l, w, out, in, &o);
	dump(argv[8], "q0.u8", l.q, (size_t)(out * in));
	check(qf_awq_flip(w, out, in, h, &o, l.q, l.sc, l.z, &before, &after,
			  &nflips), "flip");
	qlin_dump(&l, out, in, ng, argv[8], "q.u8", "sc.f16", "zero.i32");
	wd = dequant(l.q, l.sc, l.z, out, in, o.group);
	e = qf_awq_energy(w, wd, out, in, h);
	snprintf(buf, sizeof(buf), "%.17g %.17g %lld %.17g\n", before, after,
		 (long long)nflips, e);
	dump_text(argv[8], buf);
	qlin_free(&l);
	free(w);
	free(h);
	free(wd);
	return 0;
}

static int cmd_reflip(int argc, char **argv)
{
	struct qf_reflip_opts r;
	struct qf_awq_opts o;
	int64_t in, n, nq, nk, ng, nflips;
	float *wq, *wk, *x, *sal, *dq, *dk;
	double before, after, s0, s1;
	struct qlin lq, lk;
	const char *dir;
	char buf[256];

	need(argc, 16);
	in = atoll(argv[6]);
	n = atoll(argv[7]);
	r.heads = atoi(argv[8]);
	r.kv_heads = atoi(argv[9]);
	r.head_dim = atoi(argv[10]);
	qf_awq_defaults(&o, atoi(argv[11]), atoi(argv[12]));
	r.max_flip_pct = strtof(argv[13], NULL);
	r.critical_dim_pct = strtof(argv[14], NULL);
	dir = argv[15];
	nq = (int64_t)r.heads * r.head_dim;
	nk = (int64_t)r.kv_heads * r.head_dim;
	ng = qf_ngroups(in, o.group);
	wq = slurp(argv[2], (size_t)(nq * in) * 4);
	wk = slurp(argv[3], (size_t)(nk * in) * 4);
	x = slurp(argv[4], (size_t)(n * in) * 4);
	sal = slurp(argv[5], (size_t)in * 4);
	qlin_rtn(&lq, wq, nq, in, &o);
	qlin_rtn(&lk, wk, nk, in, &o);
	dump(dir, "qq0.u8", lq.q, (size_t)(nq * in));
	dump(dir, "qk0.u8", lk.q, (size_t)(nk * in));
	dq = dequant(lq.q, lq.sc, lq.z, nq, in, o.group);
	dk = dequant(lk.q, lk.sc, lk.z, nk, in, o.group);
	s0 = qf_awq_score_error(wq, wk, dq, dk, in, x, n, &r);
	free(dq);
	free(dk);
	check(qf_awq_reflip(wq, wk, in, x, n, sal, &o, &r, lq.q, lq.sc, lq.z,
			    lk.q, lk.sc, lk.z, &before, &after, &nflips),
	      "reflip");
	qlin_dump(&lq, nq, in, ng, dir, "qq.u8", "scq.f16", "zq.i32");
	qlin_dump(&lk, nk, in, ng, dir, "qk.u8", "sck.f16", "zk.i32");
	dq = dequant(lq.q, lq.sc, lq.z, nq, in, o.group);
	dk = dequant(lk.q, lk.sc, lk.z, nk, in, o.group);
	s1 = qf_awq_score_error(wq, wk, dq, dk, in, x, n, &r);
	snprintf(buf, sizeof(buf), "%.17g %.17g %lld %.17g %.17g\n", before,
		 after, (long long)nflips, s0, s1);
	dump_text(dir, buf);
	qlin_free(&lq);
	qlin_free(&lk);
	free(wq);
	free(wk);
	free(x);
	free(sal);
	free(dq);
	free(dk);
	return 0;
}

static int cmd_pack(int argc, char **argv)
{
	int64_t out, in, ng, words;
	struct qf_awq_opts o;
	uint32_t *qw, *qz;
	uint16_t *scales;
	struct qlin l, u;
	const char *dir;
	float *w;

	need(argc, 7);
	out = atoll(argv[3]);
	in = atoll(argv[4]);
	qf_awq_defaults(&o, 4, atoi(argv[5]));
	dir = argv[6];
	if (!qf_awq_packable(4, in, out, o.group)) {
		fprintf(stderr, "not packable\n");
		return 1;
	}
	ng = qf_ngroups(in, o.group);
	words = out / 8;
	w = slurp(argv[2], (size_t)(out * in) * 4);
	qlin_rtn(&l, w, out, in, &o);
	qw = xmalloc((size_t)(in * words) * 4);
	qz = xmalloc((size_t)(ng * words) * 4);
	scales = xmalloc((size_t)(ng * out) * 2);
	qf_awq_pack(l.q, l.sc, l.z, out, in, ng, qw, qz, scales);
	qlin_dump(&l, out, in, ng, dir, "q.u8", "sc.f16", "zero.i32");
	dump(dir, "qweight.i32", qw, (size_t)(in * words) * 4);
	dump(dir, "qzeros.i32", qz, (size_t)(ng * words) * 4);
	dump(dir, "scales.f16", scales, (size_t)(ng * out) * 2);
	u.q = xmalloc((size_t)(out * in));
	u.sc = xmalloc((size_t)(out * ng) * 2);
	u.z = xmalloc((size_t)(out * ng) * 4);
	qf_awq_unpack(qw, qz, scales, out, in, ng, u.q, u.sc, u.z);
	qlin_dump(&u, out, in, ng, dir, "uq.u8", "usc.f16", "uz.i32");
	qlin_free(&l);
	qlin_free(&u);
	free(qw);
	free(qz);
	free(scales);
	free(w);
	return 0;
}

int main(int argc, char **argv)
{
	need(argc, 2);
	if (!strcmp(argv[1], "grid"))
		return cmd_grid(argc, argv);
	if (!strcmp(argv[1], "rtn"))
		return cmd_rtn(argc, argv);
	if (!strcmp(argv[1], "scale"))
		return cmd_scale(argc, argv);
	if (!strcmp(argv[1], "clip"))
		return cmd_clip(argc, argv);
	if (!strcmp(argv[1], "flip"))
		return cmd_flip(argc, argv);
	if (!strcmp(argv[1], "reflip"))
		return cmd_reflip(argc, argv);
	if (!strcmp(argv[1], "pack"))
		return cmd_pack(argc, argv);
	if (!strcmp(argv[1], "packable")) {
		need(argc, 6);
		printf("%d\n", qf_awq_packable(atoi(argv[2]), atoll(argv[3]),
					       atoll(argv[4]), atoi(argv[5])));
		return 0;
	}
	need(0, 1);
	return 2;
}
