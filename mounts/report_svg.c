/*
 * report_svg.c - report.svg: perplexity against file bytes, one labelled
 * point per measured row, the Pareto front as a polyline.  Plain SVG 1.1
 * text, no fonts or scripts; labels are placed deterministically so a
 * re-run writes the same bytes.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "report_i.h"

#define SVG_W 760
#define SVG_H 480
#define PL 80				/* plot area margins, px */
#define PR 40
#define PT 40
#define PB 60

struct axis {
	double lo, hi;			/* data range shown */
	bool log;
};

static double ax_pos(const struct axis *a, double v, double p0, double p1)
{
	double t = a->log ? (log(v) - log(a->lo)) / (log(a->hi) - log(a->lo)) :
			    (v - a->lo) / (a->hi - a->lo);

	return p0 + t * (p1 - p0);
}

static double nice_step(double range)
{
	double raw = range / 5, p = pow(10, floor(log10(raw))), f = raw / p;

	return (f < 1.5 ? 1 : f < 3 ? 2 : f < 7 ? 5 : 10) * p;
}

/* Tick values of an axis into t (at most cap); returns how many. */
static int ticks(const struct axis *a, double *t, int cap)
{
	static const int many[] = { 1, 2, 3, 4, 5, 6, 7, 8, 9 };
	static const int few[] = { 1, 2, 5 };
	double step, v;
	int k = 0, e, i;

	if (a->log) {
		bool narrow = a->hi / a->lo < 10;
		const int *m = narrow ? many : few;
		int nm = narrow ? 9 : 3;

		for (e = (int)floor(log10(a->lo)); e <= (int)ceil(log10(a->hi));
		     e++)
			for (i = 0; i < nm && k < cap; i++) {
				v = m[i] * pow(10, e);
				if (v >= a->lo && v <= a->hi)
					t[k++] = v;
			}
		return k;
	}
	step = nice_step(a->hi - a->lo);
	for (v = ceil(a->lo / step) * step; v <= a->hi + step * 1e-9 &&
	     k < cap; v += step)
		t[k++] = fabs(v) < step * 1e-9 ? 0 : v;
	return k;
}

static void axis_fit(struct axis *a, double lo, double hi, bool log_ok)
{
	a->log = log_ok && lo > 0 && hi / lo >= 4;
	if (a->log) {
		a->lo = lo / 1.15;
		a->hi = hi * 1.15;
		return;
	}
	if (hi - lo < 1e-9 * fabs(hi) || hi == lo) {
		double d = fabs(hi) > 0 ? fabs(hi) * 0.05 : 1;

		lo -= d;
		hi += d;
	}
	a->lo = lo - (hi - lo) * 0.08;
	a->hi = hi + (hi - lo) * 0.08;
	if (log_ok && a->lo < 0)
		a->lo = 0;
}

static void xml_text(FILE *f, const char *s)
{
	for (; *s; s++) {
		if (*s == '<')
			fputs("&lt;", f);
		else if (*s == '>')
			fputs("&gt;", f);
		else if (*s == '&')
			fputs("&amp;", f);
		else if (*s == '"')
			fputs("&quot;", f);
		else
			fputc(*s, f);
	}
}

