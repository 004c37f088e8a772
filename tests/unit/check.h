/*
 * check.h - the unit-test harness: CHECK(a, op, b) prints both sides and
 * file:line on failure and counts it; main() returns qf_check_exit().
 * Exit code 77 means skip (meson's convention).
 */
#ifndef QF_CHECK_H
#define QF_CHECK_H

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int qf_check_failed;
static int qf_check_passed;

#define CHECK(a, op, b)                                                      \
	do {                                                                 \
		long long qf_a_ = (long long)(a);                            \
		long long qf_b_ = (long long)(b);                            \
		if (!(qf_a_ op qf_b_)) {                                     \
			fprintf(stderr, "%s:%d: CHECK(%s %s %s) failed: "    \
				"%lld vs %lld\n", __FILE__, __LINE__, #a,    \
				#op, #b, qf_a_, qf_b_);                      \
			qf_check_failed++;                                   \
		} else {                                                     \
			qf_check_passed++;                                   \
		}                                                            \
	} while (0)

#define CHECK_STR(a, b)                                                      \
	do {                                                                 \
		const char *qf_a_ = (a);                                     \
		const char *qf_b_ = (b);                                     \
		if (!qf_a_ || !qf_b_ || strcmp(qf_a_, qf_b_) != 0) {         \
			fprintf(stderr, "%s:%d: CHECK_STR(%s, %s) failed: "  \
				"'%s' vs '%s'\n", __FILE__, __LINE__, #a,    \
				#b, qf_a_ ? qf_a_ : "(null)",                \
				qf_b_ ? qf_b_ : "(null)");                   \
			qf_check_failed++;                                   \
		} else {                                                     \
			qf_check_passed++;                                   \
		}                                                            \
	} while (0)

#define CHECK_NEAR(a, b, tol)                                                \
	do {                                                                 \
		double qf_a_ = (double)(a);                                  \
		double qf_b_ = (double)(b);                                  \
		if (!(qf_a_ - qf_b_ <= (tol) && qf_b_ - qf_a_ <= (tol))) {   \
			fprintf(stderr, "%s:%d: CHECK_NEAR(%s, %s) failed: " \
				"%.9g vs %.9g (tol %g)\n", __FILE__,         \
				__LINE__, #a, #b, qf_a_, qf_b_,              \
				(double)(tol));                              \
			qf_check_failed++;                                   \
		} else {                                                     \
			qf_check_passed++;                                   \
		}                                                            \
	} while (0)

/*
 * key (VmHWM, VmRSS, RssAnon, ...) of this process's status in KiB; with
 * reset, VmHWM is reset instead (clear_refs 5).  -1 when unreadable.
 */
static inline long qf_vm_kb(const char *key, int reset)
{
	FILE *f = fopen(reset ? "/proc/self/clear_refs" : "/proc/self/status",
			reset ? "w" : "r");
	char line[256];
	long v = -1;

	if (f && reset)
		fputs("5", f);
	while (f && !reset && fgets(line, sizeof(line), f))
		if (!strncmp(line, key, strlen(key)) &&
		    sscanf(line + strlen(key), ": %ld", &v) == 1)
			break;
	if (f)
		fclose(f);
	return v;
}

static inline int qf_check_exit(void)
{
	fprintf(stderr, "%d checks passed, %d failed\n", qf_check_passed,
		qf_check_failed);
	return qf_check_failed ? 1 : 0;
}

#endif /* QF_CHECK_H */
