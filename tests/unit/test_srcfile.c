/*
 * test_srcfile.c - the link rule of common/srcfile.c and the SIGBUS guard
 * of common/guard.c, without a mount.
 *
 * Links of the same owner are followed, links to another owner's file or
 * directory are refused (the ownership part needs root: chown -h), a FIFO
 * never blocks, and a model file truncated under its mapping gives
 * QF_ECORRUPT to the reader instead of killing the process.  The content
 * fingerprint: two copies with other times agree, one changed byte does
 * not, a shard's hash is its file's SHA-256.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include "check.h"
#include "io.h"

#define NOBODY 65534

static char dir[] = "/tmp/qf-src-XXXXXX";

static void put(const char *name, const char *text)
{
	char p[256];
	FILE *f;

	snprintf(p, sizeof(p), "%s/%s", dir, name);
	f = fopen(p, "w");
	if (!f || fputs(text, f) < 0 || fclose(f))
		abort();
}

static void link_to(const char *target, const char *name, uid_t owner)
{
	char p[256];

	snprintf(p, sizeof(p), "%s/%s", dir, name);
	CHECK(symlink(target, p), ==, 0);
	if (owner != getuid())
		CHECK(lchown(p, owner, owner), ==, 0);
}

static void test_rule(void)
{
	struct qf_buf b = QF_BUF_INIT;
	struct stat st;
	bool root = getuid() == 0;
	int dfd, fd;

	put("plain.txt", "plain");
	CHECK(mkdir(strcat(strcpy((char[256]){ 0 }, dir), "/sub"), 0700), ==,
	      0);
	link_to("plain.txt", "same", getuid());
	link_to("sub", "samedir", getuid());
	link_to("nowhere", "dangling", getuid());
	dfd = open(dir, O_RDONLY | O_DIRECTORY);
	CHECK(dfd, >=, 0);

	CHECK(qf_src_read(dfd, "plain.txt", 100, &b), ==, 0);
	CHECK(strcmp(b.data, "plain"), ==, 0);
	qf_buf_release(&b);
	CHECK(qf_src_read(dfd, "same", 100, &b), ==, 0);	/* followed */
	CHECK(b.len, ==, 5);
	qf_buf_release(&b);
	CHECK(qf_src_read(dfd, "plain.txt", 4, &b), ==, -EFBIG);
	qf_buf_release(&b);
	fd = qf_src_openat(dfd, "samedir", O_DIRECTORY, &st);
	CHECK(fd, >=, 0);
	CHECK(S_ISDIR(st.st_mode), ==, 1);
	close(fd);
	CHECK(qf_src_openat(dfd, "samedir", 0, &st), ==, -EISDIR);
	CHECK(qf_src_openat(dfd, "plain.txt", O_DIRECTORY, &st), ==,
	      -ENOTDIR);
	CHECK(qf_src_openat(dfd, "dangling", 0, &st), ==, -ENOENT);
	CHECK(qf_src_openat(dfd, "..", 0, &st), ==, -ENOENT);
	CHECK(qf_src_openat(dfd, "sub/x", 0, &st), ==, -ENOENT);
	CHECK(qf_src_openat(dfd, "", 0, &st), ==, -ENOENT);
	/* a FIFO is refused at once, never waited on */
	CHECK(mkfifoat(dfd, "fifo", 0600), ==, 0);
	CHECK(qf_src_openat(dfd, "fifo", 0, &st), ==, -EINVAL);
	CHECK(qf_src_read_path(strcat(strcpy((char[256]){ 0 }, dir),
				      "/fifo"), 100, &b), ==, -EINVAL);
	if (!root) {
		fprintf(stderr, "test_srcfile: not root: the owner checks "
			"are skipped\n");
		close(dfd);
		return;
	}
	/* nobody's links to root's file and directory: refused */
	link_to("plain.txt", "other", NOBODY);
	link_to("sub", "otherdir", NOBODY);
	CHECK(qf_src_openat(dfd, "other", 0, &st), ==, QF_ELINK);
	CHECK(qf_src_statat(dfd, "other", &st), ==, QF_ELINK);
	CHECK(qf_src_read(dfd, "other", 100, &b), ==, QF_ELINK);
	CHECK(qf_src_openat(dfd, "otherdir", O_DIRECTORY, &st), ==, QF_ELINK);
	CHECK(qf_src_read_path(strcat(strcpy((char[256]){ 0 }, dir),
				      "/other"), 100, &b), ==, QF_ELINK);
	/* ... and a link of nobody's to nobody's file: followed */
	put("nobodys.txt", "mine");
	CHECK(chown(strcat(strcpy((char[256]){ 0 }, dir), "/nobodys.txt"),
		    NOBODY, NOBODY), ==, 0);
	link_to("nobodys.txt", "ownlink", NOBODY);
	CHECK(qf_src_read(dfd, "ownlink", 100, &b), ==, 0);
	CHECK(b.len, ==, 4);
	qf_buf_release(&b);
	close(dfd);
}

