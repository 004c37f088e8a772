/*
 * threads.c - a few jobs at once: the row splits of the eval's KL
 * divergence and of AWQ's flips (callers bound them by the CPUs), and
 * the forward's elementwise loops over rows (qf_par_for).
 */
#include <pthread.h>
#include <stdbool.h>
#include <unistd.h>

#include "common.h"

#define MAX_JOBS 8

void qf_run_jobs(void *(*fn)(void *), void *jobs, size_t size, int n)
{
	pthread_t th[MAX_JOBS];
	bool started[MAX_JOBS] = { false };
	char *j = jobs;
	int i;

	n = n > MAX_JOBS ? MAX_JOBS : n;
	for (i = 0; i < n - 1; i++)
		started[i] = !pthread_create(&th[i], NULL, fn, j + i * size);
	if (n > 0)
		fn(j + (size_t)(n - 1) * size);
	for (i = 0; i < n - 1; i++) {
		if (started[i])
			pthread_join(th[i], NULL);
		else
			fn(j + i * size);
	}
}

struct part {
	void (*fn)(void *arg, int64_t i0, int64_t i1);
	void *arg;
	int64_t i0, i1;
};

static void *part_run(void *arg)
{
	struct part *p = arg;

	p->fn(p->arg, p->i0, p->i1);
	return NULL;
}

void qf_par_for(void (*fn)(void *arg, int64_t i0, int64_t i1), void *arg,
		int64_t n, int64_t min, int64_t align)
{
	static int cpus;
	struct part p[MAX_JOBS];
	int64_t units, k, i;

	if (!__atomic_load_n(&cpus, __ATOMIC_RELAXED)) {
		long c = sysconf(_SC_NPROCESSORS_ONLN);

		__atomic_store_n(&cpus, c < 1 ? 1 : c > MAX_JOBS ? MAX_JOBS :
				 (int)c, __ATOMIC_RELAXED);
	}
	align = align > 0 ? align : 1;
	units = n / align;
	k = min > 0 ? n / min : n;
	k = k < cpus ? k : cpus;
	k = k < units ? k : units;
	if (k <= 1) {
		if (n > 0)
			fn(arg, 0, n);
		return;
	}
	for (i = 0; i < k; i++)
		p[i] = (struct part){ fn, arg, units * i / k * align,
				      i == k - 1 ? n :
				      units * (i + 1) / k * align };
	qf_run_jobs(part_run, p, sizeof(p[0]), (int)k);
}
