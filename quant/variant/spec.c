/*
 * spec.c - the variant-name grammar: parse and print quantization specs.
 *
 * One canonical spelling per variant (quantfs-variants(7)):
 *
 *   <method>_w<bits>_g<group>[_attn<bits>][_head<bits>][_<flag>...][@<calib>]
 *   mixed_static | mixed_dyn | mixed_b<avg>   [_fake][@<calib>]
 *   kq<bits>_k[_s|_m|_l][@<calib>]
 *   kiq4_nl | kiq4_xs   [@<calib>]
 *
 * Parsing is a pure function: no allocation, no global state, no locale,
 * at most SPEC_NAME_MAX bytes looked at.  The syntax is checked here token
 * by token; the rules on field values live in spec_check(), which print
 * shares, so whatever parses prints back to the same bytes.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "variant.h"

#define SPEC_NAME_MAX 200	/* bytes, not counting the NUL */
#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define B(n) (1u << (n))

struct spec_method {
	const char *name;
	unsigned bits;		/* mask of B(bits) allowed; 0 = no _w part */
	unsigned flags;		/* QF_SPEC_* allowed */
	bool calib;		/* takes @calib */
};

static const struct spec_method methods[] = {
	[QF_METHOD_RTN] = { "rtn", B(2) | B(3) | B(4) | B(8),
			    QF_SPEC_SYM | QF_SPEC_ROT | QF_SPEC_FAKE, false },
	[QF_METHOD_GPTQ] = { "gptq", B(2) | B(3) | B(4) | B(8),
			     QF_SPEC_ACT | QF_SPEC_STATIC | QF_SPEC_SYM |
			     QF_SPEC_ROT | QF_SPEC_FAKE, true },
	[QF_METHOD_AWQ] = { "awq", B(4), QF_SPEC_REFLIP | QF_SPEC_L2 |
			    QF_SPEC_ROT | QF_SPEC_FAKE, true },
	[QF_METHOD_BRECQ] = { "brecq", B(2) | B(3) | B(4) | B(6) | B(8),
			      QF_SPEC_SYM | QF_SPEC_FAKE, true },
	[QF_METHOD_MIXED_STATIC] = { "mixed_static", 0, QF_SPEC_FAKE, false },
	[QF_METHOD_MIXED_DYN] = { "mixed_dyn", 0, QF_SPEC_FAKE, true },
	[QF_METHOD_MIXED_BUDGET] = { "mixed_b", 0, QF_SPEC_FAKE, true },
	[QF_METHOD_KQUANT] = { "kq", 0, QF_SPEC_AWQ, true },
};

#define BRECQ_ATTN_BITS (B(2) | B(3) | B(4) | B(6) | B(8))
#define BRECQ_HEAD_BITS (B(4) | B(6) | B(8) | B(16))
#define HEAD_BITS (B(4) | B(6) | B(8))	/* rtn, gptq, awq: 0 = fp16 */
#define MSG_ATTN "attention bits must be 2, 3, 4, 6 or 8"
#define MSG_HEAD "head bits must be 4, 6 or 8"

/* The optional parts after the method, in canonical order. */
enum { OPT_ATTN, OPT_HEAD, OPT_FLAGS };
static const struct {
	const char *name;
	unsigned flag;		/* QF_SPEC_*, 0 for attn/head */
} opts[] = {
	{ "attn", 0 },
	{ "head", 0 },
	{ "act", QF_SPEC_ACT },
	{ "static", QF_SPEC_STATIC },
	{ "sym", QF_SPEC_SYM },
	{ "reflip", QF_SPEC_REFLIP },
	{ "l2", QF_SPEC_L2 },
	{ "rot", QF_SPEC_ROT },
	{ "awq", QF_SPEC_AWQ },
	{ "fake", QF_SPEC_FAKE },
};

/*
 * llama.cpp's k-quant mixes: bits and size suffix; size 'N' and 'X' are
 * its IQ4_NL and IQ4_XS, named kiq4_nl and kiq4_xs.
 */
static const struct {
	int bits;
	char size;
} kq_types[] = {
	{ 2, 0 }, { 3, 'S' }, { 3, 'M' }, { 3, 'L' }, { 4, 'S' },
	{ 4, 'M' }, { 5, 'S' }, { 5, 'M' }, { 6, 0 }, { 4, 'N' },
	{ 4, 'X' },
};

