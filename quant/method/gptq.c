/*
 * gptq.c - GPTQ (Frantar, Ashkboos, Hoefler, Alistarh 2022) for one
 * linear layer, following the published algorithm and its reference
 * implementation step for step:
 *
 *   dead columns (H_jj = 0): H_jj = 1, W[:, j] = 0
 *   act order: permute columns by descending diag(H)
 *   H += damp * mean(diag(H)) * I;  U = chol(H^-1) (upper)
 *   for each block of `blocksize` columns:
 *     for each column i of the block:
 *       at a group start, grid from W (values as of the block start)
 *       q = quantize(w_i);  err = (w_i - q) / U_ii
 *       W1[:, i:] -= err * U[i, i:]            (inside the block)
 *     W[:, block end:] -= Err1 * U[block, end:] (SGEMM, the lazy update)
 *
 * The grid is quantfs's (qf_rtn_grid: fp16 scales, asymmetric zeros kept
 * >= 1 for the v1 checkpoint).  Cholesky factorizations and the inverse
 * are LAPACK's spotrf/spotri on OpenBLAS.  A row-major symmetric matrix
 * is its own column-major transpose, so 'L' (column-major lower) is the
 * row-major upper triangle: spotrf('L') of H^-1 yields U with
 * H^-1 = U^T U directly.
 *
 * qf_gptq_quantize() runs gptq_prepare(), then one of three column
 * loops: the CUDA backend's (gptq_columns_device), the CPU's
 * (gptq_columns_cpu) or the CUDA kernel's code run on the host
 * (gptq_columns_host, which its tests hold bit for bit to the CPU's),
 * and last gptq_unpermute().
 */
#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qf_cuda.h"
#include "method.h"

extern void spotrf_(const char *uplo, const int *n, float *a, const int *lda,
		    int *info);
extern void spotri_(const char *uplo, const int *n, float *a, const int *lda,
		    int *info);

/*
 * U = upper Cholesky factor of (h + damp I)^-1, row-major, in h (full
 * symmetric).  LAPACK's 'L' on row-major data touches only the upper
 * triangle: a retry with more damping restores it from the lower one
 * and the saved diagonal, instead of from a copy of h.
 */
static int chol_inverse_upper(float *h, int64_t n, float damp0, bool clear)
{
	float *diag = malloc((size_t)n * sizeof(*diag));
	double mean = 0;
	int nn = (int)n, info = 0, attempt;
	int64_t i, j;

	if (!diag)
		return -ENOMEM;
	for (i = 0; i < n; i++) {
		diag[i] = h[i * n + i];
		mean += h[i * n + i];
	}
	mean /= (double)n;
	for (attempt = 0; attempt < 6; attempt++) {
		float damp = (float)(damp0 * mean * pow(10, attempt));

		if (attempt) {
			for (i = 0; i < n; i++)
				for (j = i + 1; j < n; j++)
					h[i * n + j] = h[j * n + i];
			qf_warn("gptq: H not positive definite, damping %g",
				(double)damp);
		}
		for (i = 0; i < n; i++)
			h[i * n + i] = diag[i] + damp;
		spotrf_("L", &nn, h, &nn, &info);
		if (!info)
			spotri_("L", &nn, h, &nn, &info);
		if (!info)
			spotrf_("L", &nn, h, &nn, &info);
		if (!info)
			break;
	}
	free(diag);
	if (info)
		return QF_ENUMERIC;
	/* the row-major upper triangle; the rest cleared, or kept (GPTQ
	 * gives H back from it) */
	for (i = 0; clear && i < n; i++)
		for (j = 0; j < i; j++)
			h[i * n + j] = 0;
	return 0;
}

int qf_gptq_hinv_upper(float *h, int64_t n, float damp)
{
	int64_t j;

	for (j = 0; j < n; j++)		/* dead inputs: unit diagonal */
		if (h[j * n + j] == 0)
			h[j * n + j] = 1;
	return chol_inverse_upper(h, n, damp > 0 ? damp : 0.01f, true);
}

/* Grid of rows [0, out) over columns [a, b) of w (leading dim ld). */
static int find_params(const float *w, int64_t ld, int64_t out, int64_t a,
		       int64_t b, const struct qf_qparams *p, uint16_t *sc16,
		       float *sc, int32_t *zero)
{
	int64_t r, j;
	int ret;

	for (r = 0; r < out; r++) {
		float lo = w[r * ld + a], hi = lo;

		for (j = a; j < b; j++) {
			lo = w[r * ld + j] < lo ? w[r * ld + j] : lo;
			hi = w[r * ld + j] > hi ? w[r * ld + j] : hi;
		}
		ret = qf_rtn_grid(lo, hi, p, &sc16[r], &sc[r], &zero[r]);
		if (ret < 0)
			return ret;
	}
	return 0;
}

