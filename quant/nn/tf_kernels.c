/*
 * tf_kernels.c - fp32 kernels of the Llama-family forward pass: linears
 * (SGEMM over all tokens at once), RMSNorm, rotate_half RoPE, blocked
 * causal GQA attention, SwiGLU, and one decoder layer built from them.
 *
 * Semantics follow Hugging Face transformers (LlamaForCausalLM and
 * relatives) in fp32.  Gemma's differences are config fields the kernels
 * test: GeGLU (c->act), scaled and soft-capped attention scores, norms on
 * the attention and MLP outputs (the layer's attn_out_norm/mlp_out_norm),
 * and each layer's own window and rope base (qf_tf_config_layer).  Kernels take no locks; one BLAS call at a time
 * per caller, threads come from OpenBLAS itself.  Scratch is allocated
 * once per layer call, never per token.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "nn.h"
#include "tf_kernels.h"
#include "tf_moe.h"

void qf_tf_linear_run(const float *x, int64_t n, int64_t in, const float *w,
		      const float *b, int64_t out, float beta, float *y)
{
	/* (nn.h: QF_TF_ROWS; on the GPU one product, W sent once) */
	int64_t rows = qf_backend_current() == QF_BACKEND_CUDA ? n :
		       QF_TF_ROWS, i, j, r;

	for (r = 0; r < n; r += rows)
		qf_sgemm(false, true, n - r < rows ? n - r : rows, out, in,
			 1.0f, x + r * in, in, w, in, beta, y + r * out, out);
	if (!b)
		return;
	for (i = 0; i < n; i++) {
		float *yr = y + i * out;	/* [out] */

		for (j = 0; j < out; j++)
			yr[j] += b[j];
	}
}

/* Elements per part below which a loop runs on the caller alone. */
#define PAR_MIN (1 << 17)

struct rms {
	const float *x, *w;
	int64_t d;
	float eps;
	float *y;
};

static void rmsnorm_rows(void *arg, int64_t i0, int64_t i1)
{
	const struct rms *a = arg;
	int64_t d = a->d, i, j;

	for (i = i0; i < i1; i++) {
		const float *xr = a->x + i * d;	/* [d] */
		float *yr = a->y + i * d;	/* [d] */
		float acc[8] = { 0 };		/* lanes: vectorizes at -O2 */
		float ss = 0;
		float r;
		int l;

		for (j = 0; j + 8 <= d; j += 8)
			for (l = 0; l < 8; l++)
				acc[l] += xr[j + l] * xr[j + l];
		for (; j < d; j++)
			ss += xr[j] * xr[j];
		for (l = 0; l < 8; l++)
			ss += acc[l];
		r = 1.0f / sqrtf(ss / (float)d + a->eps);
		for (j = 0; j < d; j++)
			yr[j] = xr[j] * r * a->w[j];
	}
}

void qf_tf_rmsnorm(const float *x, const float *w, int64_t n, int64_t d,
		   float eps, float *y)
{
	struct rms a = { x, w, d, eps, y };

	qf_par_for(rmsnorm_rows, &a, n, PAR_MIN / (d > 0 ? d : 1) + 1, 1);
}

/*
 * inv_freq[i] = theta^(-2i/d) over the d = rot_dim rotated dimensions,
 * with Llama 3.1's frequency remapping or LongRoPE's per-frequency
 * factors (short ones while the sequence fits the original context).
 */
static double rope_inv_freq(const struct qf_tf_config *c, int i, int seqlen)
{
	double inv = pow((double)c->rope_theta,
			 -(double)(2 * i) / (double)qf_tf_rot_dim(c));
	double lo_wl, hi_wl, wl, smooth;

	if (c->rope_linear > 0)
		inv /= c->rope_linear;
	if (c->rope_nfac > 0)
		return inv / (seqlen > c->rope_orig_max_pos ? c->rope_long[i] :
			      c->rope_short[i]);
	if (c->rope_factor <= 0)
		return inv;
	lo_wl = c->rope_orig_max_pos / (double)c->rope_low_freq_factor;
	hi_wl = c->rope_orig_max_pos / (double)c->rope_high_freq_factor;
	wl = 2 * M_PI / inv;
	if (wl < hi_wl)
		return inv;
	if (wl > lo_wl)
		return inv / c->rope_factor;
	smooth = (c->rope_orig_max_pos / wl - c->rope_low_freq_factor) /
		 (c->rope_high_freq_factor - c->rope_low_freq_factor);
	return (1 - smooth) * inv / c->rope_factor + smooth * inv;
}

