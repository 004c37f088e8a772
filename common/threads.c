/*
 * threads.c - a few jobs at once: the row splits of the eval's KL
 * divergence and of AWQ's flips (callers bound them by the CPUs).
 */
#include <pthread.h>
#include <stdbool.h>

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