static void svg_axes(FILE *f, const struct axis *ax, const struct axis *ay)
{
	double t[64];
	char lab[32];
	int k, i;

	fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" "
		"fill=\"none\" stroke=\"#444\"/>\n", PL, PT, SVG_W - PL - PR,
		SVG_H - PT - PB);
	k = ticks(ax, t, 64);
	for (i = 0; i < k; i++) {
		double x = ax_pos(ax, t[i], PL, SVG_W - PR);

		if (t[i] >= 1e9)
			snprintf(lab, sizeof(lab), "%g GB", t[i] / 1e9);
		else if (t[i] >= 1e6)
			snprintf(lab, sizeof(lab), "%g MB", t[i] / 1e6);
		else if (t[i] >= 1e3)
			snprintf(lab, sizeof(lab), "%g kB", t[i] / 1e3);
		else
			snprintf(lab, sizeof(lab), "%g B", t[i]);
		fprintf(f, "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" "
			"stroke=\"#ddd\"/>\n<text x=\"%.1f\" y=\"%d\" "
			"text-anchor=\"middle\">%s</text>\n", x, PT, x,
			SVG_H - PB, x, SVG_H - PB + 16, lab);
	}
	k = ticks(ay, t, 64);
	for (i = 0; i < k; i++) {
		double y = ax_pos(ay, t[i], SVG_H - PB, PT);

		fprintf(f, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%d\" y2=\"%.1f\" "
			"stroke=\"#ddd\"/>\n<text x=\"%d\" y=\"%.1f\" "
			"text-anchor=\"end\">%g</text>\n", PL, y, SVG_W - PR,
			y, PL - 6, y + 4, t[i]);
	}
	fprintf(f, "<text x=\"%d\" y=\"%d\" text-anchor=\"middle\">"
		"model file bytes%s</text>\n", (PL + SVG_W - PR) / 2,
		SVG_H - 18, ax->log ? " (log scale)" : "");
	fprintf(f, "<text x=\"18\" y=\"%d\" text-anchor=\"middle\" "
		"transform=\"rotate(-90 18 %d)\">perplexity</text>\n",
		(PT + SVG_H - PB) / 2, (PT + SVG_H - PB) / 2);
}

/* A point's label: its estimated extent, to keep labels apart. */
struct label {
	double x0, x1;			/* px */
	double y;			/* baseline, px */
	bool end;			/* anchored at x1 (left of the point) */
	bool leader;			/* moved away: drawn with a line */
};

static bool label_free(const struct label *l, size_t n,
		       const struct label *c)
{
	size_t i;

	if (c->x0 < PL + 2 || c->x1 > SVG_W - PR - 2 || c->y < PT + 12 ||
	    c->y > SVG_H - PB - 3)
		return false;
	for (i = 0; i < n; i++)
		if (c->x0 < l[i].x1 && l[i].x0 < c->x1 &&
		    fabs(c->y - l[i].y) < 12)
			return false;
	return true;
}

/*
 * Right of the point, else left, else below either side; else further
 * down on the right with a leader line.  Deterministic.
 */
static void label_place(const struct label *placed, size_t n, double x,
			double y, size_t len, struct label *out)
{
	double w = 6.6 * (double)len + 2;
	const double dy[] = { -7, -7, 16, 16 };
	int k;

	for (k = 0; k < 4; k++) {
		bool left = k % 2;

		*out = (struct label){ left ? x - 7 - w : x + 7,
				       left ? x - 7 : x + 7 + w, y + dy[k],
				       left, false };
		if (label_free(placed, n, out))
			return;
	}
	for (k = 1; k < 40; k++) {
		*out = (struct label){ x + 14, x + 14 + w, y - 7 + 13 * k,
				       false, true };
		if (out->x1 > SVG_W - PR - 2) {
			out->x0 = x - 14 - w;
			out->x1 = x - 14;
			out->end = true;
		}
		if (label_free(placed, n, out))
			return;
	}
	*out = (struct label){ x + 7, x + 7 + w, y - 7, false, false };
}

/* The front in the order the plot draws it and report.md lists it. */
size_t qf_report_front_order(const struct row *rows, size_t n, size_t *out)
{
	size_t i, j, k = 0;

	for (i = 0; i < n; i++) {
		if (!rows[i].front)
			continue;
		for (j = k; j > 0 && rows[out[j - 1]].file_bytes >
				     rows[i].file_bytes; j--)
			out[j] = out[j - 1];
		out[j] = i;
		k++;
	}
	return k;
}

