/*
 * report.c - `quantfs report MNT/<model>`: the source (original/) and
 * each variant measured the same way, written as report.md, report.json
 * and report.svg (perplexity against bytes, the Pareto front marked).
 *
 * Variants are produced by reading them through the mount, in a thread,
 * while this one polls the variant directory's user.quantfs.progress.
 * Each figure is measured, never assumed: what could not be measured is
 * printed as n/a (JSON null).  Results are cached per (variant, text,
 * choices, ctx, limit) in <cache>/reports/<key>.json, the key hashing
 * what identifies the variant's bytes (config.json, quantization.json,
 * tokenizer.json, each weight file's size and safetensors header) and
 * the inputs, so a re-run reproduces the report exactly; timings are
 * measured once, on the run that filled the entry.  Variants served only
 * as model.gguf are measured by decoding it (report_gguf.c); the plot is
 * report_svg.c.
 */
#include <dirent.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "cache.h"
#include "common.h"
#include "quant.h"
#include "report.h"
#include "report_i.h"
#include "tools.h"

#define REPORT_KEY_TAG "quantfs report 1"
#define SMALL_FILE_MAX (64u << 20)	/* config, manifest, tokenizer */

struct inputs {
	const char *text_path;
	const char *mc_path;		/* NULL: no accuracy */
	struct qf_buf text;
	struct qf_buf mc;
	uint8_t text_sha[32];
	uint8_t mc_sha[32];
	int ctx;
	int limit;			/* 0: every question */
	char *cache;			/* <cache>/reports */
	bool tty;
};

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
/* what identifies a variant's bytes                                   */

static void hash_part(struct qf_sha256 *h, const char *name, const void *p,
		      size_t n)
{
	uint64_t len = n;

	qf_sha256_update(h, name, strlen(name) + 1);
	qf_sha256_update(h, &len, sizeof(len));
	qf_sha256_update(h, p, n);
}

/* The manifest's production time: "calibration"."seconds", else NAN. */
static double manifest_seconds(const struct qf_buf *b)
{
	cJSON *j = cJSON_ParseWithLength(b->data, b->len);
	cJSON *s = cJSON_GetObjectItem(cJSON_GetObjectItem(j, "calibration"),
				       "seconds");
	double v = cJSON_IsNumber(s) && s->valuedouble > 0 ?
		   s->valuedouble : NAN;

	cJSON_Delete(j);
	return v;
}

/* Size and safetensors header (8 + N bytes) of one weight file. */
static int hash_weights(struct qf_sha256 *h, const char *path,
			const char *name, struct row *r)
{
	uint8_t len8[8];
	uint64_t n = 0;
	struct stat st;
	char *hdr = NULL;
	int fd, i, ret = 0;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	errno = 0;	/* a short read sets none: QF_EFORMAT */
	if (fstat(fd, &st) < 0 || pread(fd, len8, 8, 0) != 8) {
		ret = errno ? -errno : QF_EFORMAT;
		goto out_close;
	}
	for (i = 7; i >= 0; i--)
		n = n << 8 | len8[i];
	if (n > QF_ST_MAX_HEADER || 8 + n > (uint64_t)st.st_size) {
		ret = QF_EFORMAT;
		goto out_close;
	}
	hdr = malloc(n + 1);
	if (!hdr) {
		ret = -ENOMEM;
		goto out_close;
	}
	errno = 0;
	if (pread(fd, hdr, n, 8) != (ssize_t)n) {
		ret = errno ? -errno : QF_EFORMAT;
		goto out_close;
	}
	hash_part(h, name, &st.st_size, sizeof(st.st_size));
	hash_part(h, "header", hdr, n);
	r->file_bytes += (uint64_t)st.st_size;
	r->weight_bytes += (uint64_t)st.st_size - 8 - n;
out_close:
	free(hdr);
	close(fd);
	return ret;
}

static int is_weights(const struct dirent *d)
{
	size_t n = strlen(d->d_name);

	return n > 12 && !strcmp(d->d_name + n - 12, ".safetensors");
}

/*
 * Digest of a model directory.  Reading quantization.json of a calibrated
 * variant waits for its production: run this in the producer thread.
 */