static int cmp_diag_desc(const void *a, const void *b, void *arg)
{
	const float *d = arg;
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

	/* stable: ties keep index order */
	if (d[x] != d[y])
		return d[x] > d[y] ? -1 : 1;
	return x < y ? -1 : x > y;
}

/* One layer's run: shapes, options, scratch and the running loss. */
struct gptq_work {
	int64_t out, in;
	int64_t gs;			/* group size; in: one grid per row */
	int64_t ng;			/* groups */
	int64_t bs;			/* block of columns */
	const struct qf_gptq_opts *o;
	int64_t cur;			/* group of the grid in use, CPU loop */
	int64_t *grp;			/* [bs] the grid of each column of the
					 * block, CPU loop */
	double total;			/* sum of err^2 / 2 */
	int64_t *perm;			/* [in] position -> column */
	float *wp;			/* [out, in] permuted W: the caller's
					 * w, permuted in place */
	float *w1;			/* [out, bs] block */
	float *err;			/* [out, bs] */
	float *hp;			/* [in, in] the caller's h permuted in
					 * place, then U above the diagonal
					 * (H below: sym_restore) */
	float *row;			/* [in] scratch */
	int64_t *inv;			/* [in] column -> position */
	uint8_t *seen;			/* [in] */
	bool permuted;			/* hp holds the permuted h */
	uint16_t *gsc16;		/* [ngroups or 1][out] grids */
	float *gsc;
	int32_t *gz;
	uint8_t *qp;			/* [out, in] permuted q */
	float *diag;			/* [in] */
};

static int work_alloc(struct gptq_work *k)
{
	int64_t out = k->out, in = k->in, ng = k->ng, bs = k->bs;

	k->perm = malloc((size_t)in * sizeof(*k->perm));
	k->grp = malloc((size_t)bs * sizeof(*k->grp));
	k->w1 = malloc((size_t)(out * bs) * sizeof(*k->w1));
	k->err = malloc((size_t)(out * bs) * sizeof(*k->err));
	k->row = malloc((size_t)in * sizeof(*k->row));
	k->inv = malloc((size_t)in * sizeof(*k->inv));
	k->seen = malloc((size_t)in);
	k->gsc16 = malloc((size_t)(ng * out) * sizeof(*k->gsc16));
	k->gsc = malloc((size_t)(ng * out) * sizeof(*k->gsc));
	k->gz = malloc((size_t)(ng * out) * sizeof(*k->gz));
	k->qp = malloc((size_t)(out * in));
	k->diag = malloc((size_t)in * sizeof(*k->diag));
	if (!k->perm || !k->grp || !k->w1 || !k->err || !k->row || !k->inv ||
	    !k->seen || !k->gsc16 ||
	    !k->gsc || !k->gz || !k->qp || !k->diag)
		return -ENOMEM;
	return 0;
}

static void work_free(struct gptq_work *k)
{
	free(k->perm);
	free(k->grp);
	free(k->w1);
	free(k->err);
	free(k->row);
	free(k->inv);
	free(k->seen);
	free(k->gsc16);
	free(k->gsc);
	free(k->gz);
	free(k->qp);
	free(k->diag);
}

/* Each row of a [rows, n] in place: a[r][j] = a[r][p[j]] as it was. */
static void permute_cols(float *a, int64_t rows, int64_t n, const int64_t *p,
			 float *row)
{
	int64_t r, j;

	for (r = 0; r < rows; r++) {
		float *ar = a + r * n;

		for (j = 0; j < n; j++)
			row[j] = ar[p[j]];
		memcpy(ar, row, (size_t)n * sizeof(*ar));
	}
}

/*
 * a [n, n] := P a P^T in place, a[i][j] = a[p[i]][p[j]] as it was: the
 * rows along the permutation's cycles, then each row's columns.  Moves
 * the whole matrix twice; needs no copy of it (GPTQ's largest buffer).
 */
