/*
 * test_safetensors.c - dtype conversions, the safetensors reader on a
 * corpus of broken and valid headers built in memory, the planner's round
 * trip through the reader, and qf_st_open on real files.
 *
 * The half-precision checks compare against reference conversions written
 * with ldexp/frexp/nearbyint on doubles, so a shared bit-twiddling mistake
 * cannot hide in both.
 */
#include <math.h>
#include <unistd.h>

#include "check.h"
#include "io.h"

#define STORIES "/work/shared/data/models/stories260K/model.safetensors"

static uint64_t rng_state = 0x9e3779b97f4a7c15ULL;

/* xorshift64*: reproducible without libc's rand(). */
static uint64_t rng(void)
{
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return rng_state * 0x2545f4914f6cdd1dULL;
}

static float f32_of(uint32_t u)
{
	float f;

	memcpy(&f, &u, sizeof(f));
	return f;
}

/* ------------------------------------------------------------------ */
/* reference conversions                                              */

static double ref_f16_decode(uint16_t h)
{
	int exp = (h >> 10) & 0x1f;
	int mant = h & 0x3ff;
	double v;

	if (exp == 0x1f)
		v = mant ? NAN : INFINITY;
	else if (exp == 0)
		v = ldexp(mant, -24);
	else
		v = ldexp(1024 + mant, exp - 25);
	return (h & 0x8000) ? -v : v;
}

/*
 * Round |f| to a multiple of the f16 quantum at its binade, then encode.
 * nearbyint() rounds ties to even in the default rounding mode.
 */
static uint16_t ref_f32_to_f16(float f)
{
	uint16_t sign = signbit(f) ? 0x8000 : 0;
	double a = fabs((double)f);
	double q;
	int ex;

	if (a >= 65520.0)
		return sign | 0x7c00;
	if (a < ldexp(1.0, -14))
		return sign | (uint16_t)nearbyint(ldexp(a, 24));
	frexp(a, &ex);			/* a in [2^(ex-1), 2^ex) */
	q = nearbyint(ldexp(a, 11 - ex));	/* 1024..2048 */
	return sign | (uint16_t)(((ex - 1 + 15) << 10) + ((int)q - 1024));
}

static uint16_t ref_f32_to_bf16(float f)
{
	uint16_t sign = signbit(f) ? 0x8000 : 0;
	double a = fabs((double)f);
	double q;
	int ex;

	if (a >= ldexp(2.0 - ldexp(1.0, -8), 127))
		return sign | 0x7f80;
	if (a < ldexp(1.0, -126))
		return sign | (uint16_t)nearbyint(ldexp(a, 133));
	frexp(a, &ex);
	q = nearbyint(ldexp(a, 8 - ex));	/* 128..256 */
	return sign | (uint16_t)(((ex - 1 + 127) << 7) + ((int)q - 128));
}

static void test_dtype_names(void)
{
	enum qf_dtype dt;
	int i;

	for (i = 0; i < QF_DT_COUNT; i++) {
		CHECK(qf_dtype_parse(qf_dtype_name((enum qf_dtype)i), &dt),
		      ==, 0);
		CHECK(dt, ==, i);
	}
	CHECK_STR(qf_dtype_name(QF_DT_BF16), "BF16");
	CHECK_STR(qf_dtype_name(QF_DT_BOOL), "BOOL");
	CHECK(qf_dtype_size(QF_DT_BOOL), ==, 1);
	CHECK(qf_dtype_size(QF_DT_F16), ==, 2);
	CHECK(qf_dtype_size(QF_DT_U32), ==, 4);
	CHECK(qf_dtype_size(QF_DT_U64), ==, 8);
	CHECK(qf_dtype_size(QF_DT_F64), ==, 8);
	CHECK(qf_dtype_parse("bf16", &dt), ==, QF_EFORMAT);
	CHECK(qf_dtype_parse("F8_E4M3", &dt), ==, QF_EFORMAT);
	CHECK(qf_dtype_parse("", &dt), ==, QF_EFORMAT);
}

static void test_half_exhaustive(void)
{
	int bad_dec = 0;
	int bad_rt = 0;
	int bad_bf = 0;
	uint32_t h;
	float f;
	double r;

	for (h = 0; h < 0x10000; h++) {
		f = qf_f16_to_f32((uint16_t)h);
		r = ref_f16_decode((uint16_t)h);
		if (isnan(r) ? !isnan(f) : ((double)f != r ||
					    !signbit(f) != !signbit(r)))
			bad_dec++;
		if (isnan(f) ? !isnan(qf_f16_to_f32(qf_f32_to_f16(f))) :
			       qf_f32_to_f16(f) != h)
			bad_rt++;
		f = qf_bf16_to_f32((uint16_t)h);
		if (isnan(f) ? !isnan(qf_bf16_to_f32(qf_f32_to_bf16(f))) :
			       qf_f32_to_bf16(f) != h)
			bad_bf++;
	}
	CHECK(bad_dec, ==, 0);
	CHECK(bad_rt, ==, 0);
	CHECK(bad_bf, ==, 0);
}

