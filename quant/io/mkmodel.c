/*
 * mkmodel.c - generate a small Llama-architecture model directory,
 * deterministically from a seed: the embedded demo model and the test
 * fixtures.  The weights are random (not trained) but shaped like real
 * ones: per-input-channel scales with a few outlier channels, so that
 * quantization error differs between methods as it does on real models.
 *
 * The tokenizer is a byte-level BPE (GPT-2 byte map) with the three
 * Llama specials as added tokens; ids past 259 are reserved vocabulary
 * entries that no text produces.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io.h"

void qf_mkmodel_defaults(struct qf_mkmodel_opts *o)
{
	o->hidden = 256;
	o->inter = 768;
	o->layers = 4;
	o->heads = 8;
	o->kv_heads = 4;
	o->vocab = 512;
	o->seed = 42;
	o->dtype = QF_DT_BF16;
	o->tie = false;
	o->head_dim = 0;
	o->arch = NULL;
	o->experts = o->topk = o->moe_inter = 0;
}

static int head_dim(const struct qf_mkmodel_opts *o)
{
	return o->head_dim > 0 ? o->head_dim : o->hidden / o->heads;
}

static uint64_t splitmix(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static double uniform(uint64_t *s)
{
	return ((double)(splitmix(s) >> 11) + 0.5) * 0x1.0p-53;
}

static double gauss(uint64_t *s)
{
	double u = uniform(s), v = uniform(s);

	return sqrt(-2 * log(u)) * cos(2 * M_PI * v);
}

static uint64_t name_seed(const char *name, uint64_t seed)
{
	uint64_t h = 1469598103934665603ULL ^ seed;

	while (*name)
		h = (h ^ (uint8_t)*name++) * 1099511628211ULL;
	return h;
}

int qf_mk_write_file(const char *dir, const char *name, const void *p,
		     size_t n)
{
	char path[4096];
	FILE *f;
	int ret = 0;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "wb");
	if (!f)
		return -errno;
	if (fwrite(p, 1, n, f) != n)
		ret = -EIO;
	if (fclose(f) != 0 && !ret)
		ret = -errno;
	return ret;
}

static int write_json(const char *dir, const char *name, cJSON *root)
{
	char *s = cJSON_Print(root);
	int ret;

	cJSON_Delete(root);
	if (!s)
		return -ENOMEM;
	ret = qf_mk_write_file(dir, name, s, strlen(s));
	free(s);
	return ret;
}

static int write_config(const char *dir, const struct qf_mkmodel_opts *o,
			const struct qf_arch *a)
{
	cJSON *c = cJSON_CreateObject();
	cJSON *arr = cJSON_AddArrayToObject(c, "architectures");
	int ret;

	cJSON_AddItemToArray(arr, cJSON_CreateString(a->hf_class));
	cJSON_AddStringToObject(c, "model_type", a->model_type);
	cJSON_AddNumberToObject(c, "hidden_size", o->hidden);
	cJSON_AddNumberToObject(c, "intermediate_size", o->inter);
	cJSON_AddNumberToObject(c, "num_hidden_layers", o->layers);
	cJSON_AddNumberToObject(c, "num_attention_heads", o->heads);
	cJSON_AddNumberToObject(c, "num_key_value_heads", o->kv_heads);
	cJSON_AddNumberToObject(c, "head_dim", head_dim(o));
	cJSON_AddNumberToObject(c, "vocab_size", o->vocab);
	cJSON_AddNumberToObject(c, "max_position_embeddings", 2048);
	cJSON_AddNumberToObject(c, "rms_norm_eps", 1e-5);
	cJSON_AddNumberToObject(c, "rope_theta", 10000.0);
	cJSON_AddStringToObject(c, "hidden_act", "silu");
	cJSON_AddBoolToObject(c, "tie_word_embeddings", o->tie);
	cJSON_AddBoolToObject(c, "attention_bias", false);
	cJSON_AddNumberToObject(c, "bos_token_id", 1);
	cJSON_AddNumberToObject(c, "eos_token_id", 2);
	cJSON_AddStringToObject(c, "torch_dtype",
				o->dtype == QF_DT_BF16 ? "bfloat16" :
				o->dtype == QF_DT_F16 ? "float16" : "float32");
	cJSON_AddStringToObject(c, "transformers_version", "4.46.0");
	if (a->mk_config)
		a->mk_config(c, o);
	ret = write_json(dir, "config.json", c);
	if (ret < 0)
		return ret;
	c = cJSON_CreateObject();
	cJSON_AddNumberToObject(c, "bos_token_id", 1);
	cJSON_AddNumberToObject(c, "eos_token_id", 2);
	cJSON_AddBoolToObject(c, "do_sample", false);
	return write_json(dir, "generation_config.json", c);
}

static cJSON *added_token(int id, const char *content)
{
	cJSON *t = cJSON_CreateObject();

	cJSON_AddNumberToObject(t, "id", id);
	cJSON_AddStringToObject(t, "content", content);
	cJSON_AddBoolToObject(t, "single_word", false);
	cJSON_AddBoolToObject(t, "lstrip", false);
	cJSON_AddBoolToObject(t, "rstrip", false);
	cJSON_AddBoolToObject(t, "normalized", false);
	cJSON_AddBoolToObject(t, "special", true);
	return t;
}

/* GPT-2's byte -> printable code point map. */
static int byte_cp(int b)
{
	int n = 0, c;

	if ((b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) ||
	    (b >= 0xae && b <= 0xff))
		return b;
	for (c = 0; c < b; c++)
		if (!((c >= '!' && c <= '~') || (c >= 0xa1 && c <= 0xac) ||
		      (c >= 0xae && c <= 0xff)))
			n++;
	return 256 + n;
}