static void sym_permute(float *a, int64_t n, const int64_t *p, float *row,
			uint8_t *seen)
{
	size_t rb = (size_t)n * sizeof(*a);
	int64_t i, j;

	memset(seen, 0, (size_t)n);
	for (i = 0; i < n; i++) {
		if (seen[i])
			continue;
		memcpy(row, a + i * n, rb);
		for (j = i, seen[j] = 1; p[j] != i; j = p[j], seen[j] = 1)
			memcpy(a + j * n, a + p[j] * n, rb);
		memcpy(a + j * n, row, rb);
	}
	permute_cols(a, n, n, p, row);
}

/*
 * The caller's h again from hp: the strict lower triangle (Cholesky,
 * inverse and the column loop read and write only the upper one) and
 * the diagonal saved in prepare make the permuted H, which is then
 * permuted back.
 */
static void sym_restore(struct gptq_work *k)
{
	int64_t n = k->in, i, j, i0, j0;
	float *a = k->hp;

	if (!k->permuted)
		return;
	for (i0 = 0; i0 < n; i0 += 64)		/* upper = lower^T, tiled */
		for (j0 = i0; j0 < n; j0 += 64)
			for (i = i0; i < i0 + 64 && i < n; i++)
				for (j = j0 > i + 1 ? j0 : i + 1;
				     j < j0 + 64 && j < n; j++)
					a[i * n + j] = a[j * n + i];
	for (i = 0; i < n; i++) {
		a[i * n + i] = k->diag[k->perm[i]];
		k->inv[k->perm[i]] = i;
	}
	sym_permute(a, n, k->inv, k->row, k->seen);
	k->permuted = false;
}

/*
 * Dead inputs (zero weights, unit diagonal), static grids from the
 * original W, the act-order permutation, the permuted W and H, and the
 * one grid per row when there are no groups.
 */
static int gptq_prepare(struct gptq_work *k, float *w, float *h)
{
	const struct qf_gptq_opts *o = k->o;
	int64_t out = k->out, in = k->in, gs = k->gs, i, j, r;
	int ret;

	/* dead inputs never matter: zero their weights, unit diagonal */
	for (j = 0; j < in; j++) {
		if (h[j * in + j] == 0) {
			h[j * in + j] = 1;
			for (r = 0; r < out; r++)
				w[r * in + j] = 0;
		}
		k->diag[j] = h[j * in + j];
		k->perm[j] = j;
	}
	/* static groups: grids of the original W, in original order */
	if (o->static_groups && gs < in)
		for (i = 0; i < k->ng; i++) {
			int64_t b = (i + 1) * gs < in ? (i + 1) * gs : in;

			ret = find_params(w, in, out, i * gs, b, &o->qp,
					  k->gsc16 + i * out, k->gsc + i * out,
					  k->gz + i * out);
			if (ret < 0)
				return ret;
		}
	if (o->act_order)
		qsort_r(k->perm, (size_t)in, sizeof(*k->perm), cmp_diag_desc,
			k->diag);
	permute_cols(w, out, in, k->perm, k->row);	/* in place */
	k->wp = w;
	sym_permute(h, in, k->perm, k->row, k->seen);
	k->hp = h;
	k->permuted = true;
	k->cur = -1;
	if (gs == in) {		/* one grid per row, from the whole row */
		ret = find_params(k->wp, in, out, 0, in, &o->qp, k->gsc16,
				  k->gsc, k->gz);
		if (ret < 0)
			return ret;
		k->cur = 0;
	}
	return 0;
}

/*
 * The grid of each column of the block [i1, i1 + cnt) into k->grp, made
 * at each group start from W as of the block start (the reference): wp,
 * which the feedback inside the block (in w1) does not change.
 */
static int block_grids(struct gptq_work *k, int64_t i1, int64_t cnt)
{
	int64_t in = k->in, gs = k->gs, i;
	int ret;

	for (i = 0; i < cnt; i++) {
		int64_t col = i1 + i;

		if (gs < in && k->o->static_groups) {
			k->cur = k->perm[col] / gs;
		} else if (gs < in && col % gs == 0) {
			int64_t b = col + gs < in ? col + gs : in;

			k->cur = col / gs;
			ret = find_params(k->wp, in, k->out, col, b, &k->o->qp,
					  k->gsc16 + k->cur * k->out,
					  k->gsc + k->cur * k->out,
					  k->gz + k->cur * k->out);
			if (ret < 0)
				return ret;
		}
		k->grp[i] = k->cur;
	}
	return 0;
}

struct block_arg {
	struct gptq_work *k;
	int64_t i1, cnt;
};

