/*
 * hash64.c - the checksum of cache values.
 *
 * Four independent lanes, each folding one 8-byte word per 32-byte stripe
 * with a multiply and a rotate (the round of the XXH64 design), so the
 * loop runs at several GB/s: a value is checked once per process when it
 * is first served, and the check must cost little next to the read.
 */
#include <string.h>

#include "common.h"

#define P1 0x9E3779B185EBCA87ULL
#define P2 0xC2B2AE3D27D4EB4FULL
#define P3 0x165667B19E3779F9ULL
#define P4 0x85EBCA77C2B2AE63ULL
#define P5 0x27D4EB2F165667C5ULL

static inline uint64_t rotl(uint64_t x, int r)
{
	return (x << r) | (x >> (64 - r));
}

static inline uint64_t rd64(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, 8);	/* little-endian hosts only (x86-64, arm64) */
	return v;
}

static inline uint64_t round64(uint64_t acc, uint64_t v)
{
	return rotl(acc + v * P2, 31) * P1;
}

static inline uint64_t merge(uint64_t h, uint64_t lane)
{
	return (h ^ round64(0, lane)) * P1 + P4;
}

uint64_t qf_hash64(const void *data, size_t len, uint64_t seed)
{
	const uint8_t *p = data, *end = p + len;
	uint64_t h;

	if (len >= 32) {
		uint64_t a = seed + P1 + P2, b = seed + P2, c = seed,
			 d = seed - P1;

		for (; end - p >= 32; p += 32) {
			a = round64(a, rd64(p));
			b = round64(b, rd64(p + 8));
			c = round64(c, rd64(p + 16));
			d = round64(d, rd64(p + 24));
		}
		h = rotl(a, 1) + rotl(b, 7) + rotl(c, 12) + rotl(d, 18);
		h = merge(merge(merge(merge(h, a), b), c), d);
	} else {
		h = seed + P5;
	}
	h += (uint64_t)len;
	for (; end - p >= 8; p += 8)
		h = rotl(h ^ round64(0, rd64(p)), 27) * P1 + P4;
	for (; p < end; p++)
		h = rotl(h ^ (*p * P5), 11) * P1;
	h ^= h >> 33;
	h *= P2;
	h ^= h >> 29;
	h *= P3;
	h ^= h >> 32;
	return h;
}