static void test_half_random(void)
{
	int bad16 = 0;
	int badbf = 0;
	uint32_t u;
	float f;
	int i;

	for (i = 0; i < 4000000; i++) {
		u = (uint32_t)rng();
		/* Half of them in the f16 range, subnormals included. */
		if (i & 1)
			u = (u & 0x807fffffu) |
			    (uint32_t)(100 + rng() % 45) << 23;
		f = f32_of(u);
		if (isnan(f)) {
			if (!isnan(qf_f16_to_f32(qf_f32_to_f16(f))) ||
			    !isnan(qf_bf16_to_f32(qf_f32_to_bf16(f))))
				bad16++;
			continue;
		}
		if (qf_f32_to_f16(f) != ref_f32_to_f16(f))
			bad16++;
		if (qf_f32_to_bf16(f) != ref_f32_to_bf16(f))
			badbf++;
	}
	CHECK(bad16, ==, 0);
	CHECK(badbf, ==, 0);
}

static void test_half_edges(void)
{
	float min_sub = ldexpf(1.0f, -24);

	CHECK(qf_f32_to_f16(65504.0f), ==, 0x7bff);
	CHECK(qf_f32_to_f16(65519.99f), ==, 0x7bff);
	CHECK(qf_f32_to_f16(65520.0f), ==, 0x7c00);
	CHECK(qf_f32_to_f16(-1e10f), ==, 0xfc00);
	CHECK(qf_f32_to_f16(INFINITY), ==, 0x7c00);
	CHECK(isnan(qf_f16_to_f32(qf_f32_to_f16(NAN))), ==, 1);
	/* A payload only in the low bits must not collapse to Inf. */
	CHECK(isnan(qf_f16_to_f32(qf_f32_to_f16(f32_of(0x7f800001u)))), ==, 1);
	CHECK(isnan(qf_bf16_to_f32(qf_f32_to_bf16(f32_of(0x7f800001u)))), ==,
	      1);
	CHECK(qf_f32_to_f16(ldexpf(1.0f, -25)), ==, 0);	/* tie to even */
	CHECK(qf_f32_to_f16(nextafterf(ldexpf(1.0f, -25), 1.0f)), ==, 1);
	CHECK(qf_f32_to_f16(1.5f * min_sub), ==, 2);
	CHECK(qf_f32_to_f16(2.5f * min_sub), ==, 2);
	CHECK(qf_f32_to_f16(-0.0f), ==, 0x8000);
	CHECK(qf_f32_to_f16(1.0f), ==, 0x3c00);
	CHECK(qf_f32_to_f16(1.0f + ldexpf(1.0f, -11)), ==, 0x3c00);
	CHECK(qf_f32_to_f16(1.0f + 3 * ldexpf(1.0f, -11)), ==, 0x3c02);
	CHECK(qf_f32_to_bf16(1.0f), ==, 0x3f80);
	CHECK(qf_f32_to_bf16(f32_of(0x3f808000u)), ==, 0x3f80);
	CHECK(qf_f32_to_bf16(f32_of(0x3f818000u)), ==, 0x3f82);
	CHECK(qf_f32_to_bf16(f32_of(0x7f7fffffu)), ==, 0x7f80);
	CHECK_NEAR(qf_f16_to_f32(0x0001), min_sub, 0);
	CHECK_NEAR(qf_bf16_to_f32(0xc040), -3.0, 0);
}

static void test_to_f32(void)
{
	const uint8_t f16[] = { 0x00, 0x3c, 0x00, 0xc0 };	/* 1, -2 */
	const uint8_t bf16[] = { 0x80, 0x3f, 0x40, 0x40 };	/* 1, 3 */
	const uint8_t f32[] = { 0, 0, 0x80, 0x3f, 0, 0, 0, 0xc1 }; /* 1, -8 */
	float out[2];

	CHECK(qf_to_f32(QF_DT_F16, f16, 2, out), ==, 0);
	CHECK_NEAR(out[0], 1.0, 0);
	CHECK_NEAR(out[1], -2.0, 0);
	CHECK(qf_to_f32(QF_DT_BF16, bf16, 2, out), ==, 0);
	CHECK_NEAR(out[0], 1.0, 0);
	CHECK_NEAR(out[1], 3.0, 0);
	/* Unaligned source: tensors in a map need not be aligned. */
	{
		uint8_t un[9];

		memcpy(un + 1, f32, sizeof(f32));
		CHECK(qf_to_f32(QF_DT_F32, un + 1, 2, out), ==, 0);
	}
	CHECK_NEAR(out[0], 1.0, 0);
	CHECK_NEAR(out[1], -8.0, 0);
	CHECK(qf_to_f32(QF_DT_I32, f32, 2, out), ==, QF_EUNSUPPORTED);
}

