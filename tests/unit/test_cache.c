/*
 * test_cache.c - the LMDB store: put/get, atomic groups, map growth from a
 * tiny map, records, a second process reading what the first wrote, a
 * drop in several steps (record last), and read files: stray temporary
 * files told from live ones, counted, removed; the "m" store of small
 * values (meta.c).
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cache.h"
#include "check.h"

static char dir[] = "/tmp/qfcache-test.XXXXXX";

static void test_put_get_grow(void)
{
	static const char *const parts[] = { "fp", "rtn_w4_g128", "" };
	struct qf_cache_item it[3];
	struct qf_cache_txn *t;
	struct qf_cache *c;
	uint8_t vid[QF_CACHE_VID], other[QF_CACHE_VID];
	const void *p;
	size_t len;
	char *big;
	char longname[700];
	int k;

	CHECK(qf_cache_open(dir, 64 << 10, &c), ==, 0);
	qf_cache_vid(parts, 3, vid);
	qf_cache_vid(parts, 2, other);
	CHECK(memcmp(vid, other, QF_CACHE_VID), !=, 0);
	big = malloc(3 << 20);
	for (k = 0; k < (3 << 20); k++)
		big[k] = (char)(k * 7);
	memset(longname, 'x', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = 0;
	it[0] = (struct qf_cache_item){ "a.qweight", big, 3 << 20 };
	it[1] = (struct qf_cache_item){ "a.scales", "abc", 3 };
	it[2] = (struct qf_cache_item){ longname, "long", 4 };
	/* 3 MiB into a 64 KiB map: must grow, not fail */
	CHECK(qf_cache_put(c, vid, it, 3), ==, 0);
	CHECK(qf_cache_map_size(c), >, 3 << 20);
	CHECK(qf_cache_put_record(c, vid, "{\"variant\":\"x\"}"), ==, 0);
	CHECK(qf_cache_read_begin(c, &t), ==, 0);
	CHECK(qf_cache_get(t, vid, "a.qweight", &p, &len), ==, 0);
	CHECK(len, ==, 3 << 20);
	CHECK(memcmp(p, big, len), ==, 0);
	CHECK(qf_cache_get(t, vid, longname, &p, &len), ==, 0);
	CHECK(len, ==, 4);
	CHECK(qf_cache_get(t, other, "a.qweight", &p, &len), ==, -ENOENT);
	CHECK(qf_cache_get(t, vid, "a.zeros", &p, &len), ==, -ENOENT);
	CHECK(qf_cache_get_record(t, vid, (const char **)&p, &len), ==, 0);
	CHECK(len, ==, 15);
	qf_cache_read_end(t);
	qf_cache_close(c);
	free(big);
}

static void test_second_process(void)
{
	static const char *const parts[] = { "fp", "rtn_w4_g128", "" };
	uint8_t vid[QF_CACHE_VID];
	struct qf_cache_txn *t;
	struct qf_cache *c;
	const void *p;
	size_t len;
	pid_t pid;
	int st;

	qf_cache_vid(parts, 3, vid);
	pid = fork();
	if (pid == 0) {
		/* another process, its own (small) initial map */
		if (qf_cache_open(dir, 0, &c))
			_exit(2);
		if (qf_cache_read_begin(c, &t))
			_exit(3);
		if (qf_cache_get(t, vid, "a.scales", &p, &len) || len != 3 ||
		    memcmp(p, "abc", 3))
			_exit(4);
		qf_cache_read_end(t);
		qf_cache_close(c);
		_exit(0);
	}
	CHECK(waitpid(pid, &st, 0), ==, pid);
	CHECK(WIFEXITED(st) ? WEXITSTATUS(st) : -1, ==, 0);
}