/* A token of the name: bytes between underscores. */
struct spec_tok {
	const char *p;
	size_t n;
};

struct spec_cur {
	const char *pos;
	const char *end;
	bool done;		/* the last token has been handed out */
};

/* Not <ctype.h>: the grammar must not depend on the locale. */
#define is_digit(c) ((c) >= '0' && (c) <= '9')
#define is_lower(c) ((c) >= 'a' && (c) <= 'z')

static bool calib_ok(const char *p, size_t n)
{
	size_t i;

	if (n < 1 || n > QF_SPEC_CALIB_MAX || p[0] == '.' || p[0] == '-')
		return false;
	for (i = 0; i < n; i++) {
		char c = p[i];

		if (!is_lower(c) && !(c >= 'A' && c <= 'Z') && !is_digit(c) &&
		    c != '_' && c != '.' && c != '-')
			return false;
	}
	return true;
}

/* Hands out every token, empty ones included ("a__b", "a_" hold one). */
static bool cur_next(struct spec_cur *c, struct spec_tok *t)
{
	const char *us;

	t->p = c->end;
	t->n = 0;
	if (c->done)
		return false;
	us = memchr(c->pos, '_', (size_t)(c->end - c->pos));
	t->p = c->pos;
	if (!us) {
		t->n = (size_t)(c->end - c->pos);
		c->done = true;
	} else {
		t->n = (size_t)(us - c->pos);
		c->pos = us + 1;
	}
	return true;
}

static bool tok_is(const struct spec_tok *t, const char *s)
{
	return t->n == strlen(s) && memcmp(t->p, s, t->n) == 0;
}

static bool tok_prefix(const struct spec_tok *t, const char *s)
{
	size_t n = strlen(s);

	return t->n > n && memcmp(t->p, s, n) == 0;
}

/* A positive decimal, 1..4 digits, no leading zero. */
static bool parse_num(const char *p, size_t n, int *out)
{
	size_t i;
	int v = 0;

	if (n < 1 || n > 4 || p[0] == '0')
		return false;
	for (i = 0; i < n; i++) {
		if (!is_digit(p[i]))
			return false;
		v = v * 10 + (p[i] - '0');
	}
	*out = v;
	return true;
}

/* "<int>[.<d>[<d>]]", canonical: no leading or trailing zeros. */
static bool parse_avg(const char *p, size_t n, int *x100)
{
	const char *dot = memchr(p, '.', n);
	size_t ni = dot ? (size_t)(dot - p) : n;
	size_t nf = dot ? n - ni - 1 : 0;
	int v;
	int f = 0;

	if (ni > 2 || !parse_num(p, ni, &v))
		return false;
	if (dot && (nf < 1 || nf > 2 || p[n - 1] == '0'))
		return false;
	if (nf >= 1) {
		if (!is_digit(dot[1]))
			return false;
		f = (dot[1] - '0') * 10;
	}
	if (nf == 2) {
		if (!is_digit(dot[2]))
			return false;
		f += dot[2] - '0';
	}
	*x100 = v * 100 + f;
	return true;
}

/*
 * rtn, gptq, awq: _attn<a> and _head<h> are optional (0: the weight bits,
 * fp16), so a name that spells the default is refused.  AutoAWQ's GEMM
 * layout, which awq writes, packs 4 bits only: awq takes _head4 (vLLM's
 * awq_marlin reads it, `lm_head`) and no _attn, whose bits would differ
 * from the weights' 4.
 */
static const char *attn_head_check(const struct qf_spec *s)
{
	if (s->attn_bits && (s->attn_bits < 0 || s->attn_bits > 31 ||
			     !(BRECQ_ATTN_BITS & B(s->attn_bits))))
		return MSG_ATTN;
	if (s->attn_bits && s->attn_bits == s->bits)
		return "attention bits equal to the weight bits are not "
		       "written";
	if (s->head_bits && (s->head_bits < 0 || s->head_bits > 31 ||
			     !(HEAD_BITS & B(s->head_bits))))
		return MSG_HEAD;
	if (s->method == QF_METHOD_AWQ && s->attn_bits)
		return "awq has no _attn: the AWQ GEMM format packs 4 bits "
		       "only, so attention bits other than the weights' "
		       "cannot be written";
	if (s->method == QF_METHOD_AWQ && s->head_bits &&
	    s->head_bits != 4)
		return "awq heads are 4 bits (_head4): the AWQ GEMM format "
		       "packs 4 bits only";
	return NULL;
}