/* ------------------------------------------------------------------ */
/* in-memory files                                                    */

/* 8-byte length + json + data_len zero bytes, in an exact-size buffer. */
static uint8_t *mkfile(const char *json, size_t jlen, size_t data_len,
		       size_t *len)
{
	uint8_t *p;
	int i;

	*len = 8 + jlen + data_len;
	p = calloc(1, *len);
	if (!p)
		abort();
	for (i = 0; i < 8; i++)
		p[i] = (uint8_t)((uint64_t)jlen >> (8 * i));
	memcpy(p + 8, json, jlen);
	return p;
}

static int bad_count;

static void expect_bad_raw(const void *buf, size_t avail, uint64_t file_len,
			   const char *label)
{
	struct qf_st_header h;
	const char *why = NULL;
	int ret;

	ret = qf_st_parse(buf, avail, file_len, &h, &why);
	/* QF_TEST_VERBOSE shows which rule refused each case. */
	if (getenv("QF_TEST_VERBOSE"))
		fprintf(stderr, "%-36s %s\n", label, why ? why : "?");
	if (ret != QF_EFORMAT || !why)
		fprintf(stderr, "broken case '%s' not refused (%d)\n", label,
			ret);
	CHECK(ret, ==, QF_EFORMAT);
	CHECK(why != NULL, ==, 1);
	CHECK(h.t == NULL && h.n == 0 && h.metadata == NULL, ==, 1);
	if (ret == 0)
		qf_st_header_free(&h);
	bad_count++;
}

/* jlen 0 means strlen(json). */
static void expect_bad_n(const char *json, size_t jlen, size_t data_len,
			 const char *label)
{
	uint8_t *p;
	size_t len;

	p = mkfile(json, jlen ? jlen : strlen(json), data_len, &len);
	expect_bad_raw(p, len, len, label);
	free(p);
}

static void expect_bad(const char *json, size_t data_len, const char *label)
{
	expect_bad_n(json, 0, data_len, label);
}

/* Parse a valid file; the caller frees h. */
static int parse_ok(const char *json, size_t data_len,
		    struct qf_st_header *h)
{
	const char *why = NULL;
	uint8_t *p;
	size_t len;
	int ret;

	p = mkfile(json, strlen(json), data_len, &len);
	ret = qf_st_parse(p, len, len, h, &why);
	if (ret)
		fprintf(stderr, "valid case refused: %s: %s\n", json,
			why ? why : "?");
	free(p);
	return ret;
}

#define T_F32(name, shape, b, e)                                             \
	"\"" name "\":{\"dtype\":\"F32\",\"shape\":" shape                   \
	",\"data_offsets\":[" #b "," #e "]}"

static void test_broken_length(void)
{
	uint8_t small[5] = { 2, 0, 0, 0, 0 };
	uint8_t buf[64];
	uint64_t n;
	int i;

	expect_bad_raw(small, sizeof(small), sizeof(small), "5-byte file");
	expect_bad_raw(small, 0, 0, "empty file");
	/* Header length says 100, the file holds 50. */
	memset(buf, ' ', sizeof(buf));
	memcpy(buf, "\x64\0\0\0\0\0\0\0{}", 10);
	expect_bad_raw(buf, 50, 50, "header cut");
	/* File long enough but not all of the header was read. */
	expect_bad_raw(buf, 50, 1000, "header beyond avail");
	/* Header length larger than the file, and absurdly large. */
	for (i = 0; i < 3; i++) {
		n = i == 0 ? 1000 : i == 1 ? 100000001ULL : UINT64_MAX;
		memset(buf, 0, 8);
		for (int k = 0; k < 8; k++)
			buf[k] = (uint8_t)(n >> (8 * k));
		expect_bad_raw(buf, sizeof(buf), sizeof(buf),
			       "header length too large");
		expect_bad_raw(buf, sizeof(buf), UINT64_MAX,
			       "header length too large, huge file");
	}
	memset(buf, 0, 8);
	expect_bad_raw(buf, sizeof(buf), sizeof(buf), "header length zero");
}

