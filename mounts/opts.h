/*
 * opts.h - the -o option list of `quantfs mount` and mount.quantfs,
 * parsed and validated without mounting anything, so that the unit tests
 * and a fuzz target call the same code main() does.
 */
#ifndef QF_MNT_OPTS_H
#define QF_MNT_OPTS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"
#include "fs.h"

struct qf_mnt_opts {
	struct qf_fs_opts fs;		/* its strings point at the fields
					 * below; fs.src is the caller's */
	char *cache_dir;		/* absolute, or NULL: the default */
	char *calib;			/* absolute, or NULL: sampled sets */
	char *calib_dir;		/* absolute, or NULL */
	char *mixed_table;		/* lists with ',' (given with ':') */
	char *mixed_roles;
	char *mixed_ratio;
	char *remote;			/* s3://BUCKET[/PREFIX], or NULL */
	char *remote_endpoint;
	char *remote_region;
	char *remote_creds;		/* absolute, or NULL */
	struct qf_buf fuse;		/* the FUSE -o string */
	int threads;			/* most FUSE worker threads */
	bool debug;			/* -o debug: log debug lines */
	bool rw;			/* rw was given: ignored, read-only */
};

/*
 * Defaults: 16 threads, FUSE options "ro,fsname=quantfs,subtype=quantfs,
 * default_permissions".  Returns 0 or -ENOMEM; free with
 * qf_mnt_opts_free() either way.
 */
int qf_mnt_opts_init(struct qf_mnt_opts *mo);
void qf_mnt_opts_free(struct qf_mnt_opts *mo);

/*
 * Parse one comma-separated -o list into mo (several lists may follow
 * one another; a later value replaces an earlier one).  Relative paths
 * (cache, calib, calib_dir) are made absolute against cwd, the directory
 * `quantfs mount` ran in (NULL: refuse relative paths); nothing on disk
 * is looked at.  fstab and mount(8) words that mean nothing to a
 * read-only FUSE filesystem are accepted and dropped; FUSE's own options
 * are checked and appended to mo->fuse; anything else is refused.
 * Returns 0, -EINVAL with why (the option, its value and what is wrong),
 * or -ENOMEM.  On an error mo holds what was parsed before it.
 */
int qf_mnt_opts_parse(struct qf_mnt_opts *mo, const char *list,
		      const char *cwd, char *why, size_t cap);

/*
 * The strict scalar parsers every numeric option goes through.  The
 * whole string must be the number: no sign, blanks, or trailing bytes.
 * Returns 0 or -EINVAL (*out untouched; sizes also -ERANGE).
 */
/* Decimal digits, value in [min, max]. */
int qf_mnt_parse_uint(const char *s, uint64_t min, uint64_t max,
		      uint64_t *out);
/* Decimal (with '.' and an exponent), finite, in [min, max]. */
int qf_mnt_parse_double(const char *s, double min, double max, double *out);
/* Decimal digits with an optional K, M, G or T (binary, either case)
 * then an optional B: "123", "64K", "256M", "4GB"; -ERANGE for 2^64
 * bytes or more (never wrapped). */
int qf_mnt_parse_size(const char *s, uint64_t *out);

/*
 * path, or cwd/path when path is relative, without "." components or
 * repeated slashes (".." stays: the disk decides what it means).  Caller
 * owns the result; NULL when relative without cwd, or out of memory.
 */
char *qf_mnt_abspath(const char *path, const char *cwd);

#endif /* QF_MNT_OPTS_H */
