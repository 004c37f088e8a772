/*
 * gguf_cli.c - drive quant/gguf/gguf.c from tests/unit/test_gguf.py, which
 * owns the independent GGUF reader and numpy block decoders.
 *
 * usage:
 *   gguf_cli write MODEL_DIR TYPE OUT.gguf   plan + every tensor, eagerly
 *   gguf_cli plan MODEL_DIR TYPE             print the plan only
 *   gguf_cli quant TYPE ROWS COLS IN.f32 OUT [IMP.f32]
 *   gguf_cli fit TYPE ROWS COLS IN.f32 OUT [IMP.f32]   _quantize_row_fit
 *   gguf_cli gptq TYPE ROWS COLS W.f32 U.f32 OUT [IMP.f32]
 *                                   qf_ggml_gptq_quantize (U: COLS x COLS)
 *   gguf_cli dequant TYPE ROWS COLS IN OUT.f32
 *   gguf_cli fromint q4_0|q8_0 ROWS COLS Q.u8 SC.f16 OUT
 *   gguf_cli fromint q4_1 ROWS COLS Q.u8 SC.f16 OUT Z.i32
 *                                   (Z: one int32 zero per 32 codes)
 *   gguf_cli read FILE.gguf                  the reader (gguf_read.c)
 *   gguf_cli tomodel FILE.gguf CFG_DIR OUT_DIR   qf_gguf_to_model_dir()
 * TYPE is f32 f16 bf16 q8_0 q4_0 q4_1 q2_k .. q6_k iq4_nl iq4_xs (2-D
 * weights; 1-D are f32).
 * plan/write print "size N", "data_off N", then one line per tensor:
 * "tensor NAME TYPE OFFSET NBYTES PERMUTE_HEADS".  Exit 3 when the model
 * is not supported (the reason on stderr), 1 on other failures.
 * read prints "nt N", "nkv N", "data_off N", "data_bytes N", then
 * "tensor NAME TYPE OFFSET NBYTES" per tensor, or "error CODE WHY" (exit
 * 1); tomodel prints "error CODE WHY" when it fails.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli_io.h"
#include "gguf.h"

static enum qf_ggml_type type_arg(const char *s)
{
	enum qf_ggml_type t;

	if (qf_ggml_type_parse(s, &t) < 0) {
		fprintf(stderr, "unknown type '%s'\n", s);
		exit(2);
	}
	return t;
}

static int plan(const char *dir, const char *type, struct qf_model **m,
		struct qf_gguf_plan *p)
{
	struct qf_gguf_types ty;
	const char *why = NULL;
	size_t i;
	int ret;

	memset(p, 0, sizeof(*p));
	ret = qf_model_open(dir, m);
	if (ret < 0) {
		fprintf(stderr, "cannot open %s: %s\n", dir, qf_strerror(ret));
		return 1;
	}
	qf_gguf_types_uniform(&ty, type_arg(type));
	ret = qf_gguf_plan_init(*m, &ty, p, &why);
	if (ret < 0) {
		fprintf(stderr, "plan: %s: %s\n", qf_strerror(ret),
			why ? why : "?");
		return ret == QF_EUNSUPPORTED ? 3 : 1;
	}
	printf("size %llu\ndata_off %llu\n", (unsigned long long)p->size,
	       (unsigned long long)p->data_off);
	for (i = 0; i < p->nt; i++)
		printf("tensor %s %s %llu %llu %d\n", p->t[i].name,
		       qf_ggml_type_name(p->t[i].type),
		       (unsigned long long)p->t[i].offset,
		       (unsigned long long)p->t[i].nbytes,
		       p->t[i].permute_heads);
	return 0;
}

static int write_file(const char *dir, const char *type, const char *out)
{
	struct qf_gguf_plan p;
	struct qf_model *m = NULL;
	static const char zeros[QF_GGUF_ALIGN];
	FILE *f;
	size_t i;
	int ret;

	ret = plan(dir, type, &m, &p);
	if (ret)
		goto out_free;
	f = fopen(out, "wb");
	if (!f || fwrite(p.header.data, 1, p.header.len, f) != p.header.len) {
		fprintf(stderr, "cannot write %s\n", out);
		exit(2);
	}
	for (i = 0; i < p.nt; i++) {
		const struct qf_gguf_tensor *t = &p.t[i];
		uint64_t end = i + 1 < p.nt ? p.t[i + 1].offset : p.size;
		void *buf = malloc(t->nbytes);

		if (!buf || (uint64_t)ftell(f) != t->offset)
			exit(2);
		ret = qf_gguf_produce(m, &p, i, NULL, buf);
		if (ret < 0) {
			fprintf(stderr, "produce %s: %s\n", t->name,
				qf_strerror(ret));
			exit(1);
		}
		if (fwrite(buf, 1, t->nbytes, f) != t->nbytes ||
		    fwrite(zeros, 1, end - t->offset - t->nbytes, f) !=
		    end - t->offset - t->nbytes)
			exit(2);
		free(buf);
	}
	if (fclose(f)) {
		fprintf(stderr, "cannot write %s\n", out);
		exit(2);
	}
out_free:
	qf_gguf_plan_free(&p);
	qf_model_close(m);
	return ret;
}

/* gptq: qf_ggml_gptq_quantize of the whole matrix. */
static int gptq_cmd(int argc, char **argv)
{
	enum qf_ggml_type t = type_arg(argv[2]);
	int64_t rows = atoll(argv[3]), cols = atoll(argv[4]);
	uint64_t rb = qf_ggml_row_bytes(t, cols);
	float *w, *u, *imp = NULL;
	uint8_t *y;
	int ret;

	if (!rb || rows <= 0) {
		fprintf(stderr, "bad shape for %s\n", argv[2]);
		return 2;
	}
	w = slurp(argv[5], (size_t)(rows * cols) * 4);
	u = slurp(argv[6], (size_t)(cols * cols) * 4);
	if (argc > 8)
		imp = slurp(argv[8], (size_t)cols * 4);
	y = calloc(rows, rb);
	ret = y ? qf_ggml_gptq_quantize(t, w, rows, cols, u, imp, y) : -ENOMEM;
	if (!ret)
		dump_path(argv[7], y, rb * (uint64_t)rows);
	else
		fprintf(stderr, "gptq: %s\n", qf_strerror(ret));
	free(w);
	free(u);
	free(imp);
	free(y);
	return ret ? 1 : 0;
}

