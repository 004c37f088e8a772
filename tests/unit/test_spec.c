/*
 * test_spec.c - the variant-name grammar (quant/variant/spec.c).
 *
 * Tables of valid and invalid names, an exhaustive enumeration of spec
 * fields checked against a second, independent validity predicate, and
 * random mutation of valid names: whatever parses must print back to the
 * same bytes.
 */
#include <stdint.h>

#include "check.h"
#include "variant.h"

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

static const char *const valid_names[] = {
	"rtn_w4_g128", "rtn_w8_gc", "rtn_w2_g32", "rtn_w3_g64",
	"rtn_w4_g128_sym", "rtn_w4_g128_fake", "rtn_w8_gc_sym_fake",
	"gptq_w4_g128", "gptq_w3_g128_act", "gptq_w4_g128_sym",
	"gptq_w3_g128_act_sym", "gptq_w4_g128_act_static",
	"gptq_w2_g32_act_static_sym_fake", "gptq_w8_gc@wiki",
	"gptq_w4_g64_fake@c4-en_v2.1", "awq_w4_g128", "awq_w4_g128_reflip",
	"awq_w4_g64_reflip_fake@pile", "awq_w4_gc_fake",
	"awq_w4_g128_reflip_l2", "awq_w4_g128_l2_fake",
	"brecq_w4_g64_attn6", "brecq_w2_g128_attn4_head8",
	"brecq_w8_gc_attn8_head4_sym_fake@wiki", "brecq_w6_g32_attn3_head6",
	"brecq_w3_g64_attn2_sym", "rtn_w4_g128_head8", "rtn_w4_g128_attn8",
	"gptq_w4_g128_head8", "gptq_w4_g64_attn6_head4_act_sym",
	"awq_w4_g128_head4", "awq_w4_g64_head4_reflip_l2",
	"gptq_w3_gc_attn8@wiki", "mixed_static", "mixed_static_fake",
	"mixed_dyn", "mixed_dyn_fake@wiki", "mixed_b4.5", "mixed_b3.25",
	"mixed_b4", "mixed_b2", "mixed_b16", "mixed_b2.05",
	"mixed_b15.99_fake@x", "kq2_k", "kq3_k_s", "kq3_k_m", "kq3_k_l",
	"kq4_k_s", "kq4_k_m", "kq5_k_s", "kq5_k_m", "kq6_k",
	"kq4_k_m@imatrix_wiki", "gptq_w4_g128@A", "kiq4_nl", "kiq4_xs",
	"kiq4_xs@wiki", "kq2_k_awq", "kq4_k_m_awq@wiki", "kiq4_xs_awq",
	"gptq_w3_g128_rot", "gptq_w2_g64_sym_rot_fake@wiki",
	"gptq_w4_g32_static_sym_rot",
	"awq_w4_g128_reflip_l2_rot", "rtn_w4_g32_sym_rot",
	("gptq_w4_g128@0123456789012345678901234567890123456789012345678901"
	 "234567890123"),
};

