/*
 * mixed_cli.c - run the quant/method/mixed.c, mixed_alloc.c and
 * quant/io/pack_ct.c entry points on raw files, for tests/unit/test_mixed.py
 * (which owns the independent numpy reference).
 *
 * usage: mixed_cli CMD ARGS... [OUTDIR]; files are raw little-endian.
 *   sens W.f32 H.f32 OUT IN GROUP SYM NP B1..BNP OUTDIR    cost.f64 [NP]
 *   bytes OUT IN BITS GROUP SYM             prints qf_mixed_bytes
 *   roles OVERRIDES NAMES.txt OUTDIR        res.txt: one role per name
 *        (OVERRIDES "-" = none; a parse error exits 1 with the reason)
 *   static TABLE N ROLES.i32 OUTDIR         bits.i32 (TABLE "-" = default)
 *   ratio SPEC N IMP.f64 OUTDIR             bits.i32 (SPEC "-" = default)
 *   importance N SIG.f64 OUTDIR             imp.f64; SIG is [N, 4]:
 *        grad act weight has_grad(0/1)
 *   signals W.f32 OUT IN SUMSQ.f64 ROWS OUTDIR   res.txt (act weight)
 *   budget N NP PARAMS.u64 BYTES.u64 COST.f64 AVGX100 MAXNODES OUTDIR
 *        choice.i32, res.txt (cost bound bytes budget nodes optimal);
 *        exit 3 with the reason when infeasible (QF_ESPEC)
 *   pack W.f32 OUT IN BITS GROUP SYM OUTDIR RTN, then q.u8 sc.f16 z.i32,
 *        weight_packed.i32 weight_scale.f16 weight_shape.i32
 *        [weight_zero_point.i32 when asymmetric], uq.u8 [uz.i32]
 *   packq Q.u8 Z.i32 OUT IN NG BITS OUTDIR  packed.i32 zp.i32 uq.u8 uz.i32
 *   size N PARAMS.u64 BYTES.u64 SRC.u64 OUTDIR   res.txt (params bytes
 *        src bytes_per_param bits_per_param ratio_src ratio_fp32)
 *   alloc POLICY AVGX100 RATIO NLAYERS N LIN.i64 SENS.f64 ULOSS.f64 OUTDIR
 *        bits.i32 [N], alloc.json; POLICY budget or ratio (RATIO as
 *        ratio's SPEC), LIN [N, 6]: layer kind out in params src_bytes,
 *        SENS [N, 7], ULOSS [NLAYERS * 4, 5]; exit 3 when infeasible
 *   kl MODEL_DIR IDS.i32 NSEQ SEQLEN GROUP NP B1..BNP OUTDIR
 *        kl.f64 [layers * 4 * NP]: qf_mixed_kl_table per layer, unit
 *        ({q,k,v}, {o}, {gate,up}, {down}) and width
 * Exit 0, 1 on a library error, 2 on bad usage or I/O, 3 infeasible.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_io.h"
#include "mixed.h"
#include "mixed_alloc.h"
#include "nn.h"

static const char *opt_str(const char *s)
{
	return strcmp(s, "-") ? s : "";
}

/* NP (argv[at]) and the widths after it; argc must hold them. */
static int *widths_arg(int argc, char **argv, int at, int *np)
{
	int k, *bits;

	*np = atoi(argv[at]);
	need(argc, at + 2 + *np);
	bits = xmalloc((size_t)*np * sizeof(*bits));
	for (k = 0; k < *np; k++)
		bits[k] = atoi(argv[at + 1 + k]);
	return bits;
}

/* sens / sensg (GPTQ's, damp 0.01, asymmetric: sym must be 0) */
static int cmd_sens(int argc, char **argv)
{
	int64_t out, in;
	int np, group, *bits, *groups, k;
	float *w, *h;
	double *cost;
	bool sym;

	need(argc, 9);
	out = atoll(argv[4]);
	in = atoll(argv[5]);
	group = atoi(argv[6]);
	sym = atoi(argv[7]);
	bits = widths_arg(argc, argv, 8, &np);
	w = slurp(argv[2], (size_t)(out * in) * 4);
	h = slurp(argv[3], (size_t)(in * in) * 4);
	cost = xmalloc((size_t)np * sizeof(*cost));
	groups = xmalloc((size_t)np * sizeof(*groups));
	for (k = 0; k < np; k++)
		groups[k] = group;
	if (!strcmp(argv[1], "sensg") && !sym) {
		double energy;

		check(qf_mixed_sensitivity_gptq(w, out, in, h, bits, groups,
						np, 0.01f, cost, &energy),
		      "gptq sensitivity");
		dump(argv[9 + np], "energy.f64", &energy, sizeof(energy));
	}
	else if (!strcmp(argv[1], "sens"))
		check(qf_mixed_sensitivity(w, out, in, h, bits, np, group, sym,
					   cost), "sensitivity");
	else
		check(-EINVAL, "sensg needs sym 0");
	dump(argv[9 + np], "cost.f64", cost, (size_t)np * sizeof(*cost));
	free(groups);
	free(bits);
	free(w);
	free(h);
	free(cost);
	return 0;
}

