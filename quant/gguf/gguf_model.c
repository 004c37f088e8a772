/*
 * gguf_model.c - a model served only as GGUF (the k-quant variants) turned
 * back into a Hugging Face directory that qf_model_open() and the forward
 * pass read: config.json, the tokenizer files and model.safetensors in
 * F32, each tensor decoded with qf_ggml_dequantize_row() under the name
 * it had in the source.
 *
 * This inverts what gguf.c writes: names by qf_gguf_hf_name() (the same
 * table the writer uses; a MoE block's router, shared expert and stacked
 * ffn_*_exps, one matrix per expert, by the family's qf_moe_names_of()),
 * rows of q_proj / k_proj put back from
 * llama.cpp's rope order for architecture llama, no output.weight when
 * the embeddings are tied, rope_freqs.weight and phi3's
 * rope_factors_long / _short.weight (generated from the config) dropped.  Decoded values are what llama.cpp computes from the file, so
 * the model measures the GGUF itself.  The file is untrusted: its header
 * is checked by gguf_read.c, head counts against config.json, and memory
 * stays at a few row blocks of about 4 MiB.
 */
#include <cjson/cJSON.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "gguf.h"

#define CONFIG_MAX (4u << 20)		/* config.json bytes */
#define SIDE_FILE_MAX (64u << 20)	/* a tokenizer file */
#define ROW_BLOCK_FLOATS (1u << 20)	/* decoded per step */
#define MAX_EXPERTS 1024		/* of a stacked ffn_*_exps tensor */
#define MAX_OUTPUTS (1u << 18)		/* tensors written, experts apart */

/* Beside config.json, what a tokenizer or generate() reads. */
static const char *const side_files[] = {
	"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
	"generation_config.json", "added_tokens.json", "vocab.json",
	"merges.txt", "tokenizer.model", "chat_template.jinja",
	"chat_template.json",
};

/* One tensor of the output: where it comes from in the GGUF. */
struct src {
	const struct qf_gguf_info *t;
	int64_t row0;			/* its first row in t (an expert's
					   matrix of a 3-D t), its rows */
	int64_t rows;
	char hf[128];			/* source name */
	int64_t heads;			/* rows permuted in this many heads;
					   0: as stored */
	float shift;			/* the writer's norm shift, undone */
};

#define WHY(code, msg)                                                       \
	do {                                                                 \
		*why = (msg);                                                \
		return (code);                                               \
	} while (0)

static char *path_join(const char *dir, const char *name)
{
	struct qf_buf b = QF_BUF_INIT;

	if (qf_buf_addf(&b, "%s/%s", dir, name) < 0)
		return NULL;
	return qf_buf_detach(&b, NULL);
}

static int write_file(const char *dir, const char *name, const void *p,
		      size_t n)
{
	char *path = path_join(dir, name);
	int fd, ret;

	if (!path)
		return -ENOMEM;
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	free(path);
	if (fd < 0)
		return -errno;
	ret = qf_pwrite_all(fd, p, n, 0);
	if (close(fd) < 0 && !ret)
		ret = -errno;
	return ret;
}

/* config.json without "quantization_config"; *cfg keeps the parse. */
static int copy_config(const char *from, const char *to, cJSON **cfg,
		       const char **why)
{
	struct qf_buf b = QF_BUF_INIT;
	char *path = path_join(from, "config.json"), *text;
	int ret;

	ret = path ? qf_read_file(path, CONFIG_MAX, &b) : -ENOMEM;
	free(path);
	if (ret < 0)
		return ret;
	*cfg = cJSON_ParseWithLength(b.data, b.len);
	qf_buf_release(&b);
	if (!cJSON_IsObject(*cfg))
		WHY(QF_EFORMAT, "config.json is not a JSON object");
	cJSON_DeleteItemFromObjectCaseSensitive(*cfg, "quantization_config");
	text = cJSON_Print(*cfg);
	if (!text)
		return -ENOMEM;
	ret = write_file(to, "config.json", text, strlen(text));
	free(text);
	return ret;
}