static const char *const invalid_names[] = {
	"", "_", "@", "@wiki", "rtn", "rtn_", "rtn_w4", "rtn_w4_",
	"rtn_w4_g128_", "_rtn_w4_g128", "rtn__w4_g128", "rtn_w4__g128",
	"RTN_w4_g128", "rtn_W4_g128", "rtn_w4_G128", "rtn_w4_g128 ",
	" rtn_w4_g128", "rtn_w04_g128", "rtn_w5_g128", "rtn_w6_g128",
	"rtn_w16_g128", "rtn_w_g128", "rtn_w4_g16", "rtn_w4_g256",
	"rtn_w4_g0", "rtn_w4_g", "rtn_w4_g0128", "rtn_w4_gC",
	"rtn_g128_w4", "rtn_w4_g128_act", "rtn_w4_g128_reflip",
	"awq_w4_g128_l2_reflip", "gptq_w4_g128_l2", "rtn_w4_g128_l2",
	"gptq_w3_g128_rot_sym", "gptq_w3_g128_fake_rot", "gptq_w3_g128_rot_rot",
	"gptq_w3_g128_act_rot", "gptq_w3_g128_act_static_rot",
	"gptq_w2_g64_act_sym_rot_fake@wiki", "rtn_w4_g32_static_sym_rot",
	"awq_w4_g128_static_rot", "gptq_w4_g32_static",
	"brecq_w4_g64_attn6_rot", "mixed_static_rot", "kq4_k_m_rot",
	"rtn_w4_g128@wiki", "rtn_w4_g128_fake_sym", "rtn_w4_g128_sym_sym",
	"rtn_w4_g128_attn4", "rtn_w4_g128_head16", "rtn_w4_g128_attn0",
	"rtn_w4_g128_head5", "rtn_w4_g128_head8_attn6", "awq_w4_g128_attn8",
	"awq_w4_g128_head8", "awq_w4_g128_head6", "gptq_w4_g128_attn5",
	"mixed_static_head8",
	"gptq_w4_g128_static", "gptq_w4_g128_static_act",
	"gptq_w4_g128_sym_act", "gptq_w4_g128_reflip", "gptq_w4_g128@",
	"gptq_w4_g128@.wiki", "gptq_w4_g128@-wiki", "gptq_w4_g128@wi ki",
	"gptq_w4_g128@wiki@c4", "gptq_w4_g128@wi/ki",
	("gptq_w4_g128@01234567890123456789012345678901234567890123456789"
	 "012345678901234"), "gptq_w4.5_g128", "gptq_w4_g128_desc",
	"awq_w3_g128", "awq_w8_g128", "awq_w4_g128_sym", "awq_w4_g128_act",
	"brecq_w4_g64", "brecq_w4_g64_attn5", "brecq_w5_g64_attn6",
	"brecq_w4_g64_attn06", "brecq_w4_g64_attn6_head16",
	"brecq_w4_g64_attn6_headfp16", "brecq_w4_g64_attn6_head2",
	"brecq_w4_g64_head8_attn6", "brecq_w4_g64_attn6_attn6",
	"brecq_w4_g64_attn", "brecq_w4_g64_attn6_head",
	"mixed", "mixed_", "mixed_b", "mixed_b4.50", "mixed_b4.0",
	"mixed_b04.5", "mixed_b.5", "mixed_b4.", "mixed_b4.555",
	"mixed_b1.99", "mixed_b16.01", "mixed_b17", "mixed_b0.5",
	"mixed_b4..5", "mixed_b4,5", "mixed_static@wiki", "mixed_dyn_sym",
	"mixed_static_w4", "mixed_foo", "mixed_dyn_fake_fake",
	"kq4", "kq4_k_x", "kq4_k_fake", "kq3_k", "kq4_k_l", "kq6_k_s",
	"kq2_k_s", "kq7_k", "kq1_k", "kq04_k_m", "kq4_K_M", "kq4_k_m_",
	"kq_k", "kq4_km", "q4_k_m", "fp16", "original", "gptq", "gptq_w4",
	"kiq4", "kiq4_", "kiq4_nl_s", "kiq3_nl", "kiq4_xl", "kiq4_NL",
	"kq4_k_n", "kiq4_nl_fake", "kiq4_xs_rot", "kiq4_k_xs", "kq4_xs",
	"kiq4_nl_xs", "kiq_nl", "iq4_nl", "kq4_k_m_awq_awq", "kq4_k_awq_m",
	"gptq_w4_g128_awq", "awq_w4_g128_awq", "rtn_w4_g128_awq",
	"kq6_k_awq_fake", "kq3_k_l_rot_awq", "mixed_b4.5_awq",
	"x", "rtn\xff_w4_g128", "rtn_w4_g128\t", "gptq_w4_g128@wiki\n",
	"rtn_w99999_g128", "rtn_w4_g99999999999999999999",
};

struct field_case {
	const char *name;
	enum qf_method method;
	int bits;
	int group;
	int attn_bits;
	int head_bits;
	int avg_bits_x100;
	char kq_size;
	unsigned flags;
	const char *calib;
};