/* The field rules shared by parse and print: NULL when s is valid. */
static const char *spec_check(const struct qf_spec *s)
{
	const struct spec_method *m;
	size_t i, n;

	if ((unsigned)s->method >= ARRAY_SIZE(methods))
		return "unknown method";
	m = &methods[s->method];
	if (s->method == QF_METHOD_KQUANT) {
		for (i = 0; i < ARRAY_SIZE(kq_types); i++)
			if (kq_types[i].bits == s->bits &&
			    kq_types[i].size == s->kq_size)
				break;
		if (i == ARRAY_SIZE(kq_types))
			return "unknown k-quant type";
	} else if (s->kq_size) {
		return "size suffix only for k-quants";
	} else if (m->bits) {
		if (s->bits < 0 || s->bits > 31 || !(m->bits & B(s->bits)))
			return "bits not supported by method";
		if (s->group != 32 && s->group != 64 && s->group != 128 &&
		    s->group != -1)
			return "group size must be 32, 64, 128 or c";
	} else if (s->bits) {
		return "bits not supported by method";
	}
	if (!m->bits && s->group)
		return "group size not allowed for method";
	if (s->method == QF_METHOD_BRECQ) {
		if (!s->attn_bits)
			return "brecq needs attention bits";
		if (s->attn_bits < 0 || s->attn_bits > 31 ||
		    !(BRECQ_ATTN_BITS & B(s->attn_bits)))
			return MSG_ATTN;
		if (s->head_bits < 0 || s->head_bits > 31 ||
		    !(BRECQ_HEAD_BITS & B(s->head_bits)))
			return MSG_HEAD;
	} else if (s->method == QF_METHOD_RTN || s->method == QF_METHOD_GPTQ ||
		   s->method == QF_METHOD_AWQ) {
		const char *msg = attn_head_check(s);

		if (msg)
			return msg;
	} else if (s->attn_bits || s->head_bits) {
		return "attention and head bits only for rtn, gptq, awq and "
		       "brecq";
	}
	if (s->method == QF_METHOD_MIXED_BUDGET) {
		if (s->avg_bits_x100 < 200 || s->avg_bits_x100 > 1600)
			return "average bits must be between 2 and 16";
	} else if (s->avg_bits_x100) {
		return "average bits only for mixed_b";
	}
	if (s->flags & ~m->flags)
		return "flag not allowed for method";
	if ((s->flags & QF_SPEC_ROT) && (s->flags & QF_SPEC_ACT))
		return "gptq's _rot quantizes with act-order already: leave "
		       "out _act";
	if ((s->flags & QF_SPEC_STATIC) && !qf_spec_act_order(s))
		return "static groups need act-order (_act or _rot)";
	n = strnlen(s->calib, sizeof(s->calib));
	if (n == sizeof(s->calib) || (n && !calib_ok(s->calib, n)))
		return "invalid calibration set name";
	if (n && !m->calib)
		return "calibration set not allowed for method";
	return NULL;
}

/*
 * <method> and its fixed parts: w/g, mixed_*, kq<bits>_k[_size],
 * kiq4_nl / kiq4_xs.
 */