/* A model whose only shard is truncated under its mapping. */
static void test_truncated_under_map(void)
{
	struct qf_mkmodel_opts o;
	struct qf_model *m = NULL;
	const struct qf_model_tensor *mt;
	char mdir[128], path[256];
	float *buf;

	snprintf(mdir, sizeof(mdir), "%s/model", dir);
	snprintf(path, sizeof(path), "%s/model.safetensors", mdir);
	qf_mkmodel_defaults(&o);
	CHECK(qf_mkmodel_write(mdir, &o), ==, 0);
	CHECK(qf_model_open(mdir, &m), ==, 0);
	if (!m)
		return;
	mt = qf_model_find(m, "model.layers.1.mlp.down_proj.weight");
	CHECK(mt != NULL, ==, 1);
	if (!mt)
		goto out_close;
	buf = malloc(qf_st_numel(mt->t) * sizeof(float));
	if (!buf)
		abort();
	CHECK(qf_model_read_f32(mt, buf), ==, 0);
	CHECK(qf_st_faulted(mt->shard), ==, 0);
	/* what `cp new.safetensors model.safetensors` does first */
	CHECK(truncate(path, 4096), ==, 0);
	/* a read under the map past the new end: zeros, no SIGBUS */
	CHECK(qf_to_f32(mt->t->dtype, qf_st_data(mt->shard, mt->t),
			qf_st_numel(mt->t), buf), ==, 0);
	CHECK(buf[qf_st_numel(mt->t) - 1] == 0.0f, ==, 1);
	CHECK(qf_st_faulted(mt->shard), ==, 1);
	CHECK(qf_model_read_f32(mt, buf), ==, QF_ECORRUPT);
	CHECK(qf_model_fingerprint(m), ==, QF_ECORRUPT);
	CHECK(m->fp_set, ==, 0);
	free(buf);
out_close:
	qf_model_close(m);
	/* a truncated file is refused at open, whole again it opens */
	CHECK(qf_model_open(mdir, &m), <, 0);
	CHECK(qf_mkmodel_write(mdir, &o), ==, 0);
	CHECK(qf_model_open(mdir, &m), ==, 0);
	qf_model_close(m);
}

/* SHA-256 of the file at path, read with read(2). */
static void file_sha(const char *path, uint8_t out[32])
{
	struct qf_buf b = QF_BUF_INIT;
	struct qf_sha256 h;

	CHECK(qf_src_read_path(path, 1u << 30, &b), ==, 0);
	qf_sha256_init(&h);
	qf_sha256_update(&h, b.data, b.len);
	qf_sha256_final(&h, out);
	qf_buf_release(&b);
}

static void fp_of(const char *mdir, char hex[65])
{
	struct qf_model *m = NULL;

	CHECK(qf_model_open(mdir, &m), ==, 0);
	if (!m)
		return;
	CHECK(m->fp_set, ==, 0);	/* not at open: hashing is costly */
	CHECK(qf_model_fingerprint(m), ==, 0);
	CHECK(m->fp_set, ==, 1);
	memcpy(hex, m->fp_hex, 65);
	qf_model_close(m);
}

/* Copies with other mtimes: one fingerprint; a byte changed: another. */
static void test_fingerprint(void)
{
	struct timeval tv[2] = { { 1000000000, 0 }, { 1000000000, 0 } };
	struct qf_mkmodel_opts o;
	struct qf_model *m = NULL;
	char a[128], b[128], path[256], fa[65], fb[65], fc[65];
	uint8_t want[32], got[32];
	int fd;

	snprintf(a, sizeof(a), "%s/fpa", dir);
	snprintf(b, sizeof(b), "%s/fpb", dir);
	qf_mkmodel_defaults(&o);
	CHECK(qf_mkmodel_write(a, &o), ==, 0);
	CHECK(qf_mkmodel_write(b, &o), ==, 0);
	snprintf(path, sizeof(path), "%s/model.safetensors", b);
	CHECK(utimes(path, tv), ==, 0);
	fp_of(a, fa);
	fp_of(b, fb);
	CHECK(strcmp(fa, fb), ==, 0);
	CHECK(strlen(fa), ==, 64);
	/* the shard's hash is the whole file's */
	file_sha(path, want);
	CHECK(qf_model_open(b, &m), ==, 0);
	if (m) {
		CHECK(qf_model_shard_sha256(m, 0, got), ==, 0);
		CHECK(memcmp(got, want, 32), ==, 0);
		qf_model_close(m);
	}
	/* the last weight byte, rewritten with the times put back */
	fd = open(path, O_WRONLY);
	CHECK(fd >= 0, ==, 1);
	CHECK(pwrite(fd, "\x01", 1, lseek(fd, 0, SEEK_END) - 1), ==, 1);
	close(fd);
	CHECK(utimes(path, tv), ==, 0);
	fp_of(b, fc);
	CHECK(strcmp(fa, fc), !=, 0);
}

int main(void)
{
	char cmd[300];

	if (!mkdtemp(dir))
		return 1;
	test_rule();
	test_truncated_under_map();
	test_fingerprint();
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	if (system(cmd) != 0)
		return 1;
	return qf_check_exit();
}
