/*
 * report_out.c - the report's figures and its files: relative changes and
 * the Pareto front (derived from the source row), report.json, report.md
 * and, through report_svg.c, report.svg next to it.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "common.h"
#include "quant.h"
#include "report.h"
#include "report_i.h"
#include "tools.h"

/* ------------------------------------------------------------------ */
/* pure figures                                                        */

double qf_report_rel(double v, double base)
{
	if (isnan(v) || isnan(base) || base == 0)
		return NAN;
	return (v - base) / base;
}

void qf_report_fmt_pct(double rel, char *out, size_t cap)
{
	if (isnan(rel) || isinf(rel))
		snprintf(out, cap, "n/a");
	else
		snprintf(out, cap, "%+.2f%%", rel * 100);
}

int qf_report_pareto(const double *bytes, const double *ppl, size_t n,
		     bool *front)
{
	size_t i, j;
	int k = 0;

	for (i = 0; i < n; i++) {
		front[i] = !isnan(bytes[i]) && !isnan(ppl[i]);
		for (j = 0; j < n && front[i]; j++) {
			if (j == i || isnan(bytes[j]) || isnan(ppl[j]))
				continue;
			if (bytes[j] <= bytes[i] && ppl[j] <= ppl[i] &&
			    (bytes[j] < bytes[i] || ppl[j] < ppl[i]))
				front[i] = false;
		}
		k += front[i];
	}
	return k;
}

/* v with prec decimals and a suffix, or "n/a" when not measured. */
static void fmt_num(double v, int prec, const char *suffix, char *out,
		    size_t cap)
{
	if (isnan(v) || isinf(v))
		snprintf(out, cap, "n/a");
	else
		snprintf(out, cap, "%.*f%s", prec, v, suffix);
}

/* 9974232 -> "9,974,232" */
static void grouped(uint64_t v, char *out, size_t cap)
{
	char d[32];
	size_t n, i, k = 0;

	n = (size_t)snprintf(d, sizeof(d), "%llu", (unsigned long long)v);
	for (i = 0; i < n && k + 2 < cap; i++) {
		if (i && (n - i) % 3 == 0)
			out[k++] = ',';
		out[k++] = d[i];
	}
	out[k] = 0;
}

/* ------------------------------------------------------------------ */
/* writers                                                              */

void qf_report_derive(struct row *rows, size_t n)
{
	const struct row *s = &rows[0];
	double *bytes = calloc(n, sizeof(*bytes));
	double *ppl = calloc(n, sizeof(*ppl));
	bool *front = calloc(n, sizeof(*front));
	size_t i;

	for (i = 0; i < n; i++) {
		struct row *r = &rows[i];

		r->ratio = r->sized && s->sized && r->weight_bytes ?
			   (double)s->weight_bytes / (double)r->weight_bytes :
			   NAN;
		r->d_ppl = qf_report_rel(r->ppl, s->ppl);
		r->d_acc = qf_report_rel(r->acc, s->acc);
		r->d_bytes = r->sized && s->sized ?
			     qf_report_rel((double)r->file_bytes,
					   (double)s->file_bytes) : NAN;
		if (bytes && ppl) {
			bytes[i] = r->sized ? (double)r->file_bytes : NAN;
			ppl[i] = r->ppl;
		}
	}
	if (bytes && ppl && front) {
		qf_report_pareto(bytes, ppl, n, front);
		for (i = 0; i < n; i++)
			rows[i].front = front[i];
	}
	free(bytes);
	free(ppl);
	free(front);
}

static cJSON *num_or_null(double v)
{
	return isnan(v) || isinf(v) ? cJSON_CreateNull() :
				       cJSON_CreateNumber(v);
}

