/*
 * test_opts.c - the -o options of quantfs mount without mounting
 * (mounts/opts.c): the three strict scalar parsers, every option with
 * good and bad values, relative paths made absolute against the working
 * directory given, the fstab words dropped and FUSE's own options passed
 * on, with default_permissions always among them.
 */
#include <float.h>
#include <math.h>
#include <stdbool.h>

#include "check.h"
#include "opts.h"

#define CWD "/work/dir"

static void test_uint(void)
{
	static const char *const bad[] = {
		"", "-1", "+1", " 1", "1 ", "12abc", "1e3", "0x10", "1.0",
		"18446744073709551616", "99999999999999999999999", "-0",
	};
	uint64_t v = 7;
	size_t i;

	CHECK(qf_mnt_parse_uint("0", 0, 10, &v), ==, 0);
	CHECK(v, ==, 0);
	CHECK(qf_mnt_parse_uint("42", 0, 100, &v), ==, 0);
	CHECK(v, ==, 42);
	CHECK(qf_mnt_parse_uint("007", 0, 100, &v), ==, 0);
	CHECK(v, ==, 7);
	CHECK(qf_mnt_parse_uint("18446744073709551615", 0, UINT64_MAX, &v),
	      ==, 0);
	CHECK(v == UINT64_MAX, ==, 1);
	/* the bounds are inclusive */
	CHECK(qf_mnt_parse_uint("1", 1, 2, &v), ==, 0);
	CHECK(qf_mnt_parse_uint("2", 1, 2, &v), ==, 0);
	CHECK(v, ==, 2);
	CHECK(qf_mnt_parse_uint("0", 1, 2, &v), ==, -EINVAL);
	CHECK(qf_mnt_parse_uint("3", 1, 2, &v), ==, -EINVAL);
	CHECK(v, ==, 2);			/* untouched on error */
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		v = 5;
		CHECK(qf_mnt_parse_uint(bad[i], 0, UINT64_MAX, &v), ==,
		      -EINVAL);
		CHECK(v, ==, 5);
	}
	CHECK(qf_mnt_parse_uint(NULL, 0, 1, &v), ==, -EINVAL);
}

static void test_double(void)
{
	static const char *const bad[] = {
		"", "nan", "NAN", "inf", "-inf", "infinity", "0x1p3", " 1",
		"1 ", "1e400", "-1e400", "e", ".", "+", "-", "1x", "1e",
		"1..2", "1,5",
	};
	double v = 0;
	size_t i;

	CHECK(qf_mnt_parse_double("1", 0, 10, &v), ==, 0);
	CHECK_NEAR(v, 1.0, 0);
	CHECK(qf_mnt_parse_double("0.25", 0, 10, &v), ==, 0);
	CHECK_NEAR(v, 0.25, 0);
	CHECK(qf_mnt_parse_double(".5", 0, 10, &v), ==, 0);
	CHECK_NEAR(v, 0.5, 0);
	CHECK(qf_mnt_parse_double("5.", 0, 10, &v), ==, 0);
	CHECK_NEAR(v, 5.0, 0);
	CHECK(qf_mnt_parse_double("1e3", 0, 1e9, &v), ==, 0);
	CHECK_NEAR(v, 1000.0, 0);
	CHECK(qf_mnt_parse_double("-2.5", -3, 0, &v), ==, 0);
	CHECK_NEAR(v, -2.5, 0);
	CHECK(qf_mnt_parse_double("-1", 0, 10, &v), ==, -EINVAL);
	CHECK(qf_mnt_parse_double("10.5", 0, 10, &v), ==, -EINVAL);
	CHECK(qf_mnt_parse_double("10", 0, 10, &v), ==, 0);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		v = 3;
		CHECK(qf_mnt_parse_double(bad[i], -DBL_MAX, DBL_MAX, &v), ==,
		      -EINVAL);
		CHECK_NEAR(v, 3.0, 0);
	}
}