static int cmd_roles(int argc, char **argv)
{
	struct qf_buf names = QF_BUF_INIT, res = QF_BUF_INIT;
	char **ov = NULL, why[256] = "";
	char *line, *save = NULL;
	int ret;

	need(argc, 5);
	ret = qf_mixed_overrides_parse(opt_str(argv[2]), &ov, why,
				       sizeof(why));
	if (ret < 0) {
		fprintf(stderr, "overrides: %s\n", why);
		return 1;
	}
	check(qf_read_file(argv[3], 1 << 20, &names), "names");
	for (line = strtok_r(names.data ? names.data : (char *)"", "\n",
			     &save);
	     line; line = strtok_r(NULL, "\n", &save))
		check(qf_buf_addf(&res, "%s\n", qf_role_name(
			qf_role_of(line, (const char *const *)ov))), "buf");
	dump_text(argv[4], res.data ? res.data : "");
	qf_mixed_overrides_free(ov);
	qf_buf_release(&names);
	qf_buf_release(&res);
	return 0;
}

static int cmd_static(int argc, char **argv)
{
	struct qf_mixed_static t;
	char why[256] = "";
	int32_t *roles;
	enum qf_role *r;
	int *bits;
	size_t n, i;

	need(argc, 6);
	qf_mixed_static_defaults(&t);
	if (qf_mixed_static_parse(opt_str(argv[2]), &t, why,
				  sizeof(why)) < 0) {
		fprintf(stderr, "table: %s\n", why);
		return 1;
	}
	n = (size_t)atoll(argv[3]);
	roles = slurp(argv[4], n * 4);
	r = xmalloc(n * sizeof(*r));
	bits = xmalloc(n * sizeof(*bits));
	for (i = 0; i < n; i++)
		r[i] = (enum qf_role)roles[i];
	qf_mixed_static_assign(&t, r, n, bits);
	for (i = 0; i < n; i++)
		roles[i] = bits[i];
	dump(argv[5], "bits.i32", roles, n * 4);
	free(roles);
	free(r);
	free(bits);
	return 0;
}

static int cmd_ratio(int argc, char **argv)
{
	struct qf_mixed_ratio r;
	char why[256] = "";
	size_t n, i;
	double *imp;
	int32_t *b32;
	int *bits;

	need(argc, 6);
	qf_mixed_ratio_defaults(&r);
	if (qf_mixed_ratio_parse(opt_str(argv[2]), &r, why,
				 sizeof(why)) < 0) {
		fprintf(stderr, "ratio: %s\n", why);
		return 1;
	}
	n = (size_t)atoll(argv[3]);
	imp = slurp(argv[4], n * 8);
	bits = xmalloc(n * sizeof(*bits));
	b32 = xmalloc(n * 4);
	check(qf_mixed_ratio_assign(&r, imp, n, bits), "ratio");
	for (i = 0; i < n; i++)
		b32[i] = bits[i];
	dump(argv[5], "bits.i32", b32, n * 4);
	free(imp);
	free(bits);
	free(b32);
	return 0;
}

static int cmd_importance(int argc, char **argv)
{
	struct qf_mixed_signals *sig;
	double *raw, *imp;
	size_t n, i;

	need(argc, 5);
	n = (size_t)atoll(argv[2]);
	raw = slurp(argv[3], n * 4 * 8);
	sig = xmalloc(n * sizeof(*sig));
	imp = xmalloc(n * sizeof(*imp));
	for (i = 0; i < n; i++) {
		sig[i].grad = raw[4 * i];
		sig[i].act = raw[4 * i + 1];
		sig[i].weight = raw[4 * i + 2];
		sig[i].has_grad = raw[4 * i + 3] != 0;
	}
	check(qf_mixed_importance(sig, n, imp), "importance");
	dump(argv[4], "imp.f64", imp, n * 8);
	free(raw);
	free(sig);
	free(imp);
	return 0;
}

