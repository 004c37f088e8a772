/*
 * report_i.h - what the files of `quantfs report` share inside mounts/:
 * report.c (the command, production and measuring) calls report_store.c
 * (digests, result keys, the result cache), report_out.c (figures,
 * report.json and report.md), report_svg.c (the plot) and report_gguf.c
 * (variants served only as model.gguf); none of them calls back.
 */
#ifndef QF_REPORT_I_H
#define QF_REPORT_I_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"

struct dirent;

/* One row of the report: the source or a variant. */
struct row {
	char *name;			/* "original" or the variant name */
	char *dir;			/* MNT/<model>/<name> */
	char *why;			/* why it was not measured, or NULL */
	bool cached;			/* figures from the result cache */
	bool sized;			/* file_bytes, weight_bytes measured */
	bool gguf;			/* weights only as model.gguf */
	uint64_t file_bytes;		/* the *.safetensors files (or
					   model.gguf) */
	uint64_t weight_bytes;		/* their tensor data: memory at load */
	double prod_s;			/* calibration seconds; NAN: n/a */
	double ppl;			/* NAN: n/a (as every double below) */
	double nll;			/* nats per token */
	int64_t tokens;			/* predicted tokens */
	int windows;
	double eval_s;			/* perplexity forward passes */
	double kld;			/* --kld: mean KL(source || it) */
	double top1;			/* --kld: same top token, share */
	double tok_s;			/* tokens / eval_s */
	int mc_n;			/* questions scored, 0: none */
	int mc_correct;
	int mc_correct_raw;
	double acc;			/* length-normalized */
	double acc_raw;			/* summed log-likelihood */
	char key[65];			/* result cache key (hex) */
	/* derived from the source row */
	double ratio;			/* source weight bytes / weight bytes */
	double d_ppl;			/* relative changes */
	double d_acc;
	double d_bytes;
	bool front;			/* on the Pareto front */
};

/* What every row is measured with: the command line and its files. */
struct inputs {
	const char *text_path;
	const char *mc_path;		/* NULL: no accuracy */
	struct qf_buf text;
	struct qf_buf mc;
	uint8_t text_sha[32];
	uint8_t mc_sha[32];
	int ctx;
	int limit;			/* 0: every question */
	bool kld;			/* --kld: divergence from the source */
	const char *src_dir;		/* the source row's, once measured */
	char src_key[65];		/* its result key ("" before) */
	char *cache;			/* <cache>/reports */
	bool tty;
};

/* scandir() filter: the *.safetensors files of a variant directory. */
int qf_report_is_weights(const struct dirent *d);

/*
 * Digest of model directory r->dir into out (and its sizes into r).
 * Reading quantization.json of a calibrated variant waits for its
 * production: run this in the producer thread.  Returns 0 or -errno,
 * or the GGUF reader's error.
 */
int qf_report_dir_digest(struct row *r, uint8_t out[32]);
/* Result key (hex) of the variant digest and every input of *in. */
void qf_report_result_key(const struct inputs *in, const uint8_t digest[32],
			  char hex[65]);
/* True when r's figures were found in the result cache (and set). */
bool qf_report_cache_load(const struct inputs *in, struct row *r);
/* Store r's figures under r->key.  Returns 0, -errno, -ENOMEM. */
int qf_report_cache_store(const struct inputs *in, const struct row *r);

/* Relative changes, ratios and the Pareto front against rows[0]. */
void qf_report_derive(struct row *rows, size_t n);
/*
 * report.md at md, with report.json and report.svg next to it; says what
 * it wrote, or what it could not write.  Returns 0, -errno, -ENOMEM.
 */
int qf_report_write(const char *md, const char *model,
		    const struct inputs *in, const struct row *rows, size_t n);

/* Indices of the front's rows into out [n], by bytes ascending. */
size_t qf_report_front_order(const struct row *rows, size_t n, size_t *out);

/* report.svg at path.  Returns 0, -errno, -EIO, -ENOMEM. */
int qf_report_svg(const char *path, const char *model, const struct row *rows,
		  size_t n);

/*
 * Hash model.gguf at path into h: its size and every byte before the
 * tensor data (metadata and tensor infos, validated by qf_gguf_open());
 * sets r's file_bytes (the file) and weight_bytes (its tensor data).
 * Returns 0, -errno, QF_EFORMAT, QF_EUNSUPPORTED, QF_ECORRUPT, -ENOMEM.
 */
int qf_report_hash_gguf(struct qf_sha256 *h, const char *path,
			struct row *r);

/*
 * A model directory qf_model_open() reads, made from r->dir/model.gguf
 * (qf_gguf_to_model_dir()) in a new directory under parent.  Caller owns
 * *tmp; remove it with qf_report_gguf_remove().  *why (if set) says what
 * was wrong with the file.  Returns 0, -errno, or the conversion's error.
 */
int qf_report_gguf_model(const struct row *r, const char *parent, char **tmp,
			 const char **why);
/* Remove the directory made by qf_report_gguf_model() and free tmp. */
void qf_report_gguf_remove(char *tmp);

#endif /* QF_REPORT_I_H */