static int copy_side_files(const char *from, const char *to)
{
	struct qf_buf b = QF_BUF_INIT;
	size_t i;
	int ret = 0;

	for (i = 0; i < sizeof(side_files) / sizeof(side_files[0]); i++) {
		char *path = path_join(from, side_files[i]);

		ret = path ? qf_read_file(path, SIDE_FILE_MAX, &b) : -ENOMEM;
		free(path);
		if (ret == -ENOENT) {
			ret = 0;
			continue;
		}
		if (!ret)
			ret = write_file(to, side_files[i], b.data, b.len);
		qf_buf_release(&b);
		if (ret)
			break;
	}
	return ret;
}

static long cfg_long(const cJSON *cfg, const char *k, long def)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, k);

	return cJSON_IsNumber(v) && v->valuedouble >= -1e9 &&
	       v->valuedouble <= 1e9 ? (long)v->valuedouble : def;
}

/*
 * Head counts the writer permuted by: the file's own, which must be the
 * config's (the forward pass splits heads by the config).
 */
static int head_counts(const struct qf_gguf_file *g, const char *arch,
		       const cJSON *cfg, int64_t hc[2], const char **why)
{
	char key[80];
	long want[2];

	want[0] = cfg_long(cfg, "num_attention_heads", -1);
	want[1] = cfg_long(cfg, "num_key_value_heads", want[0]);
	snprintf(key, sizeof(key), "%s.attention.head_count", arch);
	if (qf_gguf_kv_int(g, key, &hc[0]) < 0)
		WHY(QF_EFORMAT, "no attention.head_count");
	snprintf(key, sizeof(key), "%s.attention.head_count_kv", arch);
	if (qf_gguf_kv_int(g, key, &hc[1]) == -ENOENT)
		hc[1] = hc[0];
	else if (qf_gguf_kv_int(g, key, &hc[1]) < 0)
		WHY(QF_EFORMAT, "attention.head_count_kv is not an integer");
	if (hc[0] != want[0] || hc[1] != want[1])
		WHY(QF_EFORMAT, "the head counts differ from config.json's");
	return 0;
}

/*
 * A MoE block's tensor of layer l (rest: its name after "blk.L."): its
 * source name into hf, of expert e for the stacked ffn_*_exps; 1 when
 * rest is none of them, -ENAMETOOLONG.
 */
static int moe_name(const struct qf_moe_names *nm, int l, const char *rest,
		    int64_t e, char *hf, size_t cap)
{
	static const char *const part[] = { "gate", "up", "down" };
	size_t base = cap - sizeof(".weight") + 1;	/* before .weight */
	char want[48];
	int k, n = -1;

	if (!nm)
		return 1;
	if (!strcmp(rest, "ffn_gate_inp.weight"))
		n = snprintf(hf, base, "model.layers.%d.%s", l, nm->router);
	else if (nm->shared_gate && !strcmp(rest, "ffn_gate_inp_shexp.weight"))
		n = snprintf(hf, base, "model.layers.%d.%s", l,
			     nm->shared_gate);
	for (k = 0; k < QF_MOE_NLINEAR && n < 0; k++) {
		snprintf(want, sizeof(want), "ffn_%s_exps.weight", part[k]);
		if (!strcmp(rest, want))
			n = qf_moe_names_expert(nm, l, (int)e, k, hf, base);
		snprintf(want, sizeof(want), "ffn_%s_shexp.weight", part[k]);
		if (nm->shared && !strcmp(rest, want))
			n = qf_moe_names_expert(nm, l, -1, k, hf, base);
	}
	if (n < 0)
		return 1;
	if (n >= (int)base)
		return -ENAMETOOLONG;
	strcat(hf, ".weight");
	return 0;
}

/* Source name and permutation of every tensor but rope_freqs. */
static int map_tensors(const struct qf_gguf_file *g, const cJSON *cfg,
		       struct src *s, size_t *n, const char **why)
{
	const char *arch = qf_gguf_kv_str(g, "general.architecture");
	const cJSON *mt = cJSON_GetObjectItemCaseSensitive(cfg, "model_type");
	const struct qf_moe_names *nm = qf_moe_names_of(
		cJSON_IsString(mt) ? mt->valuestring : NULL);
	int64_t hc[2] = { 0, 0 }, rows, e;
	const char *rest;
	size_t i;
	int perm, ret, l;