static const struct field_case field_cases[] = {
	{ "rtn_w4_g128", QF_METHOD_RTN, 4, 128, 0, 0, 0, 0, 0, "" },
	{ "rtn_w8_gc_sym", QF_METHOD_RTN, 8, -1, 0, 0, 0, 0, QF_SPEC_SYM,
	  "" },
	{ "gptq_w3_g128_act_sym", QF_METHOD_GPTQ, 3, 128, 0, 0, 0, 0,
	  QF_SPEC_ACT | QF_SPEC_SYM, "" },
	{ "gptq_w4_g32_act_static_fake@c4", QF_METHOD_GPTQ, 4, 32, 0, 0, 0,
	  0, QF_SPEC_ACT | QF_SPEC_STATIC | QF_SPEC_FAKE, "c4" },
	{ "awq_w4_g64_reflip", QF_METHOD_AWQ, 4, 64, 0, 0, 0, 0,
	  QF_SPEC_REFLIP, "" },
	{ "brecq_w4_g64_attn6", QF_METHOD_BRECQ, 4, 64, 6, 16, 0, 0, 0, "" },
	{ "brecq_w2_gc_attn3_head8_sym@wiki", QF_METHOD_BRECQ, 2, -1, 3, 8, 0,
	  0, QF_SPEC_SYM, "wiki" },
	{ "mixed_static_fake", QF_METHOD_MIXED_STATIC, 0, 0, 0, 0, 0, 0,
	  QF_SPEC_FAKE, "" },
	{ "mixed_dyn@wiki", QF_METHOD_MIXED_DYN, 0, 0, 0, 0, 0, 0, 0,
	  "wiki" },
	{ "mixed_b4.5", QF_METHOD_MIXED_BUDGET, 0, 0, 0, 0, 450, 0, 0, "" },
	{ "mixed_b3.25", QF_METHOD_MIXED_BUDGET, 0, 0, 0, 0, 325, 0, 0, "" },
	{ "mixed_b2.05", QF_METHOD_MIXED_BUDGET, 0, 0, 0, 0, 205, 0, 0, "" },
	{ "mixed_b16", QF_METHOD_MIXED_BUDGET, 0, 0, 0, 0, 1600, 0, 0, "" },
	{ "kq4_k_m", QF_METHOD_KQUANT, 4, 0, 0, 0, 0, 'M', 0, "" },
	{ "kq2_k@im", QF_METHOD_KQUANT, 2, 0, 0, 0, 0, 0, 0, "im" },
	{ "kq3_k_l", QF_METHOD_KQUANT, 3, 0, 0, 0, 0, 'L', 0, "" },
	{ "kiq4_nl", QF_METHOD_KQUANT, 4, 0, 0, 0, 0, 'N', 0, "" },
	{ "kiq4_xs@im", QF_METHOD_KQUANT, 4, 0, 0, 0, 0, 'X', 0, "im" },
	{ "kq3_k_l_awq", QF_METHOD_KQUANT, 3, 0, 0, 0, 0, 'L', QF_SPEC_AWQ,
	  "" },
};

/* Invalid names whose message must name the problem. */
static const struct {
	const char *name;
	const char *why;
} why_cases[] = {
	{ "foo_w4_g128", "unknown method" },
	{ "awq_w3_g128", "bits not supported by method" },
	{ "rtn_w4_g16", "group size must be 32, 64, 128 or c" },
	{ "rtn_w4_g128_act", "flag not allowed for method" },
	{ "gptq_w4_g128_sym_act", "flags out of canonical order" },
	{ "gptq_w4_g128@.x", "invalid calibration set name" },
	{ "rtn_w4_g128@wiki", "calibration set not allowed for method" },
	{ "gptq_w4_g128_static", "static groups need act-order (_act or _rot)" },
	{ "gptq_w3_g128_act_rot",
	  "gptq's _rot quantizes with act-order already: leave out _act" },
	{ "mixed_b4.50", "invalid average bits" },
	{ "rtn_w4_g128_", "empty part in name" },
	{ "Rtn_w4_g128", "invalid character in name" },
	{ "brecq_w4_g64_attn6_head16",
	  "default fp16 lm_head is not written" },
};

static bool spec_eq(const struct qf_spec *a, const struct qf_spec *b)
{
	return a->method == b->method && a->bits == b->bits &&
	       a->group == b->group && a->attn_bits == b->attn_bits &&
	       a->head_bits == b->head_bits &&
	       a->avg_bits_x100 == b->avg_bits_x100 &&
	       a->kq_size == b->kq_size && a->flags == b->flags &&
	       strcmp(a->calib, b->calib) == 0;
}

static bool spec_is_zero(const struct qf_spec *s)
{
	static const struct qf_spec zero;

	return memcmp(s, &zero, sizeof(zero)) == 0;
}