static int cmd_signals(int argc, char **argv)
{
	struct qf_lin_stats s = { 0 };
	struct qf_mixed_signals sig;
	int64_t out, in;
	char text[128];
	float *w;

	need(argc, 8);
	out = atoll(argv[3]);
	in = atoll(argv[4]);
	w = slurp(argv[2], (size_t)(out * in) * 4);
	s.in = in;
	s.sum_sq = slurp(argv[5], (size_t)in * 8);
	s.n = atoll(argv[6]);
	qf_mixed_signals_of(w, out, in, &s, &sig);
	snprintf(text, sizeof(text), "%.17g %.17g\n", sig.act, sig.weight);
	dump_text(argv[7], text);
	free(w);
	free(s.sum_sq);
	return 0;
}

static int cmd_budget(int argc, char **argv)
{
	struct qf_mixed_budget_res res;
	uint64_t *params, *bytes;
	size_t n, i;
	int np, ret, *choice;
	int32_t *c32;
	double *cost;
	char text[512];

	need(argc, 10);
	n = (size_t)atoll(argv[2]);
	np = atoi(argv[3]);
	params = slurp(argv[4], n * 8);
	bytes = slurp(argv[5], n * (size_t)np * 8);
	cost = slurp(argv[6], n * (size_t)np * 8);
	choice = xmalloc(n * sizeof(*choice));
	c32 = xmalloc(n * 4);
	ret = qf_mixed_budget(n, np, params, bytes, cost, atoi(argv[7]),
			      (uint64_t)atoll(argv[8]), choice, &res);
	if (ret == QF_ESPEC)
		fprintf(stderr, "budget: infeasible: the smallest allowed "
			"options exceed the budget\n");
	else
		check(ret, "budget");
	if (ret == 0) {
		for (i = 0; i < n; i++)
			c32[i] = choice[i];
		dump(argv[9], "choice.i32", c32, n * 4);
		snprintf(text, sizeof(text), "%.17g %.17g %llu %llu %llu %d\n",
			 res.cost, res.bound, (unsigned long long)res.bytes,
			 (unsigned long long)res.budget_bytes,
			 (unsigned long long)res.nodes, res.optimal);
		dump_text(argv[9], text);
	}
	free(params);
	free(bytes);
	free(cost);
	free(choice);
	free(c32);
	return ret == QF_ESPEC ? 3 : 0;
}

static int cmd_pack(int argc, char **argv)
{
	struct qf_qparams qp;
	int64_t out, in, ng, nw, nz;
	const char *dir;
	int32_t *packed, *zp = NULL, *z, *uz, shape[2];
	uint16_t *sc;
	uint8_t *q, *uq;
	float *w;

	need(argc, 9);
	out = atoll(argv[3]);
	in = atoll(argv[4]);
	qp.bits = atoi(argv[5]);
	qp.group = atoi(argv[6]);
	qp.sym = atoi(argv[7]);
	dir = argv[8];
	if (!qf_ct_packable(qp.bits)) {
		fprintf(stderr, "bits %d does not pack\n", qp.bits);
		return 2;
	}
	ng = qf_ngroups(in, qp.group);
	nw = qf_ct_words(in, qp.bits);
	nz = qf_ct_words(out, qp.bits);
	w = slurp(argv[2], (size_t)(out * in) * 4);
	q = xmalloc((size_t)(out * in));
	uq = xmalloc((size_t)(out * in));
	sc = xmalloc((size_t)(out * ng) * 2);
	z = xmalloc((size_t)(out * ng) * 4);
	uz = xmalloc((size_t)(out * ng) * 4);
	packed = xmalloc((size_t)(out * nw) * 4);
	check(qf_rtn_quantize(w, out, in, &qp, q, sc, z), "rtn");
	qf_ct_pack_weight(q, out, in, qp.bits, packed);
	qf_ct_unpack_weight(packed, out, in, qp.bits, uq);
	shape[0] = (int32_t)out;
	shape[1] = (int32_t)in;
	dump(dir, "q.u8", q, (size_t)(out * in));
	dump(dir, "sc.f16", sc, (size_t)(out * ng) * 2);
	dump(dir, "z.i32", z, (size_t)(out * ng) * 4);
	dump(dir, "weight_packed.i32", packed, (size_t)(out * nw) * 4);
	dump(dir, "weight_scale.f16", sc, (size_t)(out * ng) * 2);
	dump(dir, "weight_shape.i32", shape, sizeof(shape));
	dump(dir, "uq.u8", uq, (size_t)(out * in));
	if (!qp.sym) {
		zp = xmalloc((size_t)(nz * ng) * 4);
		qf_ct_pack_zero(z, out, ng, qp.bits, zp);
		qf_ct_unpack_zero(zp, out, ng, qp.bits, uz);
		dump(dir, "weight_zero_point.i32", zp, (size_t)(nz * ng) * 4);
		dump(dir, "uz.i32", uz, (size_t)(out * ng) * 4);
	}
	free(w);
	free(q);
	free(uq);
	free(sc);
	free(z);
	free(uz);
	free(zp);
	free(packed);
	return 0;
}