static int dir_digest(struct row *r, uint8_t out[32])
{
	static const char *const small[] = {
		"config.json", "quantization.json", "tokenizer.json",
		"model.safetensors.index.json",
	};
	struct qf_sha256 h;
	struct dirent **names = NULL;
	struct qf_buf p = QF_BUF_INIT, b = QF_BUF_INIT;
	int i, n = 0, ret = 0;

	qf_sha256_init(&h);
	r->file_bytes = r->weight_bytes = 0;
	r->prod_s = NAN;
	for (i = 0; i < 4 && !ret; i++) {
		qf_buf_reset(&p);
		qf_buf_addf(&p, "%s/%s", r->dir, small[i]);
		ret = p.data ? qf_read_file(p.data, SMALL_FILE_MAX, &b) :
			       -ENOMEM;
		if (ret == -ENOENT && i > 0) {
			hash_part(&h, small[i], "", 0);
			ret = 0;
			continue;
		}
		if (ret < 0)
			break;
		hash_part(&h, small[i], b.data, b.len);
		if (i == 1)
			r->prod_s = manifest_seconds(&b);
		qf_buf_release(&b);
	}
	if (!ret) {
		n = scandir(r->dir, &names, is_weights, alphasort);
		ret = n < 0 ? -errno : 0;
	}
	if (!ret && n == 0) {		/* a k-quant: model.gguf only */
		qf_buf_reset(&p);
		qf_buf_addf(&p, "%s/model.gguf", r->dir);
		ret = p.data ? qf_report_hash_gguf(&h, p.data, r) : -ENOMEM;
		r->gguf = !ret;
	}
	for (i = 0; i < n; i++) {
		qf_buf_reset(&p);
		qf_buf_addf(&p, "%s/%s", r->dir, names[i]->d_name);
		if (!ret)
			ret = p.data ? hash_weights(&h, p.data,
						    names[i]->d_name, r) :
				       -ENOMEM;
		free(names[i]);
	}
	free(names);
	qf_buf_release(&p);
	qf_buf_release(&b);
	if (!ret) {
		qf_sha256_final(&h, out);
		r->sized = true;
	}
	return ret;
}

/* Result key: the variant digest and every input of the measurement. */
static void result_key(const struct inputs *in, const uint8_t digest[32],
		       char hex[65])
{
	struct qf_sha256 h;
	uint8_t k[32];
	int32_t nums[2] = { in->ctx, in->mc_path ? in->limit : -1 };

	qf_sha256_init(&h);
	hash_part(&h, "tag", REPORT_KEY_TAG, sizeof(REPORT_KEY_TAG));
	hash_part(&h, "version", QF_VERSION, sizeof(QF_VERSION));
	hash_part(&h, "variant", digest, 32);
	hash_part(&h, "text", in->text_sha, 32);
	if (in->mc_path)
		hash_part(&h, "choices", in->mc_sha, 32);
	else
		hash_part(&h, "choices", "", 0);
	hash_part(&h, "ctx,limit", nums, sizeof(nums));
	qf_sha256_final(&h, k);
	qf_hex(k, 32, hex);
}

/* ------------------------------------------------------------------ */
/* production through the mount, with progress                          */

struct producer {
	struct row *row;
	bool warm;			/* read the weight files whole */
	uint8_t digest[32];		/* OUT, when !warm */
	uint64_t done;			/* bytes read, lock */
	bool finished;			/* lock */
	int err;			/* lock */
	pthread_mutex_t lock;
	pthread_cond_t cond;		/* finished was set */
};

static int read_whole(struct producer *pr, const char *path)
{
	size_t cap = 4u << 20;
	char *buf = malloc(cap);
	ssize_t n = 0;
	int fd, ret = 0;

	if (!buf)
		return -ENOMEM;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		free(buf);
		return -errno;
	}
	while ((n = read(fd, buf, cap)) > 0) {
		pthread_mutex_lock(&pr->lock);
		pr->done += (uint64_t)n;
		pthread_mutex_unlock(&pr->lock);
	}
	if (n < 0)
		ret = -errno;
	close(fd);
	free(buf);
	return ret;
}

