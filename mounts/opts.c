/*
 * opts.c - the -o options of quantfs mount.  Every numeric value goes
 * through one of three strict parsers (integer, number, size), relative
 * paths become absolute against the directory the command ran in (the
 * daemon changes to / when it detaches, and the cache, its locks and read
 * files must all land in one place), FUSE's own options pass by name, and
 * anything else is refused with the option and value named.
 *
 * Pure: nothing on disk is looked at and nothing is logged; main() reports
 * why and exits, the unit test and fuzz_opts call the same code.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mixed.h"
#include "opts.h"
#include "remote.h"

#define SECONDS_MAX 1e9			/* timeout: about 31 years */

int qf_mnt_parse_uint(const char *s, uint64_t min, uint64_t max,
		      uint64_t *out)
{
	unsigned long long v;
	char *end;

	/* strtoull alone takes blanks, a sign (and negates), and "12abc" */
	if (!s || *s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || *end || v < min || v > max)
		return -EINVAL;
	*out = v;
	return 0;
}

int qf_mnt_parse_double(const char *s, double min, double max, double *out)
{
	char *end;
	double v;

	/* strtod alone takes blanks, hex, "inf", "nan" and "1x" */
	if (!s || s[strspn(s, "0123456789.eE+-")] ||
	    !strpbrk(s, "0123456789"))
		return -EINVAL;
	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || *end || !isfinite(v) || !(v >= min) ||
	    !(v <= max))
		return -EINVAL;
	*out = v;
	return 0;
}

int qf_mnt_parse_size(const char *s, uint64_t *out)
{
	unsigned long long v;
	unsigned shift = 0;
	char *end;

	if (!s || *s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno && errno != ERANGE)
		return -EINVAL;
	switch (*end) {
	case 'k': case 'K': shift = 10; end++; break;
	case 'm': case 'M': shift = 20; end++; break;
	case 'g': case 'G': shift = 30; end++; break;
	case 't': case 'T': shift = 40; end++; break;
	}
	if (*end == 'B' || *end == 'b')
		end++;
	if (*end)
		return -EINVAL;
	/* 16777216T is 2^64: it would wrap to 0 */
	if (errno == ERANGE || v > (UINT64_MAX >> shift))
		return -ERANGE;
	*out = (uint64_t)v << shift;
	return 0;
}

/* Append the components of s to b ("/..." already), skipping "." and
 * empty ones. */
static int add_components(struct qf_buf *b, const char *s)
{
	size_t n;

	while (*s) {
		n = strcspn(s, "/");
		if (n && !(n == 1 && s[0] == '.')) {
			if (b->len > 1 && qf_buf_add(b, "/", 1) < 0)
				return -ENOMEM;
			if (qf_buf_add(b, s, n) < 0)
				return -ENOMEM;
		}
		s += n;
		if (*s)
			s++;
	}
	return 0;
}

char *qf_mnt_abspath(const char *path, const char *cwd)
{
	struct qf_buf b = QF_BUF_INIT;

	if (!path || (path[0] != '/' && (!cwd || cwd[0] != '/')))
		return NULL;
	if (qf_buf_add(&b, "/", 1) < 0 ||
	    (path[0] != '/' && add_components(&b, cwd) < 0) ||
	    add_components(&b, path) < 0) {
		qf_buf_release(&b);
		return NULL;
	}
	return qf_buf_detach(&b, NULL);
}

/* ------------------------------------------------------------------ */
/* the options                                                        */

enum kind {
	K_FLAG,			/* ours, without a value */
	K_INT,			/* int field, [min, max] */
	K_U64,			/* uint64_t field, [min, max] */
	K_SIZE,			/* uint64_t field, a size in [min, max] */
	K_SECONDS,		/* double field, (0, SECONDS_MAX] */
	K_PATH,			/* char * field, made absolute */
	K_ENUM,			/* int field: the index in words */
	K_TEXT,			/* char * field, checked by take_text */
	K_WORD,			/* const char * field: one of words */
	K_MIXED,		/* char * field, a mixed_* list */
	K_FUSE_FLAG,		/* FUSE's, passed on */
	K_FUSE_UINT,		/* FUSE's, name=N in [min, max] */
	K_FUSE_STR,		/* FUSE's, name=non-empty text */
};

