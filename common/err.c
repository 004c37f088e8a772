/*
 * err.c - error names, assertions, small file and time helpers.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common.h"

const char *qf_strerror(int err)
{
	switch (err) {
	case 0:
		return "success";
	case QF_EFORMAT:
		return "malformed input";
	case QF_ECORRUPT:
		return "data changed or corrupt";
	case QF_EUNSUPPORTED:
		return "unsupported";
	case QF_ESPEC:
		return "invalid variant name";
	case QF_ENUMERIC:
		return "non-finite value";
	case QF_ECACHE:
		return "cache failure";
	case QF_ELINK:
		return "link to a file of another owner";
	}
	if (err < 0 && err > -4096)
		return strerror(-err);
	return "unknown error";
}

void qf_assert_fail(const char *expr, const char *file, int line)
{
	fprintf(stderr, "quantfs: assertion failed: %s (%s:%d)\n", expr, file,
		line);
	abort();
}

double qf_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int qf_mkdir_p(const char *dir, unsigned mode)
{
	char tmp[4096];
	char *p;

	if (snprintf(tmp, sizeof(tmp), "%s", dir) >= (int)sizeof(tmp))
		return -ENAMETOOLONG;
	for (p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = 0;
		if (mkdir(tmp, 0755) < 0 && errno != EEXIST)
			return -errno;
		*p = '/';
	}
	if (mkdir(tmp, (mode_t)mode) < 0 && errno != EEXIST)
		return -errno;
	return 0;
}