static void test_broken_json(void)
{
	char name[4200];

	expect_bad("{\"a\":", 0, "unterminated json");
	expect_bad("{", 0, "lone brace");
	expect_bad("{}}", 0, "two closers");
	expect_bad("[1,2]", 0, "array header");
	expect_bad("\"str\"", 0, "string header");
	expect_bad(" {}", 0, "leading space");
	expect_bad("\xef\xbb\xbf{}", 0, "bom");
	expect_bad("{} x", 0, "trailing garbage");
	expect_bad("{}\n", 0, "trailing newline");
	expect_bad_n("{}\0", 3, 0, "trailing nul");
	expect_bad("{\"a\":1}", 0, "entry not an object");
	expect_bad("{\"a\":[]}", 0, "entry is an array");
	expect_bad("{\"\xff\":{}}", 0, "invalid utf-8");
	expect_bad("{\"\xc0\x80\":{}}", 0, "overlong utf-8");
	expect_bad("{\"\xed\xa0\x80\":{}}", 0, "surrogate utf-8");
	expect_bad("{\"\xf4\x90\x80\x80\":{}}", 0, "utf-8 past u+10ffff");
	expect_bad("{\"\xe2\x82\":{}}", 0, "truncated utf-8");
	expect_bad("{\"a\tb\":{}}", 0, "raw tab in string");
	expect_bad("{\x01}", 0, "control byte outside string");
	expect_bad("{" T_F32("a\\u0000b", "[1]", 0, 4) "}", 4,
		   "nul escape in name");
	expect_bad("{" T_F32("", "[1]", 0, 4) "}", 4, "empty name");
	memset(name, 'n', sizeof(name));
	memcpy(name, "{\"", 2);
	snprintf(name + 4099, sizeof(name) - 4099,
		 "\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[0,1]}}");
	expect_bad(name, 1, "name of 4097 bytes");
	snprintf(name + 4098, sizeof(name) - 4098,
		 "\":{\"dtype\":\"U8\",\"shape\":[],\"data_offsets\":[0,1]}}");
	{
		struct qf_st_header h;

		/* 4096 bytes is still fine. */
		CHECK(parse_ok(name, 1, &h), ==, 0);
		qf_st_header_free(&h);
	}
}

static void test_broken_entries(void)
{
	expect_bad("{\"a\":{\"dtype\":\"F12\",\"shape\":[1],"
		   "\"data_offsets\":[0,4]}}", 4, "unknown dtype");
	expect_bad("{\"a\":{\"dtype\":4,\"shape\":[1],"
		   "\"data_offsets\":[0,4]}}", 4, "dtype not a string");
	expect_bad("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4,
		   "no dtype");
	expect_bad("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4,
		   "no shape");
	expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4,
		   "no data_offsets");
	expect_bad("{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],"
		   "\"data_offsets\":[0,4]}}", 4, "dtype twice");
	expect_bad("{" T_F32("a", "1", 0, 4) "}", 4, "shape not an array");
	expect_bad("{" T_F32("a", "[-1]", 0, 4) "}", 4, "negative dim");
	expect_bad("{" T_F32("a", "[1.5]", 0, 4) "}", 4, "fractional dim");
	expect_bad("{" T_F32("a", "[1e300]", 0, 4) "}", 4, "huge dim");
	expect_bad("{" T_F32("a", "[9007199254740993]", 0, 4) "}", 4,
		   "dim above 2^53");
	expect_bad("{" T_F32("a", "[\"1\"]", 0, 4) "}", 4, "string dim");
	expect_bad("{" T_F32("a", "[null]", 0, 4) "}", 4, "null dim");
	expect_bad("{" T_F32("a", "[1,1,1,1,1,1,1,1,1]", 0, 4) "}", 4,
		   "9 dimensions");
	expect_bad("{" T_F32("a", "[4294967296,4294967296]", 0, 4) "}", 4,
		   "numel overflow");
	expect_bad("{" T_F32("a", "[4294967296,2147483648]", 0, 4) "}", 4,
		   "numel*size overflow");
	expect_bad("{" T_F32("a", "[2]", 0, 4) "}", 4, "span too short");
	expect_bad("{" T_F32("a", "[1]", 0, 8) "}", 8, "span too long");
	expect_bad("{" T_F32("a", "[1]", 4, 0) "}", 4, "end before begin");
	expect_bad("{" T_F32("a", "[1]", -4, 0) "}", 4, "negative offset");
	expect_bad("{" T_F32("a", "[1]", 0.5, 4.5) "}", 4,
		   "fractional offsets");
	expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],"
		   "\"data_offsets\":[4]}}", 4, "one offset");
	expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],"
		   "\"data_offsets\":[0,4,8]}}", 4, "three offsets");
	expect_bad("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],"
		   "\"data_offsets\":{\"b\":0,\"e\":4}}}", 4,
		   "offsets object");
}

