/*
 * fuzz_safetensors.c - fuzz qf_st_parse() with whole files.
 *
 * Built with -DQF_LIBFUZZER and -fsanitize=fuzzer this is a libFuzzer
 * target.  Without it, main() replays the files and directories named on
 * the command line (systemd's fuzz-main.c does the same), so the seed
 * corpus in corpus/safetensors/ runs as a plain test under meson.
 *
 * Inputs are handed over in a buffer of exactly their size, so ASan sees
 * any read past the end of the header.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "quant.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* What a successful parse promises its callers. */
static void check_header(const struct qf_st_header *h, size_t size)
{
	uint64_t sum = 0;
	size_t i;
	int d;

	QF_ASSERT(h->data_off == 8 + h->header_len);
	QF_ASSERT(h->data_off + h->data_len == size);
	QF_ASSERT(h->n == 0 || h->t);
	for (i = 0; i < h->n; i++) {
		const struct qf_st_tensor *t = &h->t[i];

		QF_ASSERT(t->name && t->name[0]);
		QF_ASSERT(i == 0 || strcmp(h->t[i - 1].name, t->name) < 0);
		QF_ASSERT(qf_st_find(h, t->name) == t);
		QF_ASSERT((unsigned)t->dtype < QF_DT_COUNT);
		QF_ASSERT(t->ndim >= 0 && t->ndim <= QF_ST_MAX_DIMS);
		for (d = 0; d < t->ndim; d++)
			QF_ASSERT(t->shape[d] >= 0);
		QF_ASSERT(t->begin <= h->data_len);
		QF_ASSERT(t->nbytes <= h->data_len - t->begin);
		QF_ASSERT(t->nbytes ==
			  qf_st_numel(t) * qf_dtype_size(t->dtype));
		sum += t->nbytes;
	}
	/* No hole and no overlap inside the data area means they tile it. */
	QF_ASSERT(sum == h->data_len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct qf_st_header h;
	const char *why = NULL;
	int ret;

	ret = qf_st_parse(data, size, size, &h, &why);
	if (ret < 0) {
		QF_ASSERT(why != NULL);
		QF_ASSERT(h.t == NULL && h.n == 0 && h.metadata == NULL);
		return 0;
	}
	QF_ASSERT(ret == 0);
	check_header(&h, size);
	qf_st_header_free(&h);
	return 0;
}

#ifndef QF_LIBFUZZER
/* Corpus files are tiny; this only bounds a stray argument. */
#define REPLAY_MAX (64u << 20)

static int run_file(const char *path)
{
	struct qf_buf b = QF_BUF_INIT;
	uint8_t *copy;
	int ret;

	ret = qf_read_file(path, REPLAY_MAX, &b);
	if (ret < 0) {
		fprintf(stderr, "cannot read '%s': %s\n", path,
			qf_strerror(ret));
		return ret;
	}
	/* An exact-size copy: the buffer has slack ASan would not flag. */
	copy = malloc(b.len ? b.len : 1);
	if (!copy) {
		qf_buf_release(&b);
		return -ENOMEM;
	}
	if (b.len)
		memcpy(copy, b.data, b.len);
	LLVMFuzzerTestOneInput(copy, b.len);
	free(copy);
	qf_buf_release(&b);
	return 0;
}

static int run_dir(const char *path, int *count)
{
	struct dirent *de;
	char *sub;
	DIR *d;
	int ret = 0;

	d = opendir(path);
	if (!d) {
		fprintf(stderr, "cannot open '%s'\n", path);
		return -errno;
	}
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		sub = malloc(strlen(path) + strlen(de->d_name) + 2);
		if (!sub) {
			ret = -ENOMEM;
			break;
		}
		sprintf(sub, "%s/%s", path, de->d_name);
		ret = run_file(sub);
		free(sub);
		if (ret < 0)
			break;
		(*count)++;
	}
	closedir(d);
	return ret;
}

int main(int argc, char **argv)
{
	struct stat st;
	int count = 0;
	int i;

	for (i = 1; i < argc; i++) {
		if (stat(argv[i], &st) < 0) {
			fprintf(stderr, "cannot stat '%s'\n", argv[i]);
			return 1;
		}
		if (S_ISDIR(st.st_mode)) {
			if (run_dir(argv[i], &count) < 0)
				return 1;
		} else {
			if (run_file(argv[i]) < 0)
				return 1;
			count++;
		}
	}
	printf("%d inputs ran\n", count);
	return 0;
}
#endif