static void test_valid(void)
{
	struct qf_spec s;
	const char *why;
	char buf[256];
	size_t i;

	for (i = 0; i < ARRAY_SIZE(valid_names); i++) {
		why = NULL;
		if (qf_spec_parse(valid_names[i], &s, &why) != 0) {
			fprintf(stderr, "'%s' rejected: %s\n", valid_names[i],
				why ? why : "(null)");
			CHECK(1, ==, 0);
			continue;
		}
		CHECK(qf_spec_print(&s, buf, sizeof(buf)), ==,
		      strlen(valid_names[i]));
		CHECK_STR(buf, valid_names[i]);
	}
}

static void test_invalid(void)
{
	struct qf_spec s;
	const char *why;
	size_t i;

	for (i = 0; i < ARRAY_SIZE(invalid_names); i++) {
		why = NULL;
		memset(&s, 0x5a, sizeof(s));
		if (qf_spec_parse(invalid_names[i], &s, &why) != QF_ESPEC)
			fprintf(stderr, "'%s' accepted\n", invalid_names[i]);
		CHECK(qf_spec_parse(invalid_names[i], &s, &why), ==, QF_ESPEC);
		CHECK(why != NULL, ==, 1);
		CHECK(spec_is_zero(&s), ==, 1);
	}
	for (i = 0; i < ARRAY_SIZE(why_cases); i++) {
		why = NULL;
		CHECK(qf_spec_parse(why_cases[i].name, &s, &why), ==,
		      QF_ESPEC);
		CHECK_STR(why, why_cases[i].why);
	}
}

static void test_fields(void)
{
	const struct field_case *c;
	struct qf_spec s;
	size_t i;

	for (i = 0; i < ARRAY_SIZE(field_cases); i++) {
		c = &field_cases[i];
		CHECK(qf_spec_parse(c->name, &s, NULL), ==, 0);
		CHECK(s.method, ==, c->method);
		CHECK(s.bits, ==, c->bits);
		CHECK(s.group, ==, c->group);
		CHECK(s.attn_bits, ==, c->attn_bits);
		CHECK(s.head_bits, ==, c->head_bits);
		CHECK(s.avg_bits_x100, ==, c->avg_bits_x100);
		CHECK(s.kq_size, ==, c->kq_size);
		CHECK(s.flags, ==, c->flags);
		CHECK_STR(s.calib, c->calib);
	}
}