static void test_broken_layout(void)
{
	expect_bad("{" T_F32("a", "[2]", 0, 8) "," T_F32("b", "[2]", 4, 12)
		   "}", 12, "overlapping spans");
	expect_bad("{" T_F32("a", "[1]", 0, 4) "," T_F32("b", "[1]", 8, 12)
		   "}", 12, "hole between spans");
	expect_bad("{" T_F32("a", "[1]", 4, 8) "}", 8, "first not at 0");
	expect_bad("{" T_F32("a", "[1]", 0, 4) "}", 8, "not fully covered");
	expect_bad("{}", 4, "data with no tensors");
	expect_bad("{" T_F32("a", "[2]", 0, 8) "}", 4, "data past the end");
	expect_bad("{" T_F32("a", "[1]", 0, 4) "," T_F32("a", "[1]", 4, 8)
		   "}", 8, "duplicate names");
	expect_bad("{" T_F32("a", "[1]", 0, 4) "," T_F32("a", "[1]", 0, 4)
		   "}", 4, "duplicate names, same span");
	expect_bad("{" T_F32("a", "[2]", 0, 8) "," T_F32("z", "[0]", 4, 4)
		   "}", 8, "empty tensor inside another");
	expect_bad("{" T_F32("a", "[1]", 0, 4) "," T_F32("z", "[0]", 8, 8)
		   "}", 4, "empty tensor past the end");
	expect_bad("{\"__metadata__\":{\"a\":1}}", 0, "metadata number");
	expect_bad("{\"__metadata__\":{\"a\":null}}", 0, "metadata null");
	expect_bad("{\"__metadata__\":{\"a\":{}}}", 0, "metadata object");
	expect_bad("{\"__metadata__\":\"pt\"}", 0, "metadata not an object");
	expect_bad("{\"__metadata__\":{},\"__metadata__\":{}}", 0,
		   "metadata twice");
	expect_bad("{\"__metadata__\":{\"a\":\"1\",\"a\":\"2\"}}", 0,
		   "metadata key twice");
}

static void test_valid(void)
{
	const struct qf_st_tensor *t;
	struct qf_st_header h;
	uint8_t *p;
	size_t len;
	const char *why;

	CHECK(parse_ok("{}", 0, &h), ==, 0);
	CHECK(h.n, ==, 0);
	CHECK(h.data_off, ==, 10);
	CHECK(h.data_len, ==, 0);
	CHECK(h.metadata == NULL, ==, 1);
	CHECK(qf_st_find(&h, "a") == NULL, ==, 1);
	qf_st_header_free(&h);

	CHECK(parse_ok("{ }     ", 0, &h), ==, 0);
	qf_st_header_free(&h);

	CHECK(parse_ok("{" T_F32("z", "[0,5]", 0, 0) "}", 0, &h), ==, 0);
	CHECK(h.n, ==, 1);
	CHECK(qf_st_numel(&h.t[0]), ==, 0);
	CHECK(h.t[0].ndim, ==, 2);
	CHECK(h.t[0].shape[1], ==, 5);
	qf_st_header_free(&h);

	/* Zero-sized tensors at the start, between two others, at the end. */
	CHECK(parse_ok("{" T_F32("b", "[1]", 4, 8) "," T_F32("z1", "[0]", 4, 4)
		       "," T_F32("a", "[1]", 0, 4) "," T_F32("z0", "[0]", 0, 0)
		       "," T_F32("z2", "[3,0]", 8, 8) "}", 8, &h), ==, 0);
	CHECK(h.n, ==, 5);
	CHECK_STR(h.t[0].name, "a");
	CHECK_STR(h.t[4].name, "z2");
	t = qf_st_find(&h, "b");
	CHECK(t != NULL, ==, 1);
	if (t) {
		CHECK(t->begin, ==, 4);
		CHECK(t->nbytes, ==, 4);
	}
	CHECK(qf_st_find(&h, "z1") == &h.t[3], ==, 1);
	CHECK(qf_st_find(&h, "c") == NULL, ==, 1);
	CHECK(qf_st_find(&h, "") == NULL, ==, 1);
	qf_st_header_free(&h);

	CHECK(parse_ok("{\"__metadata__\":{\"format\":\"pt\",\"k\":\"v\\\"\"},"
		       "\"s\":{\"dtype\":\"F64\",\"shape\":[],"
		       "\"data_offsets\":[0,8],\"extra\":[1]}}   ", 8, &h),
	      ==, 0);
	CHECK(h.n, ==, 1);
	CHECK_STR(h.metadata, "{\"format\":\"pt\",\"k\":\"v\\\"\"}");
	CHECK(h.t[0].ndim, ==, 0);
	CHECK(qf_st_numel(&h.t[0]), ==, 1);
	CHECK(h.t[0].dtype, ==, QF_DT_F64);
	qf_st_header_free(&h);

	/* UTF-8 names and escapes are fine. */
	CHECK(parse_ok("{" T_F32("\xc3\xa9\\u00e9\xf0\x9f\x98\x80\\n", "[1]",
				 0, 4) "}", 4, &h), ==, 0);
	CHECK_STR(h.t[0].name, "\xc3\xa9\xc3\xa9\xf0\x9f\x98\x80\n");
	qf_st_header_free(&h);

	/* Only the header need be in memory: avail = 8 + N. */
	p = mkfile("{" T_F32("a", "[4]", 0, 16) "}",
		   strlen("{" T_F32("a", "[4]", 0, 16) "}"), 0, &len);
	why = NULL;
	CHECK(qf_st_parse(p, len, len + 16, &h, &why), ==, 0);
	CHECK(h.data_len, ==, 16);
	qf_st_header_free(&h);
	CHECK(qf_st_parse(p, len - 1, len + 16, &h, &why), ==, QF_EFORMAT);
	free(p);
	qf_st_header_free(NULL);
}