/* quant / dequant / fromint over ROWS rows of COLS. */
static int rows_cmd(int argc, char **argv)
{
	enum qf_ggml_type t;
	int64_t rows = atoll(argv[3]), cols = atoll(argv[4]), r;
	uint64_t rb;
	size_t n = (size_t)(rows * cols);
	float *x = NULL, *imp = NULL;
	uint8_t *y, *q = NULL;
	uint16_t *sc = NULL;
	int32_t *z = NULL;
	int ret = 0;

	t = type_arg(argv[2]);
	rb = qf_ggml_row_bytes(t, cols);
	if (!rb || rows <= 0) {
		fprintf(stderr, "bad shape for %s\n", argv[2]);
		return 2;
	}
	y = malloc(rb * (uint64_t)rows);
	if (!strcmp(argv[1], "quant") || !strcmp(argv[1], "fit")) {
		x = slurp(argv[5], n * 4);
		if (argc > 7)
			imp = slurp(argv[7], (size_t)cols * 4);
		for (r = 0; r < rows && !ret; r++)
			ret = (argv[1][0] == 'f' ? qf_ggml_quantize_row_fit :
			       qf_ggml_quantize_row)(t, x + r * cols, cols,
						     imp, y + r * rb);
		if (!ret)
			dump_path(argv[6], y, rb * (uint64_t)rows);
	} else if (!strcmp(argv[1], "dequant")) {
		free(y);
		y = slurp(argv[5], rb * (uint64_t)rows);
		x = malloc(n * 4);
		for (r = 0; r < rows && !ret; r++)
			ret = qf_ggml_dequantize_row(t, y + r * rb, cols,
						     x + r * cols);
		if (!ret)
			dump_path(argv[6], x, n * 4);
	} else {
		q = slurp(argv[5], n);
		sc = slurp(argv[6], n / 32 * 2);
		if (t == QF_GGML_Q4_1)
			z = slurp(argv[8], n / 32 * 4);
		for (r = 0; r < rows && !ret; r++)
			ret = t == QF_GGML_Q4_1 ?
			      qf_gguf_q4_1_from_int(q + r * cols,
						    sc + r * cols / 32,
						    z + r * cols / 32, cols,
						    y + r * rb) :
			      t == QF_GGML_Q4_0 ?
			      qf_gguf_q4_0_from_int(q + r * cols,
						    sc + r * cols / 32, cols,
						    y + r * rb) :
			      qf_gguf_q8_0_from_int(q + r * cols,
						    sc + r * cols / 32, cols,
						    y + r * rb);
		if (!ret)
			dump_path(argv[7], y, rb * (uint64_t)rows);
	}
	if (ret)
		fprintf(stderr, "%s: %s\n", argv[1], qf_strerror(ret));
	free(x);
	free(imp);
	free(y);
	free(q);
	free(sc);
	free(z);
	return ret ? 1 : 0;
}

