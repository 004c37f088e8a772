/*
 * dtype.c - safetensors element types and the half-precision conversions.
 *
 * The conversions work on bit patterns so they do not depend on the FPU's
 * rounding mode or on compiler support for _Float16.  Both narrowing
 * conversions round to nearest, ties to even, as torch and numpy do, so a
 * tensor we write from f32 matches what the reference tools would write.
 * Tensor bytes are little-endian whatever the host is: loads assemble the
 * value byte by byte (compilers turn that into a plain load on x86/arm).
 */
#include <string.h>

#include "io.h"

static const struct {
	const char *name;
	size_t size;
} dtype_info[QF_DT_COUNT] = {
	[QF_DT_BOOL] = { "BOOL", 1 },
	[QF_DT_U8] = { "U8", 1 },
	[QF_DT_I8] = { "I8", 1 },
	[QF_DT_I16] = { "I16", 2 },
	[QF_DT_U16] = { "U16", 2 },
	[QF_DT_F16] = { "F16", 2 },
	[QF_DT_BF16] = { "BF16", 2 },
	[QF_DT_I32] = { "I32", 4 },
	[QF_DT_U32] = { "U32", 4 },
	[QF_DT_F32] = { "F32", 4 },
	[QF_DT_F64] = { "F64", 8 },
	[QF_DT_I64] = { "I64", 8 },
	[QF_DT_U64] = { "U64", 8 },
};

/* 0 for a value outside the enum, so callers' size checks fail closed. */
size_t qf_dtype_size(enum qf_dtype dt)
{
	if ((unsigned)dt >= QF_DT_COUNT)
		return 0;
	return dtype_info[dt].size;
}

const char *qf_dtype_name(enum qf_dtype dt)
{
	if ((unsigned)dt >= QF_DT_COUNT)
		return "?";
	return dtype_info[dt].name;
}

int qf_dtype_parse(const char *s, enum qf_dtype *out)
{
	int i;

	if (!s)
		return QF_EFORMAT;
	for (i = 0; i < QF_DT_COUNT; i++) {
		if (strcmp(s, dtype_info[i].name) == 0) {
			*out = (enum qf_dtype)i;
			return 0;
		}
	}
	return QF_EFORMAT;
}

static uint32_t f32_bits(float f)
{
	uint32_t u;

	memcpy(&u, &f, sizeof(u));
	return u;
}

static float bits_f32(uint32_t u)
{
	float f;

	memcpy(&f, &u, sizeof(f));
	return f;
}

float qf_bf16_to_f32(uint16_t h)
{
	return bits_f32((uint32_t)h << 16);
}

uint16_t qf_f32_to_bf16(float f)
{
	uint32_t u = f32_bits(f);

	/*
	 * Rounding a NaN could carry into the exponent and make it Inf, or
	 * truncate a payload that lives in the low bits to zero: keep the
	 * top bits and force the quiet bit instead.
	 */
	if ((u & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t)((u >> 16) | 0x0040u);
	/* Ties to even: add just under half, plus the lsb that survives. */
	u += 0x7fffu + ((u >> 16) & 1u);
	return (uint16_t)(u >> 16);
}

float qf_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
	uint32_t exp = (h >> 10) & 0x1fu;
	uint32_t mant = h & 0x3ffu;
	int shift;

	if (exp == 0x1f)		/* inf, nan: payload kept */
		return bits_f32(sign | 0x7f800000u | (mant << 13));
	if (exp != 0)			/* normal: rebias 15 -> 127 */
		return bits_f32(sign | ((exp + 112u) << 23) | (mant << 13));
	if (mant == 0)
		return bits_f32(sign);
	/* Subnormal: normalise, every f16 subnormal is an f32 normal. */
	shift = 0;
	while (!(mant & 0x400u)) {
		mant <<= 1;
		shift++;
	}
	mant &= 0x3ffu;
	return bits_f32(sign | ((uint32_t)(113 - shift) << 23) | (mant << 13));
}