static cJSON *row_json(const struct inputs *in, const struct row *r)
{
	cJSON *o = cJSON_CreateObject(), *d;
	bool ok = !r->why;

	cJSON_AddStringToObject(o, "name", r->name);
	cJSON_AddItemToObject(o, "format", !r->sized ? cJSON_CreateNull() :
		cJSON_CreateString(r->gguf ? "gguf" : "safetensors"));
	cJSON_AddItemToObject(o, "file_bytes", r->sized ?
		cJSON_CreateNumber((double)r->file_bytes) : cJSON_CreateNull());
	cJSON_AddItemToObject(o, "weight_bytes", r->sized ?
		cJSON_CreateNumber((double)r->weight_bytes) :
		cJSON_CreateNull());
	cJSON_AddItemToObject(o, "compression_ratio", num_or_null(r->ratio));
	cJSON_AddItemToObject(o, "perplexity", num_or_null(ok ? r->ppl : NAN));
	cJSON_AddItemToObject(o, "nll", num_or_null(ok ? r->nll : NAN));
	if (in->kld) {
		cJSON_AddItemToObject(o, "kld", num_or_null(ok ? r->kld : NAN));
		cJSON_AddItemToObject(o, "same_top1",
				      num_or_null(ok ? r->top1 : NAN));
	}
	cJSON_AddItemToObject(o, "tokens", ok ?
		cJSON_CreateNumber((double)r->tokens) : cJSON_CreateNull());
	cJSON_AddItemToObject(o, "windows", ok ?
		cJSON_CreateNumber(r->windows) : cJSON_CreateNull());
	cJSON_AddItemToObject(o, "eval_seconds", num_or_null(ok ? r->eval_s :
							      NAN));
	cJSON_AddItemToObject(o, "tokens_per_s", num_or_null(ok ? r->tok_s :
							      NAN));
	cJSON_AddItemToObject(o, "accuracy", num_or_null(ok ? r->acc : NAN));
	cJSON_AddItemToObject(o, "accuracy_raw", num_or_null(ok ? r->acc_raw :
							      NAN));
	cJSON_AddItemToObject(o, "mc_questions", ok && in->mc_path ?
		cJSON_CreateNumber(r->mc_n) : cJSON_CreateNull());
	cJSON_AddItemToObject(o, "mc_correct", ok && in->mc_path ?
		cJSON_CreateNumber(r->mc_correct) : cJSON_CreateNull());
	cJSON_AddItemToObject(o, "production_seconds", num_or_null(r->prod_s));
	d = cJSON_AddObjectToObject(o, "change_vs_source");
	cJSON_AddItemToObject(d, "perplexity", num_or_null(r->d_ppl));
	cJSON_AddItemToObject(d, "accuracy", num_or_null(r->d_acc));
	cJSON_AddItemToObject(d, "file_bytes", num_or_null(r->d_bytes));
	cJSON_AddBoolToObject(o, "pareto", r->front);
	cJSON_AddItemToObject(o, "cache_key", r->key[0] ?
		cJSON_CreateString(r->key) : cJSON_CreateNull());
	cJSON_AddItemToObject(o, "error", r->why ?
		cJSON_CreateString(r->why) : cJSON_CreateNull());
	return o;
}

static int write_json(const char *path, const char *model,
		      const struct inputs *in, const struct row *rows,
		      size_t n)
{
	cJSON *j = cJSON_CreateObject(), *t, *v, *f;
	char hex[65], *s;
	size_t *ord = calloc(n, sizeof(*ord)), k, i;
	FILE *fp;
	int ret = 0;

	if (!j || !ord) {
		cJSON_Delete(j);
		free(ord);
		return -ENOMEM;
	}
	cJSON_AddStringToObject(j, "model", model);
	cJSON_AddStringToObject(j, "quantfs", QF_VERSION);
	t = cJSON_AddObjectToObject(j, "text");
	cJSON_AddStringToObject(t, "file", in->text_path);
	cJSON_AddNumberToObject(t, "bytes", (double)in->text.len);
	qf_hex(in->text_sha, 32, hex);
	cJSON_AddStringToObject(t, "sha256", hex);
	cJSON_AddNumberToObject(j, "ctx", in->ctx);
	cJSON_AddStringToObject(j, "perplexity_protocol",
		"text tokenized whole without special tokens, non-overlapping "
		"windows of ctx tokens (BOS + ctx - 1), every token predicted "
		"once (quantfs eval)");
	if (in->mc_path) {
		t = cJSON_AddObjectToObject(j, "choices");
		cJSON_AddStringToObject(t, "file", in->mc_path);
		cJSON_AddNumberToObject(t, "bytes", (double)in->mc.len);
		qf_hex(in->mc_sha, 32, hex);
		cJSON_AddStringToObject(t, "sha256", hex);
		cJSON_AddItemToObject(t, "limit", in->limit > 0 ?
			cJSON_CreateNumber(in->limit) : cJSON_CreateNull());
		cJSON_AddStringToObject(t, "protocol",
			"zero-shot: log-likelihood of ' ' + choice after "
			"'Question: <q>\\nAnswer:', divided by its token "
			"count (accuracy); summed (accuracy_raw)");
	} else {
		cJSON_AddNullToObject(j, "choices");
	}
	cJSON_AddItemToObject(j, "source", row_json(in, &rows[0]));
	v = cJSON_AddArrayToObject(j, "variants");
	for (i = 1; i < n; i++)
		cJSON_AddItemToArray(v, row_json(in, &rows[i]));
	f = cJSON_AddArrayToObject(j, "pareto_front");
	k = qf_report_front_order(rows, n, ord);
	for (i = 0; i < k; i++)
		cJSON_AddItemToArray(f, cJSON_CreateString(rows[ord[i]].name));
	s = cJSON_Print(j);
	fp = s ? fopen(path, "w") : NULL;
	if (!fp)
		ret = s ? -errno : -ENOMEM;
	else if (fprintf(fp, "%s\n", s) < 0 || fclose(fp) != 0)
		ret = -EIO;
	free(s);
	free(ord);
	cJSON_Delete(j);
	return ret;
}

