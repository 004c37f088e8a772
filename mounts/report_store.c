/*
 * report_store.c - what makes a report's figures reusable: the digest of
 * what identifies a variant's bytes (config.json, quantization.json,
 * tokenizer.json, each weight file's size and safetensors header, or
 * model.gguf's header), the result key that adds every input of the
 * measurement, and the result cache in <cache>/reports/<key>.json.
 */
#include <dirent.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "common.h"
#include "quant.h"
#include "report_i.h"
#include "tools.h"

#define REPORT_KEY_TAG "quantfs report 1"
#define SMALL_FILE_MAX (64u << 20)	/* config, manifest, tokenizer */

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

int qf_report_is_weights(const struct dirent *d)
{
	size_t n = strlen(d->d_name);

	return n > 12 && !strcmp(d->d_name + n - 12, ".safetensors");
}

/*
 * Digest of a model directory.  Reading quantization.json of a calibrated
 * variant waits for its production: run this in the producer thread.
 */
int qf_report_dir_digest(struct row *r, uint8_t out[32])
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
		n = scandir(r->dir, &names, qf_report_is_weights,
			    alphasort);
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
void qf_report_result_key(const struct inputs *in,
			  const uint8_t digest[32], char hex[65])
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
	/* --kld: the figures are against that source (none before it) */
	if (in->kld && in->src_key[0])
		hash_part(&h, "kld-vs", in->src_key, 64);
	qf_sha256_final(&h, k);
	qf_hex(k, 32, hex);
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

bool qf_report_cache_load(const struct inputs *in, struct row *r)
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
		r->kld = num_or_nan(j, "kld");
		r->top1 = num_or_nan(j, "same_top1");
		mc = cJSON_GetObjectItem(j, "mc");
		ok = !isnan(r->ppl) && !isnan(r->tok_s) &&
		     (!in->kld || (!isnan(r->kld) && !isnan(r->top1))) &&
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
int qf_report_cache_store(const struct inputs *in, const struct row *r)
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
	if (!isnan(r->kld)) {
		add_exact(j, "kld", r->kld);
		add_exact(j, "same_top1", r->top1);
	}
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
