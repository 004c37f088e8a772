/*
 * rot.c - incoherence processing: the rotated model of the `_rot` flag.
 *
 * A Llama-family decoder computes the same function when its residual
 * stream is turned by any orthogonal Q, once every RMSNorm's scale has
 * been moved into the linears that read the norm (RMS is invariant
 * under Q, a per-channel scale is not); the value/output pair of a head
 * likewise under any orthogonal R.  A randomized Hadamard Q spreads each
 * outlier channel over all of them, so the rotated linears have flat
 * rows that a 2- or 3-bit grid fits far better (QuaRot, SpinQuant).
 * Only weights change: the result is a model of the same architecture
 * (norms all ones) that every loader runs unchanged, written here as a
 * model directory that the methods then quantize like any source.
 *
 * Each output tensor depends on at most its own source tensor and one
 * norm, so the file is written tensor by tensor in plan order; row-wise
 * products (W Q) go in slices of ROWS rows to bound memory on big
 * vocabularies.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "nn.h"
#include "rot.h"

#define ROWS 4096		/* rows per slice of a row-wise product */

/* What happens to one source tensor. */
enum rot_op {
	OP_KEEP,	/* unchanged (q/k biases and norms) */
	OP_ONE,		/* an RMSNorm: its scale folded away */
	OP_READ_IN,	/* W diag(input_layernorm) Q */
	OP_READ_POST,	/* W diag(post_attention_layernorm) Q */
	OP_V,		/* R^T (W diag(input_layernorm) Q) per kv head */
	OP_VBIAS,	/* b R per kv head */
	OP_O,		/* Q^T (O blockdiag(R)) */
	OP_DOWN,	/* Q^T W */
	OP_EMBED,	/* E Q */
	OP_HEAD,	/* W diag(model.norm) Q (from E when tied) */
};

static const struct {
	const char *suffix;		/* after "model.layers.<l>." */
	enum rot_op op;
} layer_ops[] = {
	{ "self_attn.q_proj.weight", OP_READ_IN },
	{ "self_attn.k_proj.weight", OP_READ_IN },
	{ "self_attn.v_proj.weight", OP_V },
	{ "self_attn.q_proj.bias", OP_KEEP },
	{ "self_attn.k_proj.bias", OP_KEEP },
	{ "self_attn.v_proj.bias", OP_VBIAS },
	{ "self_attn.o_proj.weight", OP_O },
	{ "self_attn.q_norm.weight", OP_KEEP },
	{ "self_attn.k_norm.weight", OP_KEEP },
	{ "self_attn.rotary_emb.inv_freq", OP_KEEP },
	{ "mlp.gate_proj.weight", OP_READ_POST },
	{ "mlp.up_proj.weight", OP_READ_POST },
	{ "mlp.down_proj.weight", OP_DOWN },
	{ "input_layernorm.weight", OP_ONE },
	{ "post_attention_layernorm.weight", OP_ONE },
};

/* One tensor of the output file. */
struct rot_out {
	const struct qf_model_tensor *src;	/* lm_head: E when tied */
	enum rot_op op;
	int layer;				/* -1: not a layer's */
	char name[160];
};

struct rot_ctx {
	const struct qf_model *m;
	struct qf_tf_config c;
	float *q;			/* [hidden, hidden] */
	float *r;			/* [head_dim, head_dim] */
};

static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

void qf_rot_matrix(int n, uint64_t seed, float *q)
{
	int p = n & -n;
	int m = n / p;
	double hs = 1.0 / sqrt((double)p);
	uint64_t st = seed;
	int i, j;

	for (i = 0; i < n; i++) {
		double s = (splitmix64(&st) >> 63) ? -hs : hs;
		int a = i / m, k = i % m;
		double ak = m == 1 ? 1.0 : sqrt((k ? 2.0 : 1.0) / m);

		for (j = 0; j < n; j++) {
			int b = j / m, jj = j % m;
			double h = __builtin_popcount((unsigned)(a & b)) & 1 ?
				   -1.0 : 1.0;
			double c = ak * cos(M_PI * (2 * jj + 1) * k / (2.0 * m));

			q[(size_t)i * n + j] = (float)(s * h * c);
		}
	}
}