static int write_tokenizer(const char *dir, const struct qf_mkmodel_opts *o)
{
	static const char *const special[3] = { "<unk>", "<s>", "</s>" };
	cJSON *root = cJSON_CreateObject();
	cJSON *added, *model, *vocab, *pt, *c;
	char tok[32];
	int i, ret;

	cJSON_AddStringToObject(root, "version", "1.0");
	cJSON_AddNullToObject(root, "truncation");
	cJSON_AddNullToObject(root, "padding");
	added = cJSON_AddArrayToObject(root, "added_tokens");
	for (i = 0; i < 3; i++)
		cJSON_AddItemToArray(added, added_token(i, special[i]));
	cJSON_AddNullToObject(root, "normalizer");
	pt = cJSON_AddObjectToObject(root, "pre_tokenizer");
	cJSON_AddStringToObject(pt, "type", "ByteLevel");
	cJSON_AddBoolToObject(pt, "add_prefix_space", false);
	cJSON_AddBoolToObject(pt, "trim_offsets", true);
	cJSON_AddBoolToObject(pt, "use_regex", true);
	cJSON_AddItemToObject(root, "post_processor", cJSON_Duplicate(pt, 1));
	cJSON_AddItemToObject(root, "decoder", cJSON_Duplicate(pt, 1));
	model = cJSON_AddObjectToObject(root, "model");
	cJSON_AddStringToObject(model, "type", "BPE");
	cJSON_AddNullToObject(model, "dropout");
	cJSON_AddNullToObject(model, "unk_token");
	cJSON_AddBoolToObject(model, "fuse_unk", false);
	cJSON_AddBoolToObject(model, "byte_fallback", false);
	vocab = cJSON_AddObjectToObject(model, "vocab");
	for (i = 0; i < 3; i++)
		cJSON_AddNumberToObject(vocab, special[i], i);
	for (i = 0; i < 256; i++) {
		tok[qf_utf8_encode((uint32_t)byte_cp(i), tok)] = 0;
		cJSON_AddNumberToObject(vocab, tok, 3 + i);
	}
	for (i = 259; i < o->vocab; i++) {
		snprintf(tok, sizeof(tok), "<|reserved_%d|>", i - 259);
		cJSON_AddNumberToObject(vocab, tok, i);
	}
	cJSON_AddArrayToObject(model, "merges");
	ret = write_json(dir, "tokenizer.json", root);
	if (ret < 0)
		return ret;
	c = cJSON_CreateObject();
	cJSON_AddStringToObject(c, "tokenizer_class", "PreTrainedTokenizerFast");
	cJSON_AddStringToObject(c, "bos_token", "<s>");
	cJSON_AddStringToObject(c, "eos_token", "</s>");
	cJSON_AddStringToObject(c, "unk_token", "<unk>");
	cJSON_AddBoolToObject(c, "add_bos_token", true);
	cJSON_AddNumberToObject(c, "model_max_length", 2048);
	return write_json(dir, "tokenizer_config.json", c);
}

/* A MoE router's values, times those of another linear of its width. */
#define ROUTER_SCALE 4.0

/*
 * Fill one tensor's values (f32) the way its role suggests.  gemma: the
 * (1 + w) norms stored near 0, and an embedding of about 3 / sqrt(cols)
 * per value, which the model multiplies by sqrt(hidden) (logits of a few
 * units, as trained Gemmas have, rather than tens).
 */