static void test_size(void)
{
	static const struct {
		const char *s;
		uint64_t v;
	} good[] = {
		{ "0", 0 }, { "123", 123 }, { "12b", 12 }, { "64K", 64 << 10 },
		{ "64k", 64 << 10 }, { "256M", 256 << 20 },
		{ "4G", 4ULL << 30 }, { "4GB", 4ULL << 30 },
		{ "1T", 1ULL << 40 }, { "16777215T", 16777215ULL << 40 },
		{ "17179869183G", 17179869183ULL << 30 },
		{ "18446744073709551615", UINT64_MAX },
	};
	static const char *const bad[] = {
		"", "12Q", "K", "B", "-1", "+1", " 1", "1 ", "1KK", "1KBB",
		"1.5G", "1e3", "0x10",
	};
	static const char *const huge[] = {	/* 2^64 or more: not wrapped */
		"16777216T", "17179869184G", "18446744073709551616",
		"99999999999999999999999",
	};
	uint64_t v;
	size_t i;

	for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		v = 1;
		CHECK(qf_mnt_parse_size(good[i].s, &v), ==, 0);
		CHECK(v == good[i].v, ==, 1);
	}
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		v = 9;
		CHECK(qf_mnt_parse_size(bad[i], &v), ==, -EINVAL);
		CHECK(v, ==, 9);
	}
	for (i = 0; i < sizeof(huge) / sizeof(huge[0]); i++) {
		v = 9;
		CHECK(qf_mnt_parse_size(huge[i], &v), ==, -ERANGE);
		CHECK(v, ==, 9);
	}
}

static void check_abs(const char *path, const char *cwd, const char *want)
{
	char *got = qf_mnt_abspath(path, cwd);

	if (!want) {
		CHECK(got == NULL, ==, 1);
	} else {
		CHECK_STR(got, want);
	}
	free(got);
}

static void test_abspath(void)
{
	check_abs("/a/b", NULL, "/a/b");
	check_abs("/a/b", CWD, "/a/b");
	check_abs("rel/dir", CWD, CWD "/rel/dir");
	check_abs("./x//y/.", "/w/", "/w/x/y");
	check_abs("x/", "/", "/x");
	check_abs(".", CWD, CWD);
	check_abs("..", CWD, CWD "/..");
	check_abs("/", NULL, "/");
	check_abs("//a///b//", NULL, "/a/b");
	check_abs("x", NULL, NULL);
	check_abs("x", "not/absolute", NULL);
	check_abs(NULL, CWD, NULL);
}

/* Parse list into a fresh mo; returns the parser's code, why in why. */
static int parse(struct qf_mnt_opts *mo, const char *list, const char *cwd,
		 char *why, size_t cap)
{
	CHECK(qf_mnt_opts_init(mo), ==, 0);
	return qf_mnt_opts_parse(mo, list, cwd, why, cap);
}

/* list is refused, and why names it (and so the option and value). */
static void check_bad(const char *list, const char *cwd)
{
	struct qf_mnt_opts mo;
	char why[512];

	CHECK(parse(&mo, list, cwd, why, sizeof(why)), ==, -EINVAL);
	if (!strstr(why, list) || strchr(why, '\n')) {
		fprintf(stderr, "%s:%d: why for '%s' is '%s'\n", __FILE__,
			__LINE__, list, why);
		qf_check_failed++;
	} else {
		qf_check_passed++;
	}
	qf_mnt_opts_free(&mo);
}

static void test_defaults(void)
{
	struct qf_mnt_opts mo;
	char why[256];

	CHECK(parse(&mo, "", CWD, why, sizeof(why)), ==, 0);
	CHECK(mo.threads, ==, 16);
	CHECK(mo.debug, ==, false);
	CHECK(mo.rw, ==, false);
	CHECK(mo.fs.cache_dir == NULL, ==, 1);
	CHECK(mo.fs.calib == NULL, ==, 1);
	CHECK(mo.fs.timeout == 0, ==, 1);	/* fs: 86400 */
	CHECK(mo.fs.io, ==, QF_IO_AUTO);
	CHECK_STR(mo.fuse.data, "ro,fsname=quantfs,subtype=quantfs,"
		  "default_permissions");
	qf_mnt_opts_free(&mo);
}

