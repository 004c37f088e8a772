/*
 * test_report_math.c - the figures of `quantfs report` that are pure
 * functions: relative changes (a drop from 50 to 0 is -100%, not
 * +400%), their "n/a" for anything unmeasured, and the Pareto front;
 * and what identifies a GGUF-only variant's bytes (the result cache key).
 *
 * usage: test_report_math GGUF (tests/fuzz/corpus/gguf/ok-llama-names)
 */
#include <math.h>
#include <stdlib.h>
#include <unistd.h>

#include "check.h"
#include "report.h"
#include "report_i.h"

static void test_rel(void)
{
	char b[32];

	CHECK_NEAR(qf_report_rel(0, 50), -1.0, 1e-15);
	CHECK_NEAR(qf_report_rel(50, 0.5 * 50), 1.0, 1e-15);
	CHECK_NEAR(qf_report_rel(7.6879, 7.6577), 0.0039437, 1e-6);
	CHECK_NEAR(qf_report_rel(3037696, 9968128), -0.695259, 1e-6);
	CHECK_NEAR(qf_report_rel(2, 4), -0.5, 1e-15);
	CHECK_NEAR(qf_report_rel(-3, -2), 0.5, 1e-15);	/* (v - b) / b */
	CHECK(isnan(qf_report_rel(1, 0)), ==, 1);	/* undefined */
	CHECK(isnan(qf_report_rel(NAN, 1)), ==, 1);
	CHECK(isnan(qf_report_rel(1, NAN)), ==, 1);
	CHECK(isnan(qf_report_rel(0, 0)), ==, 1);

	qf_report_fmt_pct(qf_report_rel(0, 50), b, sizeof(b));
	CHECK_STR(b, "-100.00%");
	qf_report_fmt_pct(qf_report_rel(250, 50), b, sizeof(b));
	CHECK_STR(b, "+400.00%");
	qf_report_fmt_pct(qf_report_rel(50, 50), b, sizeof(b));
	CHECK_STR(b, "+0.00%");
	qf_report_fmt_pct(qf_report_rel(0.25, 0.2), b, sizeof(b));
	CHECK_STR(b, "+25.00%");
	qf_report_fmt_pct(qf_report_rel(1, 0), b, sizeof(b));
	CHECK_STR(b, "n/a");
	qf_report_fmt_pct(NAN, b, sizeof(b));
	CHECK_STR(b, "n/a");
	qf_report_fmt_pct(INFINITY, b, sizeof(b));
	CHECK_STR(b, "n/a");
}

static void test_pareto(void)
{
	/* original, rtn_w4, gptq_w4 (same bytes, better), rtn_w3, w8 */
	const double bytes[] = { 9974232, 3040000, 3040000, 2450000, 5000000 };
	const double ppl[] = { 7.6577, 7.6879, 7.6680, 7.8053, 7.7000 };
	const bool want[] = { true, false, true, true, false };
	/* duplicates are both on it; NAN points never, dominating nothing */
	const double b2[] = { 1, 1, 2, NAN, 0.5, 3 };
	const double p2[] = { 5, 5, 4, 1, NAN, 4 };
	const bool want2[] = { true, true, true, false, false, false };
	bool front[6];
	size_t i;

	CHECK(qf_report_pareto(bytes, ppl, 5, front), ==, 3);
	for (i = 0; i < 5; i++)
		CHECK(front[i], ==, want[i]);
	CHECK(qf_report_pareto(b2, p2, 6, front), ==, 3);
	for (i = 0; i < 6; i++)
		CHECK(front[i], ==, want2[i]);
	/* one point is its own front; none is empty */
	CHECK(qf_report_pareto(bytes, ppl, 1, front), ==, 1);
	CHECK(front[0], ==, true);
	CHECK(qf_report_pareto(bytes, ppl, 0, front), ==, 0);
	/* strictly better on both removes everything else */
	{
		const double b3[] = { 3, 2, 1 };
		const double p3[] = { 3, 2, 1 };

		CHECK(qf_report_pareto(b3, p3, 3, front), ==, 1);
		CHECK(front[2], ==, true);
		CHECK(front[0] || front[1], ==, false);
	}
}

/* Digest of buf [n] written to a file, as dir_digest() hashes it. */
static int digest_of(const char *buf, size_t n, uint8_t out[32],
		     struct row *r)
{
	char path[] = "/tmp/test_report_math.XXXXXX";
	struct qf_sha256 h;
	int fd = mkstemp(path), ret;

	if (fd < 0 || write(fd, buf, n) != (ssize_t)n)
		return -EIO;
	close(fd);
	memset(r, 0, sizeof(*r));
	qf_sha256_init(&h);
	ret = qf_report_hash_gguf(&h, path, r);
	qf_sha256_final(&h, out);
	unlink(path);
	return ret;
}

/* Size and every header byte count, the tensor data does not. */
static void test_gguf_digest(const char *path)
{
	struct qf_buf b = QF_BUF_INIT;
	uint8_t d0[32], d1[32];
	struct row r;
	char *name;

	CHECK(qf_read_file(path, 1u << 20, &b), ==, 0);
	if (!b.data)
		return;
	CHECK(digest_of(b.data, b.len, d0, &r), ==, 0);
	CHECK(r.file_bytes, ==, b.len);
	/* F32 [32, 4], Q8_0 [32, 4] (4 blocks of 34 B), F32 [32] */
	CHECK(r.weight_bytes, ==, 512 + 4 * 34 + 128);
	CHECK(digest_of(b.data, b.len, d1, &r), ==, 0);
	CHECK(memcmp(d0, d1, 32), ==, 0);
	/* a tensor info */
	name = memmem(b.data, b.len, "token_embd.weight", 17);
	CHECK(name != NULL, ==, 1);
	if (name) {
		name[16] = 'u';
		CHECK(digest_of(b.data, b.len, d1, &r), ==, 0);
		CHECK(memcmp(d0, d1, 32) != 0, ==, 1);
		name[16] = 't';
	}
	/* tensor data: as a safetensors row's, not hashed */
	b.data[b.len - 1] ^= 1;
	CHECK(digest_of(b.data, b.len, d1, &r), ==, 0);
	CHECK(memcmp(d0, d1, 32), ==, 0);
	/* the size: 32 more bytes of padding */
	CHECK(qf_buf_add(&b, "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0"
			 "\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0", 32), ==, 0);
	CHECK(digest_of(b.data, b.len, d1, &r), ==, 0);
	CHECK(memcmp(d0, d1, 32) != 0, ==, 1);
	CHECK(r.file_bytes, ==, b.len);
	/* malformed: refused, not hashed */
	CHECK(digest_of(b.data, 30, d1, &r), ==, QF_EFORMAT);
	qf_buf_release(&b);
}

int main(int argc, char **argv)
{
	test_rel();
	test_pareto();
	if (argc > 1)
		test_gguf_digest(argv[1]);
	return qf_check_exit();
}