/* The effective scale of norm `name` (1 + w for (1 + w) norms). */
static int norm_scale(const struct rot_ctx *x, const char *name, float *g)
{
	const struct qf_model_tensor *mt = qf_model_find(x->m, name);
	int ret;

	if (!mt || qf_st_numel(mt->t) != (uint64_t)x->c.hidden) {
		qf_err("%s: rotation: %s missing or not [%d]", x->m->dir, name,
		       x->c.hidden);
		return QF_EUNSUPPORTED;
	}
	ret = qf_model_read_f32(mt, g);
	if (!ret && x->c.norm_plus1)
		qf_tf_norm_plus1(g, x->c.hidden);
	return ret;
}

/* w [rows, hidden] = (w diag(g)) Q, in place (tmp: rows x hidden). */
static void read_side(const struct rot_ctx *x, const float *g, float *w,
		      float *tmp, int64_t rows)
{
	int64_t h = x->c.hidden, i, j;

	if (g)
		for (i = 0; i < rows; i++)
			for (j = 0; j < h; j++)
				w[i * h + j] *= g[j];
	qf_sgemm(false, false, rows, h, h, 1.0f, w, h, x->q, h, 0.0f, tmp, h);
	memcpy(w, tmp, (size_t)(rows * h) * sizeof(*w));
}

/* Rows of head blocks: each block of hd rows becomes R^T block. */
static void head_rows(const struct rot_ctx *x, float *w, float *tmp,
		      int64_t blocks, int64_t cols)
{
	int64_t hd = x->c.head_dim, b;

	for (b = 0; b < blocks; b++)
		qf_sgemm(true, false, hd, cols, hd, 1.0f, x->r, hd,
			 w + b * hd * cols, cols, 0.0f, tmp + b * hd * cols,
			 cols);
	memcpy(w, tmp, (size_t)(blocks * hd * cols) * sizeof(*w));
}

/* The transformed tensor o (numel floats of its shape) into v. */
static int rot_compute(const struct rot_ctx *x, const struct rot_out *o,
		       float *v, float *tmp)
{
	const struct qf_st_tensor *t = o->src->t;
	int64_t rows = t->shape[0], cols = t->ndim > 1 ? t->shape[1] : 1;
	int64_t h = x->c.hidden, hd = x->c.head_dim, i, j;
	char nm[96];
	float *g = NULL;
	int ret;

	if (o->op == OP_ONE) {
		for (i = 0; i < rows; i++)
			v[i] = x->c.norm_plus1 ? 0.0f : 1.0f;
		return 0;
	}
	if (o->op == OP_READ_IN || o->op == OP_V || o->op == OP_READ_POST ||
	    o->op == OP_HEAD) {
		g = malloc((size_t)h * sizeof(*g));
		if (!g)
			return -ENOMEM;
		if (o->op == OP_HEAD)
			snprintf(nm, sizeof(nm), "model.norm.weight");
		else
			snprintf(nm, sizeof(nm), "model.layers.%d.%s", o->layer,
				 o->op == OP_READ_POST ?
				 "post_attention_layernorm.weight" :
				 "input_layernorm.weight");
		ret = norm_scale(x, nm, g);
		if (ret < 0)
			goto out_free;
	}
	if (o->op == OP_EMBED || o->op == OP_HEAD) {
		/* vocabularies can be large: slices of ROWS rows */
		for (i = 0, ret = 0; i < rows && !ret; i += ROWS) {
			int64_t n = rows - i < ROWS ? rows - i : ROWS;

			ret = qf_model_read_f32_rows(o->src, i, n, v + i * h);
			if (!ret)
				read_side(x, g, v + i * h, tmp, n);
		}
		goto out_free;
	}
	ret = qf_model_read_f32(o->src, v);
	if (ret < 0 || o->op == OP_KEEP)
		goto out_free;
	switch (o->op) {
	case OP_READ_IN:
	case OP_READ_POST:
		read_side(x, g, v, tmp, rows);
		break;
	case OP_V:
		read_side(x, g, v, tmp, rows);
		head_rows(x, v, tmp, rows / hd, h);
		break;
	case OP_VBIAS:
		head_rows(x, v, tmp, rows / hd, 1);
		break;
	case OP_O:
		/* columns: each head block O_h R; rows: Q^T */
		for (j = 0; j < cols; j += hd)
			qf_sgemm(false, false, rows, hd, hd, 1.0f, v + j, cols,
				 x->r, hd, 0.0f, tmp + j, cols);
		qf_sgemm(true, false, h, cols, h, 1.0f, x->q, h, tmp, cols,
			 0.0f, v, cols);
		break;
	case OP_DOWN:
		qf_sgemm(true, false, h, cols, h, 1.0f, x->q, h, v, cols, 0.0f,
			 tmp, cols);
		memcpy(v, tmp, (size_t)(h * cols) * sizeof(*v));
		break;
	default:
		break;
	}
out_free:
	free(g);
	return ret;
}