static void *producer_main(void *arg)
{
	struct producer *pr = arg;
	struct dirent **names = NULL;
	int i, n, ret = 0;

	if (!pr->warm) {
		ret = dir_digest(pr->row, pr->digest);
	} else if (pr->row->gguf) {
		struct qf_buf p = QF_BUF_INIT;

		qf_buf_addf(&p, "%s/model.gguf", pr->row->dir);
		ret = p.data ? read_whole(pr, p.data) : -ENOMEM;
		qf_buf_release(&p);
	} else {
		n = scandir(pr->row->dir, &names, is_weights, alphasort);
		ret = n < 0 ? -errno : 0;
		for (i = 0; i < n; i++) {
			struct qf_buf p = QF_BUF_INIT;

			qf_buf_addf(&p, "%s/%s", pr->row->dir,
				    names[i]->d_name);
			if (!ret)
				ret = p.data ? read_whole(pr, p.data) :
					       -ENOMEM;
			qf_buf_release(&p);
			free(names[i]);
		}
		free(names);
	}
	pthread_mutex_lock(&pr->lock);
	pr->err = ret;
	pr->finished = true;
	pthread_cond_signal(&pr->cond);
	pthread_mutex_unlock(&pr->lock);
	return NULL;
}

/*
 * Run the producer thread to its end, printing progress: a line every
 * 5 s when stderr is a log, one line rewritten in place on a terminal.
 */
static int produce(struct producer *pr, const char *tag, bool tty)
{
	double t0 = qf_now();
	bool drawn = false;
	pthread_t th;
	int ret;

	pthread_mutex_init(&pr->lock, NULL);
	pthread_cond_init(&pr->cond, NULL);
	if (pthread_create(&th, NULL, producer_main, pr) != 0) {
		ret = -EAGAIN;
		goto out_destroy;
	}
	pthread_mutex_lock(&pr->lock);
	while (!pr->finished) {
		char note[256], size[32];
		struct timespec ts;
		uint64_t done;
		int rc;

		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_sec += tty ? 0 : 5;
		ts.tv_nsec += tty ? 250 * 1000 * 1000 : 0;
		if (ts.tv_nsec >= 1000 * 1000 * 1000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000 * 1000 * 1000;
		}
		rc = pthread_cond_timedwait(&pr->cond, &pr->lock, &ts);
		if (pr->finished || rc != ETIMEDOUT)
			continue;
		done = pr->done;
		pthread_mutex_unlock(&pr->lock);
		/* the xattr asks the daemon: never under the lock */
		qf_progress_note(pr->row->dir, note, sizeof(note));
		size[0] = 0;
		if (done) {
			qf_human_size(done, size + 2, sizeof(size) - 2);
			memcpy(size, ", ", 2);
			strcat(size, " read");
		}
		fprintf(stderr, "%s%s producing, %.0f s%s%s%s",
			tty ? "\r" : "", tag, qf_now() - t0, size, note,
			tty ? "\033[K" : "\n");
		drawn = true;
		pthread_mutex_lock(&pr->lock);
	}
	ret = pr->err;
	pthread_mutex_unlock(&pr->lock);
	pthread_join(th, NULL);
	if (tty && drawn)
		fprintf(stderr, "\r\033[K");
out_destroy:
	pthread_cond_destroy(&pr->cond);
	pthread_mutex_destroy(&pr->lock);
	return ret;
}

/* ------------------------------------------------------------------ */
/* the result cache                                                     */

static char *entry_path(const struct inputs *in, const char *key)
{
	struct qf_buf p = QF_BUF_INIT;

	qf_buf_addf(&p, "%s/%s.json", in->cache, key);
	return qf_buf_detach(&p, NULL);
}