/* ------------------------------------------------------------------ */
/* planner                                                            */

static const char *const name_parts[] = {
	"model.layers.0.mlp", "lm_head", "q\"uote", "back\\slash",
	"\xc3\xa9t\xc3\xa9",
	"tab\there", "a", "b", "embed", "x.scales", "x.qweight", "\xe2\x82\xac",
};

static void plan_round_trip(int round)
{
	struct qf_st_plan_entry e[24];
	const struct qf_st_tensor *t;
	char names[24][64];
	const char *kv[4];
	struct qf_buf hdr = QF_BUF_INIT;
	struct qf_st_header h;
	const char *why = NULL;
	size_t n = rng() % 24;
	size_t n_meta = rng() % 3;
	uint64_t total = 0;
	uint64_t hlen = 0;
	uint8_t *file;
	size_t size;
	size_t i;
	int k;

	memset(e, 0, sizeof(e));
	for (i = 0; i < n; i++) {
		snprintf(names[i], sizeof(names[i]), "%s.%zu",
			 name_parts[rng() % (sizeof(name_parts) /
					     sizeof(name_parts[0]))], i);
		e[i].name = names[i];
		e[i].dtype = (enum qf_dtype)(rng() % QF_DT_COUNT);
		e[i].ndim = (int)(rng() % 5);
		for (k = 0; k < e[i].ndim; k++)
			e[i].shape[k] = (int64_t)(rng() % 8);
		e[i].user = names[i];
	}
	kv[0] = rng() % 2 ? "format" : "producer";
	kv[1] = "mlx";
	kv[2] = "quantfs";
	kv[3] = "0.1 \"x\"";
	CHECK(qf_st_plan(e, n, kv, n_meta, &hdr, &total), ==, 0);
	CHECK(hdr.len % 8, ==, 0);
	CHECK(hdr.len >= 10, ==, 1);
	for (i = 0; i < 8; i++)
		hlen |= (uint64_t)(uint8_t)hdr.data[i] << (8 * i);
	CHECK(hlen, ==, hdr.len - 8);
	/* Padding is spaces after the closing brace, nothing else. */
	for (i = hdr.len; i > 8 && hdr.data[i - 1] == ' '; i--)
		;
	CHECK(hdr.data[i - 1], ==, '}');
	CHECK(hdr.len - i < 8, ==, 1);

	size = hdr.len + (size_t)total;
	file = calloc(1, size ? size : 1);
	if (!file)
		abort();
	memcpy(file, hdr.data, hdr.len);
	CHECK(qf_st_parse(file, size, size, &h, &why), ==, 0);
	if (why)
		fprintf(stderr, "plan round %d: %s\n", round, why);
	CHECK(h.n, ==, n);
	CHECK(h.data_len, ==, total);
	CHECK(h.metadata != NULL && strncmp(h.metadata, "{\"format\":\"", 11)
	      == 0, ==, 1);
	for (i = 0; i < n && h.t; i++) {
		/* Planner order: descending dtype size, then name. */
		if (i > 0) {
			size_t sa = qf_dtype_size(e[i - 1].dtype);
			size_t sb = qf_dtype_size(e[i].dtype);

			CHECK(sa > sb || (sa == sb && strcmp(e[i - 1].name,
							     e[i].name) < 0),
			      ==, 1);
			CHECK(e[i].begin, ==, e[i - 1].begin + e[i - 1].nbytes);
		}
		CHECK(e[i].user == e[i].name, ==, 1);
		CHECK((hdr.len + e[i].begin) % qf_dtype_size(e[i].dtype), ==,
		      0);
		t = qf_st_find(&h, e[i].name);
		CHECK(t != NULL, ==, 1);
		if (!t)
			continue;
		CHECK(t->dtype, ==, e[i].dtype);
		CHECK(t->ndim, ==, e[i].ndim);
		CHECK(memcmp(t->shape, e[i].shape,
			     (size_t)e[i].ndim * sizeof(int64_t)), ==, 0);
		CHECK(t->begin, ==, e[i].begin);
		CHECK(t->nbytes, ==, e[i].nbytes);
	}
	qf_st_header_free(&h);
	free(file);
	qf_buf_release(&hdr);
}

