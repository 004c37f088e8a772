/*
 * ggml_grid.c - the weighted grid fits the k-quant block encoders share
 * (ggml_quants.c: Q4_K, Q5_K, Q6_K; ggml_kq23.c: Q2_K, Q3_K): fp16
 * scales, nearest codes, each sub-block's scale (and min) fitted by
 * weighted least squares over candidate grids (ggml's make_qkx2_quants
 * and make_qx_quants ideas, llama.cpp ggml/src/ggml-quants.c), the
 * sub-block scales coded against the block's, and the search of the
 * neighbouring codes.  Apart so that neither codec file needs the other.
 */
#include <math.h>
#include <string.h>

#include "ggml_i.h"

int32_t qf_ggml_half(float f)
{
	uint16_t h = qf_f32_to_f16(f);

	return (h & 0x7c00u) == 0x7c00u ? -1 : h;
}

int qf_ggml_round_clamp(float v, int lo, int hi)
{
	if (!(v > (float)lo))
		return lo;		/* also NaN */
	if (v >= (float)hi)
		return hi;
	return (int)lrintf(v);
}

/*
 * Weighted least-squares fit of x ~ s * l + m, l in 0..nmax, m <= 0
 * (ggml's make_qkx2_quants idea: try grids stretched around the
 * min..max span, solve s and m in closed form for each, keep the least
 * weighted error).  Returns s >= 0; *neg_min = -m >= 0.
 */
float qf_ggml_fit_scale_min(const float *x, const float *w, int n, int nmax,
			    float *neg_min)
{
	float lo = x[0], hi = x[0], sw = 0, sx = 0;
	float best_s, best_m, best_err = INFINITY;
	int i, is;

	for (i = 0; i < n; i++) {
		lo = fminf(lo, x[i]);
		hi = fmaxf(hi, x[i]);
		sw += w[i];
		sx += w[i] * x[i];
	}
	if (lo > 0)
		lo = 0;
	best_s = (hi - lo) / nmax;
	best_m = lo;
	if (!(hi > lo)) {
		*neg_min = -lo;
		return 0;
	}
	for (is = -1; is <= 20; is++) {
		/* is = -1: the plain min..max grid with its own s, m */
		float iscale = (nmax + (is < 0 ? 0 : -1.0f + 0.1f * is)) /
			       (hi - lo);
		float sl = 0, sl2 = 0, sxl = 0, s, m, err = 0, dd;
		uint8_t l[32];		/* n <= 32 */

		for (i = 0; i < n; i++) {
			l[i] = (uint8_t)qf_ggml_round_clamp(iscale *
							    (x[i] - lo), 0,
						    nmax);
			sl += w[i] * l[i];
			sl2 += w[i] * l[i] * l[i];
			sxl += w[i] * l[i] * x[i];
		}
		if (is < 0) {
			s = 1 / iscale;
			m = lo;
		} else {
			dd = sw * sl2 - sl * sl;
			if (!(dd > 0))
				continue;
			s = (sw * sxl - sx * sl) / dd;
			m = (sl2 * sx - sl * sxl) / dd;
			if (m > 0) {
				m = 0;
				s = sxl / sl2;
			}
			if (!(s > 0))
				continue;
		}
		for (i = 0; i < n; i++) {
			float e = s * l[i] + m - x[i];

			err += w[i] * e * e;
		}
		if (err < best_err) {
			best_err = err;
			best_s = s;
			best_m = m;
		}
	}
	*neg_min = -best_m;
	return best_s;
}

float qf_ggml_mean_sq(const float *x, int n)
{
	float s = 0;
	int i;

	for (i = 0; i < n; i++)
		s += x[i] * x[i];
	return s / n;
}

/*
 * Element weights for the fits.  With an importance vector, llama.cpp's
 * imatrix weighting imp * sqrt(sigma2 + x^2) (sigma2 twice the block's
 * mean square).  Without: x^2 for Q6_K (ggml's rmse_type 1), and for
 * Q4_K ggml's quantize_row_q4_K_ref choice rms(sub-block) + |x|, which
 * measured 4-5 % lower error than x^2 on the test models.
 */
