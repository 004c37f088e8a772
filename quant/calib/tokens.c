/*
 * tokens.c - calibration token sets: windows of a text in the model's
 * own tokens, and the hash that names a set in the cache's keys.
 * (Sets sampled from the model itself: sample.c.)
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "calib.h"

void qf_calib_hash(struct qf_calib *cs)
{
	struct qf_sha256 h;
	int64_t i, n = (int64_t)cs->nseq * cs->seqlen;
	uint8_t le[4];
	uint32_t dims[2] = { (uint32_t)cs->nseq, (uint32_t)cs->seqlen };

	qf_sha256_init(&h);
	qf_sha256_update(&h, "quantfs-calib-v1", 17);
	for (i = 0; i < 2; i++) {
		le[0] = (uint8_t)dims[i], le[1] = (uint8_t)(dims[i] >> 8);
		le[2] = (uint8_t)(dims[i] >> 16), le[3] = (uint8_t)(dims[i] >> 24);
		qf_sha256_update(&h, le, 4);
	}
	for (i = 0; i < n; i++) {
		uint32_t v = (uint32_t)cs->ids[i];

		le[0] = (uint8_t)v, le[1] = (uint8_t)(v >> 8);
		le[2] = (uint8_t)(v >> 16), le[3] = (uint8_t)(v >> 24);
		qf_sha256_update(&h, le, 4);
	}
	qf_sha256_final(&h, cs->hash);
	qf_hex(cs->hash, 32, cs->hash_hex);
}

void qf_calib_free(struct qf_calib *cs)
{
	if (!cs)
		return;
	free(cs->ids);
	cs->ids = NULL;
}

int qf_calib_from_text(const struct qf_tok *tok, const char *text, size_t len,
		       int nseq, int seqlen, struct qf_calib *out)
{
	int32_t bos = qf_tok_bos(tok);
	int64_t body = bos >= 0 ? seqlen - 1 : seqlen;
	int32_t *toks = NULL;
	size_t ntok = 0;
	int64_t s, j, stride;
	int ret;

	memset(out, 0, sizeof(*out));
	if (nseq < 1 || seqlen < 2)
		return -EINVAL;
	ret = qf_tok_encode(tok, text, len, false, &toks, &ntok);
	if (ret < 0)
		return ret;
	if ((int64_t)ntok < (int64_t)nseq * body) {
		free(toks);
		return -EINVAL;
	}
	out->ids = malloc((size_t)nseq * (size_t)seqlen * sizeof(*out->ids));
	if (!out->ids) {
		free(toks);
		return -ENOMEM;
	}
	/* windows spread evenly: reproducible, and covering the text */
	stride = nseq > 1 ? ((int64_t)ntok - body) / (nseq - 1) : 0;
	for (s = 0; s < nseq; s++) {
		int32_t *d = out->ids + s * seqlen;
		const int32_t *src = toks + s * stride;

		if (bos >= 0)
			*d++ = bos;
		for (j = 0; j < body; j++)
			d[j] = src[j];
	}
	free(toks);
	out->nseq = nseq;
	out->seqlen = seqlen;
	snprintf(out->source, sizeof(out->source), "text");
	qf_calib_hash(out);
	return 0;
}