/*
 * Rows [r0, r1) of the block held in w1, column by column: codes, and
 * each column's error fed back into the rest of the block.  A row needs
 * no other row, so the rows are split over the CPUs.
 */
static void block_rows(void *arg, int64_t r0, int64_t r1)
{
	const struct block_arg *a = arg;
	struct gptq_work *k = a->k;
	int64_t in = k->in, cnt = a->cnt, i, r, j;
	int maxq = (1 << k->o->qp.bits) - 1;

	for (i = 0; i < cnt; i++) {
		int64_t col = a->i1 + i, g = k->grp[i];
		float d = k->hp[col * in + col];
		const float *urow = k->hp + col * in + a->i1;

		for (r = r0; r < r1; r++) {
			float sc = k->gsc[g * k->out + r];
			float z = (float)k->gz[g * k->out + r];
			float x = k->w1[r * cnt + i];
			float v = nearbyintf(x / sc) + z;
			float e;

			v = v < 0 ? 0 : v > (float)maxq ? (float)maxq : v;
			k->qp[r * in + col] = (uint8_t)v;
			e = (x - sc * (v - z)) / d;
			k->err[r * cnt + i] = e;
			for (j = i + 1; j < cnt; j++)
				k->w1[r * cnt + j] -= e * urow[j];
		}
	}
}

/* The block [i1, i1 + cnt) on the CPU: codes into qp, errors into err. */
static int gptq_block_cpu(struct gptq_work *k, int64_t i1, int64_t cnt,
			  void *arg)
{
	struct block_arg a = { k, i1, cnt };
	int64_t r, i;
	int ret;

	(void)arg;
	for (r = 0; r < k->out; r++)
		memcpy(k->w1 + r * cnt, k->wp + r * k->in + i1,
		       (size_t)cnt * sizeof(float));
	ret = block_grids(k, i1, cnt);
	if (ret < 0)
		return ret;
	qf_par_for(block_rows, &a, k->out, 64, 1);
	for (i = 0; i < cnt; i++)	/* the loss in the one-thread order */
		for (r = 0; r < k->out; r++) {
			float e = k->err[r * cnt + i];

			k->total += (double)e * e / 2;
		}
	return 0;
}

/*
 * U from H, then each block of columns by block(), each followed by the
 * lazy batch update of the columns after it.
 */
static int gptq_blocks(struct gptq_work *k,
		       int (*block)(struct gptq_work *k, int64_t i1,
				    int64_t cnt, void *arg), void *arg)
{
	const struct qf_gptq_opts *o = k->o;
	int64_t in = k->in, out = k->out, i1;
	double t0, t1;
	int ret;

	t0 = qf_now();
	if (o->u_given) {	/* U above the diagonal, H below as ever */
		int64_t i;

		for (i = 0; i < in; i++)
			memcpy(k->hp + i * in + i, o->u_given + i * in + i,
			       (size_t)(in - i) * sizeof(float));
		ret = 0;
	} else {
		ret = chol_inverse_upper(k->hp, in,
					 o->damp > 0 ? o->damp : 0.01f, false);
	}
	if (o->times)
		o->times->chol += qf_now() - t0;
	if (ret < 0)
		return ret;
	for (i1 = 0; i1 < in; i1 += k->bs) {
		int64_t i2 = i1 + k->bs < in ? i1 + k->bs : in, cnt = i2 - i1;

		t0 = qf_now();
		ret = block(k, i1, cnt, arg);
		if (ret < 0)
			return ret;
		t1 = qf_now();
		/* lazy batch update of the columns after the block */
		if (i2 < in)
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans,
				    (int)out, (int)(in - i2), (int)cnt, -1.0f,
				    k->err, (int)cnt, k->hp + i1 * in + i2,
				    (int)in, 1.0f, k->wp + i2, (int)in);
		if (o->times) {
			o->times->columns += t1 - t0;
			o->times->lazy += qf_now() - t1;
			o->times->lazy_flop += 2.0 * (double)out *
					       (double)(in - i2) * (double)cnt;
		}
	}
	return 0;
}

/* The reference column loop on the CPU. */
static int gptq_columns_cpu(struct gptq_work *k)
{
	return gptq_blocks(k, gptq_block_cpu, NULL);
}

/* The CUDA kernel's column loop, run on the host (kernel_on_host). */
struct gptq_emu {
	const struct qf_cuda_ops *ops;
	struct qf_cuda_gptq g;
	double *rowloss;		/* [out] */
	int bad;			/* a non-positive diagonal */
};