struct opt_def {
	const char *name;
	enum kind kind;
	size_t off;			/* field in struct qf_mnt_opts */
	uint64_t min;
	uint64_t max;
	const char *const *words;	/* K_ENUM, K_WORD: NULL-terminated */
};

static const char *const io_words[] = { "auto", "direct", "cache", NULL };
static const char *const backend_words[] = { "cpu", "cuda", "auto", NULL };
/* a K_SIZE with words: auto, none, then sizes (0 is none) */
static const char *const bound_words[] = { "auto", "none", NULL };
static const char *const role_words[] = { "produce", "cheap", "read", NULL };

#define F(field) offsetof(struct qf_mnt_opts, field)

static const struct opt_def defs[] = {
	{ "cache", K_PATH, F(cache_dir), 0, 0, NULL },
	{ "cache_map", K_SIZE, F(fs.cache_map), 1ULL << 20, 1ULL << 44, NULL },
	{ "cache_max", K_SIZE, F(fs.cache_max), 0, 1ULL << 50, bound_words },
	{ "timeout", K_SECONDS, F(fs.timeout), 0, 0, NULL },
	{ "threads", K_INT, F(threads), 1, 1024, NULL },
	{ "io", K_ENUM, F(fs.io), 0, 0, io_words },
	{ "calib", K_PATH, F(calib), 0, 0, NULL },
	{ "calib_dir", K_PATH, F(calib_dir), 0, 0, NULL },
	{ "calib_n", K_INT, F(fs.calib_n), 1, 65536, NULL },
	{ "calib_len", K_INT, F(fs.calib_len), 2, 131072, NULL },
	{ "calib_seed", K_U64, F(fs.calib_seed), 0, UINT64_MAX, NULL },
	{ "calib_mem", K_SIZE, F(fs.calib_mem), 1ULL << 20, 1ULL << 40, NULL },
	{ "backend", K_WORD, F(fs.backend), 0, 0, backend_words },
	{ "brecq_iters", K_INT, F(fs.brecq_iters), 0, 1000000, NULL },
	{ "brecq_batch", K_INT, F(fs.brecq_batch), 1, 4096, NULL },
	{ "mixed_table", K_MIXED, F(mixed_table), 0, 0, NULL },
	{ "mixed_roles", K_MIXED, F(mixed_roles), 0, 0, NULL },
	{ "mixed_ratio", K_MIXED, F(mixed_ratio), 0, 0, NULL },
	{ "max_jobs", K_INT, F(fs.max_jobs), 1, 64, NULL },
	{ "max_productions", K_INT, F(fs.max_productions), 1, 1024, NULL },
	{ "remote", K_TEXT, F(remote), 0, 0, NULL },
	{ "remote_endpoint", K_TEXT, F(remote_endpoint), 0, 0, NULL },
	{ "remote_region", K_TEXT, F(remote_region), 0, 0, NULL },
	{ "remote_credentials", K_PATH, F(remote_creds), 0, 0, NULL },
	{ "remote_role", K_ENUM, F(fs.remote_role), 0, 0, role_words },
	{ "remote_lease", K_SECONDS, F(fs.remote_lease), 0, 0, NULL },
	{ "debug", K_FLAG, F(debug), 0, 0, NULL },
	{ "rw", K_FLAG, F(rw), 0, 0, NULL },
	/* libfuse's (mount.fuse3(8)); blkdev and blksize need a block
	 * device, and every mount already has default_permissions */
	{ "allow_other", K_FUSE_FLAG, 0, 0, 0, NULL },
	{ "allow_root", K_FUSE_FLAG, 0, 0, 0, NULL },
	{ "auto_unmount", K_FUSE_FLAG, 0, 0, 0, NULL },
	{ "default_permissions", K_FUSE_FLAG, 0, 0, 0, NULL },
	{ "max_read", K_FUSE_UINT, 0, 1, UINT32_MAX, NULL },
	{ "fsname", K_FUSE_STR, 0, 0, 0, NULL },
	{ "subtype", K_FUSE_STR, 0, 0, 0, NULL },
	{ "user", K_FUSE_STR, 0, 0, 0, NULL },
	{ "context", K_FUSE_STR, 0, 0, 0, NULL },
	{ "fscontext", K_FUSE_STR, 0, 0, 0, NULL },
	{ "defcontext", K_FUSE_STR, 0, 0, 0, NULL },
	{ "rootcontext", K_FUSE_STR, 0, 0, 0, NULL },
};