static void test_good_values(void)
{
	struct qf_mnt_opts mo;
	char why[256];

	CHECK(parse(&mo, "cache=/var/c,cache_map=256M,cache_max=4G,"
		    "timeout=2.5,threads=1024,io=direct,calib=/t/a.txt,"
		    "calib_dir=/t/sets,calib_n=65536,calib_len=2,"
		    "calib_seed=18446744073709551615,backend=cuda,"
		    "brecq_iters=1000000,brecq_batch=4096,max_jobs=64,debug,"
		    "mixed_table=attn=8:mlp=4,mixed_roles=*.o_proj=attn,"
		    "mixed_ratio=high=0.1:low=0.3:bits_low=3",
		    CWD, why, sizeof(why)), ==, 0);
	CHECK_STR(why, "");
	CHECK_STR(mo.fs.cache_dir, "/var/c");
	CHECK(mo.fs.cache_map, ==, 256 << 20);
	CHECK(mo.fs.cache_max, ==, 4LL << 30);
	CHECK_NEAR(mo.fs.timeout, 2.5, 0);
	CHECK(mo.threads, ==, 1024);
	CHECK(mo.fs.io, ==, QF_IO_DIRECT);
	CHECK_STR(mo.fs.calib, "/t/a.txt");
	CHECK_STR(mo.fs.calib_dir, "/t/sets");
	CHECK(mo.fs.calib_n, ==, 65536);
	CHECK(mo.fs.calib_len, ==, 2);
	CHECK(mo.fs.calib_seed == UINT64_MAX, ==, 1);
	CHECK_STR(mo.fs.backend, "cuda");
	CHECK(mo.fs.brecq_iters, ==, 1000000);
	CHECK(mo.fs.brecq_batch, ==, 4096);
	CHECK(mo.fs.max_jobs, ==, 64);
	CHECK(mo.debug, ==, true);
	CHECK_STR(mo.fs.mixed_table, "attn=8,mlp=4");
	CHECK_STR(mo.fs.mixed_roles, "*.o_proj=attn");
	CHECK_STR(mo.fs.mixed_ratio, "high=0.1,low=0.3,bits_low=3");
	/* none of ours reaches FUSE */
	CHECK_STR(mo.fuse.data, "ro,fsname=quantfs,subtype=quantfs,"
		  "default_permissions");
	/* a later list replaces earlier values; the lower bounds */
	CHECK(qf_mnt_opts_parse(&mo, "cache=/other,threads=1,io=cache,"
				"backend=cpu,calib_n=1,max_jobs=1,"
				"brecq_batch=1,cache_map=1M,cache_max=0,"
				"calib_seed=0,timeout=1e-3,io=auto",
				CWD, why, sizeof(why)), ==, 0);
	CHECK_STR(mo.fs.cache_dir, "/other");
	CHECK(mo.threads, ==, 1);
	CHECK(mo.fs.io, ==, QF_IO_AUTO);
	CHECK_STR(mo.fs.backend, "cpu");
	CHECK(mo.fs.calib_n, ==, 1);
	CHECK(mo.fs.max_jobs, ==, 1);
	CHECK(mo.fs.brecq_batch, ==, 1);
	CHECK(mo.fs.cache_map, ==, 1 << 20);
	CHECK(mo.fs.cache_max == QF_CACHE_MAX_NONE, ==, 1);	/* 0: none */
	CHECK(mo.fs.calib_seed, ==, 0);
	CHECK_NEAR(mo.fs.timeout, 1e-3, 0);
	/* brecq_iters=0 is "no Adam steps", fs's -1 (0 is its default) */
	CHECK(qf_mnt_opts_parse(&mo, "brecq_iters=0,io=cache", CWD, why,
				sizeof(why)), ==, 0);
	CHECK(mo.fs.brecq_iters, ==, -1);
	CHECK(mo.fs.io, ==, QF_IO_CACHE);
	CHECK(qf_mnt_opts_parse(&mo, "backend=auto,cache_max=1024T",
				CWD, why, sizeof(why)), ==, 0);
	CHECK_STR(mo.fs.backend, "auto");
	CHECK(mo.fs.cache_max, ==, 1LL << 50);
	CHECK(qf_mnt_opts_parse(&mo, "cache_max=none", CWD, why,
				sizeof(why)), ==, 0);
	CHECK(mo.fs.cache_max == QF_CACHE_MAX_NONE, ==, 1);
	CHECK(qf_mnt_opts_parse(&mo, "cache_max=auto", CWD, why,
				sizeof(why)), ==, 0);
	CHECK(mo.fs.cache_max == QF_CACHE_MAX_AUTO, ==, 1);
	CHECK(qf_mnt_opts_parse(&mo, "max_productions=3", CWD, why,
				sizeof(why)), ==, 0);
	CHECK(mo.fs.max_productions, ==, 3);
	qf_mnt_opts_free(&mo);
}