void qf_tf_rope_table(const struct qf_tf_config *c, int seqlen, float *cs,
		      float *sn)
{
	int half = c->head_dim / 2, rhalf = qf_tf_rot_dim(c) / 2;
	double af = c->rope_attn > 0 ? c->rope_attn : 1.0;
	int p, i;

	for (i = 0; i < half; i++) {
		double inv = i < rhalf ? rope_inv_freq(c, i, seqlen) : 0;

		for (p = 0; p < seqlen; p++) {
			double a = p * inv;

			/* past rot_dim / 2: not read (identity) */
			cs[(int64_t)p * half + i] = (float)(i < rhalf ?
							    af * cos(a) : 1);
			sn[(int64_t)p * half + i] = (float)(i < rhalf ?
							    af * sin(a) : 0);
		}
	}
}

struct rope {
	float *x;
	int nh, hd, rot, seqlen;
	const float *cs, *sn;
	float sg;
};

static void rope_rows(void *arg, int64_t t0, int64_t t1)
{
	const struct rope *a = arg;
	int half = a->hd / 2, rh = a->rot / 2;
	int64_t t;
	int h, i;

	for (t = t0; t < t1; t++) {
		const float *c = a->cs + (t % a->seqlen) * half; /* [half] */
		const float *s = a->sn + (t % a->seqlen) * half; /* [half] */

		for (h = 0; h < a->nh; h++) {
			float *xh = a->x + (t * a->nh + h) * a->hd; /* [hd] */

			for (i = 0; i < rh; i++) {
				float x1 = xh[i];
				float x2 = xh[i + rh];
				float si = a->sg * s[i];

				xh[i] = x1 * c[i] - x2 * si;
				xh[i + rh] = x2 * c[i] + x1 * si;
			}
		}
	}
}

void qf_tf_rope_rot(float *x, int64_t ntok, int nh, int hd, int rot,
		    int seqlen, const float *cs, const float *sn,
		    bool transpose)
{
	/* the transpose rotates by -angle: sin negated, exactly */
	struct rope a = { x, nh, hd, rot, seqlen, cs, sn,
			  transpose ? -1.0f : 1.0f };

	qf_par_for(rope_rows, &a, ntok, PAR_MIN / ((int64_t)nh * hd + 1) + 1,
		   1);
}

void qf_tf_rope_dir(float *x, int64_t ntok, int nh, int hd, int seqlen,
		    const float *cs, const float *sn, bool transpose)
{
	qf_tf_rope_rot(x, ntok, nh, hd, hd, seqlen, cs, sn, transpose);
}

void qf_tf_rope(float *x, int64_t ntok, int nh, int hd, int seqlen,
		const float *cs, const float *sn)
{
	qf_tf_rope_dir(x, ntok, nh, hd, seqlen, cs, sn, false);
}

/*
 * exp for the softmax and SiLU.  On x86-64 with AVX2 + FMA (checked at run
 * time) a Cephes-style polynomial, 8 lanes at a time, within 2 ulp of
 * expf over [-87, 88]; arguments are clamped to that range, so exp of a
 * very negative score is 1e-38 rather than 0.  Elsewhere plain expf.
 */
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

__attribute__((target("avx2,fma")))
static inline __m256 exp8(__m256 x)
{
	const __m256 log2e = _mm256_set1_ps(1.44269504088896341f);
	const __m256 ln2_hi = _mm256_set1_ps(0.693359375f);
	const __m256 ln2_lo = _mm256_set1_ps(-2.12194440e-4f);
	__m256 fx, r, p;
	__m256i e;

	x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-87.0f)),
			  _mm256_set1_ps(88.0f));
	fx = _mm256_round_ps(_mm256_mul_ps(x, log2e),
			     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	r = _mm256_fnmadd_ps(fx, ln2_hi, x);
	r = _mm256_fnmadd_ps(fx, ln2_lo, r);
	p = _mm256_set1_ps(1.9875691500e-4f);
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
	p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
	p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r),
			    _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
	e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(fx),
					       _mm256_set1_epi32(127)), 23);
	return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

__attribute__((target("avx2,fma")))
static inline float hsum8(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v),
			      _mm256_extractf128_ps(v, 1));

	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
	return _mm_cvtss_f32(s);
}