/* More values than one deletion step takes: all go, the record last. */
static void test_drop_in_steps(void)
{
	static const char *const parts[] = { "fp", "many", "" };
	struct qf_cache_entry *e;
	struct qf_cache_space sp;
	struct qf_cache_item it[100];
	uint8_t vid[QF_CACHE_VID];
	char names[100][16];
	struct qf_cache *c;
	uint64_t freed = 0;
	size_t n, i;
	int k, j;

	CHECK(qf_cache_open(dir, 0, &c), ==, 0);
	qf_cache_vid(parts, 3, vid);
	for (k = 0; k < 50; k++) {		/* 5000 values, 4 bytes each */
		for (j = 0; j < 100; j++) {
			snprintf(names[j], sizeof(names[j]), "t%05d",
				 k * 100 + j);
			it[j] = (struct qf_cache_item){ names[j], "abcd", 4 };
		}
		CHECK(qf_cache_put(c, vid, it, 100), ==, 0);
	}
	CHECK(qf_cache_put_record(c, vid, "{\"variant\":\"many\"}"), ==, 0);
	CHECK(qf_cache_space(c, true, &sp), ==, 0);
	CHECK(sp.values, >=, 20000);
	CHECK(sp.fs_bytes, >, 0);
	CHECK(qf_cache_drop(c, vid, &freed), ==, 0);
	CHECK(freed, ==, 20000);
	CHECK(qf_cache_list(c, &e, &n), ==, 0);
	for (i = 0; i < n; i++)
		CHECK(memcmp(e[i].vid, vid, QF_CACHE_VID), !=, 0);
	qf_cache_list_free(e, n);
	qf_cache_close(c);
}

static void touch(const char *path, size_t bytes)
{
	FILE *f = fopen(path, "w");

	for (; f && bytes; bytes--)
		fputc('x', f);
	if (f)
		fclose(f);
}

/*
 * A read file, the temporary file of a live writer (qf_cache_file_create
 * holds its lock), and one whose writer died: counted apart; cleaning
 * removes the dead one only, dropping the variant everything.
 */
static void test_files(void)
{
	static const char *const parts[] = { "fp", "files", "" };
	struct qf_buf path = QF_BUF_INIT, tmp = QF_BUF_INIT;
	struct qf_cache_files_stat st;
	uint8_t vid[QF_CACHE_VID];
	char hex[2 * QF_CACHE_VID + 1];
	struct qf_cache *c;
	pid_t pid;
	int fd;

	CHECK(qf_cache_open(dir, 0, &c), ==, 0);
	qf_cache_vid(parts, 3, vid);
	qf_hex(vid, QF_CACHE_VID, hex);
	CHECK(qf_cache_file_path(c, vid, "aaaa.gguf", false, &path), ==, 0);
	touch(path.data, 100);
	fd = qf_cache_file_create(c, vid, "bbbb.gguf", &tmp);
	CHECK(fd, >=, 0);
	if (fd >= 0)
		CHECK(write(fd, "0123456789", 10), ==, 10);
	pid = fork();		/* a pid that is gone once waited for */
	if (pid == 0)
		_exit(0);
	waitpid(pid, NULL, 0);
	qf_buf_reset(&path);
	qf_buf_addf(&path, "%s/files/.%s.cccc.gguf.%ld.tmp", dir, hex,
		    (long)pid);
	touch(path.data, 1000);
	CHECK(qf_cache_files(c, vid, 0, &st), ==, 0);
	CHECK(st.count[QF_CACHE_FILE_READ], ==, 1);
	CHECK(st.bytes[QF_CACHE_FILE_READ], ==, 100);
	CHECK(st.count[QF_CACHE_FILE_TMP], ==, 1);
	CHECK(st.bytes[QF_CACHE_FILE_TMP], ==, 10);
	CHECK(st.count[QF_CACHE_FILE_STRAY], ==, 1);
	CHECK(st.bytes[QF_CACHE_FILE_STRAY], ==, 1000);
	CHECK(qf_cache_files(c, NULL, QF_FILES_CLEAN, &st), ==, 0);
	CHECK(access(path.data, F_OK), !=, 0);
	CHECK(access(tmp.data, F_OK), ==, 0);
	CHECK(qf_cache_files(c, vid, 0, &st), ==, 0);
	CHECK(st.count[QF_CACHE_FILE_STRAY], ==, 0);
	CHECK(st.count[QF_CACHE_FILE_READ], ==, 1);
	/* its writer done (closed without renaming): stray once old */
	if (fd >= 0)
		close(fd);
	{
		struct timespec old[2] = { { 1, 0 }, { 1, 0 } };

		utimensat(AT_FDCWD, tmp.data, old, 0);
	}
	CHECK(qf_cache_files(c, vid, QF_FILES_DROP | QF_FILES_CLEAN, &st), ==,
	      0);
	CHECK(st.count[QF_CACHE_FILE_STRAY], ==, 1);
	CHECK(qf_cache_files(c, vid, 0, &st), ==, 0);
	CHECK(st.count[QF_CACHE_FILE_READ] + st.count[QF_CACHE_FILE_TMP] +
	      st.count[QF_CACHE_FILE_STRAY], ==, 0);
	qf_buf_release(&path);
	qf_buf_release(&tmp);
	qf_cache_close(c);
}

