/*
 * utf8.c - the one UTF-8 decoder and encoder of quantfs.
 *
 * Strict in what it accepts (Unicode 15 table 3-7: no overlong forms, no
 * surrogates, nothing past U+10FFFF) and, on bad input, counting the
 * maximal valid prefix of a sequence as one error, as WHATWG's decoder
 * and Rust's String::from_utf8_lossy do: that is the count the Hugging
 * Face tokenizers see, so a tokenizer that replaces bad bytes with U+FFFD
 * agrees with them byte for byte.  Safetensors headers, GGUF strings and
 * tokenizer text all go through here.
 */
#include "common.h"

size_t qf_utf8_decode(const uint8_t *s, size_t n, uint32_t *cp)
{
	uint32_t c = s[0];
	size_t len, i;

	if (c < 0x80) {
		*cp = c;
		return 1;
	}
	if (c >= 0xc2 && c <= 0xdf) {
		len = 2;
		c &= 0x1f;
	} else if (c >= 0xe0 && c <= 0xef) {
		len = 3;
		c &= 0x0f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		len = 4;
		c &= 0x07;
	} else {
		*cp = QF_UTF8_BAD;
		return 1;
	}
	for (i = 1; i < len; i++) {
		if (i >= n || (s[i] & 0xc0) != 0x80)
			goto bad;
		c = c << 6 | (s[i] & 0x3f);
		/* the second byte's range decides the rest (table 3-7) */
		if (i == 1 && len == 3 && (c < 0x20 || (c >= 0x360 &&
							c < 0x380)))
			goto bad;	/* overlong, or a surrogate */
		if (i == 1 && len == 4 && (c < 0x10 || c > 0x10f))
			goto bad;	/* overlong, or past U+10FFFF */
	}
	*cp = c;
	return len;
bad:
	*cp = QF_UTF8_BAD;
	return i;
}

bool qf_utf8_valid(const char *s, size_t n)
{
	size_t i = 0;
	uint32_t cp;

	while (i < n) {
		i += qf_utf8_decode((const uint8_t *)s + i, n - i, &cp);
		if (cp == QF_UTF8_BAD)
			return false;
	}
	return true;
}

size_t qf_utf8_encode(uint32_t cp, char out[4])
{
	if (cp < 0x80) {
		out[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		out[0] = (char)(0xc0 | cp >> 6);
		out[1] = (char)(0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		out[0] = (char)(0xe0 | cp >> 12);
		out[1] = (char)(0x80 | (cp >> 6 & 0x3f));
		out[2] = (char)(0x80 | (cp & 0x3f));
		return 3;
	}
	out[0] = (char)(0xf0 | cp >> 18);
	out[1] = (char)(0x80 | (cp >> 12 & 0x3f));
	out[2] = (char)(0x80 | (cp >> 6 & 0x3f));
	out[3] = (char)(0x80 | (cp & 0x3f));
	return 4;
}

int qf_buf_add_utf8(struct qf_buf *b, uint32_t cp)
{
	char u[4];

	return qf_buf_add(b, u, qf_utf8_encode(cp, u));
}