static void md_row(FILE *f, const struct inputs *in, const struct row *r,
		   bool source)
{
	char ppl[32], dp[32], acc[64], da[32], fb[32], db[32], ratio[32];
	char wm[32], ts[32], prod[32], kld[48] = "";

	fmt_num(r->why ? NAN : r->ppl, 4, "", ppl, sizeof(ppl));
	if (in->mc_path && !r->why)
		snprintf(acc, sizeof(acc), "%.4f (%d/%d)", r->acc,
			 r->mc_correct, r->mc_n);
	else
		snprintf(acc, sizeof(acc), "n/a");
	qf_report_fmt_pct(r->d_ppl, dp, sizeof(dp));
	qf_report_fmt_pct(r->d_acc, da, sizeof(da));
	qf_report_fmt_pct(r->d_bytes, db, sizeof(db));
	if (source && !isnan(r->d_ppl))
		snprintf(dp, sizeof(dp), "base");
	if (source && !isnan(r->d_acc))
		snprintf(da, sizeof(da), "base");
	if (source && !isnan(r->d_bytes))
		snprintf(db, sizeof(db), "base");
	if (r->sized) {
		grouped(r->file_bytes, fb, sizeof(fb));
		qf_human_size(r->weight_bytes, wm, sizeof(wm));
	} else {
		snprintf(fb, sizeof(fb), "n/a");
		snprintf(wm, sizeof(wm), "n/a");
	}
	fmt_num(r->ratio, 2, "x", ratio, sizeof(ratio));
	fmt_num(r->why ? NAN : r->tok_s, 0, "", ts, sizeof(ts));
	fmt_num(r->prod_s, 1, " s", prod, sizeof(prod));
	if (in->kld && (r->why || isnan(r->kld)))
		snprintf(kld, sizeof(kld), " n/a | n/a |");
	else if (in->kld)
		snprintf(kld, sizeof(kld), " %.6f | %.2f %% |", r->kld,
			 100 * r->top1);
	fprintf(f, "| %s%s | %s | %s |%s %s | %s | %s | %s | %s | %s | %s | %s "
		"| %s |\n", r->name, source ? " (source)" : "", ppl, dp, kld,
		acc, da, fb, db, ratio, wm, ts, prod, r->front ? "yes" : "");
}

