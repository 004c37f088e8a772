/*
 * fuzz_main.c - replay driver for the fuzz targets, after systemd's
 * fuzz-main.c: runs LLVMFuzzerTestOneInput on every file given, or in the
 * directories given (sorted), each as an exact-size heap copy so ASan
 * sees any over-read.  Linked into the targets when they are not built
 * for libFuzzer; `meson test` replays the corpora with it.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

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
	copy = malloc(b.len ? b.len : 1);
	if (copy) {
		if (b.len)
			memcpy(copy, b.data, b.len);
		LLVMFuzzerTestOneInput(copy, b.len);
	}
	free(copy);
	qf_buf_release(&b);
	return copy ? 0 : -ENOMEM;
}

static int run_dir(const char *path, int *count)
{
	struct dirent **ents;
	char sub[4096];
	int i, n, ret = 0;

	n = scandir(path, &ents, NULL, alphasort);
	if (n < 0) {
		fprintf(stderr, "cannot read '%s'\n", path);
		return -1;
	}
	for (i = 0; i < n; i++) {
		if (ents[i]->d_name[0] != '.') {
			snprintf(sub, sizeof(sub), "%s/%s", path,
				 ents[i]->d_name);
			if (run_file(sub) < 0)
				ret = -1;
			else
				(*count)++;
		}
		free(ents[i]);
	}
	free(ents);
	return ret;
}

int main(int argc, char **argv)
{
	struct stat st;
	int count = 0, ret = 0, i;

	for (i = 1; i < argc; i++) {
		if (stat(argv[i], &st) < 0) {
			fprintf(stderr, "cannot stat '%s'\n", argv[i]);
			ret = 1;
		} else if (S_ISDIR(st.st_mode)) {
			if (run_dir(argv[i], &count) < 0)
				ret = 1;
		} else if (run_file(argv[i]) < 0) {
			ret = 1;
		} else {
			count++;
		}
	}
	printf("%d inputs ran\n", count);
	return ret;
}