static const char *parse_method(struct spec_cur *c, struct qf_spec *s)
{
	struct spec_tok t;
	struct spec_cur peek;
	int m;

	cur_next(c, &t);
	for (m = QF_METHOD_RTN; m <= QF_METHOD_BRECQ; m++)
		if (tok_is(&t, methods[m].name))
			break;
	if (m <= QF_METHOD_BRECQ) {
		s->method = (enum qf_method)m;
		if (!cur_next(c, &t) || !tok_prefix(&t, "w"))
			return "missing weight bits";
		if (!parse_num(t.p + 1, t.n - 1, &s->bits))
			return "bits not supported by method";
		if (!cur_next(c, &t) || !tok_prefix(&t, "g"))
			return "missing group size";
		if (tok_is(&t, "gc"))
			s->group = -1;
		else if (!parse_num(t.p + 1, t.n - 1, &s->group))
			return "group size must be 32, 64, 128 or c";
		if (m == QF_METHOD_BRECQ)
			s->head_bits = 16;
		return NULL;
	}
	if (tok_is(&t, "mixed")) {
		if (!cur_next(c, &t))
			return "unknown method";
		if (tok_is(&t, "static")) {
			s->method = QF_METHOD_MIXED_STATIC;
		} else if (tok_is(&t, "dyn")) {
			s->method = QF_METHOD_MIXED_DYN;
		} else if (t.p[0] == 'b') {
			s->method = QF_METHOD_MIXED_BUDGET;
			if (!parse_avg(t.p + 1, t.n - 1, &s->avg_bits_x100))
				return "invalid average bits";
		} else {
			return "unknown method";
		}
		return NULL;
	}
	if (tok_is(&t, "kiq4")) {	/* kiq4_nl, kiq4_xs */
		s->method = QF_METHOD_KQUANT;
		s->bits = 4;
		if (!cur_next(c, &t) || !(tok_is(&t, "nl") || tok_is(&t, "xs")))
			return "i-quant name must be kiq4_nl or kiq4_xs";
		s->kq_size = t.p[0] == 'n' ? 'N' : 'X';
		return NULL;
	}
	if (!tok_prefix(&t, "kq"))
		return "unknown method";
	s->method = QF_METHOD_KQUANT;
	if (!parse_num(t.p + 2, t.n - 2, &s->bits))
		return "unknown k-quant type";
	if (!cur_next(c, &t) || !tok_is(&t, "k"))
		return "k-quant name must be kq<bits>_k";
	peek = *c;
	if (cur_next(&peek, &t) && t.n == 1 &&
	    (t.p[0] == 's' || t.p[0] == 'm' || t.p[0] == 'l')) {
		s->kq_size = (char)(t.p[0] - 'a' + 'A');
		*c = peek;
	}
	return NULL;
}

/* [_attn<a>][_head<h>][_<flag>...], each at most once, in order. */
static const char *parse_opts(struct spec_cur *c, struct qf_spec *s)
{
	struct spec_tok t;
	size_t i;
	int last = -1;
	int v;

	while (cur_next(c, &t)) {
		if (!t.n)
			return "empty part in name";
		for (i = 0; i < ARRAY_SIZE(opts); i++) {
			if (i < OPT_FLAGS ? tok_prefix(&t, opts[i].name) :
					    tok_is(&t, opts[i].name))
				break;
		}
		if (i == ARRAY_SIZE(opts))
			return "unknown flag";
		if ((int)i == last)
			return "repeated flag";
		if ((int)i < last)
			return "flags out of canonical order";
		last = (int)i;
		if (i == OPT_ATTN || i == OPT_HEAD) {
			if (!parse_num(t.p + 4, t.n - 4, &v))
				return i == OPT_ATTN ? MSG_ATTN : MSG_HEAD;
			if (i == OPT_HEAD && v == 16)
				return "default fp16 lm_head is not written";
			*(i == OPT_ATTN ? &s->attn_bits : &s->head_bits) = v;
		} else {
			s->flags |= opts[i].flag;
		}
	}
	return NULL;
}

static const char *spec_parse(const char *name, struct qf_spec *s)
{
	struct spec_cur c;
	const char *at, *p, *msg;
	size_t len;

	if (!name || !name[0])
		return "empty name";
	len = strnlen(name, SPEC_NAME_MAX + 1);
	if (len > SPEC_NAME_MAX)
		return "name too long";
	at = memchr(name, '@', len);
	c.pos = name;
	c.end = at ? at : name + len;
	c.done = false;
	if (c.end == name)
		return "unknown method";
	for (p = name; p < c.end; p++)
		if (!is_lower(*p) && !is_digit(*p) && *p != '_' && *p != '.')
			return "invalid character in name";
	if (at) {
		if (!calib_ok(at + 1, len - (size_t)(at + 1 - name)))
			return "invalid calibration set name";
		memcpy(s->calib, at + 1, len - (size_t)(at + 1 - name));
	}
	for (p = name; p < c.end; p++)
		if (*p == '_' && (p == name || p + 1 == c.end || p[1] == '_'))
			return "empty part in name";
	msg = parse_method(&c, s);
	if (!msg)
		msg = parse_opts(&c, s);
	return msg;
}