#undef F

/* Options mount(8) and fstab lines carry that a read-only FUSE
 * filesystem has nothing to do with (ro is always on). */
static bool mount_noise(const char *opt)
{
	static const char *const words[] = {
		"ro", "defaults", "auto", "noauto", "nofail", "_netdev",
		"user", "users", "nouser", "owner", "group", "dev", "nodev",
		"suid", "nosuid", "exec", "noexec", "atime", "noatime",
		"relatime", "norelatime", "strictatime", "nostrictatime",
		"diratime", "nodiratime", "lazytime", "nolazytime", "sync",
		"async", "dirsync", "loud", "silent",
	};
	size_t i;

	for (i = 0; i < sizeof(words) / sizeof(words[0]); i++)
		if (!strcmp(opt, words[i]))
			return true;
	return false;
}

/* x-systemd.automount, x-gvfs-show, comment=...: for other programs. */
static bool mount_comment(const char *opt)
{
	return !strncmp(opt, "x-", 2) || !strcmp(opt, "comment");
}

static const struct opt_def *find_def(const char *name)
{
	size_t i;

	for (i = 0; i < sizeof(defs) / sizeof(defs[0]); i++)
		if (!strcmp(defs[i].name, name))
			return &defs[i];
	return NULL;
}

static void *field(struct qf_mnt_opts *mo, const struct opt_def *d)
{
	return (char *)mo + d->off;
}

static int set_string(struct qf_mnt_opts *mo, const struct opt_def *d,
		      char *s)
{
	char **f = field(mo, d);

	if (!s)
		return -ENOMEM;
	free(*f);
	*f = s;
	return 0;
}

/* mixed_*: ':' stands for ',' inside one -o entry; the quant parser
 * checks the list now rather than at the first variant. */
static int take_mixed(struct qf_mnt_opts *mo, const struct opt_def *d,
		      const char *val, char *why, size_t cap)
{
	struct qf_mixed_static t;
	struct qf_mixed_ratio r;
	char **roles = NULL;
	char w[256] = "";
	char *list, *p;
	int ret;

	list = strdup(val);
	if (!list)
		return -ENOMEM;
	for (p = list; (p = strchr(p, ':')); )
		*p = ',';
	if (!strcmp(d->name, "mixed_table")) {
		qf_mixed_static_defaults(&t);
		ret = qf_mixed_static_parse(list, &t, w, sizeof(w));
	} else if (!strcmp(d->name, "mixed_roles")) {
		ret = qf_mixed_overrides_parse(list, &roles, w, sizeof(w));
		qf_mixed_overrides_free(roles);
	} else {
		qf_mixed_ratio_defaults(&r);
		ret = qf_mixed_ratio_parse(list, &r, w, sizeof(w));
	}
	if (ret == -ENOMEM) {
		free(list);
		return ret;
	}
	if (ret < 0) {
		snprintf(why, cap, "%s=%s: %s", d->name, val,
			 w[0] ? w : qf_strerror(ret));
		free(list);
		return -EINVAL;
	}
	return set_string(mo, d, list);
}

