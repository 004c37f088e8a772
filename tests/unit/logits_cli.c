/*
 * logits_cli.c - quantfs's forward pass from the command line, for the
 * per-architecture tests (tests/arch/archtest.py), which hold the numpy
 * oracles.
 *
 * usage: logits_cli MODEL_DIR IDS.i32 NSEQ SEQLEN OUT.f32
 * IDS: NSEQ * SEQLEN int32 little-endian token ids; OUT receives the
 * logits [NSEQ * SEQLEN, vocab] as float32 little-endian (qf_tf_logits).
 * Exit 3 when the architecture is not computed (reason on stderr), 1 on
 * other failures, 2 on bad arguments or I/O.
 */
#include <stdio.h>
#include <stdlib.h>

#include "cli_io.h"
#include "nn.h"

int main(int argc, char **argv)
{
	struct qf_tf_config c;
	struct qf_model *m;
	int32_t *ids;
	float *logits;
	int nseq, seqlen, ret;

	need(argc, 6);
	nseq = atoi(argv[3]);
	seqlen = atoi(argv[4]);
	if (nseq <= 0 || seqlen <= 0 || (int64_t)nseq * seqlen > 1 << 20) {
		fprintf(stderr, "bad NSEQ / SEQLEN\n");
		return 2;
	}
	check(qf_model_open(argv[1], &m), "qf_model_open");
	ret = qf_tf_config_parse(m, &c);
	if (ret == QF_EUNSUPPORTED)
		return 3;
	check(ret, "qf_tf_config_parse");
	ids = slurp(argv[2], sizeof(*ids) * (size_t)nseq * (size_t)seqlen);
	logits = xmalloc(sizeof(*logits) * (size_t)nseq * (size_t)seqlen *
			 (size_t)c.vocab);
	check(qf_tf_logits(m, &c, ids, nseq, seqlen, logits), "qf_tf_logits");
	dump_path(argv[5], logits, sizeof(*logits) * (size_t)nseq *
		  (size_t)seqlen * (size_t)c.vocab);
	free(logits);
	free(ids);
	qf_model_close(m);
	return 0;
}