static int read_cmd(const char *path)
{
	struct qf_gguf_file *g = NULL;
	const char *why = NULL;
	size_t i;
	int ret;

	ret = qf_gguf_open(path, &g, &why);
	if (ret < 0) {
		printf("error %s %s\n", qf_strerror(ret), why ? why : "");
		return 1;
	}
	printf("nt %zu\nnkv %zu\ndata_off %llu\ndata_bytes %llu\n", g->nt,
	       g->nkv, (unsigned long long)g->data_off,
	       (unsigned long long)g->data_bytes);
	for (i = 0; i < g->nt; i++)
		printf("tensor %s %s %llu %llu\n", g->t[i].name,
		       qf_ggml_type_name(g->t[i].type),
		       (unsigned long long)g->t[i].offset,
		       (unsigned long long)g->t[i].nbytes);
	qf_gguf_close(g);
	return 0;
}

static int tomodel_cmd(const char *gguf, const char *cfg, const char *out)
{
	const char *why = NULL;
	int ret;

	ret = qf_gguf_to_model_dir(gguf, cfg, out, &why);
	if (ret < 0) {
		printf("error %s %s\n", qf_strerror(ret), why ? why : "");
		return 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct qf_gguf_plan p;
	struct qf_model *m = NULL;
	int ret;

	if (argc == 5 && !strcmp(argv[1], "write"))
		return write_file(argv[2], argv[3], argv[4]);
	if (argc == 4 && !strcmp(argv[1], "plan")) {
		ret = plan(argv[2], argv[3], &m, &p);
		qf_gguf_plan_free(&p);
		qf_model_close(m);
		return ret;
	}
	if ((argc == 7 || argc == 8) && (!strcmp(argv[1], "quant") ||
					 !strcmp(argv[1], "fit")))
		return rows_cmd(argc, argv);
	if (argc == 7 && !strcmp(argv[1], "dequant"))
		return rows_cmd(argc, argv);
	if ((argc == 8 || (argc == 9 && !strcmp(argv[2], "q4_1"))) &&
	    !strcmp(argv[1], "fromint"))
		return rows_cmd(argc, argv);
	if ((argc == 8 || argc == 9) && !strcmp(argv[1], "gptq"))
		return gptq_cmd(argc, argv);
	if (argc == 3 && !strcmp(argv[1], "read"))
		return read_cmd(argv[2]);
	if (argc == 5 && !strcmp(argv[1], "tomodel"))
		return tomodel_cmd(argv[2], argv[3], argv[4]);
	fprintf(stderr, "usage: see the file header\n");
	return 2;
}