static int check_arch(const struct rot_ctx *x)
{
	const char *why = NULL;

	if (x->c.sandwich)
		why = "its norms on the attention and MLP outputs write into "
		      "the residual stream and cannot be folded";
	else if (x->c.moe)
		why = "MoE blocks (routers) are not rotated";
	else if (x->c.clip_qkv > 0)
		why = "clip_qkv does not commute with a rotation";
	if (why)
		qf_err("%s: no rotated variants for model_type '%s': %s",
		       x->m->dir, x->c.model_type, why);
	return why ? QF_EUNSUPPORTED : 0;
}

/* The op of source tensor name; -1 (logged) when it has none. */
static int classify(const struct rot_ctx *x, const char *name, int *layer)
{
	size_t i;
	int off = 0;

	*layer = -1;
	if (!strcmp(name, "model.embed_tokens.weight"))
		return OP_EMBED;
	if (!strcmp(name, "lm_head.weight"))
		return OP_HEAD;
	if (!strcmp(name, "model.norm.weight"))
		return OP_ONE;
	if (sscanf(name, "model.layers.%d.%n", layer, &off) == 1 && off > 0 &&
	    *layer >= 0 && *layer < x->c.layers)
		for (i = 0; i < sizeof(layer_ops) / sizeof(layer_ops[0]); i++)
			if (!strcmp(name + off, layer_ops[i].suffix))
				return (int)layer_ops[i].op;
	qf_err("%s: no rotated variants: tensor '%s' is not one of the Llama "
	       "layout's", x->m->dir, name);
	return -1;
}

/* Output tensors into out[] (m->nt + 1), *n; *untie when lm_head added. */
static int rot_plan(const struct rot_ctx *x, struct rot_out *out, size_t *n,
		    bool *untie)
{
	size_t i;
	int op;

	*n = 0;
	*untie = false;
	for (i = 0; i < x->m->nt; i++) {
		const struct qf_model_tensor *mt = &x->m->t[i];
		enum qf_dtype dt = mt->t->dtype;

		op = classify(x, mt->name, &out[*n].layer);
		if (op < 0)
			return QF_EUNSUPPORTED;
		if (dt != QF_DT_BF16 && dt != QF_DT_F16 && dt != QF_DT_F32) {
			qf_err("%s: rotation: %s is not a float tensor",
			       x->m->dir, mt->name);
			return QF_EUNSUPPORTED;
		}
		out[*n].src = mt;
		out[*n].op = (enum rot_op)op;
		snprintf(out[*n].name, sizeof(out[*n].name), "%s", mt->name);
		if (op == OP_EMBED && !qf_model_find(x->m, "lm_head.weight")) {
			/* tied: the head W diag(g) Q differs from E Q */
			(*n)++;
			out[*n] = out[*n - 1];
			out[*n].op = OP_HEAD;
			snprintf(out[*n].name, sizeof(out[*n].name),
				 "lm_head.weight");
			*untie = true;
		}
		(*n)++;
	}
	return 0;
}

static int store(FILE *f, enum qf_dtype dt, const float *v, size_t n,
		 void *raw)
{
	size_t j;

	for (j = 0; j < n; j++) {
		if (dt == QF_DT_BF16)
			((uint16_t *)raw)[j] = qf_f32_to_bf16(v[j]);
		else if (dt == QF_DT_F16)
			((uint16_t *)raw)[j] = qf_f32_to_f16(v[j]);
		else
			((float *)raw)[j] = v[j];
	}
	return fwrite(raw, qf_dtype_size(dt), n, f) == n ? 0 : -EIO;
}

