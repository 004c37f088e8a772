/*
 * test_rtn.c - RTN against its scalar reference, the packers against
 * hand-computed words and an unpack round trip, and the v1 zero rule.
 */
#include <math.h>
#include <stdlib.h>

#include "check.h"
#include "method.h"

static uint64_t rng = 0x1234567;

static float frand(void)
{
	rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
	return (float)((double)(rng >> 11) * 0x1.0p-53) * 2 - 1;
}

static void test_rtn_vs_ref(void)
{
	static const int bits[] = { 2, 3, 4, 8 };
	static const int groups[] = { 32, 64, 128, 0, 48 };
	int64_t rows = 37, in = 256;
	float *w = malloc(sizeof(float) * (size_t)(rows * in));
	uint8_t *q1 = malloc((size_t)(rows * in)), *q2 = malloc((size_t)(rows * in));
	uint16_t s1[37 * 8], s2[37 * 8];
	int32_t z1[37 * 8], z2[37 * 8];
	size_t bi, gi, k;
	int sym;

	for (k = 0; k < (size_t)(rows * in); k++)
		w[k] = frand() * (k % 97 == 0 ? 8.0f : 0.05f);
	/* an all-positive row and an all-zero row: zero-point edge cases */
	for (k = 0; k < (size_t)in; k++) {
		w[k] = fabsf(w[k]) + 0.001f;
		w[in + k] = 0;
	}
	for (bi = 0; bi < 4; bi++)
		for (gi = 0; gi < 5; gi++)
			for (sym = 0; sym < 2; sym++) {
				struct qf_qparams p = { bits[bi], groups[gi], sym };
				int64_t ng = qf_ngroups(in, p.group);
				int maxq = (1 << p.bits) - 1;

				CHECK(qf_rtn_quantize(w, rows, in, &p, q1, s1, z1), ==, 0);
				CHECK(qf_rtn_quantize_ref(w, rows, in, &p, q2, s2, z2), ==, 0);
				CHECK(memcmp(q1, q2, (size_t)(rows * in)), ==, 0);
				CHECK(memcmp(s1, s2, sizeof(uint16_t) * (size_t)(rows * ng)), ==, 0);
				CHECK(memcmp(z1, z2, sizeof(int32_t) * (size_t)(rows * ng)), ==, 0);
				for (k = 0; k < (size_t)(rows * ng); k++) {
					/* v1 checkpoints store zero - 1 */
					CHECK(z1[k], >=, sym ? (maxq + 1) / 2 : 1);
					CHECK(z1[k], <=, maxq);
				}
			}
	/* the all-positive row: zero is 1, not 0, and values stay in grid */
	{
		struct qf_qparams p = { 4, 64, false };

		qf_rtn_quantize(w, rows, in, &p, q1, s1, z1);
		CHECK(z1[0], ==, 1);
		for (k = 0; k < (size_t)in; k++) {
			float d = qf_f16_to_f32(s1[k / 64]) *
				  (float)((int)q1[k] - z1[k / 64]);

			CHECK_NEAR(d, w[k], qf_f16_to_f32(s1[k / 64]) / 2 + 1e-7);
		}
	}
	free(w);
	free(q1);
	free(q2);
}

static void test_fp16_scale_overflow(void)
{
	struct qf_qparams p = { 4, 32, false };
	float w[32];
	uint8_t q[32];
	uint16_t s;
	int32_t z;
	int k;

	for (k = 0; k < 32; k++)
		w[k] = (k - 16) * 1e6f;	/* scale > 65504 */
	CHECK(qf_rtn_quantize(w, 1, 32, &p, q, &s, &z), ==, QF_ENUMERIC);
}

