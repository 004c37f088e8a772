/*
 * gptq_cli.c - run qf_gptq_quantize / qf_rtn_quantize on raw files, for
 * tests/unit/test_gptq.py (which owns the independent numpy reference).
 *
 * usage: gptq_cli W.f32 H.f32 OUT IN BITS GROUP SYM ACT STATIC OUTDIR
 *                 [PASSES DAMP]
 * writes OUTDIR/{q.u8,scale.f16,zero.i32,gidx.i32,wq.f32,loss.txt} and the
 * same for RTN as rtn_q.u8, rtn_scale.f16, rtn_zero.i32.  With PASSES,
 * GPTQ runs with damping DAMP and qf_gptq_refine's sweeps follow: their
 * codes and values in cd_q.u8, cd_wq.f32 (GPTQ's own stay in q.u8,
 * wq.f32).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_io.h"
#include "method.h"

int main(int argc, char **argv)
{
	struct qf_gptq_opts o = { .damp = 0.01f, .blocksize = 128 };
	int64_t out, in, ng, i;
	float *w, *h, *h0, *w0;
	uint8_t *q;
	uint16_t *sc;
	int32_t *z, *g;
	double loss;
	char buf[64];
	int ret;

	if (argc != 11 && argc != 13) {
		fprintf(stderr, "usage: see the file header\n");
		return 2;
	}
	out = atoll(argv[3]);
	in = atoll(argv[4]);
	o.qp.bits = atoi(argv[5]);
	o.qp.group = atoi(argv[6]);
	o.qp.sym = atoi(argv[7]);
	o.act_order = atoi(argv[8]);
	o.static_groups = atoi(argv[9]);
	if (argc == 13)
		o.damp = (float)atof(argv[12]);
	ng = qf_ngroups(in, o.qp.group);
	w = slurp(argv[1], (size_t)(out * in) * 4);
	w0 = slurp(argv[1], (size_t)(out * in) * 4);
	h = slurp(argv[2], (size_t)(in * in) * 4);
	h0 = slurp(argv[2], (size_t)(in * in) * 4);
	q = malloc((size_t)(out * in));
	sc = malloc((size_t)(out * ng) * 2);
	z = malloc((size_t)(out * ng) * 4);
	g = malloc((size_t)in * 4);
	ret = qf_gptq_quantize(w, out, in, h, &o, q, sc, z, g, &loss);
	if (ret < 0) {
		fprintf(stderr, "gptq: %s\n", qf_strerror(ret));
		return 1;
	}
	for (i = 0; i < in; i++)	/* dead inputs: a unit diagonal */
		if (h0[i * in + i] == 0)
			h0[i * in + i] = 1;
	if (memcmp(h, h0, (size_t)(in * in) * 4)) {	/* in place, given back */
		fprintf(stderr, "gptq: h not given back as it was\n");
		return 1;
	}
	dump(argv[10], "q.u8", q, (size_t)(out * in));
	dump(argv[10], "scale.f16", sc, (size_t)(out * ng) * 2);
	dump(argv[10], "zero.i32", z, (size_t)(out * ng) * 4);
	dump(argv[10], "gidx.i32", g, (size_t)in * 4);
	dump(argv[10], "wq.f32", w, (size_t)(out * in) * 4);
	snprintf(buf, sizeof(buf), "%.9g\n", loss);
	dump(argv[10], "loss.txt", buf, strlen(buf));
	if (argc == 13) {	/* H as given: dead inputs' diagonal 0 */
		float *h1 = slurp(argv[2], (size_t)(in * in) * 4);

		ret = qf_gptq_refine(w0, w, out, in, h1, o.damp, o.qp.bits, q,
				     sc, z, g, ng, atoi(argv[11]));
		free(h1);
		if (ret < 0) {
			fprintf(stderr, "refine: %s\n", qf_strerror(ret));
			return 1;
		}
		dump(argv[10], "cd_q.u8", q, (size_t)(out * in));
		dump(argv[10], "cd_wq.f32", w, (size_t)(out * in) * 4);
	}
	ret = qf_rtn_quantize(w0, out, in, &o.qp, q, sc, z);
	if (ret < 0)
		return 1;
	dump(argv[10], "rtn_q.u8", q, (size_t)(out * in));
	dump(argv[10], "rtn_scale.f16", sc, (size_t)(out * ng) * 2);
	dump(argv[10], "rtn_zero.i32", z, (size_t)(out * ng) * 4);
	free(w);
	free(w0);
	free(h);
	free(h0);
	free(q);
	free(sc);
	free(z);
	free(g);
	return 0;
}