static void test_bad_values(void)
{
	static const char *const bad[] = {
		/* the examples */
		"timeout=nan", "timeout=inf", "timeout=-1", "calib_n=12abc",
		"threads=1e3", "threads=0", "calib_len=99999999999",
		"cache_map=12Q", "brecq_iters=x", "max_jobs=-3",
		/* empty values, and values missing */
		"cache=", "cache_map=", "cache_max=", "timeout=", "threads=",
		"io=", "calib=", "calib_dir=", "calib_n=", "calib_len=",
		"calib_seed=", "backend=", "brecq_iters=", "brecq_batch=",
		"mixed_table=", "mixed_roles=", "mixed_ratio=", "max_jobs=",
		"fsname=", "subtype=", "max_read=", "cache", "timeout",
		"threads", "calib", "calib_n", "io", "backend", "max_read",
		/* each numeric option out of range or malformed */
		"cache_map=1", "cache_map=1023K", "cache_map=17T",
		"cache_map=-1G", "cache_max=1025T", "cache_max=16777216T",
		"cache_max=4Q", "cache_max=Auto", "max_productions=0",
		"max_productions=1025", "max_productions=2x", "timeout=0", "timeout=1e10", "timeout=0x10",
		"timeout= 5", "timeout=1s", "threads=1025", "threads=+4",
		"threads= 4", "calib_n=0", "calib_n=65537", "calib_len=1",
		"calib_len=131073", "calib_seed=-1", "calib_seed=0x10",
		"calib_seed=18446744073709551616", "brecq_iters=1000001",
		"brecq_iters=-1", "brecq_batch=0", "brecq_batch=4097",
		"max_jobs=0", "max_jobs=65", "max_read=0",
		"max_read=4294967296",
		"max_read=1k",
		/* words */
		"io=fast", "io=AUTO", "backend=gpu", "backend=CPU",
		"mixed_table=attn=5", "mixed_table=nope=8",
		"mixed_ratio=high=nan", "mixed_ratio=high=0.8:low=0.4",
		"mixed_roles=noequals",
		/* values where none belongs, and unknown names */
		"debug=1", "rw=1", "ro=1", "allow_other=yes",
		"default_permissions=0", "nodev=1", "foo", "foo=bar",
		"blkdev", "blksize=4096", "Cache=/x", "uid=0",
	};
	size_t i;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		check_bad(bad[i], CWD);
}