static void test_pack_words(void)
{
	uint8_t q[64], back[64];
	uint32_t w[8];
	int32_t zero[8];
	uint32_t qz[3];
	int k;

	/* 4 bits, 1 output row, 8 inputs: nibble j holds input j */
	for (k = 0; k < 8; k++)
		q[k] = (uint8_t)k;
	qf_gptq_pack_qweight(q, 1, 8, 4, w);
	CHECK(w[0], ==, 0x76543210u);
	/* 2 bits, 2 output rows x 16 inputs: word k of column r */
	for (k = 0; k < 32; k++)
		q[k] = (uint8_t)(k & 3);
	qf_gptq_pack_qweight(q, 2, 16, 2, w);
	CHECK(w[0], ==, 0xe4e4e4e4u);
	CHECK(w[1], ==, 0xe4e4e4e4u);
	/* 3 bits: value 10 straddles words 0/1, value 21 words 1/2 */
	memset(q, 0, sizeof(q));
	q[10] = 7;
	q[21] = 5;
	qf_gptq_pack_qweight(q, 1, 32, 3, w);
	CHECK(w[0], ==, 0xc0000000u);	/* low 2 bits of 7 at bits 30-31 */
	CHECK(w[1], ==, 0x80000001u);	/* bit 2 of 7 at 0; bit 0 of 5 at 31 */
	CHECK(w[2], ==, 0x00000002u);	/* bits 1-2 of 5 (=2) at 0-1 */
	/* round trip, every width */
	for (k = 0; k < 64; k++)
		q[k] = (uint8_t)((k * 37 + 11) & 1);
	{
		static const int bits[] = { 2, 3, 4, 8 };
		int b;

		for (b = 0; b < 4; b++) {
			uint32_t words[64];
			int j;

			for (j = 0; j < 64; j++)
				q[j] = (uint8_t)((j * 37 + 11) %
						 (1 << bits[b]));
			qf_gptq_pack_qweight(q, 2, 32, bits[b], words);
			qf_gptq_unpack_qweight(words, 2, 32, bits[b], back);
			CHECK(memcmp(q, back, 64), ==, 0);
		}
	}
	/* rows packed in pieces (production packs a few rows as it
	 * makes them) give the words packed at once, every width, pieces
	 * not aligned to the 4-bit packer's 16 rows */
	{
		static const int bits[] = { 2, 3, 4, 8 };
		static const int64_t cut[] = { 0, 5, 8, 24, 37, 40 };
		enum { OUT = 40, IN = 64 };
		static uint8_t qq[OUT * IN];
		static uint32_t whole[OUT * IN / 2], parts[OUT * IN / 2];
		int b, c;

		for (b = 0; b < 4; b++) {
			size_t n = (size_t)(OUT * IN * bits[b] / 32);

			for (k = 0; k < OUT * IN; k++)
				qq[k] = (uint8_t)((k * 7919 + 3) %
						  (1 << bits[b]));
			qf_gptq_pack_qweight(qq, OUT, IN, bits[b], whole);
			memset(parts, 0xa5, sizeof(parts));
			for (c = 0; c + 1 < 6; c++)
				qf_gptq_pack_qweight_rows(qq + cut[c] * IN,
							  cut[c],
							  cut[c + 1] - cut[c],
							  OUT, IN, bits[b],
							  parts);
			CHECK(memcmp(whole, parts, n * 4), ==, 0);
		}
	}
	/* qzeros store zero - 1, packed along outputs */
	for (k = 0; k < 8; k++)
		zero[k] = k + 1;
	qf_gptq_pack_qzeros(zero, 8, 1, 4, qz);
	CHECK(qz[0], ==, 0x76543210u);
	CHECK(qf_gptq_packable(3, 64, 96), ==, true);
	CHECK(qf_gptq_packable(3, 64, 80), ==, false);
	CHECK(qf_gptq_packable(4, 172, 64), ==, false);
	CHECK(qf_gptq_packable(5, 64, 64), ==, false);
}

int main(void)
{
	test_rtn_vs_ref();
	test_fp16_scale_overflow();
	test_pack_words();
	return qf_check_exit();
}
