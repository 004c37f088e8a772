/*
 * bench_produce.c - an RTN variant's production on a model directory, as
 * the daemon produces it but without a cache or a mount: every group in
 * the order its model.safetensors holds them, on 1 or 2 threads, into
 *   freed   output buffers malloc'd per group and freed after it (what
 *           fs/var.c's produce() does: malloc hands the next group the
 *           same pages)
 *   kept    buffers malloc'd per group and kept to the end, as fs/stash.c
 *           kept its groups before its arena: every page is new
 *   reused  the same buffers for every group, their pages written before
 * next to the source's read alone: qf_model_read_f32_rows (its checks
 * included: the file unchanged, every value finite) and bare pread of 2
 * MiB + conversion, in the same run.  Issue #23 point 3: the
 * daemon's production rate against its kernels.
 *
 * usage: bench_produce MODEL_DIR [VARIANT [THREADS [REPS]]]
 *        (default rtn_w4_g128, 1 thread, best of 3)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quant.h"

struct run {
	struct qf_variant *v;
	void **keep;			/* [nt]: reused buffers, or NULL */
	bool kept;			/* (keep NULL) free only at the end */
	uint64_t src;			/* bytes of source produced */
	uint64_t out;
};

static int run_all(struct run *r)
{
	void **all = r->kept ? calloc(r->v->nt, sizeof(void *)) : NULL;
	size_t gi, k;
	int ret = r->kept && !all ? -ENOMEM : 0;

	r->src = r->out = 0;
	for (gi = 0; gi < r->v->ng && !ret; gi++) {
		const struct qf_vgroup *g = &r->v->g[gi];
		void *bufs[8] = { 0 };

		for (k = 0; k < g->n; k++) {
			uint64_t len = qf_vtensor_bytes(&r->v->t[g->first + k]);

			bufs[k] = r->keep ? r->keep[g->first + k] :
					    malloc(len ? len : 1);
			r->out += len;
			if (!bufs[k])
				ret = -ENOMEM;
		}
		if (!ret)
			ret = qf_variant_produce(r->v, gi, bufs, NULL);
		for (k = 0; k < g->n && !r->keep; k++) {
			if (all)
				all[g->first + k] = bufs[k];
			else
				free(bufs[k]);
		}
		r->src += g->src_bytes;
	}
	for (k = 0; all && k < r->v->nt; k++)
		free(all[k]);
	free(all);
	return ret;
}

/* The source's weights read as f32 rows, nothing else. */
static int read_all(const struct qf_variant *v, float *buf, size_t cap)
{
	size_t gi;

	for (gi = 0; gi < v->ng; gi++) {
		const struct qf_st_tensor *t = v->g[gi].w->t;
		int64_t in = t->shape[1], r, nr = (int64_t)(cap / in);
		int ret;

		for (r = 0; r < t->shape[0]; r += nr) {
			int64_t n = t->shape[0] - r < nr ? t->shape[0] - r : nr;

			ret = qf_model_read_f32_rows(v->g[gi].w, r, n, buf);
			if (ret < 0)
				return ret;
		}
	}
	return 0;
}