	if (!arch)
		WHY(QF_EFORMAT, "no general.architecture string");
	*n = 0;
	for (i = 0; i < g->nt; i++) {
		const struct qf_gguf_info *t = &g->t[i];
		struct src *o = &s[*n];
		char rb[QF_GGUF_NAME_MAX];

		if (!strcmp(t->name, "rope_freqs.weight") ||
		    !strcmp(t->name, "rope_factors_long.weight") ||
		    !strcmp(t->name, "rope_factors_short.weight"))
			continue;	/* generated from the config */
		o->row0 = 0;
		o->rows = t->ndim == 2 ? t->ne[1] : 1;
		rest = sscanf(t->name, "blk.%d.%63s", &l, rb) == 2 ? rb : NULL;
		ret = rest ? moe_name(nm, l, rest, 0, o->hf, sizeof(o->hf)) : 1;
		if (ret == 0 && t->ndim == 3) {	/* one per expert */
			for (e = 0; e < t->ne[2] && !ret; e++) {
				o = &s[*n];
				ret = moe_name(nm, l, rest, e, o->hf,
					       sizeof(o->hf));
				o->t = t;
				o->row0 = e * t->ne[1];
				o->rows = t->ne[1];
				o->heads = 0;
				o->shift = 0;
				(*n)++;
			}
			if (ret < 0)
				return ret;
			continue;
		}
		if (ret > 0)
			ret = qf_gguf_hf_name(arch, t->name, o->hf,
					      sizeof(o->hf), &perm);
		else
			perm = 0;
		if (ret == QF_EUNSUPPORTED)
			WHY(ret, "an architecture quantfs does not write");
		if (ret < 0) {
			qf_err("gguf: no source name for tensor '%s'",
			       t->name);
			WHY(QF_EUNSUPPORTED, "a tensor with no source name");
		}
		if (t->ndim > 2)
			WHY(QF_EFORMAT, "a tensor of more than 2 dimensions");
		o->t = t;
		o->heads = 0;
		o->shift = qf_gguf_norm_shift(arch, t->name);
		if (perm && !hc[0]) {
			ret = head_counts(g, arch, cfg, hc, why);
			if (ret)
				return ret;
		}
		if (perm) {
			o->heads = hc[perm - 1];
			rows = t->ndim == 2 ? t->ne[1] : t->ne[0];
			if (o->heads < 1 || rows % o->heads ||
			    (rows / o->heads) % 2)
				WHY(QF_EFORMAT, "q/k rows are not whole heads "
				    "of even size");
		}
		(*n)++;
	}
	return 0;
}

/* How many tensors the output can have: one per expert of a 3-D one. */
static int count_outputs(const struct qf_gguf_file *g, size_t *n,
			 const char **why)
{
	size_t i;

	*n = 0;
	for (i = 0; i < g->nt; i++) {
		const struct qf_gguf_info *t = &g->t[i];

		if (t->ndim == 3 && (t->ne[2] < 1 || t->ne[2] > MAX_EXPERTS))
			WHY(QF_EFORMAT, "a stacked tensor of too many experts");
		*n += t->ndim == 3 ? (size_t)t->ne[2] : 1;
		if (*n > MAX_OUTPUTS)
			WHY(QF_EFORMAT, "too many tensors");
	}
	return 0;
}

