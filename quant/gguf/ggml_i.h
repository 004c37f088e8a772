/*
 * ggml_i.h - private to the ggml block codecs: ggml_quants.c (the type
 * table, Q4_0 .. Q8_0, Q4_K, Q5_K, Q6_K), ggml_kq23.c (Q2_K and Q3_K, the
 * 2- and 3-bit k-quants of the kq2_k / kq3_k_* mixes, issue #24),
 * ggml_iq4.c (IQ4_NL and IQ4_XS, the kiq4_nl / kiq4_xs views),
 * ggml_grid.c (the weighted grid fits both use) and ggml_gptq.c.  Byte order and fp16 scales as ggml_quants.c's
 * opening comment says.
 */
#ifndef QF_GGML_I_H
#define QF_GGML_I_H

#include "gguf.h"

#define QK_K 256			/* K-quant super-block */
#define Q2_K_BYTES 84			/* scales[16] qs[64] d dmin */
#define Q3_K_BYTES 110			/* hmask[32] qs[64] scales[12] d */
#define IQ4_NL_BYTES 18			/* d qs[16] */
#define IQ4_XS_BYTES 136		/* d scales_h scales_l[4] qs[128] */
#define GROUP_MAX_EPS 1e-15f		/* as ggml: an all-zero group */

static inline void qf_ggml_put16(uint8_t *p, uint16_t v)
{
	p[0] = (uint8_t)v;
	p[1] = (uint8_t)(v >> 8);
}

static inline uint16_t qf_ggml_get16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (p[1] << 8));
}

/* ggml_grid.c */
/* fp16 of f, or -1 when it is not finite there (a scale out of range). */
int32_t qf_ggml_half(float f);
/* Round to nearest (ties to even, as ggml's nearest_int), clamped. */
int qf_ggml_round_clamp(float v, int lo, int hi);
float qf_ggml_mean_sq(const float *x, int n);
/*
 * Element weights w [n] of the fits: imp * sqrt(sigma2 + x^2) with an
 * importance vector; else rms(sub-block) + |x| for sub 32, x^2 otherwise.
 */
void qf_ggml_sub_weights(const float *x, const float *imp, int n, int sub,
			 float sigma2, float *w);
/* x [n <= 32] ~ s * l - *neg_min, l in 0..nmax (weighted); returns s. */
float qf_ggml_fit_scale_min(const float *x, const float *w, int n, int nmax,
			    float *neg_min);
/* x [n <= 32] ~ s * l, l in -nmax..nmax-1 (weighted); returns s. */
float qf_ggml_fit_scale_sym(const float *x, const float *w, int n, int nmax);
/*
 * The scales sc [16] of the 16 sub-blocks of 16 of x [256] (w [256] their
 * weights) by qf_ggml_fit_scale_sym; returns the one of largest |s|.
 */
float qf_ggml_sym_scales(const float *x, const float *w, int nmax,
			 float *sc);
/*
 * The n non-negative v [] on codes l [] in 0..top of the fp16 scale
 * *h16 = max / top.  0 or QF_ENUMERIC (the scale overflows fp16).
 */
int qf_ggml_quant_scales(const float *v, int n, int top, uint8_t *l,
			 uint16_t *h16);
/*
 * Sub-block x [n] on codes 0..top of scale d * *ls and offset dmin * *lm:
 * the codes *ls, *lm (in 0..smax) given nearest to the fit, moved to the
 * least weighted error among their neighbours.
 */
void qf_ggml_scale_min_codes(const float *x, const float *w, int n, int top,
			     int smax, float d, float dmin, uint8_t *ls,
			     uint8_t *lm);

/* ggml_kq23.c: one super-block of 256, encoded (0 or QF_ENUMERIC) */
int qf_ggml_enc_q2_k_block(const float *x, const float *imp, uint8_t *y);
int qf_ggml_enc_q3_k_block(const float *x, const float *imp, uint8_t *y);
/* ... and nb blocks decoded into y [256 nb] */
void qf_ggml_dec_q2_k(const uint8_t *x, int64_t nb, float *y);
void qf_ggml_dec_q3_k(const uint8_t *x, int64_t nb, float *y);

/* ggml_iq4.c: IQ4_NL (one block of 32) and IQ4_XS (256) */
extern const int8_t qf_ggml_iq4_values[16];	/* kvalues_iq4nl */
/* The index of the table value nearest v (a tie goes up). */
int qf_ggml_iq4_nearest(float v);
/* Codes l of x [32] nearest for scale s; their error, weighted by w [32]
 * (NULL: 1), summed in order. */
double qf_ggml_iq4_recode(const float *x, const float *w, float s,
			  uint8_t *l);
int qf_ggml_enc_iq4_nl_block(const float *x, const float *imp, uint8_t *y);
int qf_ggml_enc_iq4_xs_block(const float *x, const float *imp, uint8_t *y);
/* nb blocks of t (IQ4_NL: 32 elements each, IQ4_XS: 256) into y */
void qf_ggml_dec_iq4(enum qf_ggml_type t, const uint8_t *x, int64_t nb,
		     float *y);

#endif
