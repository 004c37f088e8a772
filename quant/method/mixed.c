/*
 * mixed.c - mixed-precision quantization: roles, bytes, sensitivity,
 * importance and the allocation policies (see mixed.h) but the budget's
 * knapsack, which is in mixed_budget.c.
 */
#include <fnmatch.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mixed.h"

#define PATTERN_MAX 1024		/* bytes of an override pattern + NUL */

const int qf_mixed_bits_all[QF_MIXED_NBITS] = { 2, 3, 4, 6, 8, 16 };

static const char *const role_names[QF_ROLE_COUNT] = {
	[QF_ROLE_ATTN] = "attn",
	[QF_ROLE_MLP] = "mlp",
	[QF_ROLE_EMBED] = "embed",
	[QF_ROLE_HEAD] = "head",
	[QF_ROLE_OTHER] = "other",
};

const char *qf_role_name(enum qf_role r)
{
	return (unsigned)r < QF_ROLE_COUNT ? role_names[r] : "?";
}

/* Role named by s[0..len). */
static int role_parse_n(const char *s, size_t len, enum qf_role *out)
{
	int r;

	for (r = 0; r < QF_ROLE_COUNT; r++)
		if (strlen(role_names[r]) == len &&
		    !memcmp(role_names[r], s, len)) {
			*out = (enum qf_role)r;
			return 0;
		}
	return QF_ESPEC;
}

int qf_role_parse(const char *s, enum qf_role *out)
{
	return role_parse_n(s, strlen(s), out);
}

static const struct {
	const char *comp;
	enum qf_role role;
} role_comps[] = {
	{ "q_proj", QF_ROLE_ATTN },
	{ "k_proj", QF_ROLE_ATTN },
	{ "v_proj", QF_ROLE_ATTN },
	{ "o_proj", QF_ROLE_ATTN },
	{ "qkv_proj", QF_ROLE_ATTN },
	{ "gate_proj", QF_ROLE_MLP },
	{ "up_proj", QF_ROLE_MLP },
	{ "down_proj", QF_ROLE_MLP },
	{ "gate_up_proj", QF_ROLE_MLP },
	{ "w1", QF_ROLE_MLP },		/* Mixtral's experts: gate, */
	{ "w2", QF_ROLE_MLP },		/* down */
	{ "w3", QF_ROLE_MLP },		/* and up */
	{ "embed_tokens", QF_ROLE_EMBED },
	{ "lm_head", QF_ROLE_HEAD },
};

enum qf_role qf_role_of(const char *tensor_name,
			const char *const *overrides)
{
	enum qf_role role = QF_ROLE_OTHER;
	const char *s = tensor_name;
	size_t k;

	for (; overrides && *overrides; overrides++) {
		const char *eq = strrchr(*overrides, '=');
		char pat[PATTERN_MAX];
		size_t plen;
		enum qf_role r;

		if (!eq)
			continue;
		plen = (size_t)(eq - *overrides);
		if (plen == 0 || plen >= sizeof(pat) ||
		    qf_role_parse(eq + 1, &r) < 0)
			continue;
		memcpy(pat, *overrides, plen);
		pat[plen] = 0;
		if (!fnmatch(pat, tensor_name, 0))
			return r;
	}
	/* the last component naming a role decides */
	while (*s) {
		size_t len = strcspn(s, ".");

		for (k = 0; k < sizeof(role_comps) / sizeof(role_comps[0]);
		     k++)
			if (strlen(role_comps[k].comp) == len &&
			    !memcmp(role_comps[k].comp, s, len))
				role = role_comps[k].role;
		s += len;
		if (*s == '.')
			s++;
	}
	return role;
}