static void test_relative_paths(void)
{
	struct qf_mnt_opts mo;
	char why[256];

	CHECK(parse(&mo, "cache=rel/dir,calib=rel.txt,calib_dir=./sets/",
		    CWD, why, sizeof(why)), ==, 0);
	CHECK_STR(mo.fs.cache_dir, CWD "/rel/dir");
	CHECK_STR(mo.fs.calib, CWD "/rel.txt");
	CHECK_STR(mo.fs.calib_dir, CWD "/sets");
	CHECK(qf_mnt_opts_parse(&mo, "cache=/abs//c/.", CWD, why,
				sizeof(why)), ==, 0);
	CHECK_STR(mo.fs.cache_dir, "/abs/c");
	qf_mnt_opts_free(&mo);
	/* no working directory: absolute paths only */
	CHECK(parse(&mo, "cache=/abs", NULL, why, sizeof(why)), ==, 0);
	CHECK_STR(mo.fs.cache_dir, "/abs");
	qf_mnt_opts_free(&mo);
	check_bad("cache=rel", NULL);
	check_bad("calib=rel.txt", NULL);
	check_bad("calib_dir=sets", NULL);
}

static void test_fstab_words(void)
{
	struct qf_mnt_opts mo;
	char why[256];

	/* what mount(8), fstab lines and systemd units carry */
	CHECK(parse(&mo, "ro,defaults,auto,noauto,nofail,_netdev,user,users,"
		    "nouser,owner,group,dev,nodev,suid,nosuid,exec,noexec,"
		    "atime,noatime,relatime,norelatime,strictatime,"
		    "nostrictatime,diratime,nodiratime,lazytime,nolazytime,"
		    "sync,async,dirsync,loud,silent,x-systemd.automount,"
		    "x-systemd.idle-timeout=60,comment=systemd.x,comment,,,",
		    CWD, why, sizeof(why)), ==, 0);
	CHECK_STR(mo.fuse.data, "ro,fsname=quantfs,subtype=quantfs,"
		  "default_permissions");
	CHECK(mo.rw, ==, false);
	/* rw is noted (main says it is ignored), never passed on */
	CHECK(qf_mnt_opts_parse(&mo, "rw", CWD, why, sizeof(why)), ==, 0);
	CHECK(mo.rw, ==, true);
	CHECK(strstr(mo.fuse.data, "rw") == NULL, ==, 1);
	qf_mnt_opts_free(&mo);
}

static void test_fuse_options(void)
{
	struct qf_mnt_opts mo;
	char why[256];

	CHECK(parse(&mo, "allow_other,default_permissions,auto_unmount,"
		    "max_read=131072,fsname=models,user=alice",
		    CWD, why, sizeof(why)), ==, 0);
	/* default_permissions once, whatever was asked */
	CHECK_STR(mo.fuse.data, "ro,fsname=quantfs,subtype=quantfs,"
		  "default_permissions,allow_other,auto_unmount,"
		  "max_read=131072,fsname=models,user=alice");
	qf_mnt_opts_free(&mo);
	CHECK(parse(&mo, "allow_root,context=system_u:object_r:tmp_t:s0",
		    CWD, why, sizeof(why)), ==, 0);
	CHECK_STR(mo.fuse.data, "ro,fsname=quantfs,subtype=quantfs,"
		  "default_permissions,allow_root,"
		  "context=system_u:object_r:tmp_t:s0");
	qf_mnt_opts_free(&mo);
	/* an error stops the list: what came before it stays */
	CHECK(parse(&mo, "threads=4,threads=x,threads=8", CWD, why,
		    sizeof(why)), ==, -EINVAL);
	CHECK(mo.threads, ==, 4);
	CHECK(strstr(why, "threads=x") != NULL, ==, 1);
	qf_mnt_opts_free(&mo);
	qf_mnt_opts_free(NULL);
}

int main(void)
{
	test_uint();
	test_double();
	test_size();
	test_abspath();
	test_defaults();
	test_good_values();
	test_bad_values();
	test_relative_paths();
	test_fstab_words();
	test_fuse_options();
	return qf_check_exit();
}