/*
 * meta.c: absent, stored, replaced, kept across a reopen and beside the
 * variants (a drop leaves it), a value of another length, bad keys, and
 * a value larger than a fresh tiny map (the map grows).
 */
static void test_meta(void)
{
	static const char *const parts[] = { "fp", "many", "" };
	const char *key = "sha256 2049 1234 4096 1.000000002 3.000000004";
	char key512[513], sub[64], *big;
	uint8_t got[32], want[32], vid[QF_CACHE_VID];
	struct qf_cache *c;
	int k;

	for (k = 0; k < 32; k++)
		want[k] = (uint8_t)(k * 11 + 1);
	CHECK(qf_cache_open(dir, 0, &c), ==, 0);
	CHECK(qf_cache_meta_get(c, key, got, 32), ==, -ENOENT);
	CHECK(qf_cache_meta_put(c, key, "old", 3), ==, 0);
	CHECK(qf_cache_meta_get(c, key, got, 32), ==, QF_ECORRUPT);
	CHECK(qf_cache_meta_put(c, key, want, 32), ==, 0);
	CHECK(qf_cache_meta_get(c, key, got, 32), ==, 0);
	CHECK(memcmp(got, want, 32), ==, 0);
	CHECK(qf_cache_meta_get(c, "sha256 2049 1234", got, 32), ==, -ENOENT);
	CHECK(qf_cache_meta_put(c, "", want, 32), ==, -EINVAL);
	memset(key512, 'k', 512);
	key512[512] = 0;
	CHECK(qf_cache_meta_put(c, key512, want, 32), ==, -EINVAL);
	CHECK(qf_cache_meta_get(c, key512, got, 32), ==, -EINVAL);
	key512[511] = 0;
	CHECK(qf_cache_meta_put(c, key512, want, 1), ==, 0);
	CHECK(qf_cache_meta_get(c, key512, got, 1), ==, 0);
	/* dropping every value of an id leaves the store alone */
	qf_cache_vid(parts, 3, vid);
	CHECK(qf_cache_drop(c, vid, NULL), ==, 0);
	qf_cache_close(c);
	memset(got, 0, sizeof(got));
	CHECK(qf_cache_open(dir, 0, &c), ==, 0);
	CHECK(qf_cache_meta_get(c, key, got, 32), ==, 0);
	CHECK(memcmp(got, want, 32), ==, 0);
	qf_cache_close(c);
	/* 1 MiB into a fresh 64 KiB map */
	snprintf(sub, sizeof(sub), "%s/meta", dir);
	big = calloc(1, 1 << 20);
	big[12345] = 7;
	CHECK(qf_cache_open(sub, 64 << 10, &c), ==, 0);
	CHECK(qf_cache_meta_put(c, "big", big, 1 << 20), ==, 0);
	memset(big, 0, 1 << 20);
	CHECK(qf_cache_meta_get(c, "big", big, 1 << 20), ==, 0);
	CHECK(big[12345], ==, 7);
	qf_cache_close(c);
	free(big);
}

int main(void)
{
	if (!mkdtemp(dir))
		return 1;
	test_put_get_grow();
	test_second_process();
	test_drop_in_steps();
	test_files();
	test_meta();
	{
		char cmd[128];

		snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
		if (system(cmd))
			return 1;
	}
	return qf_check_exit();
}