static void gen_values(const char *name, int64_t rows, int64_t cols,
		       uint64_t seed, bool gemma, float *v)
{
	uint64_t s = name_seed(name, seed);
	int64_t r, c;

	if (cols == 0 && strstr(name, ".bias")) {	/* qwen2's q/k/v */
		for (r = 0; r < rows; r++)
			v[r] = (float)(0.02 * gauss(&s));
		return;
	}
	if (cols == 0) {	/* a norm weight */
		for (r = 0; r < rows; r++)
			v[r] = (float)((gemma ? 0.0 : 1.0) + 0.05 * gauss(&s));
		return;
	}
	{
		double base = 1.0 / sqrt((double)cols);
		size_t nl = strlen(name);
		double *cs;

		/* a MoE router (arch_moe.c): a confident one, as trained
		 * routers are, so that an expert chosen by a hair carries
		 * little weight */
		if (nl > 12 && !strcmp(name + nl - 12, ".gate.weight"))
			base *= ROUTER_SCALE;

		if (strstr(name, "embed"))
			base = gemma ? 3.0 * base : 1.0;
		cs = malloc((size_t)cols * sizeof(*cs));
		if (!cs)
			return;
		/* per-input-channel scale: log-normal, 1% outliers x8 */
		for (c = 0; c < cols; c++) {
			cs[c] = base * exp(0.3 * gauss(&s));
			if (uniform(&s) < 0.01)
				cs[c] *= 8;
		}
		for (r = 0; r < rows; r++) {
			double rs = exp(0.2 * gauss(&s));

			for (c = 0; c < cols; c++)
				v[r * cols + c] = (float)(gauss(&s) * cs[c] * rs);
		}
		free(cs);
	}
}

struct gen_tensor {
	char name[128];
	int64_t rows;
	int64_t cols;		/* 0: 1-D */
};

struct qf_mk_list {
	struct gen_tensor *t;
	size_t n, cap;
};

int qf_mk_add(struct qf_mk_list *t, int64_t rows, int64_t cols,
	      const char *fmt, ...)
{
	va_list ap;

	if (qf_grow(&t->t, t->n + 1, &t->cap, 64, sizeof(*t->t)))
		return -ENOMEM;
	va_start(ap, fmt);
	vsnprintf(t->t[t->n].name, sizeof(t->t[t->n].name), fmt, ap);
	va_end(ap);
	t->t[t->n].rows = rows;
	t->t[t->n].cols = cols;
	t->n++;
	return 0;
}

/* One Llama decoder layer's tensors. */
int qf_mk_llama_layer(struct qf_mk_list *t, const struct qf_mkmodel_opts *o,
		       int l)
{
	const struct qf_arch *a = o->arch ? qf_arch_find(o->arch) : NULL;
	int64_t hd = head_dim(o);
	int ret = 0;

	ret |= qf_mk_add(t, o->hidden, 0, "model.layers.%d.input_layernorm.weight", l);
	ret |= qf_mk_add(t, o->hidden, 0, "model.layers.%d.post_attention_layernorm.weight", l);
	ret |= qf_mk_add(t, o->heads * hd, o->hidden, "model.layers.%d.self_attn.q_proj.weight", l);
	ret |= qf_mk_add(t, o->kv_heads * hd, o->hidden, "model.layers.%d.self_attn.k_proj.weight", l);
	ret |= qf_mk_add(t, o->kv_heads * hd, o->hidden, "model.layers.%d.self_attn.v_proj.weight", l);
	ret |= qf_mk_add(t, o->hidden, o->heads * hd, "model.layers.%d.self_attn.o_proj.weight", l);
	ret |= qf_mk_add(t, o->inter, o->hidden, "model.layers.%d.mlp.gate_proj.weight", l);
	ret |= qf_mk_add(t, o->inter, o->hidden, "model.layers.%d.mlp.up_proj.weight", l);
	ret |= qf_mk_add(t, o->hidden, o->inter, "model.layers.%d.mlp.down_proj.weight", l);
	if (a && (a->flags & QF_ARCH_QK_NORM)) {	/* qwen3 */
		ret |= qf_mk_add(t, hd, 0, "model.layers.%d.self_attn.q_norm.weight", l);
		ret |= qf_mk_add(t, hd, 0, "model.layers.%d.self_attn.k_norm.weight", l);
	}
	if (a && (a->flags & QF_ARCH_QKV_BIAS)) {	/* qwen2 */
		ret |= qf_mk_add(t, o->heads * hd, 0, "model.layers.%d.self_attn.q_proj.bias", l);
		ret |= qf_mk_add(t, o->kv_heads * hd, 0, "model.layers.%d.self_attn.k_proj.bias", l);
		ret |= qf_mk_add(t, o->kv_heads * hd, 0, "model.layers.%d.self_attn.v_proj.bias", l);
	}
	return ret ? -ENOMEM : 0;
}

