/*
 * cli_io.h - raw-file I/O and argument checks of the small test CLIs
 * (gptq_cli, awq_cli, gguf_cli, mixed_cli) that the numpy oracles drive.
 * An I/O failure exits 2 with the path named; a library error exits 1.
 */
#ifndef QF_CLI_IO_H
#define QF_CLI_IO_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

static inline void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (!p) {
		fprintf(stderr, "out of memory\n");
		exit(2);
	}
	return p;
}

/* Exactly n bytes of path, in a new buffer. */
static inline void *slurp(const char *path, size_t n)
{
	void *p = xmalloc(n);
	FILE *f = fopen(path, "rb");

	if (!f || (n && fread(p, 1, n, f) != n)) {
		fprintf(stderr, "cannot read %s\n", path);
		exit(2);
	}
	fclose(f);
	return p;
}

/* n bytes of p into path. */
static inline void dump_path(const char *path, const void *p, size_t n)
{
	FILE *f = fopen(path, "wb");

	if (!f || (n && fwrite(p, 1, n, f) != n) || fclose(f)) {
		fprintf(stderr, "cannot write %s\n", path);
		exit(2);
	}
}

/* n bytes of p into dir/name. */
static inline void dump(const char *dir, const char *name, const void *p,
			size_t n)
{
	char path[4096];

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	dump_path(path, p, n);
}

/* text into dir/res.txt */
static inline void dump_text(const char *dir, const char *text)
{
	dump(dir, "res.txt", text, strlen(text));
}

/* A library error: the call's name and the reason, exit 1. */
static inline void check(int ret, const char *what)
{
	if (ret < 0) {
		fprintf(stderr, "%s: %s\n", what, qf_strerror(ret));
		exit(1);
	}
}

/* At least n arguments, else exit 2. */
static inline void need(int argc, int n)
{
	if (argc < n) {
		fprintf(stderr, "usage: see the file header\n");
		exit(2);
	}
}

#endif