static void say(char *why, size_t cap, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void say(char *why, size_t cap, const char *fmt, ...)
{
	va_list ap;

	if (!why || !cap)
		return;
	va_start(ap, fmt);
	vsnprintf(why, cap, fmt, ap);
	va_end(ap);
}

void qf_mixed_overrides_free(char **list)
{
	char **p;

	if (!list)
		return;
	for (p = list; *p; p++)
		free(*p);
	free(list);
}

int qf_mixed_overrides_parse(const char *s, char ***out, char *why,
			     size_t cap)
{
	size_t n = 0, i = 0, k;
	const char *p;
	char **list;
	int ret = 0;

	*out = NULL;
	if (*s) {
		n = 1;
		for (p = s; *p; p++)
			n += *p == ',';
	}
	list = calloc(n + 1, sizeof(*list));
	if (!list)
		return -ENOMEM;
	for (p = s, k = 0; k < n; k++) {
		size_t len = strcspn(p, ",");
		const char *eq = NULL, *q;
		enum qf_role r;

		for (q = p; q < p + len; q++)
			if (*q == '=')
				eq = q;
		if (!len) {
			say(why, cap, "override %zu is empty", k + 1);
			ret = QF_ESPEC;
			goto fail;
		}
		if (!eq) {
			say(why, cap, "override %zu (\"%.*s\"): expected "
			    "pattern=role", k + 1, (int)len, p);
			ret = QF_ESPEC;
			goto fail;
		}
		if (eq == p || (size_t)(eq - p) >= PATTERN_MAX) {
			say(why, cap, "override %zu (\"%.*s\"): pattern is "
			    "empty or longer than %d bytes", k + 1, (int)len,
			    p, PATTERN_MAX - 1);
			ret = QF_ESPEC;
			goto fail;
		}
		if (role_parse_n(eq + 1, (size_t)(p + len - eq - 1), &r) < 0) {
			say(why, cap, "override %zu (\"%.*s\"): role \"%.*s\""
			    " is not attn, mlp, embed, head or other", k + 1,
			    (int)len, p, (int)(p + len - eq - 1), eq + 1);
			ret = QF_ESPEC;
			goto fail;
		}
		list[i] = strndup(p, len);
		if (!list[i]) {
			ret = -ENOMEM;
			goto fail;
		}
		i++;
		p += len + (p[len] == ',');
	}
	*out = list;
	return 0;
fail:
	qf_mixed_overrides_free(list);
	return ret;
}

/* ------------------------------------------------------------------ */
/* bytes and sizes                                                    */

bool qf_mixed_bits_valid(int bits)
{
	int k;

	for (k = 0; k < QF_MIXED_NBITS; k++)
		if (qf_mixed_bits_all[k] == bits)
			return true;
	return false;
}

uint64_t qf_mixed_bytes(int64_t out, int64_t in, int bits, int group,
			bool sym)
{
	uint64_t ng, b;

	if (!qf_mixed_bits_valid(bits) || out <= 0 || in <= 0)
		return 0;
	if (bits == 16)
		return (uint64_t)out * (uint64_t)in * 2;
	ng = (uint64_t)qf_ngroups(in, group);
	b = (uint64_t)out * (uint64_t)qf_ct_words(in, bits) * 4;
	b += (uint64_t)out * ng * 2;
	if (!sym)
		b += (uint64_t)qf_ct_words(out, bits) * ng * 4;
	return b + 2 * 4;
}

void qf_mixed_size_add(struct qf_mixed_size *s, uint64_t params,
		       uint64_t bytes, uint64_t src_bytes)
{
	s->params += params;
	s->bytes += bytes;
	s->src_bytes += src_bytes;
}

void qf_mixed_size_finish(struct qf_mixed_size *s)
{
	double p = (double)s->params, b = (double)s->bytes;

	s->bytes_per_param = s->params ? b / p : 0;
	s->bits_per_param = 8 * s->bytes_per_param;
	s->ratio_src = s->bytes ? (double)s->src_bytes / b : 0;
	s->ratio_fp32 = s->bytes ? 4 * p / b : 0;
}

/* ------------------------------------------------------------------ */
/* sensitivity and importance                                         */

/* tr(A H A^T) for A [out, in]: t = A H (SGEMM), sum t .* A in double. */
static double quad_trace(const float *a, int64_t out, int64_t in,
			 const float *h, float *t)
{
	double s = 0;
	int64_t i;

	qf_sgemm(false, false, out, in, in, 1.0f, a, in, h, in, 0.0f, t, in);
	for (i = 0; i < out * in; i++)
		s += (double)t[i] * (double)a[i];
	return s;
}

int qf_mixed_sensitivity(const float *w, int64_t out, int64_t in,
			 const float *h, const int *bits, int np, int group,
			 bool sym, double *cost)
{
	int64_t ng = qf_ngroups(in, group), gs = ng == 1 ? in : group;
	size_t n = (size_t)(out * in);
	float *d = NULL, *t = NULL;
	uint16_t *sc = NULL;
	int32_t *z = NULL;
	uint8_t *q = NULL;
	double den;
	int p, ret = 0;

	for (p = 0; p < np; p++)
		if (!qf_mixed_bits_valid(bits[p]))
			return -EINVAL;
	d = malloc(n * sizeof(*d));
	t = malloc(n * sizeof(*t));
	q = malloc(n);
	sc = malloc((size_t)(out * ng) * sizeof(*sc));
	z = malloc((size_t)(out * ng) * sizeof(*z));
	if (!d || !t || !q || !sc || !z) {
		ret = -ENOMEM;
		goto out;
	}
	den = quad_trace(w, out, in, h, t);
	for (p = 0; p < np; p++) {
		struct qf_qparams qp = { bits[p], group, sym };
		int64_t r, j;

		cost[p] = 0;
		if (bits[p] == 16 || !(den > 0))
			continue;
		ret = qf_rtn_quantize(w, out, in, &qp, q, sc, z);
		if (ret < 0)
			goto out;
		for (r = 0; r < out; r++)
			for (j = 0; j < in; j++) {
				int64_t g = r * ng + j / gs;
				float v = qf_f16_to_f32(sc[g]) *
					((float)q[r * in + j] - (float)z[g]);

				d[r * in + j] = v - w[r * in + j];
			}
		cost[p] = quad_trace(d, out, in, h, t) / den;
		if (!isfinite(cost[p])) {
			ret = QF_ENUMERIC;
			goto out;
		}
	}
out:
	free(d);
	free(t);
	free(q);
	free(sc);
	free(z);
	return ret;
}

int qf_mixed_sensitivity_gptq(const float *w, int64_t out, int64_t in,
			      const float *h, const int *bits,
			      const int *group, int np, float damp,
			      double *cost, double *energy)
{
	size_t n = (size_t)(out * in), hn = (size_t)(in * in);
	float *d = malloc(n * sizeof(*d)), *t = malloc(n * sizeof(*t));
	float *hc = malloc(hn * sizeof(*hc)), *hu = malloc(hn * sizeof(*hu));
	uint8_t *q = malloc(n);
	/* at most one scale and zero per column and row */
	uint16_t *sc = malloc(n * sizeof(*sc));
	int32_t *z = malloc(n * sizeof(*z));
	int32_t *gi = malloc((size_t)in * sizeof(*gi));
	double den;
	size_t i;
	int p, ret = 0;

	for (p = 0; p < np; p++)
		if (!qf_mixed_bits_valid(bits[p]))
			ret = -EINVAL;
	if (!ret && (!d || !t || !hc || !hu || !q || !sc || !z || !gi))
		ret = -ENOMEM;
	if (ret < 0)
		goto out;
	memcpy(hc, h, hn * sizeof(*hc));
	memcpy(hu, h, hn * sizeof(*hu));	/* factorized once for all */
	ret = qf_gptq_hinv_upper(hu, in, damp);
	if (ret < 0)
		goto out;
	den = quad_trace(w, out, in, h, t);
	if (energy)
		*energy = den;
	if (!isfinite(den))
		ret = QF_ENUMERIC;
	for (p = 0; p < np && !ret; p++) {
		struct qf_gptq_opts o = {
			.qp = { bits[p], group[p], false },
			.damp = damp,
			.blocksize = 128,
			.u_given = hu,
		};

		cost[p] = 0;
		if (bits[p] == 16 || !(den > 0))
			continue;
		memcpy(d, w, n * sizeof(*d));
		ret = qf_gptq_quantize(d, out, in, hc, &o, q, sc, z, gi, NULL);
		for (i = 0; i < n && !ret; i++)
			d[i] -= w[i];
		if (!ret)
			cost[p] = quad_trace(d, out, in, h, t) / den;
		if (!ret && !isfinite(cost[p]))
			ret = QF_ENUMERIC;
	}
out:
	free(d);
	free(t);
	free(hc);
	free(hu);
	free(q);
	free(sc);
	free(z);
	free(gi);
	return ret;
}

void qf_mixed_signals_of(const float *w, int64_t out, int64_t in,
			 const struct qf_lin_stats *s,
			 struct qf_mixed_signals *sig)
{
	double a = 0, m = 0;
	int64_t i;

	for (i = 0; i < out * in; i++)
		m += fabs((double)w[i]);
	if (s && s->n > 0 && s->sum_sq) {
		for (i = 0; i < in; i++)
			a += s->sum_sq[i] / (double)s->n;
		a /= (double)in;
	}
	sig->grad = 0;
	sig->has_grad = false;
	sig->act = a;
	sig->weight = out * in > 0 ? m / (double)(out * in) : 0;
}

/* z-scores of v[i] for i with have[i] (NULL: all); others get 0. */
static void zscore(const double *v, const bool *have, size_t n, double *z)
{
	double mean = 0, var = 0, sd;
	size_t i, cnt = 0;

	for (i = 0; i < n; i++)
		if (!have || have[i]) {
			mean += v[i];
			cnt++;
		}
	for (i = 0; i < n; i++)
		z[i] = 0;
	if (!cnt)
		return;
	mean /= (double)cnt;
	for (i = 0; i < n; i++)
		if (!have || have[i])
			var += (v[i] - mean) * (v[i] - mean);
	sd = sqrt(var / (double)cnt);
	for (i = 0; i < n; i++)
		if (!have || have[i])
			z[i] = (v[i] - mean) / (sd + 1e-8);
}

int qf_mixed_importance(const struct qf_mixed_signals *sig, size_t n,
			double *imp)
{
	double *v, *zg, *za, *zw;
	bool *have;
	size_t i;

	if (!n)
		return -EINVAL;
	v = malloc(4 * n * sizeof(*v));
	have = malloc(n * sizeof(*have));
	if (!v || !have) {
		free(v);
		free(have);
		return -ENOMEM;
	}
	zg = v + n;
	za = zg + n;
	zw = za + n;
	for (i = 0; i < n; i++) {
		v[i] = sig[i].grad;
		have[i] = sig[i].has_grad;
	}
	zscore(v, have, n, zg);
	for (i = 0; i < n; i++)
		v[i] = sig[i].act;
	zscore(v, NULL, n, za);
	for (i = 0; i < n; i++)
		v[i] = sig[i].weight;
	zscore(v, NULL, n, zw);
	for (i = 0; i < n; i++)
		imp[i] = 0.5 * zg[i] + 0.3 * za[i] + 0.2 * zw[i];
	free(v);
	free(have);
	return 0;
}

/* ------------------------------------------------------------------ */
/* a) static table, b) ratios                                          */

void qf_mixed_static_defaults(struct qf_mixed_static *t)
{
	t->bits[QF_ROLE_ATTN] = 8;
	t->bits[QF_ROLE_MLP] = 4;
	t->bits[QF_ROLE_EMBED] = 16;
	t->bits[QF_ROLE_HEAD] = 16;
	t->bits[QF_ROLE_OTHER] = 8;
}

/*
 * Walk "key=value,..." calling fn(arg, key, klen, value) per entry.
 * Returns 0, QF_ESPEC (malformed entry; why set) or fn's error.
 */
static int kv_walk(const char *s, const char *what,
		   int (*fn)(void *arg, const char *k, size_t klen,
			     const char *v, char *why, size_t cap),
		   void *arg, char *why, size_t cap)
{
	char val[64];
	size_t k = 0;
	int ret;

	if (!*s)
		return 0;
	for (;;) {
		size_t len = strcspn(s, ",");
		const char *eq = memchr(s, '=', len);
		size_t vlen;

		k++;
		if (!eq || eq == s || eq + 1 == s + len) {
			say(why, cap, "%s entry %zu (\"%.*s\"): expected "
			    "key=value", what, k, (int)len, s);
			return QF_ESPEC;
		}
		vlen = (size_t)(s + len - eq - 1);
		if (vlen >= sizeof(val)) {
			say(why, cap, "%s entry %zu: value too long", what, k);
			return QF_ESPEC;
		}
		memcpy(val, eq + 1, vlen);
		val[vlen] = 0;
		ret = fn(arg, s, (size_t)(eq - s), val, why, cap);
		if (ret < 0)
			return ret;
		if (!s[len])
			return 0;
		s += len + 1;
	}
}

/* Whole-string integer, or QF_ESPEC. */
static int parse_int(const char *v, int *out)
{
	char *end;
	long x;

	errno = 0;
	x = strtol(v, &end, 10);
	if (errno || end == v || *end || x < -1000000 || x > 1000000)
		return QF_ESPEC;
	*out = (int)x;
	return 0;
}

static int parse_bits(const char *k, size_t klen, const char *v, int *out,
		      char *why, size_t cap)
{
	int b;

	if (parse_int(v, &b) < 0 || !qf_mixed_bits_valid(b)) {
		say(why, cap, "%.*s=%s: bits must be 2, 3, 4, 6, 8 or 16",
		    (int)klen, k, v);
		return QF_ESPEC;
	}
	*out = b;
	return 0;
}

static int static_kv(void *arg, const char *k, size_t klen, const char *v,
		     char *why, size_t cap)
{
	struct qf_mixed_static *t = arg;
	enum qf_role r;

	if (role_parse_n(k, klen, &r) < 0) {
		say(why, cap, "unknown role \"%.*s\" (attn, mlp, embed, head,"
		    " other)", (int)klen, k);
		return QF_ESPEC;
	}
	return parse_bits(k, klen, v, &t->bits[r], why, cap);
}

int qf_mixed_static_parse(const char *s, struct qf_mixed_static *t,
			  char *why, size_t cap)
{
	struct qf_mixed_static tmp = *t;
	int ret = kv_walk(s, "role table", static_kv, &tmp, why, cap);

	if (ret == 0)
		*t = tmp;
	return ret;
}

void qf_mixed_static_assign(const struct qf_mixed_static *t,
			    const enum qf_role *roles, size_t n, int *bits)
{
	size_t i;

	for (i = 0; i < n; i++)
		bits[i] = t->bits[(unsigned)roles[i] < QF_ROLE_COUNT ?
				  roles[i] : QF_ROLE_OTHER];
}

int qf_mixed_static_bits(const struct qf_mixed_static *t,
			 const char *const *overrides, const char *name,
			 enum qf_role *role)
{
	char mod[512];
	size_t n = strlen(name);
	enum qf_role r;

	if (n > 7 && !strcmp(name + n - 7, ".weight"))
		n -= 7;
	snprintf(mod, sizeof(mod), "%.*s", (int)n, name);
	r = qf_role_of(mod, overrides);
	if (role)
		*role = r;
	return t->bits[r];
}

void qf_mixed_ratio_defaults(struct qf_mixed_ratio *r)
{
	r->high = 0.2;
	r->low = 0.4;
	r->bits_high = 16;
	r->bits_mid = 8;
	r->bits_low = 4;
}

static bool key_is(const char *k, size_t klen, const char *name)
{
	return strlen(name) == klen && !memcmp(k, name, klen);
}

static int ratio_kv(void *arg, const char *k, size_t klen, const char *v,
		    char *why, size_t cap)
{
	struct qf_mixed_ratio *r = arg;

	if (key_is(k, klen, "high") || key_is(k, klen, "low")) {
		char *end;
		double x = strtod(v, &end);

		if (end == v || *end || !(x >= 0 && x <= 1)) {
			say(why, cap, "%.*s=%s: a fraction in [0, 1] is "
			    "expected", (int)klen, k, v);
			return QF_ESPEC;
		}
		*(key_is(k, klen, "high") ? &r->high : &r->low) = x;
		return 0;
	}
	if (key_is(k, klen, "bits_high"))
		return parse_bits(k, klen, v, &r->bits_high, why, cap);
	if (key_is(k, klen, "bits_mid"))
		return parse_bits(k, klen, v, &r->bits_mid, why, cap);
	if (key_is(k, klen, "bits_low"))
		return parse_bits(k, klen, v, &r->bits_low, why, cap);
	say(why, cap, "unknown key \"%.*s\" (high, low, bits_high, bits_mid,"
	    " bits_low)", (int)klen, k);
	return QF_ESPEC;
}

int qf_mixed_ratio_parse(const char *s, struct qf_mixed_ratio *r,
			 char *why, size_t cap)
{
	struct qf_mixed_ratio tmp = *r;
	int ret = kv_walk(s, "ratio policy", ratio_kv, &tmp, why, cap);

	if (ret < 0)
		return ret;
	if (tmp.high + tmp.low > 1 + 1e-12) {
		say(why, cap, "high + low = %g exceeds 1", tmp.high + tmp.low);
		return QF_ESPEC;
	}
	*r = tmp;
	return 0;
}

struct ranked {
	double v;
	size_t i;
};

static int ranked_cmp(const void *a, const void *b)
{
	const struct ranked *x = a, *y = b;

	if (x->v != y->v)
		return x->v > y->v ? -1 : 1;
	return x->i < y->i ? -1 : x->i > y->i;
}

int qf_mixed_ratio_assign(const struct qf_mixed_ratio *r, const double *imp,
			  size_t n, int *bits)
{
	size_t nhigh, nlow, i;
	struct ranked *rk;

	if (!(r->high >= 0 && r->low >= 0 && r->high + r->low <= 1 + 1e-12))
		return -EINVAL;
	for (i = 0; i < n; i++)
		if (!isfinite(imp[i]))
			return -EINVAL;
	if (!n)
		return 0;
	rk = malloc(n * sizeof(*rk));
	if (!rk)
		return -ENOMEM;
	for (i = 0; i < n; i++) {
		rk[i].v = imp[i];
		rk[i].i = i;
	}
	qsort(rk, n, sizeof(*rk), ranked_cmp);
	nhigh = (size_t)floor((double)n * r->high + 1e-9);
	nlow = n - (size_t)floor((double)n * (1 - r->low) + 1e-9);
	nhigh = nhigh > n ? n : nhigh;
	if (nlow > n - nhigh)
		nlow = n - nhigh;
	for (i = 0; i < n; i++)
		bits[rk[i].i] = i < nhigh ? r->bits_high :
			i >= n - nlow ? r->bits_low : r->bits_mid;
	free(rk);
	return 0;
}
