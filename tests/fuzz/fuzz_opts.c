/*
 * fuzz_opts.c - fuzz the -o option parser of quantfs mount
 * (mounts/opts.c) and its scalar parsers.
 *
 * The input is one option list (cut at a NUL); its length's parity picks
 * whether a working directory is known.  Whatever parses must leave every
 * field in its documented range, every path absolute and clean, and the
 * FUSE string starting with the fixed options; a refusal must say why in
 * one line.  A libFuzzer target (-Dfuzz=true); otherwise linked with
 * fuzz_main.c, which replays corpus/opts/.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "opts.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUSE_FIXED "ro,fsname=quantfs,subtype=quantfs,default_permissions"

/* Absolute, no empty or "." component, no trailing slash but "/". */
static void check_path(const char *p)
{
	size_t n;

	if (!p)
		return;
	n = strlen(p);
	QF_ASSERT(p[0] == '/');
	QF_ASSERT(!strstr(p, "//") && !strstr(p, "/./"));
	QF_ASSERT(n == 1 || p[n - 1] != '/');
	QF_ASSERT(n < 2 || strcmp(p + n - 2, "/."));
}

/* How many of the comma-separated options in s are exactly opt. */
static int count_opt(const char *s, const char *opt)
{
	size_t n = strlen(opt);
	int k = 0;

	while (*s) {
		size_t len = strcspn(s, ",");

		k += len == n && !strncmp(s, opt, n);
		s += len;
		if (*s)
			s++;
	}
	return k;
}

static void check_parsed(const struct qf_mnt_opts *mo)
{
	const struct qf_fs_opts *f = &mo->fs;

	QF_ASSERT(mo->threads >= 1 && mo->threads <= 1024);
	QF_ASSERT(f->calib_n == 0 || (f->calib_n >= 1 && f->calib_n <= 65536));
	QF_ASSERT(f->calib_len == 0 ||
		  (f->calib_len >= 2 && f->calib_len <= 131072));
	QF_ASSERT(f->brecq_iters >= -1 && f->brecq_iters <= 1000000);
	QF_ASSERT(f->brecq_batch >= 0 && f->brecq_batch <= 4096);
	QF_ASSERT(f->max_jobs >= 0 && f->max_jobs <= 64);
	QF_ASSERT(f->cache_map == 0 ||
		  (f->cache_map >= 1ULL << 20 && f->cache_map <= 1ULL << 44));
	QF_ASSERT(f->cache_max <= 1ULL << 50);
	QF_ASSERT(f->timeout == 0 ||
		  (isfinite(f->timeout) && f->timeout > 0 &&
		   f->timeout <= 1e9));
	QF_ASSERT(f->io >= QF_IO_AUTO && f->io <= QF_IO_CACHE);
	QF_ASSERT(!f->backend || !strcmp(f->backend, "cpu") ||
		  !strcmp(f->backend, "cuda") || !strcmp(f->backend, "auto"));
	QF_ASSERT(f->cache_dir == mo->cache_dir && f->calib == mo->calib &&
		  f->calib_dir == mo->calib_dir);
	check_path(f->cache_dir);
	check_path(f->calib);
	check_path(f->calib_dir);
	QF_ASSERT(!f->mixed_table || !strchr(f->mixed_table, ':'));
	QF_ASSERT(!f->mixed_ratio || !strchr(f->mixed_ratio, ':'));
	QF_ASSERT(!strncmp(mo->fuse.data, FUSE_FIXED, strlen(FUSE_FIXED)));
	QF_ASSERT(count_opt(mo->fuse.data, "default_permissions") == 1);
	QF_ASSERT(count_opt(mo->fuse.data, "ro") == 1);
	QF_ASSERT(count_opt(mo->fuse.data, "rw") == 0);
}

/* The scalar parsers on the raw text: what they take is what they say. */
static void check_scalars(const char *s)
{
	uint64_t u, z;
	double d;
	char *p;

	if (qf_mnt_parse_uint(s, 0, UINT64_MAX, &u) == 0) {
		QF_ASSERT(s[0] && strspn(s, "0123456789") == strlen(s));
		QF_ASSERT(qf_mnt_parse_size(s, &z) == 0 && z == u);
	}
	if (qf_mnt_parse_size(s, &z) == 0)
		QF_ASSERT(s[0] >= '0' && s[0] <= '9');
	if (qf_mnt_parse_double(s, -1e300, 1e300, &d) == 0)
		QF_ASSERT(isfinite(d) && !strpbrk(s, "xXiInN \t"));
	p = qf_mnt_abspath(s, "/fuzz/cwd");
	if (p) {
		check_path(p);
		free(p);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct qf_mnt_opts mo;
	char why[512];
	char *s;
	int ret;

	s = malloc(size + 1);
	if (!s)
		return 0;
	memcpy(s, data, size);
	s[size] = '\0';
	check_scalars(s);
	QF_ASSERT(qf_mnt_opts_init(&mo) == 0);
	ret = qf_mnt_opts_parse(&mo, s, size & 1 ? NULL : "/fuzz/cwd", why,
				sizeof(why));
	QF_ASSERT(ret == 0 || ret == -EINVAL || ret == -ENOMEM);
	if (ret == -EINVAL)
		QF_ASSERT(why[0] && !strchr(why, '\n') &&
			  strlen(why) < sizeof(why));
	if (ret == 0) {
		QF_ASSERT(why[0] == '\0');
		check_parsed(&mo);
	}
	qf_mnt_opts_free(&mo);
	free(s);
	return 0;
}
