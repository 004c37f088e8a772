/*
 * test_cache.c - the LMDB store: put/get, atomic groups, map growth from a
 * tiny map, records, and a second process reading what the first wrote.
 */
#include <stdlib.h>
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

int main(void)
{
	if (!mkdtemp(dir))
		return 1;
	test_put_get_grow();
	test_second_process();
	{
		char cmd[128];

		snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
		if (system(cmd))
			return 1;
	}
	return qf_check_exit();
}