static int tensor_list(const struct qf_mkmodel_opts *o,
		       const struct qf_arch *a, struct qf_mk_list *t)
{
	int l, ret = 0;

	ret |= qf_mk_add(t, o->vocab, o->hidden, "model.embed_tokens.weight");
	ret |= qf_mk_add(t, o->hidden, 0, "model.norm.weight");
	if (!o->tie)
		ret |= qf_mk_add(t, o->vocab, o->hidden, "lm_head.weight");
	for (l = 0; l < o->layers && !ret; l++)
		ret = a->mk_layer ? a->mk_layer(t, o, l) :
				    qf_mk_llama_layer(t, o, l);
	return ret ? -ENOMEM : 0;
}

static int write_weights(const char *dir, const struct qf_mkmodel_opts *o,
			 const struct qf_arch *a)
{
	struct qf_st_plan_entry *e = NULL;
	struct qf_buf hdr = QF_BUF_INIT;
	struct qf_mk_list tl = { 0 };
	struct gen_tensor *t;
	size_t esz = qf_dtype_size(o->dtype);
	uint64_t total;
	char path[4096];
	size_t n = 0, i;
	FILE *f = NULL;
	int ret;

	ret = tensor_list(o, a, &tl);
	t = tl.t;
	n = tl.n;
	if (ret < 0)
		goto out_free;
	e = calloc(n, sizeof(*e));
	if (!e) {
		ret = -ENOMEM;
		goto out_free;
	}
	for (i = 0; i < n; i++) {
		e[i].name = t[i].name;
		e[i].dtype = o->dtype;
		e[i].ndim = t[i].cols ? 2 : 1;
		e[i].shape[0] = t[i].rows;
		e[i].shape[1] = t[i].cols;
		e[i].user = &t[i];
	}
	ret = qf_st_plan(e, n, NULL, 0, &hdr, &total);
	if (ret < 0)
		goto out_free;
	snprintf(path, sizeof(path), "%s/model.safetensors", dir);
	f = fopen(path, "wb");
	if (!f) {
		ret = -errno;
		goto out_free;
	}
	if (fwrite(hdr.data, 1, hdr.len, f) != hdr.len)
		ret = -EIO;
	for (i = 0; i < n && !ret; i++) {
		const struct gen_tensor *g = e[i].user;
		size_t numel = (size_t)(g->rows * (g->cols ? g->cols : 1));
		float *v = malloc(numel * sizeof(*v));
		void *raw = malloc(numel * esz);
		size_t j;

		if (!v || !raw) {
			ret = -ENOMEM;
		} else {
			gen_values(g->name, g->rows, g->cols, o->seed,
				   a->flags & QF_ARCH_GEMMA, v);
			for (j = 0; j < numel; j++) {
				if (o->dtype == QF_DT_BF16)
					((uint16_t *)raw)[j] = qf_f32_to_bf16(v[j]);
				else if (o->dtype == QF_DT_F16)
					((uint16_t *)raw)[j] = qf_f32_to_f16(v[j]);
				else
					((float *)raw)[j] = v[j];
			}
			if (fwrite(raw, esz, numel, f) != numel)
				ret = -EIO;
		}
		free(v);
		free(raw);
	}
	if (fclose(f) != 0 && !ret)
		ret = -errno;
out_free:
	qf_buf_release(&hdr);
	free(e);
	free(t);
	return ret;
}

int qf_mkmodel_write(const char *dir, const struct qf_mkmodel_opts *o)
{
	const struct qf_arch *a = qf_arch_find(o->arch ? o->arch : "llama");
	int ret;

	if (!a)
		return QF_EUNSUPPORTED;
	if (o->hidden <= 0 || o->heads <= 0 || o->kv_heads <= 0 ||
	    (o->head_dim <= 0 && o->hidden % o->heads) || o->head_dim < 0 ||
	    head_dim(o) % 2 || o->heads % o->kv_heads || o->inter <= 0 ||
	    o->layers <= 0 || o->vocab < 259 || o->layers > 1000 ||
	    (o->dtype != QF_DT_BF16 && o->dtype != QF_DT_F16 &&
	     o->dtype != QF_DT_F32))
		return -EINVAL;
	ret = qf_mkdir_p(dir, 0755);
	if (ret < 0)
		return ret;
	ret = write_config(dir, o, a);
	if (!ret)
		ret = write_tokenizer(dir, o);
	if (!ret)
		ret = write_weights(dir, o, a);
	return ret;
}
