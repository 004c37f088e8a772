/*
 * fuzz_spec.c - fuzz the variant-name parser (quant/spec.c).
 *
 * Whatever parses must print back to exactly the input bytes, since only
 * canonical spellings are accepted.  Built with -DQF_LIBFUZZER and
 * -fsanitize=fuzzer for libFuzzer; otherwise main() replays the files and
 * directories named on the command line (the corpus under meson test).
 */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "quant.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct qf_spec s;
	const char *why = NULL;
	char name[256];
	char out[256];
	int n;

	if (size >= sizeof(name))
		size = sizeof(name) - 1;
	memcpy(name, data, size);
	name[size] = '\0';
	if (qf_spec_parse(name, &s, &why) != 0) {
		QF_ASSERT(why != NULL);
		return 0;
	}
	n = qf_spec_print(&s, out, sizeof(out));
	QF_ASSERT(n >= 0 && (size_t)n == strlen(name));
	QF_ASSERT(strcmp(out, name) == 0);
	return 0;
}

#ifndef QF_LIBFUZZER
static int run_file(const char *path)
{
	struct qf_buf b = QF_BUF_INIT;
	int ret;

	ret = qf_read_file(path, 1 << 20, &b);
	if (ret < 0) {
		fprintf(stderr, "cannot read '%s': %s\n", path,
			qf_strerror(ret));
		return ret;
	}
	LLVMFuzzerTestOneInput((const uint8_t *)(b.data ? b.data : ""),
			       b.len);
	qf_buf_release(&b);
	return 0;
}

static int run_dir(const char *path, int *count)
{
	struct dirent **ents;
	char sub[4096];
	int i, n;
	int ret = 0;

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
	int count = 0;
	int ret = 0;
	int i;

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
#endif