/* Decode s's tensor into the file at off, in blocks of whole heads. */
static int write_tensor(const struct qf_gguf_file *g, const struct src *s,
			int fd, uint64_t off, const char **why)
{
	const struct qf_gguf_info *t = s->t;
	/* a 1-D tensor is one GGUF row, and rows of one value to permute */
	int64_t rows = s->rows, cols = t->ne[0];
	int64_t hd = s->heads ? (t->ndim == 2 ? rows : cols) / s->heads : 1;
	int64_t rb, r0, nr, i;
	float *buf, *tmp = NULL;
	int ret = 0;

	rb = t->ndim == 2 ? (int64_t)ROW_BLOCK_FLOATS / cols : 1;
	if (t->ndim == 2 && s->heads)
		rb = rb < hd ? hd : rb / hd * hd;
	if (rb < 1)
		rb = 1;
	buf = malloc((size_t)(rb * cols) * sizeof(*buf));
	tmp = s->heads ? malloc((size_t)(rb * cols) * sizeof(*tmp)) : NULL;
	if (!buf || (s->heads && !tmp)) {
		ret = -ENOMEM;
		goto out_free;
	}
	for (r0 = 0; r0 < rows && !ret; r0 += rb) {
		float *x = buf;

		nr = rows - r0 < rb ? rows - r0 : rb;
		ret = qf_gguf_read_rows(g, t, s->row0 + r0, nr, buf);
		if (ret)
			break;
		if (!qf_all_finite(buf, (size_t)(nr * cols))) {
			qf_err("gguf: tensor '%s' decodes to a value that is "
			       "not finite", t->name);
			*why = "a tensor decodes to NaN or infinity";
			ret = QF_ENUMERIC;
			break;
		}
		for (i = 0; s->shift != 0 && i < nr * cols; i++)
			buf[i] -= s->shift;
		if (s->heads) {
			bool two = t->ndim == 2;

			qf_gguf_permute_rows(buf, tmp, two ? nr : cols,
					     two ? cols : 1, hd, true);
			x = tmp;
		}
		ret = qf_pwrite_all(fd, x, (size_t)(nr * cols) * sizeof(*x),
			       off + (uint64_t)(r0 * cols) * sizeof(*x));
	}
out_free:
	free(buf);
	free(tmp);
	return ret;
}

/* model.safetensors: s [n] laid out by qf_st_plan(), each decoded. */
static int write_weights(const struct qf_gguf_file *g, struct src *s,
			 size_t n, const char *dir, const char **why)
{
	struct qf_st_plan_entry *e = calloc(n ? n : 1, sizeof(*e));
	struct qf_buf hdr = QF_BUF_INIT;
	char *path = path_join(dir, "model.safetensors");
	uint64_t total;
	size_t i;
	int fd = -1, ret = -ENOMEM;

	if (!e || !path)
		goto out_free;
	for (i = 0; i < n; i++) {
		const struct qf_gguf_info *t = s[i].t;

		e[i].name = s[i].hf;
		e[i].dtype = QF_DT_F32;
		e[i].ndim = t->ndim < 2 ? 1 : 2;	/* an expert's: 2-D */
		e[i].shape[0] = t->ndim >= 2 ? s[i].rows : t->ne[0];
		e[i].shape[1] = t->ne[0];
		e[i].user = &s[i];
	}
	ret = qf_st_plan(e, n, NULL, 0, &hdr, &total);
	if (ret == -EINVAL) {
		*why = "tensors with the same source name";
		ret = QF_EFORMAT;
	}
	if (ret)
		goto out_free;
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0) {
		ret = -errno;
		goto out_free;
	}
	ret = qf_pwrite_all(fd, hdr.data, hdr.len, 0);
	for (i = 0; i < n && !ret; i++)
		ret = write_tensor(g, e[i].user, fd, hdr.len + e[i].begin,
				   why);
	if (close(fd) < 0 && !ret)
		ret = -errno;
out_free:
	qf_buf_release(&hdr);
	free(path);
	free(e);
	return ret;
}

int qf_gguf_to_model_dir(const char *gguf_path, const char *cfg_dir,
			 const char *out_dir, const char **why)
{
	struct qf_gguf_file *g = NULL;
	struct src *s = NULL;
	cJSON *cfg = NULL;
	const char *dummy;
	size_t n = 0;
	int ret;

	if (!why)
		why = &dummy;
	*why = NULL;
	ret = qf_gguf_open(gguf_path, &g, why);
	if (ret < 0)
		return ret;
	ret = copy_config(cfg_dir, out_dir, &cfg, why);
	if (!ret)
		ret = copy_side_files(cfg_dir, out_dir);
	if (!ret)
		ret = count_outputs(g, &n, why);
	if (!ret) {
		s = calloc(n ? n : 1, sizeof(*s));
		ret = s ? map_tensors(g, cfg, s, &n, why) : -ENOMEM;
	}
	if (!ret)
		ret = write_weights(g, s, n, out_dir, why);
	if (ret && !*why)
		*why = qf_strerror(ret);
	free(s);
	cJSON_Delete(cfg);
	qf_gguf_close(g);
	return ret;
}