static double num_or_nan(const cJSON *o, const char *k)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);

	return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static bool cache_load(const struct inputs *in, struct row *r)
{
	struct qf_buf b = QF_BUF_INIT;
	char *path = entry_path(in, r->key);
	cJSON *j = NULL, *mc;
	const char *key;
	bool ok = false;

	if (path && qf_read_file(path, SMALL_FILE_MAX, &b) == 0)
		j = cJSON_ParseWithLength(b.data, b.len);
	key = cJSON_GetStringValue(cJSON_GetObjectItem(j, "key"));
	if (key && !strcmp(key, r->key)) {
		r->ppl = num_or_nan(j, "ppl");
		r->nll = num_or_nan(j, "nll");
		r->tokens = (int64_t)num_or_nan(j, "tokens");
		r->windows = (int)num_or_nan(j, "windows");
		r->eval_s = num_or_nan(j, "eval_seconds");
		r->tok_s = num_or_nan(j, "tokens_per_s");
		mc = cJSON_GetObjectItem(j, "mc");
		ok = !isnan(r->ppl) && !isnan(r->tok_s) &&
		     (in->mc_path ? cJSON_IsObject(mc) : cJSON_IsNull(mc));
		if (ok && in->mc_path) {
			r->mc_n = (int)num_or_nan(mc, "questions");
			r->mc_correct = (int)num_or_nan(mc, "correct");
			r->mc_correct_raw = (int)num_or_nan(mc, "correct_raw");
			r->acc = num_or_nan(mc, "accuracy");
			r->acc_raw = num_or_nan(mc, "accuracy_raw");
			ok = !isnan(r->acc) && !isnan(r->acc_raw);
		}
	}
	cJSON_Delete(j);
	qf_buf_release(&b);
	free(path);
	return ok;
}

/*
 * Doubles to the last bit (cJSON prints 15 digits when they come back
 * within a relative epsilon): a cached figure is the measured one, so a
 * re-run writes the same report.
 */
static void add_exact(cJSON *o, const char *k, double v)
{
	char b[40];

	if (isnan(v) || isinf(v)) {
		cJSON_AddNullToObject(o, k);
		return;
	}
	snprintf(b, sizeof(b), "%.17g", v);
	cJSON_AddRawToObject(o, k, b);
}

/* Write the entry whole (temp file + rename): readers see all or none. */
static int cache_store(const struct inputs *in, const struct row *r)
{
	cJSON *j = cJSON_CreateObject(), *mc;
	char *path = entry_path(in, r->key), *s = NULL;
	struct qf_buf tmp = QF_BUF_INIT;
	FILE *f;
	int ret = -ENOMEM;

	if (!j || !path)
		goto out_free;
	cJSON_AddStringToObject(j, "key", r->key);
	cJSON_AddStringToObject(j, "variant", r->name);
	cJSON_AddStringToObject(j, "text", in->text_path);
	cJSON_AddNumberToObject(j, "ctx", in->ctx);
	add_exact(j, "ppl", r->ppl);
	add_exact(j, "nll", r->nll);
	cJSON_AddNumberToObject(j, "tokens", (double)r->tokens);
	cJSON_AddNumberToObject(j, "windows", r->windows);
	add_exact(j, "eval_seconds", r->eval_s);
	add_exact(j, "tokens_per_s", r->tok_s);
	if (in->mc_path) {
		mc = cJSON_AddObjectToObject(j, "mc");
		cJSON_AddStringToObject(mc, "file", in->mc_path);
		cJSON_AddNumberToObject(mc, "questions", r->mc_n);
		cJSON_AddNumberToObject(mc, "correct", r->mc_correct);
		cJSON_AddNumberToObject(mc, "correct_raw", r->mc_correct_raw);
		add_exact(mc, "accuracy", r->acc);
		add_exact(mc, "accuracy_raw", r->acc_raw);
	} else {
		cJSON_AddNullToObject(j, "mc");
	}
	s = cJSON_Print(j);
	qf_buf_addf(&tmp, "%s.%ld.tmp", path, (long)getpid());
	if (!s || !tmp.data)
		goto out_free;
	f = fopen(tmp.data, "w");
	if (!f) {
		ret = -errno;
		goto out_free;
	}
	ret = fputs(s, f) < 0 || fputc('\n', f) < 0 ? -EIO : 0;
	if (fclose(f) != 0 && !ret)
		ret = -errno;
	if (!ret && rename(tmp.data, path) < 0)
		ret = -errno;
	if (ret < 0)
		unlink(tmp.data);
out_free:
	cJSON_Delete(j);
	free(s);
	free(path);
	qf_buf_release(&tmp);
	return ret;
}

/* ------------------------------------------------------------------ */
/* measuring                                                            */

static void set_why(struct row *r, const char *what, int err)
{
	struct qf_buf b = QF_BUF_INIT;

	if (err == -EINVAL && !strcmp(what, "perplexity"))
		qf_buf_addf(&b, "%s: text too short for one window", what);
	else if (err == -EINVAL && !strcmp(what, "multiple choice"))
		qf_buf_addf(&b, "%s: no question in the choices file", what);
	else
		qf_buf_addf(&b, "%s: %s", what, qf_strerror(err));
	free(r->why);
	r->why = qf_buf_detach(&b, NULL);
}