static int gptq_block_host(struct gptq_work *k, int64_t i1, int64_t cnt,
			   void *arg)
{
	struct gptq_emu *e = arg;

	e->ops->gptq_block_host(&e->g, i1, cnt, k->hp, k->err, e->rowloss,
				&e->bad);
	return 0;
}

static int gptq_columns_host(struct gptq_work *k)
{
	struct gptq_emu e = { .ops = qf_backend_cuda_ops(NULL, 0) };
	int64_t r;
	int ret;

	e.rowloss = calloc((size_t)k->out, sizeof(*e.rowloss));
	ret = !e.ops || k->bs > QF_CUDA_GPTQ_BS ? QF_EUNSUPPORTED :
	      e.rowloss ? 0 : -ENOMEM;
	if (ret < 0)
		goto out_free;
	e.g = (struct qf_cuda_gptq){
		.out = k->out, .in = k->in, .gs = k->gs, .bs = k->bs,
		.bits = k->o->qp.bits, .sym = k->o->qp.sym,
		.grids_given = k->gs == k->in || k->o->static_groups,
		.perm = k->perm, .wp = k->wp, .gsc16 = k->gsc16,
		.gsc = k->gsc, .gz = k->gz, .qp = k->qp,
	};
	ret = gptq_blocks(k, gptq_block_host, &e);
	if (ret < 0)
		goto out_free;
	for (r = 0; r < k->out; r++)
		k->total += e.rowloss[r];
	if (e.bad)
		ret = QF_ENUMERIC;
out_free:
	free(e.rowloss);
	return ret;
}

/*
 * The core (Cholesky, column loop, lazy updates) on the CUDA backend.
 * Returns 0 done, 1 H not positive definite, -1 not on the device (the
 * CPU does it).
 */
static int gptq_columns_device(struct gptq_work *k)
{
	const struct qf_gptq_opts *o = k->o;
	struct qf_cuda_gptq g = {
		.out = k->out, .in = k->in, .gs = k->gs, .bs = k->bs,
		.bits = o->qp.bits, .sym = o->qp.sym,
		.grids_given = k->gs == k->in || o->static_groups,
		.perm = k->perm, .damp = o->damp > 0 ? o->damp : 0.01f,
		.wp = k->wp, .hp = k->hp, .gsc16 = k->gsc16, .gsc = k->gsc,
		.gz = k->gz, .qp = k->qp,
	};
	int ret;

	if (qf_backend_current() != QF_BACKEND_CUDA || k->bs > QF_CUDA_GPTQ_BS)
		return -1;
	ret = qf_backend_gptq(&g);
	if (ret < 0)
		return -1;
	if (g.damp_retries)
		qf_warn("gptq: H not positive definite, damping raised %d "
			"time(s) x10", g.damp_retries);
	if (o->times) {
		o->times->chol += g.chol_s;
		o->times->columns += g.loop_s;
		o->times->lazy += g.lazy_s;
		o->times->lazy_flop += g.lazy_flop;
	}
	k->total = g.loss;
	return ret;
}

/*
 * Back to the original column order (groups follow positions): codes,
 * the dequantized weights in w, and the grids by row.
 */
static void gptq_unpermute(const struct gptq_work *k, float *w, uint8_t *q,
			   uint16_t *scale_f16, int32_t *zero, int32_t *g_idx)
{
	int64_t out = k->out, in = k->in, gs = k->gs, ng = k->ng, i, j, r;

	for (j = 0; j < in; j++) {
		int64_t c = k->perm[j];
		int64_t g = gs == in ? 0 :
			    k->o->static_groups ? c / gs : j / gs;

		g_idx[c] = (int32_t)g;
		for (r = 0; r < out; r++) {
			uint8_t v = k->qp[r * in + j];

			q[r * in + c] = v;
			w[r * in + c] = k->gsc[g * out + r] *
					((float)v - (float)k->gz[g * out + r]);
		}
	}
	for (r = 0; r < out; r++)
		for (i = 0; i < ng; i++) {
			scale_f16[r * ng + i] = k->gsc16[i * out + r];
			zero[r * ng + i] = k->gz[i * out + r];
		}
}

