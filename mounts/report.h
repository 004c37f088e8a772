/*
 * report.h - `quantfs report`: a model's variants compared on quality,
 * size and speed, as Markdown, JSON and an SVG plot; and the small pure
 * functions behind its figures (unit-tested).
 */
#ifndef QF_REPORT_H
#define QF_REPORT_H

#include <stdbool.h>
#include <stddef.h>

/* quantfs report MNT/<model> ...; returns the exit status. */
int qf_cmd_report(int argc, char **argv);

/*
 * Relative change (v - base) / base: a drop from 50 to 0 is -1 (-100%).
 * NAN when either side was not measured (NAN) or base is 0 (undefined).
 */
double qf_report_rel(double v, double base);

/*
 * "+12.34%", "-100.00%", or "n/a" for NAN, into out (cap bytes).
 */
void qf_report_fmt_pct(double rel, char *out, size_t cap);

/*
 * The Pareto front of n points (bytes[i], ppl[i]), lower being better on
 * both: front[i] is set when no other point is at most as large on both
 * and smaller on one.  Points with a NAN coordinate are never on it and
 * dominate nothing.  Returns the number of points on the front.
 */
int qf_report_pareto(const double *bytes, const double *ppl, size_t n,
		     bool *front);

#endif /* QF_REPORT_H */