__attribute__((target("avx2,fma")))
static inline float hmax8(__m256 v)
{
	__m128 s = _mm_max_ps(_mm256_castps256_ps128(v),
			      _mm256_extractf128_ps(v, 1));

	s = _mm_max_ps(s, _mm_movehl_ps(s, s));
	s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
	return _mm_cvtss_f32(s);
}

/* p[0..n) = softmax(p[0..n)), n >= 1. */
__attribute__((target("avx2,fma")))
static void softmax_avx2(float *p, int n)
{
	__m256 vm = _mm256_set1_ps(-INFINITY);
	__m256 vs = _mm256_setzero_ps();
	__m256 vmx, vi;
	float mx, sum, inv;
	int j;

	for (j = 0; j + 8 <= n; j += 8)
		vm = _mm256_max_ps(vm, _mm256_loadu_ps(p + j));
	mx = hmax8(vm);
	for (; j < n; j++)
		mx = p[j] > mx ? p[j] : mx;
	vmx = _mm256_set1_ps(mx);
	for (j = 0; j + 8 <= n; j += 8) {
		__m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p + j), vmx));

		_mm256_storeu_ps(p + j, e);
		vs = _mm256_add_ps(vs, e);
	}
	sum = hsum8(vs);
	for (; j < n; j++) {
		p[j] = expf(p[j] - mx);
		sum += p[j];
	}
	inv = 1.0f / sum;
	vi = _mm256_set1_ps(inv);
	for (j = 0; j + 8 <= n; j += 8)
		_mm256_storeu_ps(p + j, _mm256_mul_ps(_mm256_loadu_ps(p + j), vi));
	for (; j < n; j++)
		p[j] *= inv;
}