static int measure(const struct inputs *in, struct row *r)
{
	struct qf_eval_result e;
	struct qf_mc_result mc;
	struct qf_model *m = NULL;
	struct qf_tok *tok = NULL;
	const char *why = NULL;
	char *tmp = NULL;
	int ret;

	if (r->gguf) {
		ret = qf_report_gguf_model(r, in->cache, &tmp, &why);
		if (ret < 0) {
			set_why(r, why ? why : "decoding model.gguf", ret);
			return ret;
		}
		why = NULL;
	}
	ret = qf_model_open(tmp ? tmp : r->dir, &m);
	if (ret < 0) {
		set_why(r, "open", ret);
		goto out_close;
	}
	ret = qf_model_tokenizer(m, &tok, &why);
	if (ret < 0) {
		set_why(r, why ? why : "tokenizer.json", ret);
		goto out_close;
	}
	/* choices first: a malformed file fails before the long pass */
	if (in->mc_path) {
		ret = qf_eval_mc(m, tok, in->mc.data, in->mc.len, in->limit,
				 in->ctx, &mc);
		if (ret < 0) {
			set_why(r, "multiple choice", ret);
			goto out_close;
		}
		r->mc_n = mc.questions;
		r->mc_correct = mc.correct;
		r->mc_correct_raw = mc.correct_raw;
		r->acc = mc.accuracy;
		r->acc_raw = mc.accuracy_raw;
	}
	ret = qf_eval_ppl(m, tok, in->text.data, in->text.len, in->ctx, &e);
	if (ret < 0) {
		set_why(r, "perplexity", ret);
		goto out_close;
	}
	r->ppl = e.ppl;
	r->nll = e.nll;
	r->tokens = e.tokens;
	r->windows = e.windows;
	r->eval_s = e.seconds;
	r->tok_s = e.seconds > 0 ? (double)e.tokens / e.seconds : NAN;
out_close:
	qf_tok_close(tok);
	qf_model_close(m);
	qf_report_gguf_remove(tmp);
	return ret;
}

/* Produce (through the mount), then measure or take the cached figures. */
static int run_row(const struct inputs *in, struct row *r, int i, int n)
{
	struct producer pr = { .row = r };
	double t0 = qf_now(), t1, t2;
	char tag[320];
	int ret;

	snprintf(tag, sizeof(tag), "[%d/%d] %s:", i, n, r->name);
	fprintf(stderr, "%s started\n", tag);
	ret = produce(&pr, tag, in->tty);
	if (ret < 0) {
		set_why(r, "reading the variant", ret);
		goto out_fail;
	}
	result_key(in, pr.digest, r->key);
	if (cache_load(in, r)) {
		r->cached = true;
		fprintf(stderr, "%s cached (%.12s), %.1f s\n", tag, r->key,
			qf_now() - t0);
		return 0;
	}
	pr = (struct producer){ .row = r, .warm = true };
	ret = produce(&pr, tag, in->tty);
	if (ret < 0) {
		set_why(r, "reading the weights", ret);
		goto out_fail;
	}
	t1 = qf_now();
	ret = measure(in, r);
	if (ret < 0)
		goto out_fail;
	t2 = qf_now();
	ret = cache_store(in, r);
	if (ret < 0)
		fprintf(stderr, "quantfs: report: cannot store %s/%s.json: "
			"%s\n", in->cache, r->key, qf_strerror(ret));
	fprintf(stderr, "%s done in %.1f s (production + read %.1f s, "
		"evaluation %.1f s: %.0f tokens/s), ppl %.4f\n", tag,
		t2 - t0, t1 - t0, t2 - t1, r->tok_s, r->ppl);
	return 0;

out_fail:
	fprintf(stderr, "%s failed after %.1f s: %s\n", tag, qf_now() - t0,
		r->why);
	return ret;
}

/* ------------------------------------------------------------------ */
/* writers                                                              */