static int cmd_packq(int argc, char **argv)
{
	int64_t out, in, ng, nw, nz;
	int32_t *z, *packed, *zp, *uz;
	uint8_t *q, *uq;
	int bits;

	need(argc, 9);
	out = atoll(argv[4]);
	in = atoll(argv[5]);
	ng = atoll(argv[6]);
	bits = atoi(argv[7]);
	if (!qf_ct_packable(bits)) {
		fprintf(stderr, "bits %d does not pack\n", bits);
		return 2;
	}
	nw = qf_ct_words(in, bits);
	nz = qf_ct_words(out, bits);
	q = slurp(argv[2], (size_t)(out * in));
	z = slurp(argv[3], (size_t)(out * ng) * 4);
	uq = xmalloc((size_t)(out * in));
	uz = xmalloc((size_t)(out * ng) * 4);
	packed = xmalloc((size_t)(out * nw) * 4);
	zp = xmalloc((size_t)(nz * ng) * 4);
	qf_ct_pack_weight(q, out, in, bits, packed);
	qf_ct_unpack_weight(packed, out, in, bits, uq);
	qf_ct_pack_zero(z, out, ng, bits, zp);
	qf_ct_unpack_zero(zp, out, ng, bits, uz);
	dump(argv[8], "packed.i32", packed, (size_t)(out * nw) * 4);
	dump(argv[8], "zp.i32", zp, (size_t)(nz * ng) * 4);
	dump(argv[8], "uq.u8", uq, (size_t)(out * in));
	dump(argv[8], "uz.i32", uz, (size_t)(out * ng) * 4);
	free(q);
	free(z);
	free(uq);
	free(uz);
	free(packed);
	free(zp);
	return 0;
}

static int cmd_size(int argc, char **argv)
{
	struct qf_mixed_size s = { 0 };
	uint64_t *p, *b, *src;
	char text[512];
	size_t n, i;

	need(argc, 7);
	n = (size_t)atoll(argv[2]);
	p = slurp(argv[3], n * 8);
	b = slurp(argv[4], n * 8);
	src = slurp(argv[5], n * 8);
	for (i = 0; i < n; i++)
		qf_mixed_size_add(&s, p[i], b[i], src[i]);
	qf_mixed_size_finish(&s);
	snprintf(text, sizeof(text), "%llu %llu %llu %.17g %.17g %.17g "
		 "%.17g\n", (unsigned long long)s.params,
		 (unsigned long long)s.bytes,
		 (unsigned long long)s.src_bytes, s.bytes_per_param,
		 s.bits_per_param, s.ratio_src, s.ratio_fp32);
	dump_text(argv[6], text);
	free(p);
	free(b);
	free(src);
	return 0;
}