static int take_fuse(struct qf_mnt_opts *mo, const struct opt_def *d,
		     const char *val, char *why, size_t cap)
{
	uint64_t u;

	if (d->kind == K_FUSE_UINT &&
	    qf_mnt_parse_uint(val, d->min, d->max, &u) < 0) {
		snprintf(why, cap, "%s=%s: an integer from %llu to %llu is "
			 "expected", d->name, val, (unsigned long long)d->min,
			 (unsigned long long)d->max);
		return -EINVAL;
	}
	if (!strcmp(d->name, "default_permissions"))
		return 0;	/* always there */
	if (qf_buf_addf(&mo->fuse, ",%s%s%s", d->name, val ? "=" : "",
			val ? val : "") < 0)
		return -ENOMEM;
	return 0;
}

static int take_word(struct qf_mnt_opts *mo, const struct opt_def *d,
		     const char *val, char *why, size_t cap)
{
	int i;

	for (i = 0; d->words[i]; i++) {
		if (strcmp(val, d->words[i]))
			continue;
		if (d->kind == K_ENUM)
			*(int *)field(mo, d) = i;
		else
			*(const char **)field(mo, d) = d->words[i];
		return 0;
	}
	snprintf(why, cap, "%s=%s: use %s, %s or %s", d->name, val,
		 d->words[0], d->words[1], d->words[2]);
	return -EINVAL;
}

static int take_path(struct qf_mnt_opts *mo, const struct opt_def *d,
		     const char *val, const char *cwd, char *why, size_t cap)
{
	char *abs;

	if (val[0] != '/' && (!cwd || cwd[0] != '/')) {
		snprintf(why, cap, "%s=%s: a relative path, and the working "
			 "directory is unknown", d->name, val);
		return -EINVAL;
	}
	abs = qf_mnt_abspath(val, cwd);
	if (abs && strlen(abs) >= PATH_MAX) {
		snprintf(why, cap, "%s=%.64s...: the path is too long",
			 d->name, val);
		free(abs);
		return -EINVAL;
	}
	return set_string(mo, d, abs);
}

/* "0", "512", "1M", "16T": a bound in the unit it divides. */
static void size_name(uint64_t v, char *out, size_t cap)
{
	static const char *const units[] = { "", "K", "M", "G", "T" };
	unsigned u = 0;

	while (u < 4 && v && !(v & 1023)) {
		v >>= 10;
		u++;
	}
	snprintf(out, cap, "%llu%s", (unsigned long long)v, units[u]);
}

/* A numeric option: one of the three strict parsers, then the field. */
static int take_number(struct qf_mnt_opts *mo, const struct opt_def *d,
		       const char *val, char *why, size_t cap)
{
	char lo[32], hi[32];
	uint64_t u;
	double s;
	int ret;

	switch (d->kind) {
	case K_INT:
	case K_U64:
		if (qf_mnt_parse_uint(val, d->min, d->max, &u) < 0) {
			snprintf(why, cap, "%s=%s: an integer from %llu to "
				 "%llu is expected", d->name, val,
				 (unsigned long long)d->min,
				 (unsigned long long)d->max);
			return -EINVAL;
		}
		if (d->kind == K_U64)
			*(uint64_t *)field(mo, d) = u;
		else if (!u && !strcmp(d->name, "brecq_iters"))
			*(int *)field(mo, d) = -1;	/* fs: none, RTN */
		else
			*(int *)field(mo, d) = (int)u;
		return 0;
	case K_SIZE:
		if (d->words && !strcmp(val, d->words[0])) {
			*(uint64_t *)field(mo, d) = QF_CACHE_MAX_AUTO;
			return 0;
		}
		if (d->words && !strcmp(val, d->words[1])) {
			*(uint64_t *)field(mo, d) = QF_CACHE_MAX_NONE;
			return 0;
		}
		ret = qf_mnt_parse_size(val, &u);
		if (ret < 0 || u < d->min || u > d->max) {
			size_name(d->min, lo, sizeof(lo));
			size_name(d->max, hi, sizeof(hi));
			snprintf(why, cap, "%s=%s: %sa size from %s to %s is "
				 "expected (bytes, or a number with a K, M, G "
				 "or T suffix)%s", d->name, val,
				 ret == -ERANGE ? "too large (2^64 bytes or "
				 "more): " : "", lo, hi,
				 d->words ? ", auto or none" : "");
			return -EINVAL;
		}
		/* a bound of 0 keeps its old meaning: none */
		*(uint64_t *)field(mo, d) = d->words && !u ?
					    QF_CACHE_MAX_NONE : u;
		return 0;
	default:
		if (qf_mnt_parse_double(val, 0, SECONDS_MAX, &s) < 0 ||
		    !(s > 0)) {
			snprintf(why, cap, "%s=%s: a number of seconds above 0 "
				 "and at most %.0f is expected", d->name, val,
				 SECONDS_MAX);
			return -EINVAL;
		}
		*(double *)field(mo, d) = s;
		return 0;
	}
}