/* The same rows read by bare pread, 2 MiB at a time, then converted. */
static int pread_all(const struct qf_variant *v, float *buf)
{
	static uint16_t raw[1 << 20];
	size_t gi;

	for (gi = 0; gi < v->ng; gi++) {
		const struct qf_model_tensor *w = v->g[gi].w;
		const struct qf_st_tensor *t = w->t;
		int64_t in = t->shape[1], r, nr = (int64_t)((1 << 20) / in);
		uint64_t off = (uint64_t)((const uint8_t *)qf_st_data(w->shard,
				t) - w->shard->map);
		int ret;

		for (r = 0; r < t->shape[0]; r += nr) {
			int64_t n = t->shape[0] - r < nr ? t->shape[0] - r : nr;

			ret = qf_pread_all(w->shard->fd, raw, (size_t)(n * in) * 2,
					   off + (uint64_t)(r * in) * 2);
			if (ret < 0)
				return ret;
			qf_to_f32(t->dtype, raw, (uint64_t)(n * in), buf);
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	const char *name = argc > 2 ? argv[2] : "rtn_w4_g128";
	int threads = argc > 3 ? atoi(argv[3]) : 1;
	int reps = argc > 4 ? atoi(argv[4]) : 3, i;
	struct qf_model *m = NULL;
	struct qf_spec spec;
	struct run r = { 0 };
	const char *why = NULL;
	double best[5] = { 1e30, 1e30, 1e30, 1e30, 1e30 };
	size_t k, cap = 8u << 20;
	float *buf = malloc(cap * sizeof(*buf));
	int ret;

	if (argc < 2 || !buf) {
		fprintf(stderr, "usage: bench_produce MODEL_DIR [VARIANT "
			"[THREADS [REPS]]]\n");
		return 2;
	}
	if (qf_spec_parse(name, &spec, &why) < 0 ||
	    spec.method != QF_METHOD_RTN) {
		fprintf(stderr, "%s: not an RTN variant%s%s\n", name,
			why ? ": " : "", why ? why : "");
		return 2;
	}
	ret = qf_model_open(argv[1], &m);
	if (!ret)
		ret = qf_variant_init(m, &spec, &r.v);
	if (ret < 0) {
		fprintf(stderr, "%s: %s\n", argv[1], qf_strerror(ret));
		return 1;
	}
	qf_variant_threads(threads);
	r.keep = calloc(r.v->nt, sizeof(*r.keep));
	for (k = 0; k < r.v->nt && r.keep; k++)
		r.keep[k] = malloc(qf_vtensor_bytes(&r.v->t[k]) + 1);
	for (i = 0; i < reps && !ret; i++) {
		void **keep = r.keep;
		double t0 = qf_now();

		ret = read_all(r.v, buf, cap);
		t0 = qf_now() - t0;
		best[0] = t0 < best[0] ? t0 : best[0];
		t0 = qf_now();
		ret = ret ? ret : pread_all(r.v, buf);
		t0 = qf_now() - t0;
		best[4] = t0 < best[4] ? t0 : best[4];
		r.keep = NULL;
		t0 = qf_now();
		ret = ret ? ret : run_all(&r);
		t0 = qf_now() - t0;
		best[1] = t0 < best[1] ? t0 : best[1];
		r.kept = true;
		t0 = qf_now();
		ret = ret ? ret : run_all(&r);
		t0 = qf_now() - t0;
		best[2] = t0 < best[2] ? t0 : best[2];
		r.kept = false;
		r.keep = keep;
		/* (their pages written once before the first timed rep) */
		ret = ret || i ? ret : run_all(&r);
		t0 = qf_now();
		ret = ret ? ret : run_all(&r);
		t0 = qf_now() - t0;
		best[3] = t0 < best[3] ? t0 : best[3];
	}
	if (ret < 0) {
		fprintf(stderr, "%s: %s\n", name, qf_strerror(ret));
		return 1;
	}
	printf("%s of %s: %.1f MB of source -> %.1f MB, %d thread(s), "
	       "best of %d\n", name, argv[1], r.src / 1e6, r.out / 1e6,
	       threads, reps);
	printf("  qf_model_read_f32_rows    %6.2f GB/s of source\n",
	       r.src / best[0] / 1e9);
	printf("  bare pread + convert      %6.2f GB/s of source\n",
	       r.src / best[4] / 1e9);
	printf("  produce, buffers freed    %6.2f GB/s of source\n",
	       r.src / best[1] / 1e9);
	printf("  produce, buffers kept     %6.2f GB/s of source\n",
	       r.src / best[2] / 1e9);
	printf("  produce, buffers reused   %6.2f GB/s of source\n",
	       r.src / best[3] / 1e9);
	for (k = 0; k < r.v->nt && r.keep; k++)
		free(r.keep[k]);
	free(r.keep);
	free(buf);
	qf_variant_free(r.v);
	qf_model_close(m);
	return 0;
}