static int write_md(const char *path, const char *svg, const char *model,
		    const struct inputs *in, const struct row *rows,
		    size_t n)
{
	size_t *ord = calloc(n, sizeof(*ord)), k, i;
	char hex[65];
	FILE *f;

	if (!ord)
		return -ENOMEM;
	f = fopen(path, "w");
	if (!f) {
		free(ord);
		return -errno;
	}
	qf_hex(in->text_sha, 32, hex);
	fprintf(f, "# quantfs report: %s\n\n", model);
	fprintf(f, "The source (`original/`) and %zu variant(s), each read "
		"through the mount and measured the same way (quantfs %s).\n\n",
		n - 1, QF_VERSION);
	fprintf(f, "- **perplexity**: `%s` (%zu bytes, sha256 %.16s), "
		"tokenized whole, non-overlapping windows of %d tokens (BOS + "
		"%d), every token predicted once, as `quantfs eval`.\n",
		in->text_path, in->text.len, hex, in->ctx, in->ctx - 1);
	if (in->mc_path) {
		qf_hex(in->mc_sha, 32, hex);
		fprintf(f, "- **accuracy**: `%s` (sha256 %.16s), %s, "
			"zero-shot: each choice scored by the log-likelihood "
			"of \" \" + choice after \"Question: <q>\\nAnswer:\", "
			"divided by its token count; the best one is the "
			"answer.\n", in->mc_path, hex,
			in->limit > 0 ? "the first --limit questions" :
					"every question");
	} else {
		fprintf(f, "- **accuracy**: n/a (no --choices given).\n");
	}
	fprintf(f, "- **file bytes**: the `*.safetensors` files, or "
		"`model.gguf` for a variant served only as GGUF (measured by "
		"decoding that file); **weight memory**: bytes of the weight "
		"tensors as stored (the safetensors or GGUF tensor data), "
		"what a loader holds; **compression**: source weight bytes / "
		"variant weight bytes.\n"
		"- **tokens/s**: predicted tokens per second of the perplexity "
		"forward pass (fp32 on the CPU, weights dequantized as each "
		"layer loads), measured once and cached.\n"
		"- **production**: calibration seconds recorded in "
		"`quantization.json`; n/a where none is recorded "
		"(round-to-nearest variants are produced on read).\n"
		"- Changes are relative to the source: (variant - source) / "
		"source.\n");
	if (in->kld)
		fprintf(f, "- **KLD** (--kld): the mean KL divergence "
			"KL(source || variant) of the next-token distributions "
			"over the same predicted positions, nats; **same "
			"top-1**: the share of them where both rank the same "
			"token first (`quantfs eval --kld-vs`). Between "
			"variants it ranks far more surely than perplexity.\n");
	fprintf(f, "\n| variant | perplexity | vs source |%s accuracy | "
		"vs source | file bytes | vs source | compression | "
		"weight memory | tokens/s | production | Pareto |\n",
		in->kld ? " KLD | same top-1 |" : "");
	fprintf(f, "|---|---:|---:|%s---:|---:|---:|---:|---:|---:|---:|---:|"
		":---:|\n", in->kld ? "---:|---:|" : "");
	for (i = 0; i < n; i++)
		md_row(f, in, &rows[i], i == 0);
	k = qf_report_front_order(rows, n, ord);
	fprintf(f, "\nPareto front (no other row has lower perplexity at no "
		"more bytes), by size: ");
	for (i = 0; i < k; i++)
		fprintf(f, "%s`%s`", i ? ", " : "", rows[ord[i]].name);
	fprintf(f, "%s.\n", k ? "" : "none");
	for (i = 0; i < n; i++)
		if (rows[i].why)
			fprintf(f, "\n`%s` was not measured: %s.\n",
				rows[i].name, rows[i].why);
	fprintf(f, "\n![perplexity against bytes](%s)\n", svg);
	free(ord);
	return fclose(f) == 0 ? 0 : -EIO;
}

/* report.md -> report.json / report.svg next to it. */
static char *sibling(const char *md, const char *ext)
{
	struct qf_buf b = QF_BUF_INIT;
	size_t n = strlen(md);

	if (n > 3 && !strcmp(md + n - 3, ".md"))
		n -= 3;
	qf_buf_addf(&b, "%.*s%s", (int)n, md, ext);
	return qf_buf_detach(&b, NULL);
}

int qf_report_write(const char *md, const char *model,
		    const struct inputs *in, const struct row *rows, size_t n)
{
	char *js = sibling(md, ".json"), *svg = sibling(md, ".svg");
	const char *base;
	int ret = js && svg ? 0 : -ENOMEM;

	base = svg ? strrchr(svg, '/') : NULL;
	base = base ? base + 1 : svg;
	if (!ret && (ret = write_json(js, model, in, rows, n)) < 0)
		fprintf(stderr, "quantfs: cannot write '%s': %s\n", js,
			qf_strerror(ret));
	if (!ret && (ret = qf_report_svg(svg, model, rows, n)) < 0)
		fprintf(stderr, "quantfs: cannot write '%s': %s\n", svg,
			qf_strerror(ret));
	if (!ret && (ret = write_md(md, base, model, in, rows, n)) < 0)
		fprintf(stderr, "quantfs: cannot write '%s': %s\n", md,
			qf_strerror(ret));
	if (!ret)
		printf("wrote %s, %s, %s\n", md, js, svg);
	free(js);
	free(svg);
	return ret;
}