static void derive(struct row *rows, size_t n)
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
	char wm[32], ts[32], prod[32];

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
	fprintf(f, "| %s%s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s "
		"| %s |\n", r->name, source ? " (source)" : "", ppl, dp, acc,
		da, fb, db, ratio, wm, ts, prod, r->front ? "yes" : "");
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
		"source.\n\n");
	fprintf(f, "| variant | perplexity | vs source | accuracy | "
		"vs source | file bytes | vs source | compression | "
		"weight memory | tokens/s | production | Pareto |\n");
	fprintf(f, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
		":---:|\n");
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

/* ------------------------------------------------------------------ */
/* the command                                                          */

static const char report_usage[] =
	"usage: quantfs report MNT/MODEL [--variants A,B,...] --text FILE\n"
	"                      [--choices FILE.jsonl [--limit N]] [--ctx N]\n"
	"                      [-o REPORT.md] [--cache DIR]\n";

static bool listed(const struct row *rows, size_t n, const char *name)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (!strcmp(rows[i].name, name))
			return true;
	return false;
}

static int add_row(struct row **rows, size_t *n, const char *model_dir,
		   const char *name)
{
	struct qf_buf d = QF_BUF_INIT;
	struct row *g;

	if (listed(*rows, *n, name))
		return 0;
	g = realloc(*rows, (*n + 1) * sizeof(*g));
	if (!g)
		return -ENOMEM;
	*rows = g;
	g = &g[*n];
	memset(g, 0, sizeof(*g));
	qf_buf_addf(&d, "%s/%s", model_dir, name);
	g->name = strdup(name);
	g->dir = qf_buf_detach(&d, NULL);
	g->ppl = g->nll = g->eval_s = g->tok_s = NAN;
	g->acc = g->acc_raw = g->prod_s = NAN;
	(*n)++;
	return g->name && g->dir ? 0 : -ENOMEM;
}

/* original, then --variants, or what `ls MNT/<model>` shows (no _fake). */
static int pick_rows(const char *model_dir, char *list, struct row **rows,
		     size_t *n)
{
	char *save = NULL, *v;
	struct dirent *e;
	DIR *d;
	int ret;

	ret = add_row(rows, n, model_dir, "original");
	if (ret < 0 || list) {
		for (v = list ? strtok_r(list, ",", &save) : NULL;
		     v && !ret; v = strtok_r(NULL, ",", &save))
			if (*v)
				ret = add_row(rows, n, model_dir, v);
		return ret;
	}
	d = opendir(model_dir);
	if (!d)
		return -errno;
	while (!ret && (e = readdir(d))) {
		size_t len = strlen(e->d_name);

		if (e->d_name[0] == '.' || !strcmp(e->d_name, "original") ||
		    (len > 5 && !strcmp(e->d_name + len - 5, "_fake")))
			continue;
		ret = add_row(rows, n, model_dir, e->d_name);
	}
	closedir(d);
	return ret;
}