/* q + (rounding of the dropped rem against half), ties to even. */
static uint32_t round_even(uint32_t q, uint32_t rem, uint32_t half)
{
	if (rem > half || (rem == half && (q & 1u)))
		q++;
	return q;
}

uint16_t qf_f32_to_f16(float f)
{
	uint32_t u = f32_bits(f);
	uint32_t sign = (u >> 16) & 0x8000u;
	uint32_t x = u & 0x7fffffffu;
	uint32_t exp;
	uint32_t mant;
	uint32_t shift;
	uint32_t q;

	if (x > 0x7f800000u)		/* nan: keep top payload, quiet */
		return (uint16_t)(sign | 0x7e00u | ((x >> 13) & 0x3ffu));
	if (x >= 0x477ff000u)		/* >= 65520: inf, ties go up */
		return (uint16_t)(sign | 0x7c00u);
	if (x >= 0x38800000u) {		/* >= 2^-14: normal f16 */
		q = (x >> 13) - (112u << 10);
		/* A mantissa carry bumps the exponent, which is right. */
		return (uint16_t)(sign | round_even(q, x & 0x1fffu, 0x1000u));
	}
	if (x <= 0x33000000u)		/* <= 2^-25: ties to even give 0 */
		return (uint16_t)sign;
	/* Subnormal f16: value / 2^-24 = mant * 2^(exp - 126). */
	exp = x >> 23;
	mant = (x & 0x7fffffu) | 0x800000u;
	shift = 126u - exp;		/* 14..24 here */
	q = round_even(mant >> shift, mant & ((1u << shift) - 1u),
		       1u << (shift - 1u));
	/* q == 0x400 is the smallest normal, which has the same bits. */
	return (uint16_t)(sign | q);
}

static uint16_t load_le16(const uint8_t *p)
{
	return (uint16_t)(p[0] | (uint16_t)p[1] << 8);
}

static uint32_t load_le32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	       (uint32_t)p[3] << 24;
}

/* src need not be aligned: mmapped tensors of odd-sized dtypes may not be. */
/* bf16 -> f32 on a little-endian host: a shift, vectorized. */
QF_HOT static void bf16_to_f32_le(const uint8_t *p, size_t n, float *dst)
{
	size_t i;

	for (i = 0; i < n; i++) {
		uint16_t h;
		uint32_t u;

		memcpy(&h, p + 2 * i, 2);
		u = (uint32_t)h << 16;
		memcpy(&dst[i], &u, 4);
	}
}

int qf_to_f32(enum qf_dtype dt, const void *src, size_t n, float *dst)
{
	const uint8_t *p = src;
	size_t i;

#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	if (dt == QF_DT_BF16) {
		bf16_to_f32_le(p, n, dst);
		return 0;
	}
	if (dt == QF_DT_F32) {
		memcpy(dst, p, n * 4);
		return 0;
	}
#endif
	switch (dt) {
	case QF_DT_F16:
		for (i = 0; i < n; i++)
			dst[i] = qf_f16_to_f32(load_le16(p + 2 * i));
		return 0;
	case QF_DT_BF16:
		for (i = 0; i < n; i++)
			dst[i] = qf_bf16_to_f32(load_le16(p + 2 * i));
		return 0;
	case QF_DT_F32:
		for (i = 0; i < n; i++)
			dst[i] = bits_f32(load_le32(p + 4 * i));
		return 0;
	default:
		return QF_EUNSUPPORTED;
	}
}

/* Exponent bits all ones: inf or NaN.  Branch-free, so it vectorizes. */
QF_HOT bool qf_all_finite(const float *x, size_t n)
{
	uint32_t acc = 0;
	size_t i;

	for (i = 0; i < n; i++) {
		uint32_t u;

		memcpy(&u, &x[i], 4);
		acc |= (uint32_t)((u & 0x7f800000u) == 0x7f800000u);
	}
	return !acc;
}