static void test_misc(void)
{
	struct qf_spec s;
	const char *why = NULL;
	char big[300];
	char buf[64];
	int n;

	CHECK_STR(qf_method_name(QF_METHOD_RTN), "rtn");
	CHECK_STR(qf_method_name(QF_METHOD_GPTQ), "gptq");
	CHECK_STR(qf_method_name(QF_METHOD_AWQ), "awq");
	CHECK_STR(qf_method_name(QF_METHOD_BRECQ), "brecq");
	CHECK_STR(qf_method_name(QF_METHOD_MIXED_STATIC), "mixed_static");
	CHECK_STR(qf_method_name(QF_METHOD_MIXED_DYN), "mixed_dyn");
	CHECK_STR(qf_method_name(QF_METHOD_MIXED_BUDGET), "mixed_b");
	CHECK_STR(qf_method_name(QF_METHOD_KQUANT), "kq");

	memset(&s, 0, sizeof(s));
	s.method = QF_METHOD_RTN;
	CHECK(qf_spec_is_calibrated(&s), ==, 0);
	s.method = QF_METHOD_MIXED_STATIC;
	CHECK(qf_spec_is_calibrated(&s), ==, 0);
	s.method = QF_METHOD_GPTQ;
	CHECK(qf_spec_is_calibrated(&s), ==, 1);
	s.method = QF_METHOD_KQUANT;
	CHECK(qf_spec_is_calibrated(&s), ==, 1);
	s.method = QF_METHOD_MIXED_BUDGET;
	CHECK(qf_spec_is_calibrated(&s), ==, 1);

	/* bounded: overlong input is refused without reading past 201 */
	memset(big, 'a', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	CHECK(qf_spec_parse(big, &s, &why), ==, QF_ESPEC);
	CHECK_STR(why, "name too long");
	CHECK(qf_spec_parse(NULL, &s, &why), ==, QF_ESPEC);

	/* print: exact fit, one short, zero cap */
	CHECK(qf_spec_parse("gptq_w4_g128_act@wiki", &s, NULL), ==, 0);
	CHECK(qf_spec_print(&s, buf, 22), ==, 21);
	CHECK_STR(buf, "gptq_w4_g128_act@wiki");
	memset(buf, 'x', sizeof(buf));
	CHECK(qf_spec_print(&s, buf, 21), ==, -ENOSPC);
	CHECK(buf[0], ==, '\0');
	CHECK(qf_spec_print(&s, buf, 0), ==, -ENOSPC);

	/* print of invalid specs */
	s.flags = QF_SPEC_REFLIP;
	CHECK(qf_spec_print(&s, buf, sizeof(buf)), ==, QF_ESPEC);
	CHECK(qf_spec_parse("gptq_w4_g128", &s, NULL), ==, 0);
	memset(s.calib, 'a', sizeof(s.calib));	/* not NUL-terminated */
	CHECK(qf_spec_print(&s, buf, sizeof(buf)), ==, QF_ESPEC);
	CHECK(qf_spec_parse("brecq_w4_g64_attn6", &s, NULL), ==, 0);
	s.head_bits = 0;
	CHECK(qf_spec_print(&s, buf, sizeof(buf)), ==, QF_ESPEC);
	s.head_bits = 16;
	n = qf_spec_print(&s, buf, sizeof(buf));
	CHECK(n, ==, 18);
	s.method = (enum qf_method)8;
	CHECK(qf_spec_print(&s, buf, sizeof(buf)), ==, QF_ESPEC);
	s.method = (enum qf_method)-1;
	CHECK(qf_spec_print(&s, buf, sizeof(buf)), ==, QF_ESPEC);
}

/*
 * The rules again, written independently of spec.c: is this combination
 * of fields a variant?
 */
static bool in_set(int v, const int *set, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (set[i] == v)
			return true;
	return false;
}

static bool ref_valid(const struct qf_spec *s)
{
	static const int rtn_bits[] = { 2, 3, 4, 8 };
	static const int brecq_bits[] = { 2, 3, 4, 6, 8 };
	static const int groups[] = { 32, 64, 128, -1 };
	static const int heads[] = { 4, 6, 8, 16 };
	bool has_calib = s->calib[0] != '\0';
	unsigned f = s->flags;
	bool grouped = false;

	switch (s->method) {
	case QF_METHOD_RTN:
		if (!in_set(s->bits, rtn_bits, 4) || has_calib ||
		    (f & ~(unsigned)(QF_SPEC_SYM | QF_SPEC_FAKE)))
			return false;
		grouped = true;
		break;
	case QF_METHOD_GPTQ:
		if (!in_set(s->bits, rtn_bits, 4) ||
		    (f & (QF_SPEC_REFLIP | QF_SPEC_L2 | QF_SPEC_AWQ)))
			return false;
		if ((f & QF_SPEC_STATIC) && !(f & QF_SPEC_ACT))
			return false;
		grouped = true;
		break;
	case QF_METHOD_AWQ:
		if (s->bits != 4 ||
		    (f & ~(unsigned)(QF_SPEC_REFLIP | QF_SPEC_L2 |
				     QF_SPEC_FAKE)))
			return false;
		grouped = true;
		break;
	case QF_METHOD_BRECQ:
		if (!in_set(s->bits, brecq_bits, 5) ||
		    !in_set(s->attn_bits, brecq_bits, 5) ||
		    !in_set(s->head_bits, heads, 4) ||
		    (f & ~(unsigned)(QF_SPEC_SYM | QF_SPEC_FAKE)))
			return false;
		if (!in_set(s->group, groups, 4) || s->avg_bits_x100 ||
		    s->kq_size)
			return false;
		return true;
	case QF_METHOD_MIXED_STATIC:
	case QF_METHOD_MIXED_DYN:
	case QF_METHOD_MIXED_BUDGET:
		if (s->method == QF_METHOD_MIXED_STATIC && has_calib)
			return false;
		if (s->method == QF_METHOD_MIXED_BUDGET ?
		    s->avg_bits_x100 < 200 || s->avg_bits_x100 > 1600 :
		    s->avg_bits_x100 != 0)
			return false;
		if (f & ~(unsigned)QF_SPEC_FAKE)
			return false;
		return !s->bits && !s->group && !s->attn_bits &&
		       !s->head_bits && !s->kq_size;
	case QF_METHOD_KQUANT:
		if ((f & ~(unsigned)QF_SPEC_AWQ) || s->group || s->attn_bits || s->head_bits ||
		    s->avg_bits_x100)
			return false;
		switch (s->bits) {
		case 2:
		case 6:
			return s->kq_size == 0;
		case 3:
			return s->kq_size == 'S' || s->kq_size == 'M' ||
			       s->kq_size == 'L';
		case 4:	/* and kiq4_nl, kiq4_xs */
			return s->kq_size == 'S' || s->kq_size == 'M' ||
			       s->kq_size == 'N' || s->kq_size == 'X';
		case 5:
			return s->kq_size == 'S' || s->kq_size == 'M';
		default:
			return false;
		}
	default:
		return false;
	}
	/* rtn, gptq, awq: optional attention bits (not the weight bits)
	 * and head bits; awq no attention bits, and 4-bit heads only */
	if (s->attn_bits && (s->method == QF_METHOD_AWQ ||
			     s->attn_bits == s->bits ||
			     !in_set(s->attn_bits, brecq_bits, 5)))
		return false;
	if (s->head_bits && (!in_set(s->head_bits, heads, 3) ||
			     (s->method == QF_METHOD_AWQ && s->head_bits != 4)))
		return false;
	return grouped && in_set(s->group, groups, 4) && !s->avg_bits_x100 &&
	       !s->kq_size;
}

static void test_enumerate(void)
{
	static const int bits[] = { 0, 2, 3, 4, 5, 6, 8 };
	static const int groups[] = { 0, -1, 16, 32, 64, 128, 256 };
	static const int attns[] = { 0, 2, 3, 4, 5, 6, 8 };
	static const int heads[] = { 0, 4, 5, 6, 8, 16 };
	static const char *const calibs[] = { "", "wiki" };
	static const int avgs[] = { 0, 450, 200, 1600, 325, 205, 150, 1700 };
	static const char sizes[] = { 0, 'S', 'M', 'L', 'X', 'N', 'Y' };
	size_t ib, ig, ia, ih, ic, ix, nx;
	long n_valid = 0, n_bad = 0, n_all = 0;
	struct qf_spec s, p;
	char buf[256];
	unsigned f;
	int m, r;

	for (m = -1; m <= 8; m++) {
		/* extra dimension: avg bits or k-quant size, 0 elsewhere */
		nx = m == QF_METHOD_MIXED_BUDGET ? ARRAY_SIZE(avgs) :
		     m == QF_METHOD_KQUANT ? ARRAY_SIZE(sizes) : 3;
	for (ib = 0; ib < ARRAY_SIZE(bits); ib++)
	for (ig = 0; ig < ARRAY_SIZE(groups); ig++)
	for (ia = 0; ia < ARRAY_SIZE(attns); ia++)
	for (ih = 0; ih < ARRAY_SIZE(heads); ih++)
	for (f = 0; f < 128; f++)	/* bit 6 stands for _awq */
	for (ic = 0; ic < ARRAY_SIZE(calibs); ic++)
	for (ix = 0; ix < nx; ix++) {
		memset(&s, 0, sizeof(s));
		s.method = (enum qf_method)m;
		s.bits = bits[ib];
		s.group = groups[ig];
		s.attn_bits = attns[ia];
		s.head_bits = heads[ih];
		s.flags = (f & 63) | (f & 64 ? (unsigned)QF_SPEC_AWQ : 0);
		strcpy(s.calib, calibs[ic]);
		if (m == QF_METHOD_MIXED_BUDGET)
			s.avg_bits_x100 = avgs[ix];
		else if (m == QF_METHOD_KQUANT)
			s.kq_size = sizes[ix];
		else if (ix == 1)
			s.avg_bits_x100 = 450;	/* never valid here */
		else if (ix == 2)
			s.kq_size = 'M';	/* never valid here */
		n_all++;
		r = qf_spec_print(&s, buf, sizeof(buf));
		if (ref_valid(&s)) {
			n_valid++;
			if (r <= 0 || (size_t)r != strlen(buf) ||
			    qf_spec_parse(buf, &p, NULL) != 0 ||
			    !spec_eq(&s, &p) ||
			    qf_spec_is_calibrated(&s) !=
			    (m != QF_METHOD_RTN &&
			     m != QF_METHOD_MIXED_STATIC)) {
				if (n_bad++ < 10)
					fprintf(stderr, "valid spec m=%d b=%d "
						"g=%d a=%d h=%d f=%u c=%s "
						"x=%zu: print %d '%s'\n", m,
						s.bits, s.group, s.attn_bits,
						s.head_bits, f, s.calib, ix,
						r, buf);
			}
		} else if (r != QF_ESPEC) {
			if (n_bad++ < 10)
				fprintf(stderr, "invalid spec m=%d b=%d g=%d "
					"a=%d h=%d f=%u c=%s x=%zu printed "
					"'%s'\n", m, s.bits, s.group,
					s.attn_bits, s.head_bits, f, s.calib,
					ix, buf);
		}
	}
	}
	fprintf(stderr, "enumeration: %ld specs, %ld valid\n", n_all,
		n_valid);
	CHECK(n_bad, ==, 0);
	/*
	 * By hand: rtn 4*4*4, gptq 4*4*12*2, each times 5 attention (none
	 * or one of the four other bits) and 4 head choices (none, 4, 6,
	 * 8); awq 4*8*2*2 (reflip, l2, fake; _head4 or not), no _attn;
	 * brecq 5*4*5*4*4*2,
	 * mixed_static 2, mixed_dyn 2*2, mixed_b 5*2*2, kq 11*2*2 (9 k-quant
	 * mixes, kiq4_nl, kiq4_xs; _awq or not).
	 */
	CHECK(n_valid, ==, 64 * 20 + 384 * 20 + 128 + 3200 + 2 + 4 + 20 + 44);
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

static uint32_t rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return (uint32_t)(rng_state >> 32);
}

static char rand_byte(void)
{
	static const char alpha[] = "abcdefghklmqrstwy0123456789_._@-SML";

	if (rng() % 8 == 0)
		return (char)(1 + rng() % 255);
	return alpha[rng() % (sizeof(alpha) - 1)];
}

static void test_mutate(void)
{
	struct qf_spec s;
	const char *why;
	char buf[256], out[256];
	long n_ok = 0, n_bad = 0;
	size_t len, pos;
	int i, k, edits;

	for (i = 0; i < 200000; i++) {
		strcpy(buf, valid_names[rng() % ARRAY_SIZE(valid_names)]);
		len = strlen(buf);
		edits = 1 + (int)(rng() % 3);
		for (k = 0; k < edits; k++) {
			pos = len ? rng() % (len + 1) : 0;
			switch (rng() % 3) {
			case 0:	/* insert */
				if (len + 1 >= sizeof(buf))
					break;
				memmove(buf + pos + 1, buf + pos,
					len - pos + 1);
				buf[pos] = rand_byte();
				len++;
				break;
			case 1:	/* delete */
				if (pos == len)
					break;
				memmove(buf + pos, buf + pos + 1, len - pos);
				len--;
				break;
			default:	/* replace */
				if (pos == len)
					break;
				buf[pos] = rand_byte();
				break;
			}
		}
		why = NULL;
		if (qf_spec_parse(buf, &s, &why) == 0) {
			n_ok++;
			if (qf_spec_print(&s, out, sizeof(out)) !=
			    (int)strlen(buf) || strcmp(out, buf) != 0) {
				if (n_bad++ < 10)
					fprintf(stderr, "'%s' printed as "
						"'%s'\n", buf, out);
			}
		} else if (!why || !spec_is_zero(&s)) {
			if (n_bad++ < 10)
				fprintf(stderr, "'%s': no message or struct "
					"not zeroed\n", buf);
		}
	}
	fprintf(stderr, "mutation: 200000 names, %ld parsed\n", n_ok);
	CHECK(n_bad, ==, 0);
	CHECK(n_ok, >, 0);
}

int main(void)
{
	CHECK(ARRAY_SIZE(valid_names), >=, 40);
	CHECK(ARRAY_SIZE(invalid_names), >=, 60);
	test_valid();
	test_invalid();
	test_fields();
	test_misc();
	test_enumerate();
	test_mutate();
	return qf_check_exit();
}