/* remote=s3://..., remote_endpoint=http(s)://..., remote_region=... */
static int take_text(struct qf_mnt_opts *mo, const struct opt_def *d,
		     const char *val, char *why, size_t cap)
{
	char *b, *p;
	bool ok;

	if (!strcmp(d->name, "remote")) {
		ok = qf_remote_parse_url(val, &b, &p) == 0;
		free(b);
		free(p);
		if (!ok)
			snprintf(why, cap, "remote=%s: s3://BUCKET[/PREFIX] is "
				 "expected (a bucket of 3 to 63 lower-case "
				 "letters, digits, '.' and '-')", val);
	} else if (!strcmp(d->name, "remote_endpoint")) {
		ok = (!strncmp(val, "http://", 7) ||
		      !strncmp(val, "https://", 8)) && strlen(val) < 1024 &&
		     !strpbrk(val, " @?#\"\\");
		if (!ok)
			snprintf(why, cap, "remote_endpoint=%s: http://HOST"
				 "[:PORT] or https://HOST[:PORT] is expected "
				 "(no user, query or fragment)", val);
	} else {
		ok = strlen(val) < 64 &&
		     strspn(val, "abcdefghijklmnopqrstuvwxyz0123456789-") ==
		     strlen(val);
		if (!ok)
			snprintf(why, cap, "%s=%s: a region name such as "
				 "us-east-1 is expected", d->name, val);
	}
	return ok ? set_string(mo, d, strdup(val)) : -EINVAL;
}

/* Secrets in mount options would be readable by every user (ps,
 * /proc/<pid>/cmdline, fstab): never taken, and said why. */
static bool secret_option(const char *opt)
{
	return strstr(opt, "secret") || strstr(opt, "access_key") ||
	       strstr(opt, "session_token") || strstr(opt, "password");
}