int qf_gptq_quantize(float *w, int64_t out, int64_t in, float *h,
		     const struct qf_gptq_opts *o, uint8_t *q,
		     uint16_t *scale_f16, int32_t *zero, int32_t *g_idx,
		     double *loss)
{
	const struct qf_qparams *p = &o->qp;
	struct gptq_work k = {
		.out = out, .in = in, .o = o,
		.gs = p->group <= 0 || p->group >= in ? in : p->group,
		.bs = o->blocksize > 0 ? o->blocksize : 128,
	};
	int ret;

	k.ng = (in + k.gs - 1) / k.gs;
	if (o->u_given && o->act_order)
		return -EINVAL;
	ret = work_alloc(&k);
	if (!ret)
		ret = gptq_prepare(&k, w, h);
	if (ret < 0)
		goto out_free;
	if (o->kernel_on_host) {
		ret = gptq_columns_host(&k);
	} else {
		ret = gptq_columns_device(&k);
		if (ret > 0)
			ret = QF_ENUMERIC;
		else if (ret < 0)	/* not on the device */
			ret = gptq_columns_cpu(&k);
	}
	if (ret < 0)
		goto out_free;
	gptq_unpermute(&k, w, q, scale_f16, zero, g_idx);
	if (loss)
		*loss = k.total;
	ret = 0;
out_free:
	sym_restore(&k);
	work_free(&k);
	return ret;
}

/* ------------------------------------------------------------------ */
/* coordinate descent on the codes                                    */

struct refine {
	const float *h, *w0;
	float *w;
	uint8_t *q;
	const uint16_t *sc;
	const int32_t *z, *gidx;
	int64_t in, ng;
	float lam, maxq;
	int passes;
	int err;			/* -ENOMEM from a part */
};

/* Rows [r0, r1): passes of the cyclic sweep, each row on its own. */
static void refine_rows(void *arg, int64_t r0, int64_t r1)
{
	struct refine *f = arg;
	int64_t in = f->in, r, j, k;
	float *g = malloc((size_t)in * sizeof(*g));	/* one row's */
	int p;

	if (!g) {
		__atomic_store_n(&f->err, -ENOMEM, __ATOMIC_RELAXED);
		return;
	}
	for (r = r0; r < r1; r++) {
		float *w = f->w + r * in;
		uint8_t *q = f->q + r * in;

		/* g = e (H + lam I) for the row's error e = w0 - w */
		cblas_sgemv(CblasRowMajor, CblasTrans, (int)in, (int)in, 1.0f,
			    f->h, (int)in, f->w0 + r * in, 1, 0.0f, g, 1);
		cblas_sgemv(CblasRowMajor, CblasTrans, (int)in, (int)in,
			    -1.0f, f->h, (int)in, w, 1, 1.0f, g, 1);
		for (k = 0; k < in; k++)
			g[k] += f->lam * (f->w0[r * in + k] - w[k]);
		for (p = 0; p < f->passes; p++)
			for (j = 0; j < in; j++) {
				int64_t x = r * f->ng + f->gidx[j];
				float s = qf_f16_to_f32(f->sc[x]);
				float zz = (float)f->z[x];
				float hjj = f->h[j * in + j] + f->lam;
				float t, c, d;

				if (!(f->h[j * in + j] > 0) || !(s > 0))
					continue;	/* a dead input */
				/* the best value for w_j alone, on the grid */
				t = (w[j] + g[j] / hjj) / s + zz;
				c = rintf(t < 0 ? 0 : t > f->maxq ? f->maxq : t);
				if (c == (float)q[j])
					continue;
				d = w[j] - s * (c - zz);	/* e_j grows by d */
				if (2 * d * g[j] + d * d * hjj >= 0)
					continue;
				q[j] = (uint8_t)c;
				w[j] = s * (c - zz);
				cblas_saxpy((int)in, d, f->h + j * in, 1, g, 1);
				g[j] += d * f->lam;
			}
	}
	free(g);
}

int qf_gptq_refine(const float *w0, float *w, int64_t out, int64_t in,
		   const float *h, float damp, int bits, uint8_t *q,
		   const uint16_t *sc, const int32_t *z, const int32_t *gidx,
		   int64_t ng, int passes)
{
	struct refine f = { .h = h, .w0 = w0, .w = w, .q = q, .sc = sc,
			    .z = z, .gidx = gidx, .in = in, .ng = ng,
			    .maxq = (float)((1 << bits) - 1), .passes = passes };
	double md = 0;
	int64_t j;

	if (out <= 0 || in <= 0 || bits < 1 || bits > 8)
		return -EINVAL;
	for (j = 0; j < in; j++)
		md += h[j * in + j];
	f.lam = (float)(damp * md / (double)in);
	qf_par_for(refine_rows, &f, out, 8, 1);
	return f.err;
}
