/*
 * awq_i.h - private to awq.c and awq_reflip.c: the group layout of a row,
 * the error of quantized rows and the step of one rounding flip, which
 * the heuristic rounding correction and GQA ReFlip share.
 */
#ifndef QF_AWQ_I_H
#define QF_AWQ_I_H

#include "method.h"

#define FLIP_TOL 1e-12			/* least relative gain of a flip */

/* Groups of a row and their width (the last one may be shorter). */
static inline void group_span(int64_t in, int group, int64_t *ng, int64_t *gs)
{
	*ng = qf_ngroups(in, group);
	*gs = *ng == 1 ? in : group;
}

/* d = dequantized - w for rows of q [rows, in] with their grids. */
static inline void diff_rows(const float *w, const uint8_t *q, const uint16_t *sc16,
		      const int32_t *zero, int64_t rows, int64_t in,
		      int group, float *d)
{
	int64_t ng, gs, r, j;

	group_span(in, group, &ng, &gs);
	for (r = 0; r < rows; r++) {
		for (j = 0; j < in; j++) {
			int64_t g = r * ng + j / gs;
			float sc = qf_f16_to_f32(sc16[g]);

			d[r * in + j] = sc * ((float)q[r * in + j] -
					      (float)zero[g]) - w[r * in + j];
		}
	}
}

/*
 * The change of the dequantized value when w's level q moves to the other
 * grid neighbour of w / sc + z (up if q rounded down, else down); 0 when
 * that level leaves [0, maxq].
 */
static inline double flip_step(float w, int q, float sc, int32_t z, int maxq)
{
	int dir = (float)q <= w / sc + (float)z ? 1 : -1;

	if (q + dir < 0 || q + dir > maxq)
		return 0;
	return dir * (double)sc;
}

#endif /* QF_AWQ_I_H */