void qf_ggml_sub_weights(const float *x, const float *imp, int n, int sub,
			float sigma2, float *w)
{
	int i, j;

	for (i = 0; i < n; i += sub) {
		float av = sub == 32 ? sqrtf(qf_ggml_mean_sq(x + i, sub)) : 0;

		for (j = i; j < i + sub; j++)
			w[j] = imp ? imp[j] * sqrtf(sigma2 + x[j] * x[j]) :
			       sub == 32 ? av + fabsf(x[j]) : x[j] * x[j];
	}
}


int qf_ggml_quant_scales(const float *v, int n, int top, uint8_t *l,
			 uint16_t *h16)
{
	float max = 0, d;
	int32_t h;
	int j;

	for (j = 0; j < n; j++)
		max = fmaxf(max, v[j]);
	h = qf_ggml_half(max / top);
	if (h < 0)
		return QF_ENUMERIC;
	d = qf_f16_to_f32((uint16_t)h);
	for (j = 0; j < n; j++)
		l[j] = (uint8_t)(d > 0 ? qf_ggml_round_clamp(v[j] / d, 0, top) :
				 0);
	*h16 = (uint16_t)h;
	return 0;
}

/* Weighted error of sub-block x [n] on codes 0..top of d, offset dm. */
static float sub_err(const float *x, const float *w, int n, int top, float d,
		     float dm)
{
	float e = 0;
	int i;

	for (i = 0; i < n; i++) {
		int l = d > 0 ? qf_ggml_round_clamp((x[i] + dm) / d, 0, top) :
			0;
		float r = d * l - dm - x[i];

		e += w[i] * r * r;
	}
	return e;
}

/*
 * The neighbouring codes are tried too: rounding the scale and the min
 * independently is not the least error once the grid is coarse.
 */
void qf_ggml_scale_min_codes(const float *x, const float *w, int n, int top,
			     int smax, float d, float dmin, uint8_t *ls,
			     uint8_t *lm)
{
	int a0 = *ls, b0 = *lm, a, b;
	float best = INFINITY, e;

	for (a = a0 - 1; a <= a0 + 1; a++) {
		for (b = b0 - 1; b <= b0 + 1; b++) {
			if (a < 0 || a > smax || b < 0 || b > smax)
				continue;
			e = sub_err(x, w, n, top, d * a, dmin * b);
			if (e < best) {
				best = e;
				*ls = (uint8_t)a;
				*lm = (uint8_t)b;
			}
		}
	}
}

/*
 * Weighted fit of x ~ s * l, l in -nmax..nmax-1 (ggml's make_qx_quants
 * with rmse_type 1): grids with the largest |x| at -(nmax + 0.1 k).
 */
float qf_ggml_fit_scale_sym(const float *x, const float *w, int n, int nmax)
{
	float amax = 0, max = 0, best = -1, scale;
	int i, is;

	for (i = 0; i < n; i++) {
		if (fabsf(x[i]) > amax) {
			amax = fabsf(x[i]);
			max = x[i];
		}
	}
	if (amax < GROUP_MAX_EPS)
		return 0;
	scale = max / -nmax;
	for (is = -9; is <= 9; is++) {
		float iscale = -(nmax + 0.1f * is) / max;
		float slx = 0, sl2 = 0;

		for (i = 0; i < n; i++) {
			int l = qf_ggml_round_clamp(iscale * x[i], -nmax,
						    nmax - 1);

			slx += w[i] * x[i] * l;
			sl2 += w[i] * l * l;
		}
		if (sl2 > 0 && slx * slx > best * sl2) {
			scale = slx / sl2;
			best = scale * slx;
		}
	}
	return scale;
}

float qf_ggml_sym_scales(const float *x, const float *w, int nmax,
			 float *sc)
{
	float amax = 0, max = 0;
	int j;

	for (j = 0; j < 16; j++) {
		sc[j] = qf_ggml_fit_scale_sym(x + 16 * j, w + 16 * j, 16, nmax);
		if (fabsf(sc[j]) > amax) {
			amax = fabsf(sc[j]);
			max = sc[j];
		}
	}
	return max;
}