static void test_plan(void)
{
	struct qf_st_plan_entry e[2];
	struct qf_buf hdr = QF_BUF_INIT;
	struct qf_st_header h;
	const char *kv[4] = { "format", "mlx", "k", "v" };
	uint64_t total = 0;
	int i;

	for (i = 0; i < 300; i++)
		plan_round_trip(i);

	/* Exact bytes of a small plan, and the format override. */
	memset(e, 0, sizeof(e));
	e[0].name = "w";
	e[0].dtype = QF_DT_U8;
	e[0].ndim = 1;
	e[0].shape[0] = 3;
	e[1].name = "s";
	e[1].dtype = QF_DT_BF16;
	e[1].ndim = 2;
	e[1].shape[0] = 2;
	e[1].shape[1] = 1;
	CHECK(qf_st_plan(e, 2, kv, 2, &hdr, &total), ==, 0);
	CHECK(total, ==, 7);
	CHECK_STR(e[0].name, "s");
	CHECK_STR(hdr.data + 8, "{\"__metadata__\":{\"format\":\"mlx\","
		  "\"k\":\"v\"},\"s\":{\"dtype\":\"BF16\",\"shape\":[2,1],"
		  "\"data_offsets\":[0,4]},\"w\":{\"dtype\":\"U8\","
		  "\"shape\":[3],\"data_offsets\":[4,7]}}   ");
	/* A second plan into the same buffer starts from scratch. */
	CHECK(qf_st_plan(NULL, 0, NULL, 0, &hdr, &total), ==, 0);
	CHECK(total, ==, 0);
	CHECK_STR(hdr.data + 8, "{\"__metadata__\":{\"format\":\"pt\"}}");
	CHECK(qf_st_parse(hdr.data, hdr.len, hdr.len, &h, NULL), ==, 0);
	qf_st_header_free(&h);

	/* Refusals. */
	e[1].name = "s";	/* e[0] after the sort */
	CHECK(qf_st_plan(e, 2, NULL, 0, &hdr, &total), ==, -EINVAL);
	e[1].name = "";
	CHECK(qf_st_plan(e, 2, NULL, 0, &hdr, &total), ==, -EINVAL);
	e[1].name = "__metadata__";
	CHECK(qf_st_plan(e, 2, NULL, 0, &hdr, &total), ==, -EINVAL);
	e[1].name = "\xff";
	CHECK(qf_st_plan(e, 2, NULL, 0, &hdr, &total), ==, -EINVAL);
	e[1].name = "v";
	e[1].ndim = 9;
	CHECK(qf_st_plan(e, 2, NULL, 0, &hdr, &total), ==, -EINVAL);
	e[1].ndim = -1;
	CHECK(qf_st_plan(e, 2, NULL, 0, &hdr, &total), ==, -EINVAL);
	e[1].ndim = 2;
	e[1].shape[1] = -1;
	CHECK(qf_st_plan(e, 2, NULL, 0, &hdr, &total), ==, -EINVAL);
	e[1].shape[0] = INT64_C(1) << 40;
	e[1].shape[1] = INT64_C(1) << 40;
	CHECK(qf_st_plan(e, 2, NULL, 0, &hdr, &total), ==, -EINVAL);
	e[1].shape[0] = 2;
	e[1].shape[1] = 1;
	e[1].dtype = QF_DT_COUNT;
	CHECK(qf_st_plan(e, 2, NULL, 0, &hdr, &total), ==, -EINVAL);
	e[1].dtype = QF_DT_F32;
	kv[2] = "format";
	CHECK(qf_st_plan(e, 2, kv, 2, &hdr, &total), ==, -EINVAL);
	kv[2] = "k";
	kv[3] = NULL;
	CHECK(qf_st_plan(e, 2, kv, 2, &hdr, &total), ==, -EINVAL);
	qf_buf_release(&hdr);
}

/* ------------------------------------------------------------------ */
/* files                                                              */

static int write_file(const char *path, const void *p, size_t len)
{
	FILE *fp = fopen(path, "wb");

	if (!fp)
		return -1;
	if (fwrite(p, 1, len, fp) != len) {
		fclose(fp);
		return -1;
	}
	return fclose(fp) ? -1 : 0;
}

