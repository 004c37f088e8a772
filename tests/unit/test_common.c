/*
 * test_common.c - common/: SHA-256 against the FIPS 180-4 examples and
 * streaming in uneven pieces; the UTF-8 decoder against Unicode's table
 * 3-7 and the error counts of WHATWG / Rust's from_utf8_lossy, and
 * encode / decode round trips over every scalar value; qf_big_alloc's
 * buffers (aligned, writable whole, unmapped when freed).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "check.h"
#include "common.h"

static void sha_hex(const void *p, size_t n, size_t piece, char hex[65])
{
	struct qf_sha256 c;
	uint8_t d[32];
	size_t off = 0;

	qf_sha256_init(&c);
	while (off < n) {
		size_t k = n - off < piece ? n - off : piece;

		qf_sha256_update(&c, (const char *)p + off, k);
		off += k;
	}
	qf_sha256_final(&c, d);
	qf_hex(d, 32, hex);
}

static void test_sha256(void)
{
	/* FIPS 180-4 / NIST CSRC examples */
	static const char *m2 =
		"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
	char hex[65];
	char *a = malloc(1000000);
	size_t piece;

	sha_hex("", 0, 1, hex);
	CHECK_STR(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
	sha_hex("abc", 3, 1, hex);
	CHECK_STR(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	for (piece = 1; piece <= 64; piece *= 3) {
		sha_hex(m2, strlen(m2), piece, hex);
		CHECK_STR(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
	}
	memset(a, 'a', 1000000);
	sha_hex(a, 1000000, 1000000, hex);
	CHECK_STR(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
	sha_hex(a, 1000000, 4093, hex);
	CHECK_STR(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
	free(a);
}

/* Decoding s gives the code points want[] (QF_UTF8_BAD for an error). */
static void decodes(const char *s, const uint32_t *want, size_t nwant)
{
	const uint8_t *p = (const uint8_t *)s;
	size_t n = strlen(s), i = 0, k = 0;
	uint32_t cp;

	while (i < n) {
		i += qf_utf8_decode(p + i, n - i, &cp);
		CHECK(k, <, nwant);
		if (k < nwant)
			CHECK(cp, ==, want[k]);
		k++;
	}
	CHECK(k, ==, nwant);
}

#define B QF_UTF8_BAD
static void test_utf8(void)
{
	char u[4];
	uint32_t cp, c;
	size_t n;

	decodes("a\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80",
		(const uint32_t[]){ 'a', 0xe9, 0x20ac, 0x1f600 }, 4);
	/* overlong, surrogate, past U+10FFFF, lone continuation, C0/C1/F5 */
	decodes("\xc0\xaf", (const uint32_t[]){ B, B }, 2);
	decodes("\xe0\x80\xaf", (const uint32_t[]){ B, B, B }, 3);
	decodes("\xed\xa0\x80", (const uint32_t[]){ B, B, B }, 3);
	decodes("\xf4\x90\x80\x80", (const uint32_t[]){ B, B, B, B }, 4);
	decodes("\x80x", (const uint32_t[]){ B, 'x' }, 2);
	decodes("\xf5\xc1", (const uint32_t[]){ B, B }, 2);
	/* a truncated sequence is one error (its maximal valid prefix) */
	decodes("\xe2\x82x", (const uint32_t[]){ B, 'x' }, 2);
	decodes("\xf0\x9f\x98", (const uint32_t[]){ B }, 1);
	decodes("\xf0\x9f\x98\xf0\x9f\x98\x80",
		(const uint32_t[]){ B, 0x1f600 }, 2);
	CHECK(qf_utf8_valid("caf\xc3\xa9", 5), ==, true);
	CHECK(qf_utf8_valid("caf\xc3", 4), ==, false);
	CHECK(qf_utf8_valid("\xed\x9f\xbf", 3), ==, true);	/* U+D7FF */
	CHECK(qf_utf8_valid("\xed\xa0\x80", 3), ==, false);
	CHECK(qf_utf8_valid("\xf4\x8f\xbf\xbf", 4), ==, true);
	CHECK(qf_utf8_valid("a\0b", 3), ==, true);	/* NUL is a char */
	for (c = 0; c <= 0x10ffff; c++) {
		if (c >= 0xd800 && c <= 0xdfff)
			continue;
		n = qf_utf8_encode(c, u);
		CHECK(n, ==, (size_t)(c < 0x80 ? 1 : c < 0x800 ? 2 :
				      c < 0x10000 ? 3 : 4));
		CHECK(qf_utf8_decode((const uint8_t *)u, n, &cp), ==, n);
		CHECK(cp, ==, c);
		if (cp != c)
			break;
	}
}

/* qf_unhex inverts qf_hex and refuses what qf_hex never writes. */
static void test_unhex(void)
{
	uint8_t in[32], out[32];
	char hex[65];
	size_t i;

	for (i = 0; i < sizeof(in); i++)
		in[i] = (uint8_t)(i * 37 + 11);
	qf_hex(in, sizeof(in), hex);
	CHECK(qf_unhex(hex, sizeof(out), out), ==, 0);
	CHECK(memcmp(in, out, sizeof(in)), ==, 0);
	CHECK(qf_unhex("00ff7a", 3, out), ==, 0);
	CHECK(out[0] + (out[1] << 8) + (out[2] << 16), ==, 0x7aff00);
	CHECK(qf_unhex("00FF", 2, out), ==, -EINVAL);	/* upper case */
	CHECK(qf_unhex("0g", 1, out), ==, -EINVAL);
	CHECK(qf_unhex("abc", 2, out), ==, -EINVAL);	/* short: stops at NUL */
}

#ifdef __SANITIZE_ADDRESS__
#define ASAN 1		/* bigmem.c gives malloc's buffers there */
#else
#define ASAN 0
#endif

/* Sizes on both sides of the 4 MiB threshold: every byte writable, big
 * ones on 2 MiB boundaries and gone after qf_big_free. */
static void test_big_alloc(void)
{
	static const size_t sz[] = { 1, 4096, (4u << 20) - 1, 4u << 20,
				     (4u << 20) + 1, (6u << 20) + 123 };
	unsigned char vec;
	size_t i, j;

	for (i = 0; i < sizeof(sz) / sizeof(sz[0]); i++) {
		unsigned char *p = qf_big_alloc(sz[i]);
		size_t bad = 0;

		CHECK(p != NULL, ==, 1);
		if (!p)
			continue;
		for (j = 0; j < sz[i]; j++)
			p[j] = (unsigned char)(j * 7 + i);
		for (j = 0; j < sz[i]; j++)
			bad += p[j] != (unsigned char)(j * 7 + i);
		CHECK(bad, ==, 0);
		if (sz[i] >= (4u << 20) && !ASAN)
			CHECK((uintptr_t)p % (2u << 20), ==, 0);
		qf_big_free(p, sz[i]);
		if (sz[i] >= (4u << 20) && !ASAN) /* unmapped: mincore refuses */
			CHECK(mincore(p, (size_t)sysconf(_SC_PAGESIZE), &vec),
			      ==, -1);
	}
	qf_big_free(NULL, 8u << 20);
}

struct cover {
	int *seen;		/* [n] times each item was given */
	int64_t align;
	int bad_start;		/* parts not starting on align */
	int parts;
};

static void cover_part(void *arg, int64_t i0, int64_t i1)
{
	struct cover *c = arg;
	int64_t i;

	__atomic_add_fetch(&c->parts, 1, __ATOMIC_RELAXED);
	if (i0 % c->align)
		__atomic_add_fetch(&c->bad_start, 1, __ATOMIC_RELAXED);
	for (i = i0; i < i1; i++)
		c->seen[i]++;	/* parts are disjoint: no race */
}

/* qf_par_for gives every item once, parts on multiples of align, and
 * runs small loops in one part. */
static void test_par_for(void)
{
	static const int64_t ns[] = { 0, 1, 7, 1000, 100003 };
	static const int64_t al[] = { 1, 8 };
	size_t i, a;
	int64_t j;

	for (i = 0; i < sizeof(ns) / sizeof(ns[0]); i++)
		for (a = 0; a < 2; a++) {
			struct cover c = { calloc((size_t)ns[i] + 1,
						  sizeof(int)), al[a], 0, 0 };
			int64_t once = 0;

			qf_par_for(cover_part, &c, ns[i], 16, al[a]);
			for (j = 0; j < ns[i]; j++)
				once += c.seen[j] == 1;
			CHECK(once, ==, ns[i]);
			CHECK(c.bad_start, ==, 0);
			CHECK(c.parts <= 8, ==, 1);
			if (ns[i] < 32)		/* below two parts of 16 */
				CHECK(c.parts, ==, ns[i] > 0);
			free(c.seen);
		}
}

int main(void)
{
	test_big_alloc();
	test_par_for();
	test_sha256();
	test_utf8();
	test_unhex();
	return qf_check_exit();
}