__attribute__((target("avx2,fma")))
static void swiglu_avx2(float *g, const float *u, int64_t n)
{
	const __m256 one = _mm256_set1_ps(1.0f);
	int64_t i;

	for (i = 0; i + 8 <= n; i += 8) {
		__m256 x = _mm256_loadu_ps(g + i);
		__m256 e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));

		x = _mm256_div_ps(x, _mm256_add_ps(one, e));
		_mm256_storeu_ps(g + i, _mm256_mul_ps(x, _mm256_loadu_ps(u + i)));
	}
	for (; i < n; i++)
		g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static bool have_avx2(void)
{
	return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
static void softmax_avx2(float *p, int n) { (void)p; (void)n; }
static void swiglu_avx2(float *g, const float *u, int64_t n)
{
	(void)g; (void)u; (void)n;
}
static bool have_avx2(void) { return false; }
#endif

static void softmax_ref(float *p, int n)
{
	float mx = -INFINITY;
	float sum = 0;
	float inv;
	int j;

	for (j = 0; j < n; j++)
		mx = p[j] > mx ? p[j] : mx;
	for (j = 0; j < n; j++) {
		p[j] = expf(p[j] - mx);
		sum += p[j];
	}
	inv = 1.0f / sum;
	for (j = 0; j < n; j++)
		p[j] *= inv;
}

/*
 * Row i (absolute position) of a score block whose column 0 is key lo:
 * softmax over keys [first, i], zeros elsewhere.
 */
static void softmax_row(float *row, int lo, int nk, int first, int i,
			bool avx2)
{
	int a = first - lo;
	int b = i - lo + 1;

	if (avx2)
		softmax_avx2(row + a, b - a);
	else
		softmax_ref(row + a, b - a);
	memset(row, 0, sizeof(float) * (size_t)a);
	memset(row + b, 0, sizeof(float) * (size_t)(nk - b));
}

/* Keys of query block [r0, r1): [lo, r1). */
static int block_lo(int r0, int window)
{
	int lo = window > 0 ? r0 - window + 1 : 0;

	return lo > 0 ? lo : 0;
}

void qf_tf_attention(const struct qf_tf_config *c, float *q, const float *k,
		     const float *v, int nseq, int seqlen, int window,
		     float *s)
{
	int hd = c->head_dim;
	int qd = c->heads * hd;
	int kvd = c->kv_heads * hd;
	int rep = c->heads / c->kv_heads;
	float scale = c->attn_scale > 0 ? c->attn_scale :
		      1.0f / sqrtf((float)hd);
	bool avx2 = have_avx2();
	int sq, h, r0, i;

	for (sq = 0; sq < nseq; sq++) {
		int64_t base = (int64_t)sq * seqlen;

		for (h = 0; h < c->heads; h++) {
			int g = h / rep;

			for (r0 = 0; r0 < seqlen; r0 += QF_TF_BQ) {
				int r1 = r0 + QF_TF_BQ < seqlen ?
					 r0 + QF_TF_BQ : seqlen;
				int lo = block_lo(r0, window);
				int nk = r1 - lo;
				float *qb = q + (base + r0) * qd + h * hd;
				const float *kb = k + (base + lo) * kvd + g * hd;
				const float *vb = v + (base + lo) * kvd + g * hd;

				/* qb [r1 - r0, hd] ld qd; kb, vb [nk, hd] ld kvd */
				qf_sgemm(false, true, r1 - r0, nk, hd, scale,
					    qb, qd, kb, kvd, 0.0f, s, nk);
				qf_tf_softcap(s, (int64_t)(r1 - r0) * nk,
					      c->attn_softcap);
				for (i = r0; i < r1; i++)
					softmax_row(s + (int64_t)(i - r0) * nk,
						    lo, nk, block_lo(i, window),
						    i, avx2);
				qf_sgemm(false, false, r1 - r0, hd, nk, 1.0f,
					    s, nk, vb, kvd, 0.0f, qb, qd);
			}
		}
	}
}

double qf_tf_attention_flops(const struct qf_tf_config *c, int nseq,
			     int seqlen, int window)
{
	double f = 0;
	int r0;

	for (r0 = 0; r0 < seqlen; r0 += QF_TF_BQ) {
		int r1 = r0 + QF_TF_BQ < seqlen ? r0 + QF_TF_BQ : seqlen;
		int nk = r1 - block_lo(r0, window);

		f += 2.0 * 2.0 * (r1 - r0) * (double)nk * c->head_dim;
	}
	return f * nseq * c->heads;
}

void qf_tf_softcap(float *x, int64_t n, float cap)
{
	int64_t i;

	if (cap <= 0)
		return;
	for (i = 0; i < n; i++)
		x[i] = cap * tanhf(x[i] / cap);
}

/* gelu(x) with the tanh approximation (gelu_pytorch_tanh). */
static inline float gelu_tanh(float x)
{
	const float k = 0.7978845608028654f;	/* sqrt(2 / pi) */

	return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}

struct glu {
	float *g;
	const float *u;
	bool gelu;
};

/* parts start at multiples of 8: each element takes the path (8 lanes
 * or the scalar tail) it takes in one call over all */
static void glu_part(void *arg, int64_t i0, int64_t i1)
{
	const struct glu *a = arg;
	float *g = a->g;
	const float *u = a->u;
	int64_t i;

	if (a->gelu) {
		for (i = i0; i < i1; i++)
			g[i] = gelu_tanh(g[i]) * u[i];
	} else if (have_avx2()) {
		swiglu_avx2(g + i0, u + i0, i1 - i0);
	} else {
		for (i = i0; i < i1; i++)
			g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
	}
}

void qf_tf_swiglu(float *g, const float *u, int64_t n)
{
	struct glu a = { g, u, false };

	qf_par_for(glu_part, &a, n, PAR_MIN, 8);
}

void qf_tf_glu(const struct qf_tf_config *c, float *g, const float *u,
	       int64_t n)
{
	struct glu a = { g, u, c->act == QF_ACT_GELU_TANH };

	qf_par_for(glu_part, &a, n, PAR_MIN, 8);
}

/*
 * The up projection runs in chunks of this many tokens, each multiplied
 * into silu(gate) at once: no [ntok, inter] buffer for it, and the
 * product is still cache-warm.
 */
#define QF_TF_UP_ROWS 512

/* Scratch of one layer call, one allocation. */
struct layer_scratch {
	float *xn;	/* [ntok, hidden] normed input */
	float *q;	/* [ntok, heads * hd], then the attention output */
	float *k;	/* [ntok, kv_heads * hd] */
	float *v;	/* [ntok, kv_heads * hd] */
	float *g;	/* [ntok, inter] gate, then silu(gate) * up */
	float *u;	/* [QF_TF_UP_ROWS, inter] up of one token chunk */
	float *s;	/* [QF_TF_BQ, seqlen] attention scores */
	float *cs;	/* [seqlen, hd / 2] */
	float *sn;	/* [seqlen, hd / 2] */
	float *mem;
	size_t bytes;
};

/*
 * The scratch a layer call leaves for the next on its thread while
 * qf_tf_scratch_keep is on: memory new to a process costs far more than
 * its use on this project's machines (a fault and the host's page behind
 * it, 0.3-0.8 GB/s first touched against 8 GB/s reused), and a
 * calibration pass makes one scratch per layer or chunk.
 */
static _Thread_local struct {
	float *mem;
	size_t bytes;
	bool on;
} kept;

void qf_tf_scratch_drop(void)
{
	qf_big_free(kept.mem, kept.bytes);
	kept.mem = NULL;
	kept.bytes = 0;
}

bool qf_tf_scratch_keep(bool on)
{
	bool was = kept.on;

	kept.on = on;
	if (!on)
		qf_tf_scratch_drop();
	return was;
}

/* n floats: the kept scratch when it is large enough, else a new one */
static float *scratch_get(size_t n, size_t *bytes)
{
	float *p;

	if (kept.mem && kept.bytes >= n * sizeof(float)) {
		p = kept.mem;
		*bytes = kept.bytes;
		kept.mem = NULL;
		kept.bytes = 0;
		return p;
	}
	qf_tf_scratch_drop();
	*bytes = n * sizeof(float);
	return qf_big_alloc(*bytes);
}

static void scratch_put(float *p, size_t bytes)
{
	if (!kept.on) {
		qf_big_free(p, bytes);
		return;
	}
	qf_tf_scratch_drop();
	kept.mem = p;
	kept.bytes = bytes;
}

static int scratch_alloc(const struct qf_tf_config *c, int64_t ntok,
			 int seqlen, struct layer_scratch *sc)
{
	int64_t qd = (int64_t)c->heads * c->head_dim;
	int64_t kvd = (int64_t)c->kv_heads * c->head_dim;
	int64_t half = c->head_dim / 2;
	int64_t urows = ntok < QF_TF_UP_ROWS ? ntok : QF_TF_UP_ROWS;
	size_t n;
	float *p;

	n = (size_t)(ntok * (c->hidden + qd + 2 * kvd + (int64_t)c->inter) +
		     urows * c->inter + (int64_t)QF_TF_BQ * seqlen +
		     2 * seqlen * half);
	p = scratch_get(n, &sc->bytes);
	if (!p)
		return -ENOMEM;
	sc->mem = p;
	sc->xn = p;
	p += ntok * c->hidden;
	sc->q = p;
	p += ntok * qd;
	sc->k = p;
	p += ntok * kvd;
	sc->v = p;
	p += ntok * kvd;
	sc->g = p;
	p += ntok * c->inter;
	sc->u = p;
	p += urows * c->inter;
	sc->s = p;
	p += (int64_t)QF_TF_BQ * seqlen;
	sc->cs = p;
	p += seqlen * half;
	sc->sn = p;
	return 0;
}

#define HOOK(lin, ptr, in)                                                   \
	do {                                                                 \
		if (hook) {                                                  \
			ret = hook(arg, layer, (lin), (ptr), ntok, (in));    \
			if (ret)                                             \
				goto out_free;                               \
		}                                                            \
	} while (0)

void qf_tf_clamp(float *x, int64_t n, float lim)
{
	int64_t i;

	for (i = 0; i < n; i++)
		x[i] = x[i] > lim ? lim : x[i] < -lim ? -lim : x[i];
}

/*
 * OLMoE: q and k RMSNorm over the whole projection (before the head
 * split), then q, k and v clamped to +-clip_qkv when set.
 */
static void qk_norm_full(const struct qf_tf_config *c,
			 const struct qf_tf_layer *ly, int64_t ntok,
			 struct layer_scratch *sc)
{
	int64_t qd = (int64_t)c->heads * c->head_dim;
	int64_t kvd = (int64_t)c->kv_heads * c->head_dim;

	qf_tf_rmsnorm(sc->q, ly->q_norm, ntok, qd, c->rms_eps, sc->q);
	qf_tf_rmsnorm(sc->k, ly->k_norm, ntok, kvd, c->rms_eps, sc->k);
	if (c->clip_qkv <= 0)
		return;
	qf_tf_clamp(sc->q, ntok * qd, c->clip_qkv);
	qf_tf_clamp(sc->k, ntok * kvd, c->clip_qkv);
	qf_tf_clamp(sc->v, ntok * kvd, c->clip_qkv);
}

/* q/k/v projections, qwen3 q/k norms and RoPE. */
static int attn_inputs(const struct qf_tf_config *c,
		       const struct qf_tf_layer *ly, int layer, int64_t ntok,
		       int seqlen, struct layer_scratch *sc, qf_tf_hook hook,
		       void *arg)
{
	int64_t qd = (int64_t)c->heads * c->head_dim;
	int64_t kvd = (int64_t)c->kv_heads * c->head_dim;
	int ret = 0;

	HOOK(QF_TF_Q, sc->xn, c->hidden);
	qf_tf_linear_run(sc->xn, ntok, c->hidden, ly->w[QF_TF_Q],
			 ly->b[QF_TF_Q], qd, 0.0f, sc->q);
	HOOK(QF_TF_K, sc->xn, c->hidden);
	qf_tf_linear_run(sc->xn, ntok, c->hidden, ly->w[QF_TF_K],
			 ly->b[QF_TF_K], kvd, 0.0f, sc->k);
	HOOK(QF_TF_V, sc->xn, c->hidden);
	qf_tf_linear_run(sc->xn, ntok, c->hidden, ly->w[QF_TF_V],
			 ly->b[QF_TF_V], kvd, 0.0f, sc->v);
	if (qf_tf_flags(c) & QF_ARCH_QK_NORM_FULL)
		qk_norm_full(c, ly, ntok, sc);
	else if (ly->q_norm)
		qf_tf_rmsnorm(sc->q, ly->q_norm, ntok * c->heads, c->head_dim,
			      c->rms_eps, sc->q);
	if (ly->k_norm && !(qf_tf_flags(c) & QF_ARCH_QK_NORM_FULL))
		qf_tf_rmsnorm(sc->k, ly->k_norm, ntok * c->kv_heads,
			      c->head_dim, c->rms_eps, sc->k);
	qf_tf_rope_table(c, seqlen, sc->cs, sc->sn);
	qf_tf_rope_rot(sc->q, ntok, c->heads, c->head_dim, qf_tf_rot_dim(c),
		       seqlen, sc->cs, sc->sn, false);
	qf_tf_rope_rot(sc->k, ntok, c->kv_heads, c->head_dim, qf_tf_rot_dim(c),
		       seqlen, sc->cs, sc->sn, false);
out_free:
	return ret;
}

struct add {
	float *x;
	const float *y;
};

static void add_part(void *arg, int64_t i0, int64_t i1)
{
	const struct add *a = arg;
	int64_t i;

	for (i = i0; i < i1; i++)
		a->x[i] += a->y[i];
}

void qf_tf_out_add(const struct qf_tf_config *c, const float *norm,
		   const float *a, int64_t ntok, int64_t in, const float *w,
		   const float *b, float *tmp, float *x)
{
	struct add ad = { x, tmp };

	if (!norm) {
		qf_tf_linear_run(a, ntok, in, w, b, c->hidden, 1.0f, x);
		return;
	}
	qf_tf_linear_run(a, ntok, in, w, b, c->hidden, 0.0f, tmp);
	qf_tf_rmsnorm(tmp, norm, ntok, c->hidden, c->rms_eps, tmp);
	qf_par_for(add_part, &ad, ntok * c->hidden, PAR_MIN, 1);
}

int qf_tf_layer_forward_win(const struct qf_tf_config *c,
			    const struct qf_tf_layer *ly, int layer, float *x,
			    int nseq, int seqlen, int window, qf_tf_hook hook,
			    void *arg)
{
	return qf_tf_layer_forward_moe(c, ly, layer, x, nseq, seqlen, window,
				       hook, NULL, arg);
}

/*
 * The halves of one decoder layer on x in place: part & QF_TF_ATTN_HALF
 * adds the attention block's output, part & QF_TF_MLP_HALF the MLP's (or
 * the MoE block's).  Streamed calibration runs them apart.
 */
static int layer_half(const struct qf_tf_config *c,
		      const struct qf_tf_layer *ly, int layer, float *x,
		      int nseq, int seqlen, int window, int part,
		      qf_tf_hook hook, qf_tf_expert_hook ehook, void *arg)
{
	int64_t ntok = (int64_t)nseq * seqlen;
	int64_t qd = (int64_t)c->heads * c->head_dim;
	struct layer_scratch sc;
	int64_t t0;
	int ret;

	if (nseq <= 0 || seqlen <= 0 || ntok > INT32_MAX)
		return -EINVAL;
	if (window >= seqlen)
		window = 0;
	ret = scratch_alloc(c, ntok, seqlen, &sc);
	if (ret < 0)
		return ret;
	if (part & QF_TF_ATTN_HALF) {
		qf_tf_rmsnorm(x, ly->in_norm, ntok, c->hidden, c->rms_eps,
			      sc.xn);
		ret = attn_inputs(c, ly, layer, ntok, seqlen, &sc, hook, arg);
		if (ret)
			goto out_free;
		qf_tf_attention(c, sc.q, sc.k, sc.v, nseq, seqlen, window,
				sc.s);
		HOOK(QF_TF_O, sc.q, qd);
		qf_tf_out_add(c, ly->attn_out_norm, sc.q, ntok, qd,
			      ly->w[QF_TF_O], ly->b[QF_TF_O], sc.xn, x);
	}
	ret = 0;
	if (!(part & QF_TF_MLP_HALF))
		goto out_free;
	qf_tf_rmsnorm(x, ly->post_norm, ntok, c->hidden, c->rms_eps, sc.xn);
	if (ly->moe) {
		HOOK(QF_TF_GATE, sc.xn, c->hidden);	/* the block's input */
		ret = qf_tf_moe_forward(c, ly->moe, layer, sc.xn, ntok, x,
					ehook, arg);
		goto out_free;
	}
	HOOK(QF_TF_GATE, sc.xn, c->hidden);
	qf_tf_linear_run(sc.xn, ntok, c->hidden, ly->w[QF_TF_GATE],
			 ly->b[QF_TF_GATE], c->inter, 0.0f, sc.g);
	HOOK(QF_TF_UP, sc.xn, c->hidden);
	for (t0 = 0; t0 < ntok; t0 += QF_TF_UP_ROWS) {
		int64_t nt = ntok - t0 < QF_TF_UP_ROWS ? ntok - t0 :
			     QF_TF_UP_ROWS;

		qf_tf_linear_run(sc.xn + t0 * c->hidden, nt, c->hidden,
				 ly->w[QF_TF_UP], ly->b[QF_TF_UP], c->inter,
				 0.0f, sc.u);
		qf_tf_glu(c, sc.g + t0 * c->inter, sc.u, nt * c->inter);
	}
	HOOK(QF_TF_DOWN, sc.g, c->inter);
	qf_tf_out_add(c, ly->mlp_out_norm, sc.g, ntok, c->inter,
		      ly->w[QF_TF_DOWN], ly->b[QF_TF_DOWN], sc.xn, x);
out_free:
	scratch_put(sc.mem, sc.bytes);
	return ret;
}

int qf_tf_layer_forward_moe(const struct qf_tf_config *c,
			    const struct qf_tf_layer *ly, int layer, float *x,
			    int nseq, int seqlen, int window, qf_tf_hook hook,
			    qf_tf_expert_hook ehook, void *arg)
{
	return layer_half(c, ly, layer, x, nseq, seqlen, window,
			  QF_TF_WHOLE_LAYER, hook, ehook, arg);
}

int64_t qf_tf_layer_scratch_bytes(const struct qf_tf_config *c, int seqlen)
{
	int64_t qd = (int64_t)c->heads * c->head_dim;
	int64_t kvd = (int64_t)c->kv_heads * c->head_dim;

	return (int64_t)sizeof(float) * (c->hidden + qd + 2 * kvd + c->inter) *
	       seqlen;
}

int qf_tf_layer_forward_part(const struct qf_tf_config *c,
			     const struct qf_tf_layer *ly, int layer, float *x,
			     int nseq, int seqlen, int part, qf_tf_hook hook,
			     void *arg)
{
	struct qf_tf_config lc;	/* layer's window and rope base */
	int w;

	qf_tf_config_layer(c, layer, &lc);
	w = lc.sliding_window > 0 && lc.sliding_window < seqlen ?
	    lc.sliding_window : 0;
	return layer_half(&lc, ly, layer, x, nseq, seqlen, w, part, hook,
			  NULL, arg);
}

int qf_tf_layer_forward(const struct qf_tf_config *c,
			const struct qf_tf_layer *ly, int layer, float *x,
			int nseq, int seqlen, qf_tf_hook hook, void *arg)
{
	return qf_tf_layer_forward_part(c, ly, layer, x, nseq, seqlen,
					QF_TF_WHOLE_LAYER, hook, arg);
}
