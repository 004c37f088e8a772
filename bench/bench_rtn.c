/*
 * bench_rtn.c - RTN production kernels on one core: bf16 -> f32, group
 * quantization, GPTQ packing, as source GB/s next to memcpy of the same
 * bytes measured in the same run.
 *
 * usage: bench_rtn [rows in]   (default 4096 x 4096)
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "method.h"

static double best_of(int reps, void (*fn)(void *), void *arg)
{
	double best = 1e30;
	int i;

	for (i = 0; i < reps; i++) {
		double t0 = qf_now();

		fn(arg);
		t0 = qf_now() - t0;
		best = t0 < best ? t0 : best;
	}
	return best;
}

struct ctx {
	int64_t rows, in;
	uint16_t *src;
	void *copy;
	float *w;
	uint8_t *q;
	uint16_t *sc;
	int32_t *z;
	uint32_t *qw;
	struct qf_qparams p;
};

static volatile uint64_t hash_sink;

/* The cache's value checksum, verified once per value and process. */
static void run_hash(void *a)
{
	struct ctx *c = a;

	hash_sink = qf_hash64(c->src, (size_t)(c->rows * c->in) * 2, 0);
}

static void run_memcpy(void *a)
{
	struct ctx *c = a;

	memcpy(c->copy, c->src, (size_t)(c->rows * c->in) * 2);
}

static void run_convert(void *a)
{
	struct ctx *c = a;

	qf_to_f32(QF_DT_BF16, c->src, (size_t)(c->rows * c->in), c->w);
}

static void run_quant(void *a)
{
	struct ctx *c = a;

	qf_rtn_quantize(c->w, c->rows, c->in, &c->p, c->q, c->sc, c->z);
}

#ifndef BLOCK
#define BLOCK 8
#endif

/* What production does: blocks of 8 rows converted, checked, rounded
 * while they sit in cache, their codes packed into qweight 128 KiB of
 * codes at a time (quant/variant/variant.c rows_run), one thread. */
static void run_fused(void *a)
{
	struct ctx *c = a;
	int64_t ng = qf_ngroups(c->in, c->p.group), r, p0 = 0;
	int64_t pr = (128 << 10) / c->in / BLOCK * BLOCK;
	static float buf[64 * 4096];
	static uint8_t qb[128 << 10];

	pr = pr < BLOCK ? BLOCK : pr;
	for (r = 0; r < c->rows; r += BLOCK) {
		int64_t nr = c->rows - r < BLOCK ? c->rows - r : BLOCK;
		qf_to_f32(QF_DT_BF16, c->src + r * c->in,
			  (size_t)(nr * c->in), buf);
		if (qf_all_finite(buf, (size_t)(nr * c->in)))
			qf_rtn_quantize(buf, nr, c->in, &c->p,
					qb + (r - p0) * c->in, c->sc + r * ng,
					c->z + r * ng);
		if (r + nr - p0 == pr || r + nr == c->rows) {
			qf_gptq_pack_qweight_rows(qb, p0, r + nr - p0,
						  c->rows, c->in, c->p.bits,
						  c->qw);
			p0 = r + nr;
		}
	}
}

static void run_pack(void *a)
{
	struct ctx *c = a;

	qf_gptq_pack_qweight(c->q, c->rows, c->in, c->p.bits, c->qw);
}

int main(int argc, char **argv)
{
	struct ctx c = { .rows = 4096, .in = 4096 };
	double tm, tc, tq, tp, tf, th, gb;
	int64_t k, n;

	if (argc == 3) {
		c.rows = atoll(argv[1]);
		c.in = atoll(argv[2]);
	}
	n = c.rows * c.in;
	c.p = (struct qf_qparams){ 4, 128, false };
	c.src = malloc((size_t)n * 2);
	c.copy = malloc((size_t)n * 2);
	c.w = malloc((size_t)n * 4);
	c.q = malloc((size_t)n);
	c.sc = malloc((size_t)n / 32 * 2 + 64);
	c.z = malloc((size_t)n / 32 * 4 + 64);
	c.qw = malloc((size_t)n / 2 + 64);
	for (k = 0; k < n; k++)
		c.src[k] = qf_f32_to_bf16((float)((k * 2654435761u) % 2001) /
					  1000.0f - 1.0f);
	memset(c.copy, 1, (size_t)n * 2);
	run_convert(&c);
	tm = best_of(5, run_memcpy, &c);
	tc = best_of(5, run_convert, &c);
	tq = best_of(5, run_quant, &c);
	tp = best_of(5, run_pack, &c);
	tf = c.in <= 4096 ? best_of(5, run_fused, &c) : 0;
	th = best_of(5, run_hash, &c);
	gb = (double)n * 2 / 1e9;
	printf("RTN w4 g128 on %lld x %lld bf16 (%.1f MB), one core\n",
	       (long long)c.rows, (long long)c.in, gb * 1e3);
	printf("  memcpy of the source      %6.2f GB/s\n", gb / tm);
	printf("  bf16 -> f32               %6.2f GB/s of source\n", gb / tc);
	printf("  quantize (scales, zeros)  %6.2f GB/s of source\n", gb / tq);
	printf("  pack qweight              %6.2f GB/s of source\n", gb / tp);
	printf("  the three, one after another %5.2f GB/s of source = %.2fx "
	       "memcpy\n", gb / (tc + tq + tp), tm / (tc + tq + tp));
	if (tf > 0)
		printf("  fused as in production    %6.2f GB/s of source = %.2fx "
		       "memcpy\n", gb / tf, tm / tf);
	printf("  cache checksum (qf_hash64) %5.2f GB/s = %.2fx memcpy\n",
	       gb / th, tm / th);
	return 0;
}