static int cmd_alloc(int argc, char **argv)
{
	struct qf_mixed_alloc_in in = { 0 };
	struct qf_mixed_ratio r;
	struct qf_mixed_linear *lin;
	struct qf_mixed_alloc *a;
	char why[256] = "", (*names)[32];
	int64_t *raw;
	int32_t *b32, *g32;
	size_t i;
	int ret;

	need(argc, 11);
	qf_mixed_ratio_defaults(&r);
	if (qf_mixed_ratio_parse(opt_str(argv[4]), &r, why,
				 sizeof(why)) < 0) {
		fprintf(stderr, "alloc: %s\n", why);
		return 1;
	}
	in.budget = !strcmp(argv[2], "budget");
	in.avg_bits_x100 = atoi(argv[3]);
	in.ratio = &r;
	in.nlayers = atoi(argv[5]);
	in.n = (size_t)atoll(argv[6]);
	raw = slurp(argv[7], in.n * 6 * 8);
	in.sens = slurp(argv[8], in.n * QF_MIXED_SENS_REC * 8);
	in.uloss = slurp(argv[9], (size_t)in.nlayers * QF_MIXED_UNITS *
			 QF_MIXED_NW * 8);
	in.calib_key = "test";
	in.model = "model";
	in.variant = argv[2];
	lin = xmalloc(in.n * sizeof(*lin));
	names = xmalloc(in.n * sizeof(*names));
	for (i = 0; i < in.n; i++) {
		snprintf(names[i], sizeof(names[i]), "w%zu", i);
		lin[i] = (struct qf_mixed_linear){
			.name = names[i],
			.layer = (int)raw[6 * i],
			.kind = (enum qf_tf_linear)raw[6 * i + 1],
			.out = raw[6 * i + 2],
			.in = raw[6 * i + 3],
			.params = (uint64_t)raw[6 * i + 4],
			.src_bytes = (uint64_t)raw[6 * i + 5],
		};
	}
	in.lin = lin;
	ret = qf_mixed_alloc_run(&in, &a);
	if (ret != QF_ESPEC)
		check(ret, "alloc");
	if (!ret) {
		b32 = xmalloc(in.n * 4);
		g32 = xmalloc(in.n * 4);
		for (i = 0; i < in.n; i++) {
			int g = 0;

			b32[i] = qf_mixed_alloc_bits(a, names[i], &g);
			g32[i] = g;
		}
		dump(argv[10], "bits.i32", b32, in.n * 4);
		dump(argv[10], "group.i32", g32, in.n * 4);
		dump(argv[10], "alloc.json", a->json, strlen(a->json));
		free(b32);
		free(g32);
	}
	qf_mixed_alloc_free(a);
	free(raw);
	free((void *)in.sens);
	free((void *)in.uloss);
	free(lin);
	free(names);
	return ret == QF_ESPEC ? 3 : 0;
}

static int cmd_kl(int argc, char **argv)
{
	struct qf_model *m = NULL;
	struct qf_tf_config c;
	int unit_of[QF_TF_NLINEAR], nseq, seqlen, group, np, k, *bits;
	int32_t *ids;
	double *kl;
	size_t nkl;

	need(argc, 8);
	nseq = atoi(argv[4]);
	seqlen = atoi(argv[5]);
	group = atoi(argv[6]);
	bits = widths_arg(argc, argv, 7, &np);
	for (k = 0; k < QF_TF_NLINEAR; k++)
		unit_of[k] = qf_mixed_unit_of((enum qf_tf_linear)k);
	ids = slurp(argv[3], (size_t)nseq * (size_t)seqlen * 4);
	check(qf_model_open(argv[2], &m), "model");
	check(qf_tf_config_parse(m, &c), "config");
	nkl = (size_t)c.layers * QF_MIXED_UNITS * (size_t)np;
	kl = xmalloc(nkl * sizeof(*kl));
	check(qf_mixed_kl_table(m, &c, ids, nseq, seqlen, unit_of,
				QF_MIXED_UNITS, bits, np, group, kl, NULL, NULL),
	      "kl table");
	dump(argv[8 + np], "kl.f64", kl, nkl * sizeof(*kl));
	qf_model_close(m);
	free(kl);
	free(ids);
	free(bits);
	return 0;
}

int main(int argc, char **argv)
{
	need(argc, 2);
	if (!strcmp(argv[1], "sens") || !strcmp(argv[1], "sensg"))
		return cmd_sens(argc, argv);
	if (!strcmp(argv[1], "bytes")) {
		need(argc, 7);
		printf("%llu\n", (unsigned long long)qf_mixed_bytes(
			atoll(argv[2]), atoll(argv[3]), atoi(argv[4]),
			atoi(argv[5]), atoi(argv[6])));
		return 0;
	}
	if (!strcmp(argv[1], "roles"))
		return cmd_roles(argc, argv);
	if (!strcmp(argv[1], "static"))
		return cmd_static(argc, argv);
	if (!strcmp(argv[1], "ratio"))
		return cmd_ratio(argc, argv);
	if (!strcmp(argv[1], "importance"))
		return cmd_importance(argc, argv);
	if (!strcmp(argv[1], "signals"))
		return cmd_signals(argc, argv);
	if (!strcmp(argv[1], "budget"))
		return cmd_budget(argc, argv);
	if (!strcmp(argv[1], "pack"))
		return cmd_pack(argc, argv);
	if (!strcmp(argv[1], "packq"))
		return cmd_packq(argc, argv);
	if (!strcmp(argv[1], "size"))
		return cmd_size(argc, argv);
	if (!strcmp(argv[1], "kl"))
		return cmd_kl(argc, argv);
	if (!strcmp(argv[1], "alloc"))
		return cmd_alloc(argc, argv);
	fprintf(stderr, "unknown command %s\n", argv[1]);
	return 2;
}