int qf_spec_parse(const char *name, struct qf_spec *out, const char **why)
{
	struct qf_spec s;
	const char *msg;

	memset(&s, 0, sizeof(s));
	if (out)
		memset(out, 0, sizeof(*out));
	msg = spec_parse(name, &s);
	if (!msg)
		msg = spec_check(&s);
	if (msg) {
		if (why)
			*why = msg;
		return QF_ESPEC;
	}
	if (out)
		*out = s;
	return 0;
}

/* Appends to b (256 bytes, always enough for a valid spec) at offset n. */
__attribute__((format(printf, 3, 4)))
static size_t put(char *b, size_t n, const char *fmt, ...)
{
	va_list ap;
	int r;

	va_start(ap, fmt);
	r = vsnprintf(b + n, 256 - n, fmt, ap);
	va_end(ap);
	QF_ASSERT(r >= 0 && n + (size_t)r < 256);
	return n + (size_t)r;
}

int qf_spec_print(const struct qf_spec *s, char *out, size_t cap)
{
	char b[256];
	size_t i, n;
	int f;

	if (out && cap)
		out[0] = '\0';
	if (!s || spec_check(s))
		return QF_ESPEC;
	if (s->method == QF_METHOD_KQUANT && (s->kq_size == 'N' ||
					      s->kq_size == 'X'))
		n = put(b, 0, "kiq%d_%s", s->bits, s->kq_size == 'N' ? "nl" :
			"xs");
	else if (s->method == QF_METHOD_KQUANT)
		n = put(b, 0, "kq%d_k%s", s->bits, !s->kq_size ? "" :
			s->kq_size == 'S' ? "_s" :
			s->kq_size == 'M' ? "_m" : "_l");
	else
		n = put(b, 0, "%s", methods[s->method].name);
	f = s->avg_bits_x100 % 100;
	if (s->method == QF_METHOD_MIXED_BUDGET)
		n = put(b, n, "%d", s->avg_bits_x100 / 100);
	if (f)
		n = f % 10 ? put(b, n, ".%02d", f) : put(b, n, ".%d", f / 10);
	if (methods[s->method].bits)
		n = put(b, n, "_w%d_g", s->bits);
	if (s->group)
		n = s->group < 0 ? put(b, n, "c") : put(b, n, "%d", s->group);
	if (s->attn_bits)
		n = put(b, n, "_attn%d", s->attn_bits);
	if (s->head_bits && s->head_bits != 16)
		n = put(b, n, "_head%d", s->head_bits);
	for (i = OPT_FLAGS; i < ARRAY_SIZE(opts); i++)
		if (s->flags & opts[i].flag)
			n = put(b, n, "_%s", opts[i].name);
	if (s->calib[0])
		n = put(b, n, "@%s", s->calib);
	if (!out || n >= cap)
		return -ENOSPC;
	memcpy(out, b, n + 1);
	return (int)n;
}

bool qf_spec_kq_supported(const struct qf_spec *s)
{
	size_t i;

	for (i = 0; s->method == QF_METHOD_KQUANT &&
	     i < ARRAY_SIZE(kq_types); i++)
		if (kq_types[i].bits == s->bits &&
		    kq_types[i].size == s->kq_size)
			return true;
	return false;
}

bool qf_spec_act_order(const struct qf_spec *s)
{
	return (s->flags & QF_SPEC_ACT) ||
	       (s->method == QF_METHOD_GPTQ && (s->flags & QF_SPEC_ROT));
}

bool qf_spec_static_groups(const struct qf_spec *s)
{
	return s->flags & QF_SPEC_STATIC;
}

bool qf_spec_mixed_measured(const struct qf_spec *s)
{
	return s->method == QF_METHOD_MIXED_DYN ||
	       s->method == QF_METHOD_MIXED_BUDGET;
}

bool qf_spec_is_calibrated(const struct qf_spec *s)
{
	if (!s || (unsigned)s->method >= ARRAY_SIZE(methods))
		return false;
	return methods[s->method].calib;
}

const char *qf_method_name(enum qf_method m)
{
	if ((unsigned)m >= ARRAY_SIZE(methods))
		return "unknown";
	return methods[m].name;
}