static void test_open(void)
{
	char dir[] = "/tmp/qf-st-XXXXXX";
	char path[64];
	char path2[64];
	char bad[64];
	struct qf_st_plan_entry e[2];
	struct qf_buf hdr = QF_BUF_INIT;
	struct qf_st_file *f = NULL;
	const struct qf_st_tensor *t;
	uint64_t total = 0;
	uint8_t *file;
	size_t size;
	float v[3];
	int i;

	if (!mkdtemp(dir)) {
		CHECK(0, ==, 1);
		return;
	}
	snprintf(path, sizeof(path), "%s/m.safetensors", dir);
	snprintf(path2, sizeof(path2), "%s/m2.safetensors", dir);
	snprintf(bad, sizeof(bad), "%s/bad.safetensors", dir);
	memset(e, 0, sizeof(e));
	e[0].name = "w";
	e[0].dtype = QF_DT_F32;
	e[0].ndim = 1;
	e[0].shape[0] = 3;
	e[1].name = "b";
	e[1].dtype = QF_DT_I8;
	e[1].ndim = 1;
	e[1].shape[0] = 5;
	CHECK(qf_st_plan(e, 2, NULL, 0, &hdr, &total), ==, 0);
	size = hdr.len + (size_t)total;
	file = calloc(1, size);
	if (!file)
		abort();
	memcpy(file, hdr.data, hdr.len);
	for (i = 0; i < 3; i++) {
		float x = (float)i + 0.5f;

		memcpy(file + hdr.len + e[0].begin + 4 * (size_t)i, &x, 4);
	}
	memset(file + hdr.len + e[1].begin, 7, 5);
	CHECK(write_file(path, file, size), ==, 0);
	CHECK(write_file(path2, file, size), ==, 0);
	CHECK(write_file(bad, file, size - 1), ==, 0);

	CHECK(qf_st_open(path, &f), ==, 0);
	if (f) {
		CHECK(f->size, ==, size);
		CHECK(f->hdr.n, ==, 2);
		t = qf_st_find(&f->hdr, "w");
		CHECK(t != NULL, ==, 1);
		if (t) {
			CHECK(qf_to_f32(t->dtype, qf_st_data(f, t), 3, v), ==,
			      0);
			CHECK_NEAR(v[2], 2.5, 0);
		}
		t = qf_st_find(&f->hdr, "b");
		if (t)
			CHECK(((const int8_t *)qf_st_data(f, t))[4], ==, 7);
		CHECK(qf_st_unchanged(f), ==, 1);
		/* Replace the file: another inode, so it has changed. */
		CHECK(rename(path2, path), ==, 0);
		CHECK(qf_st_unchanged(f), ==, 0);
		qf_st_close(f);
	}
	qf_st_close(NULL);
	f = NULL;
	fprintf(stderr, "(an error line about bad.safetensors is expected)\n");
	CHECK(qf_st_open(bad, &f), ==, QF_EFORMAT);
	CHECK(qf_st_open(dir, &f), ==, QF_EFORMAT);
	CHECK(f == NULL, ==, 1);
	snprintf(path2, sizeof(path2), "%s/missing", dir);
	CHECK(qf_st_open(path2, &f), ==, -ENOENT);
	unlink(path);
	unlink(bad);
	rmdir(dir);
	free(file);
	qf_buf_release(&hdr);
}

/*
 * The file was written by the reference writer, so planning the same
 * tensors must give back its header byte for byte.
 */
static void replan_stories(const struct qf_st_file *f)
{
	struct qf_st_plan_entry *e;
	struct qf_buf hdr = QF_BUF_INIT;
	uint64_t total = 0;
	size_t i;

	e = calloc(f->hdr.n, sizeof(*e));
	if (!e)
		abort();
	for (i = 0; i < f->hdr.n; i++) {
		e[i].name = f->hdr.t[i].name;
		e[i].dtype = f->hdr.t[i].dtype;
		e[i].ndim = f->hdr.t[i].ndim;
		memcpy(e[i].shape, f->hdr.t[i].shape, sizeof(e[i].shape));
	}
	CHECK(qf_st_plan(e, f->hdr.n, NULL, 0, &hdr, &total), ==, 0);
	CHECK(hdr.len, ==, f->hdr.data_off);
	CHECK(total, ==, f->hdr.data_len);
	CHECK(hdr.len == f->hdr.data_off &&
	      memcmp(hdr.data, f->map, hdr.len) == 0, ==, 1);
	qf_buf_release(&hdr);
	free(e);
}

static void test_stories(void)
{
	const struct qf_st_tensor *t;
	struct qf_st_file *f = NULL;
	size_t i;
	int not_f32 = 0;

	if (access(STORIES, R_OK) != 0) {
		fprintf(stderr, "skip: %s not found\n", STORIES);
		return;
	}
	CHECK(qf_st_open(STORIES, &f), ==, 0);
	if (!f)
		return;
	CHECK(f->hdr.n, ==, 47);
	for (i = 0; i < f->hdr.n; i++)
		if (f->hdr.t[i].dtype != QF_DT_F32)
			not_f32++;
	CHECK(not_f32, ==, 0);
	t = qf_st_find(&f->hdr, "model.embed_tokens.weight");
	CHECK(t != NULL, ==, 1);
	if (t) {
		CHECK(t->ndim, ==, 2);
		CHECK(t->shape[0], ==, 512);
		CHECK(t->shape[1], ==, 64);
		CHECK(t->nbytes, ==, 512 * 64 * 4);
	}
	CHECK(qf_st_unchanged(f), ==, 1);
	replan_stories(f);
	qf_st_close(f);
}

int main(void)
{
	test_dtype_names();
	test_half_exhaustive();
	test_half_random();
	test_half_edges();
	test_to_f32();
	test_broken_length();
	test_broken_json();
	test_broken_entries();
	test_broken_layout();
	fprintf(stderr, "%d broken headers refused\n", bad_count);
	test_valid();
	test_plan();
	test_open();
	test_stories();
	return qf_check_exit();
}