static int take_option(struct qf_mnt_opts *mo, char *opt, const char *cwd,
		       char *why, size_t cap)
{
	const struct opt_def *d;
	char *val = strchr(opt, '=');

	if (val)
		*val++ = 0;
	if (mount_comment(opt) || (!val && mount_noise(opt)))
		return 0;
	d = find_def(opt);
	if (!d && secret_option(opt)) {
		snprintf(why, cap, "'%s': credentials are never taken from "
			 "mount options (other users can read them): use the "
			 "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY variables "
			 "or a 0600 file named by remote_credentials=FILE",
			 opt);
		return -EINVAL;
	}
	if (!d) {
		if (mount_noise(opt))
			snprintf(why, cap, "%s=%s: '%s' takes no value", opt,
				 val, opt);
		else
			snprintf(why, cap, "unknown mount option '%s%s%s' (see "
				 "quantfs(1))", opt, val ? "=" : "",
				 val ? val : "");
		return -EINVAL;
	}
	if ((d->kind == K_FLAG || d->kind == K_FUSE_FLAG) && val) {
		snprintf(why, cap, "%s=%s: '%s' takes no value", opt, val, opt);
		return -EINVAL;
	}
	if (d->kind != K_FLAG && d->kind != K_FUSE_FLAG && !val) {
		snprintf(why, cap, "'%s' needs a value (%s=...)", opt, opt);
		return -EINVAL;
	}
	if (val && !*val) {
		snprintf(why, cap, "%s=: the value is empty", opt);
		return -EINVAL;
	}
	switch (d->kind) {
	case K_FLAG:
		*(bool *)field(mo, d) = true;
		return 0;
	case K_PATH:
		return take_path(mo, d, val, cwd, why, cap);
	case K_TEXT:
		return take_text(mo, d, val, why, cap);
	case K_ENUM:
	case K_WORD:
		return take_word(mo, d, val, why, cap);
	case K_MIXED:
		return take_mixed(mo, d, val, why, cap);
	case K_FUSE_FLAG:
	case K_FUSE_UINT:
	case K_FUSE_STR:
		return take_fuse(mo, d, val, why, cap);
	default:
		return take_number(mo, d, val, why, cap);
	}
}

/* fs's strings are the ones mo owns. */
static void sync_fs(struct qf_mnt_opts *mo)
{
	mo->fs.cache_dir = mo->cache_dir;
	mo->fs.calib = mo->calib;
	mo->fs.calib_dir = mo->calib_dir;
	mo->fs.mixed_table = mo->mixed_table;
	mo->fs.mixed_roles = mo->mixed_roles;
	mo->fs.mixed_ratio = mo->mixed_ratio;
	mo->fs.remote = mo->remote;
	mo->fs.remote_endpoint = mo->remote_endpoint;
	mo->fs.remote_region = mo->remote_region;
	mo->fs.remote_creds = mo->remote_creds;
}

int qf_mnt_opts_parse(struct qf_mnt_opts *mo, const char *list,
		      const char *cwd, char *why, size_t cap)
{
	char *copy, *opt, *save = NULL;
	int ret = 0;

	if (cap)
		why[0] = 0;
	copy = strdup(list);
	if (!copy)
		return -ENOMEM;
	for (opt = strtok_r(copy, ",", &save); opt && !ret;
	     opt = strtok_r(NULL, ",", &save)) {
		ret = take_option(mo, opt, cwd, why, cap);
		if (ret == -ENOMEM && cap)
			snprintf(why, cap, "out of memory");
	}
	free(copy);
	sync_fs(mo);
	/* the value comes from the command line: one printable line */
	for (opt = why; ret && cap && *opt; opt++)
		if ((unsigned char)*opt < 0x20 || *opt == 0x7f)
			*opt = '?';
	return ret;
}

int qf_mnt_opts_init(struct qf_mnt_opts *mo)
{
	memset(mo, 0, sizeof(*mo));
	mo->threads = 16;
	/* served files carry their modes and owners: the kernel checks
	 * them for every user, with or without allow_other */
	return qf_buf_adds(&mo->fuse, "ro,fsname=quantfs,subtype=quantfs,"
			   "default_permissions");
}

void qf_mnt_opts_free(struct qf_mnt_opts *mo)
{
	if (!mo)
		return;
	free(mo->cache_dir);
	free(mo->calib);
	free(mo->calib_dir);
	free(mo->mixed_table);
	free(mo->mixed_roles);
	free(mo->mixed_ratio);
	free(mo->remote);
	free(mo->remote_endpoint);
	free(mo->remote_region);
	free(mo->remote_creds);
	qf_buf_release(&mo->fuse);
	memset(mo, 0, sizeof(*mo));
}