static int read_inputs(struct inputs *in)
{
	struct qf_sha256 h;
	int ret;

	ret = qf_read_file(in->text_path, 1u << 30, &in->text);
	if (ret < 0) {
		fprintf(stderr, "quantfs: cannot read '%s': %s\n",
			in->text_path, qf_strerror(ret));
		return ret;
	}
	qf_sha256_init(&h);
	qf_sha256_update(&h, in->text.data, in->text.len);
	qf_sha256_final(&h, in->text_sha);
	if (!in->mc_path)
		return 0;
	ret = qf_read_file(in->mc_path, 1u << 30, &in->mc);
	if (ret < 0) {
		fprintf(stderr, "quantfs: cannot read '%s': %s\n",
			in->mc_path, qf_strerror(ret));
		return ret;
	}
	qf_sha256_init(&h);
	qf_sha256_update(&h, in->mc.data, in->mc.len);
	qf_sha256_final(&h, in->mc_sha);
	return 0;
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

/* Fail before hours of measuring, not after: can we write there? */
static int check_out(const char *md)
{
	const char *slash = strrchr(md, '/');
	struct qf_buf d = QF_BUF_INIT;
	int ret = 0;

	qf_buf_addf(&d, "%.*s", slash ? (int)(slash - md) + 1 : 1,
		    slash ? md : ".");
	if (!d.data)
		return -ENOMEM;
	if (access(d.data, W_OK | X_OK) < 0) {
		ret = -errno;
		fprintf(stderr, "quantfs: cannot write reports in '%s': %s\n",
			d.data, strerror(errno));
	}
	qf_buf_release(&d);
	return ret;
}

static int write_all(const char *md, const char *model,
		     const struct inputs *in, const struct row *rows,
		     size_t n)
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

static int parse_args(int argc, char **argv, struct inputs *in,
		      const char **out, const char **cache, char **list)
{
	static const struct option lo[] = {
		{ "variants", required_argument, NULL, 'v' },
		{ "text", required_argument, NULL, 't' },
		{ "choices", required_argument, NULL, 'c' },
		{ "ctx", required_argument, NULL, 'x' },
		{ "limit", required_argument, NULL, 'l' },
		{ "cache", required_argument, NULL, 'C' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	optind = 1;
	while ((c = getopt_long(argc, argv, "o:", lo, NULL)) != -1) {
		switch (c) {
		case 'v': *list = optarg; break;
		case 't': in->text_path = optarg; break;
		case 'c': in->mc_path = optarg; break;
		case 'x': in->ctx = atoi(optarg); break;
		case 'l': in->limit = atoi(optarg); break;
		case 'C': *cache = optarg; break;
		case 'o': *out = optarg; break;
		default:
			return -EINVAL;
		}
	}
	if (optind != argc - 1 || !in->text_path || in->ctx < 2 ||
	    in->limit < 0 || !**out)
		return -EINVAL;
	return 0;
}

int qf_cmd_report(int argc, char **argv)
{
	struct inputs in = { .ctx = 512 };
	const char *out = "report.md", *cache = NULL, *model;
	char *list = NULL, *defdir = NULL, *mdir = NULL, *p;
	struct row *rows = NULL;
	struct stat st;
	size_t n = 0, i;
	int ret, failed = 0;

	if (parse_args(argc, argv, &in, &out, &cache, &list) < 0) {
		fputs(report_usage, stderr);
		return 2;
	}
	mdir = strdup(argv[optind]);
	if (!mdir)
		return 1;
	for (p = mdir + strlen(mdir); p > mdir + 1 && p[-1] == '/';)
		*--p = 0;
	model = strrchr(mdir, '/') ? strrchr(mdir, '/') + 1 : mdir;
	in.tty = isatty(2);
	ret = check_out(out);
	if (!ret)
		ret = read_inputs(&in);
	if (!ret) {
		ret = pick_rows(mdir, list, &rows, &n);
		if (ret < 0)
			fprintf(stderr, "quantfs: cannot list '%s': %s\n",
				mdir, qf_strerror(ret));
	}
	for (i = 0; i < n && !ret; i++) {
		if (stat(rows[i].dir, &st) == 0 && S_ISDIR(st.st_mode))
			continue;
		fprintf(stderr, "quantfs: no %s '%s' in '%s'%s\n",
			i ? "variant" : "directory", rows[i].name, mdir,
			i ? "" : " (MNT/MODEL of a quantfs mount?)");
		ret = -ENOENT;
	}
	if (!ret) {
		if (!cache)
			cache = defdir = qf_cache_default_dir();
		in.cache = cache ? malloc(strlen(cache) + 9) : NULL;
		if (in.cache)
			snprintf(in.cache, strlen(cache) + 9, "%s/reports",
				 cache);
		ret = in.cache ? qf_mkdir_p(in.cache, 0775) : -ENOMEM;
		if (ret < 0)
			fprintf(stderr, "quantfs: cannot create '%s': %s\n",
				in.cache ? in.cache : "", qf_strerror(ret));
	}
	for (i = 0; i < n && !ret; i++) {
		if (run_row(&in, &rows[i], (int)i + 1, (int)n) < 0) {
			failed++;
			if (i == 0) {
				fprintf(stderr, "quantfs: report: the source "
					"could not be measured\n");
				ret = -EIO;
			}
		}
	}
	if (!ret) {
		derive(rows, n);
		ret = write_all(out, model, &in, rows, n);
	}
	for (i = 0; i < n; i++) {
		free(rows[i].name);
		free(rows[i].dir);
		free(rows[i].why);
	}
	free(rows);
	free(in.cache);
	free(defdir);
	free(mdir);
	qf_buf_release(&in.text);
	qf_buf_release(&in.mc);
	return ret < 0 || failed ? 1 : 0;
}