/* model.safetensors of the planned tensors. */
static int write_weights(const struct rot_ctx *x, struct rot_out *o,
			 size_t n, const char *dir)
{
	struct qf_st_plan_entry *e;
	struct qf_buf hdr = QF_BUF_INIT;
	uint64_t total, most = 0;
	float *v = NULL, *tmp = NULL;
	void *raw = NULL;
	char path[4096];
	FILE *f = NULL;
	size_t i;
	int ret;

	e = calloc(n, sizeof(*e));
	if (!e)
		return -ENOMEM;
	for (i = 0; i < n; i++) {
		const struct qf_st_tensor *t = o[i].src->t;

		e[i].name = o[i].name;
		e[i].dtype = t->dtype;
		e[i].ndim = t->ndim;
		memcpy(e[i].shape, t->shape, sizeof(e[i].shape));
		e[i].user = &o[i];
		if (qf_st_numel(t) > most)
			most = qf_st_numel(t);
	}
	ret = qf_st_plan(e, n, NULL, 0, &hdr, &total);
	if (ret < 0)
		goto out_free;
	v = malloc((size_t)most * sizeof(*v));
	tmp = malloc((size_t)most * sizeof(*tmp));
	raw = malloc((size_t)most * sizeof(float));
	snprintf(path, sizeof(path), "%s/model.safetensors", dir);
	f = v && tmp && raw ? fopen(path, "wb") : NULL;
	if (!f) {
		ret = v && tmp && raw ? -errno : -ENOMEM;
		goto out_free;
	}
	if (fwrite(hdr.data, 1, hdr.len, f) != hdr.len)
		ret = -EIO;
	for (i = 0; i < n && !ret; i++) {
		const struct rot_out *ro = e[i].user;

		ret = rot_compute(x, ro, v, tmp);
		if (!ret)
			ret = store(f, e[i].dtype, v,
				    (size_t)qf_st_numel(ro->src->t), raw);
	}
	if (fclose(f) != 0 && !ret)
		ret = -errno;
out_free:
	qf_buf_release(&hdr);
	free(raw);
	free(tmp);
	free(v);
	free(e);
	return ret;
}

/* config.json (untied if need be) and the tokenizer files, as they are. */
static int write_meta(const struct qf_model *m, const char *dir, bool untie)
{
	static const char *const copy[] = {
		"tokenizer.json", "tokenizer_config.json",
		"special_tokens_map.json", "generation_config.json",
		"tokenizer.model", "vocab.json", "merges.txt",
	};
	cJSON *cfg = cJSON_Duplicate(m->config, true);
	struct qf_buf b = QF_BUF_INIT;
	char *s = NULL;
	size_t i;
	int ret;

	if (cfg && untie) {
		cJSON_DeleteItemFromObjectCaseSensitive(cfg,
							"tie_word_embeddings");
		cJSON_AddBoolToObject(cfg, "tie_word_embeddings", false);
	}
	s = cfg ? cJSON_Print(cfg) : NULL;
	ret = s ? qf_mk_write_file(dir, "config.json", s, strlen(s)) : -ENOMEM;
	for (i = 0; i < sizeof(copy) / sizeof(copy[0]) && !ret; i++) {
		ret = qf_src_read(m->dirfd, copy[i], 64u << 20, &b);
		if (ret == -ENOENT) {
			ret = 0;
			continue;
		}
		if (!ret)
			ret = qf_mk_write_file(dir, copy[i], b.data, b.len);
		qf_buf_release(&b);
	}
	free(s);
	cJSON_Delete(cfg);
	return ret;
}

int qf_rot_write(const struct qf_model *m, uint64_t seed, const char *dir)
{
	struct rot_ctx x = { .m = m };
	struct rot_out *o = NULL;
	size_t n;
	bool untie;
	int ret;

	ret = qf_tf_config_parse(m, &x.c);
	if (!ret)
		ret = check_arch(&x);
	if (ret < 0)
		return ret;
	o = calloc(m->nt + 1, sizeof(*o));
	x.q = malloc((size_t)x.c.hidden * x.c.hidden * sizeof(float));
	x.r = malloc((size_t)x.c.head_dim * x.c.head_dim * sizeof(float));
	if (!o || !x.q || !x.r) {
		ret = -ENOMEM;
		goto out_free;
	}
	qf_rot_matrix(x.c.hidden, seed, x.q);
	qf_rot_matrix(x.c.head_dim, seed + 1, x.r);
	ret = rot_plan(&x, o, &n, &untie);
	if (!ret)
		ret = write_weights(&x, o, n, dir);
	if (!ret)
		ret = write_meta(m, dir, untie);
out_free:
	free(x.r);
	free(x.q);
	free(o);
	return ret;
}