int qf_report_svg(const char *path, const char *model, const struct row *rows,
		  size_t n)
{
	double bmin = INFINITY, bmax = -INFINITY, pmin = INFINITY;
	double pmax = -INFINITY;
	struct label *lab = calloc(n, sizeof(*lab));
	size_t *ord = calloc(n, sizeof(*ord)), i, k, nlab = 0;
	struct axis ax, ay;
	FILE *f;

	if (!lab || !ord) {
		free(lab);
		free(ord);
		return -ENOMEM;
	}
	for (i = 0; i < n; i++) {
		if (rows[i].why || !rows[i].sized)
			continue;
		bmin = fmin(bmin, (double)rows[i].file_bytes);
		bmax = fmax(bmax, (double)rows[i].file_bytes);
		pmin = fmin(pmin, rows[i].ppl);
		pmax = fmax(pmax, rows[i].ppl);
	}
	if (bmin > bmax) {
		bmin = pmin = 1;
		bmax = pmax = 2;
	}
	axis_fit(&ax, bmin, bmax, true);
	axis_fit(&ay, pmin, pmax, false);
	f = fopen(path, "w");
	if (!f) {
		free(lab);
		free(ord);
		return -errno;
	}
	fprintf(f, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
		"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" "
		"height=\"%d\" viewBox=\"0 0 %d %d\" "
		"font-family=\"sans-serif\" font-size=\"12\">\n<title>", SVG_W,
		SVG_H, SVG_W, SVG_H);
	xml_text(f, model);
	fprintf(f, ": perplexity against bytes</title>\n<rect width=\"100%%\" "
		"height=\"100%%\" fill=\"white\"/>\n<text x=\"%d\" y=\"24\" "
		"font-size=\"15\">", PL);
	xml_text(f, model);
	fputs(": perplexity against size (red line: Pareto front)</text>\n",
	      f);
	svg_axes(f, &ax, &ay);
	k = qf_report_front_order(rows, n, ord);
	fputs("<polyline class=\"pareto\" fill=\"none\" stroke=\"#c0392b\" "
	      "stroke-width=\"1.5\" points=\"", f);
	for (i = 0; i < k; i++)
		fprintf(f, "%s%.1f,%.1f", i ? " " : "",
			ax_pos(&ax, (double)rows[ord[i]].file_bytes, PL,
			       SVG_W - PR),
			ax_pos(&ay, rows[ord[i]].ppl, SVG_H - PB, PT));
	fputs("\"/>\n", f);
	for (i = 0; i < n; i++) {
		const struct row *r = &rows[i];
		struct label *l = &lab[nlab];
		double x, y;

		if (r->why || !r->sized)
			continue;
		x = ax_pos(&ax, (double)r->file_bytes, PL, SVG_W - PR);
		y = ax_pos(&ay, r->ppl, SVG_H - PB, PT);
		label_place(lab, nlab++, x, y, strlen(r->name), l);
		fprintf(f, "<circle class=\"point\" data-name=\"");
		xml_text(f, r->name);
		fprintf(f, "\" cx=\"%.1f\" cy=\"%.1f\" r=\"4.5\" fill=\"%s\">"
			"<title>", x, y, r->front ? "#c0392b" : "#2c6fbb");
		xml_text(f, r->name);
		fprintf(f, ": perplexity %.4f, %llu bytes</title></circle>\n",
			r->ppl, (unsigned long long)r->file_bytes);
		if (l->leader)	/* a label moved away points at its dot */
			fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" "
				"y2=\"%.1f\" stroke=\"#999\" "
				"stroke-width=\"0.6\"/>\n", x, y,
				l->end ? l->x1 : l->x0, l->y - 4);
		fprintf(f, "<text class=\"label\" x=\"%.1f\" y=\"%.1f\"%s>",
			l->end ? l->x1 : l->x0, l->y,
			l->end ? " text-anchor=\"end\"" : "");
		xml_text(f, r->name);
		fputs("</text>\n", f);
	}
	fputs("</svg>\n", f);
	free(lab);
	free(ord);
	return fclose(f) == 0 ? 0 : -EIO;
}
