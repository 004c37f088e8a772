/*
 * cache.c - LMDB environment handling: open, grow on MDB_MAP_FULL, adopt
 * MDB_MAP_RESIZED, one write transaction per group of values.
 *
 * Locking: LMDB forbids mdb_env_set_mapsize() while this process has any
 * transaction open, so every transaction holds c->resize as a reader and
 * a resize takes it as a writer.  Write transactions are also serialized
 * by LMDB's own (cross-process) writer mutex.
 */
#include <lmdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cache.h"

#define KEY_MAX 511			/* LMDB's default max key size */
#define MAP_DEFAULT (1ULL << 30)

struct qf_cache {
	MDB_env *env;
	MDB_dbi tensors;		/* "t" */
	MDB_dbi records;		/* "v" */
	MDB_dbi sums;			/* "s": key as "t", 8-byte checksum */
	pthread_rwlock_t resize;	/* readers: any txn; writer: resize */
	char *dir;
	size_t psize;			/* LMDB page size */
};

struct qf_cache_txn {
	struct qf_cache *c;
	MDB_txn *txn;
};

static int lmdb_err(const char *what, int rc)
{
	if (rc == ENOSPC)
		return -ENOSPC;
	qf_err("cache: %s: %s", what, mdb_strerror(rc));
	return QF_ECACHE;
}

char *qf_cache_default_dir(void)
{
	struct qf_buf b = QF_BUF_INIT;
	const char *x = getenv("XDG_CACHE_HOME");
	const char *home = getenv("HOME");

	/* the machine's shared cache when it exists and we may write it
	 * (members of its group), else a per-user one */
	if (geteuid() == 0 || access("/var/cache/quantfs", W_OK | X_OK) == 0)
		qf_buf_adds(&b, "/var/cache/quantfs");
	else if (x && *x == '/')
		qf_buf_addf(&b, "%s/quantfs", x);
	else
		qf_buf_addf(&b, "%s/.cache/quantfs", home ? home : "/tmp");
	return qf_buf_detach(&b, NULL);
}

/*
 * The cache directory, created 2770 whatever the umask (it holds what is
 * derived from every model served, private ones too: the group of
 * trusted users only).  Whatever this process creates in it gets no
 * access for others, and in a group-shared (setgid) cache stays writable
 * by the group.
 */
static int make_dir(const char *dir)
{
	struct stat st;
	bool created = stat(dir, &st) < 0 && errno == ENOENT;
	mode_t um;
	int ret;

	ret = qf_mkdir_p(dir, 02770);
	if (ret < 0)
		return ret;
	if (created && chmod(dir, 02770) < 0)
		return -errno;
	if (stat(dir, &st) < 0)
		return -errno;
	um = umask(0);
	um |= 007;
	if (st.st_mode & S_ISGID)
		um &= ~(mode_t)070;
	umask(um);
	return 0;
}

int qf_cache_open(const char *dir, uint64_t map_size, struct qf_cache **out)
{
	struct qf_cache *c;
	MDB_txn *txn;
	MDB_envinfo info;
	int dead;
	int rc;
	int ret;

	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	pthread_rwlock_init(&c->resize, NULL);
	c->dir = strdup(dir);
	ret = c->dir ? make_dir(dir) : -ENOMEM;
	if (ret < 0) {
		qf_err("cache: cannot create '%s': %s", dir, qf_strerror(ret));
		goto out_free;
	}
	rc = mdb_env_create(&c->env);
	if (rc) {
		ret = lmdb_err("create", rc);
		goto out_free;
	}
	mdb_env_set_maxdbs(c->env, 4);
	mdb_env_set_maxreaders(c->env, 1024);
	rc = mdb_env_open(c->env, dir, MDB_NOTLS | MDB_NOSYNC, 0660);
	if (rc) {
		ret = lmdb_err(dir, rc);
		goto out_free;
	}
	/* keep a larger size another process already set */
	mdb_env_info(c->env, &info);
	if (!map_size)
		map_size = MAP_DEFAULT;
	if (info.me_mapsize < map_size)
		mdb_env_set_mapsize(c->env, map_size);
	mdb_reader_check(c->env, &dead);	/* slots of killed readers */
	rc = mdb_txn_begin(c->env, NULL, 0, &txn);
	if (rc) {
		ret = lmdb_err("begin", rc);
		goto out_free;
	}
	rc = mdb_dbi_open(txn, "t", MDB_CREATE, &c->tensors);
	if (!rc)
		rc = mdb_dbi_open(txn, "v", MDB_CREATE, &c->records);
	if (!rc)
		rc = mdb_dbi_open(txn, "s", MDB_CREATE, &c->sums);
	if (!rc)
		rc = mdb_txn_commit(txn);
	else
		mdb_txn_abort(txn);
	if (rc) {
		ret = lmdb_err("open databases", rc);
		goto out_free;
	}
	{
		MDB_stat ms;

		mdb_env_stat(c->env, &ms);
		c->psize = ms.ms_psize;
	}
	*out = c;
	return 0;

out_free:
	qf_cache_close(c);
	return ret;
}

void qf_cache_close(struct qf_cache *c)
{
	if (!c)
		return;
	if (c->env) {
		mdb_env_sync(c->env, 1);
		mdb_env_close(c->env);
	}
	pthread_rwlock_destroy(&c->resize);
	free(c->dir);
	free(c);
}

uint64_t qf_cache_map_size(struct qf_cache *c)
{
	MDB_envinfo info;

	mdb_env_info(c->env, &info);
	return info.me_mapsize;
}

void qf_cache_vid(const char *const *parts, size_t n,
		  uint8_t vid[QF_CACHE_VID])
{
	struct qf_sha256 h;
	uint8_t d[32];
	size_t i;

	qf_sha256_init(&h);
	for (i = 0; i < n; i++)
		qf_sha256_update(&h, parts[i], strlen(parts[i]) + 1);
	qf_sha256_final(&h, d);
	memcpy(vid, d, QF_CACHE_VID);
}

/* vid + name; names too long for a key are replaced by their hash. */
static size_t make_key(const uint8_t *vid, const char *name, uint8_t *key)
{
	size_t n = strlen(name);

	memcpy(key, vid, QF_CACHE_VID);
	if (QF_CACHE_VID + n <= KEY_MAX) {
		memcpy(key + QF_CACHE_VID, name, n);
		return QF_CACHE_VID + n;
	} else {
		struct qf_sha256 h;

		qf_sha256_init(&h);
		qf_sha256_update(&h, name, n);
		key[QF_CACHE_VID] = 0;	/* never starts a real name */
		qf_sha256_final(&h, key + QF_CACHE_VID + 1);
		return QF_CACHE_VID + 33;
	}
}

/* Called with no transaction of ours open. */
static int grow(struct qf_cache *c, uint64_t want)
{
	MDB_envinfo info;
	int rc = 0;

	pthread_rwlock_wrlock(&c->resize);
	mdb_env_info(c->env, &info);
	if (want == 0)		/* adopt another process's size */
		rc = mdb_env_set_mapsize(c->env, 0);
	else if (info.me_mapsize < want)
		rc = mdb_env_set_mapsize(c->env, want);
	pthread_rwlock_unlock(&c->resize);
	if (rc)
		return lmdb_err("resize", rc);
	if (want)
		qf_info("cache: map grown to %llu MiB",
			(unsigned long long)(want >> 20));
	return 0;
}

/* Begin a transaction holding the resize lock as a reader. */
static int txn_begin(struct qf_cache *c, unsigned flags, MDB_txn **txn)
{
	int rc;

	for (;;) {
		pthread_rwlock_rdlock(&c->resize);
		rc = mdb_txn_begin(c->env, NULL, flags, txn);
		if (rc != MDB_MAP_RESIZED)
			break;
		pthread_rwlock_unlock(&c->resize);
		rc = grow(c, 0);
		if (rc < 0)
			return rc;
	}
	if (rc) {
		pthread_rwlock_unlock(&c->resize);
		return lmdb_err("begin", rc);
	}
	return 0;
}

static int put_items(struct qf_cache *c, MDB_dbi dbi,
		     const uint8_t *vid, const struct qf_cache_item *items,
		     size_t n, bool record)
{
	uint8_t key[KEY_MAX + 1];
	MDB_txn *txn;
	size_t i;
	int rc;

	for (;;) {
		uint64_t need = 0;

		rc = txn_begin(c, 0, &txn);
		if (rc < 0)
			return rc;
		for (i = 0, rc = 0; i < n && !rc; i++) {
			MDB_val k, v;

			k.mv_data = key;
			k.mv_size = record ? QF_CACHE_VID :
				    make_key(vid, items[i].name, key);
			if (record)
				memcpy(key, vid, QF_CACHE_VID);
			v.mv_data = (void *)items[i].data;
			v.mv_size = items[i].len;
			need += items[i].len;
			rc = mdb_put(txn, dbi, &k, &v, 0);
			if (!rc && !record) {
				uint64_t sum = qf_hash64(items[i].data,
							 items[i].len, 0);

				v.mv_data = &sum;
				v.mv_size = sizeof(sum);
				rc = mdb_put(txn, c->sums, &k, &v, 0);
			}
		}
		if (!rc)
			rc = mdb_txn_commit(txn);
		else
			mdb_txn_abort(txn);
		pthread_rwlock_unlock(&c->resize);
		if (rc != MDB_MAP_FULL)
			break;
		rc = grow(c, (qf_cache_map_size(c) + need) * 2);
		if (rc < 0)
			return rc;
	}
	return rc ? lmdb_err("write", rc) : 0;
}

int qf_cache_put(struct qf_cache *c, const uint8_t vid[QF_CACHE_VID],
		 const struct qf_cache_item *items, size_t n)
{
	return put_items(c, c->tensors, vid, items, n, false);
}

int qf_cache_put_record(struct qf_cache *c, const uint8_t vid[QF_CACHE_VID],
			const char *json)
{
	struct qf_cache_item it = { "", json, strlen(json) };

	return put_items(c, c->records, vid, &it, 1, true);
}

int qf_cache_sync(struct qf_cache *c)
{
	int rc = mdb_env_sync(c->env, 1);

	return rc ? lmdb_err("sync", rc) : 0;
}

int qf_cache_read_begin(struct qf_cache *c, struct qf_cache_txn **out)
{
	struct qf_cache_txn *t = malloc(sizeof(*t));
	int ret;

	if (!t)
		return -ENOMEM;
	t->c = c;
	ret = txn_begin(c, MDB_RDONLY, &t->txn);
	if (ret < 0) {
		free(t);
		return ret;
	}
	*out = t;
	return 0;
}

void qf_cache_read_end(struct qf_cache_txn *t)
{
	if (!t)
		return;
	mdb_txn_abort(t->txn);
	pthread_rwlock_unlock(&t->c->resize);
	free(t);
}

static int get(struct qf_cache_txn *t, MDB_dbi dbi, const uint8_t *key,
	       size_t klen, const void **data, size_t *len)
{
	MDB_val k = { klen, (void *)key };
	MDB_val v;
	int rc;

	rc = mdb_get(t->txn, dbi, &k, &v);
	if (rc == MDB_NOTFOUND)
		return -ENOENT;
	if (rc)
		return lmdb_err("get", rc);
	*data = v.mv_data;
	*len = v.mv_size;
	return 0;
}

int qf_cache_get(struct qf_cache_txn *t, const uint8_t vid[QF_CACHE_VID],
		 const char *name, const void **data, size_t *len)
{
	uint8_t key[KEY_MAX + 1];

	return get(t, t->c->tensors, key, make_key(vid, name, key), data,
		   len);
}

int qf_cache_get_record(struct qf_cache_txn *t,
			const uint8_t vid[QF_CACHE_VID], const char **json,
			size_t *len)
{
	return get(t, t->c->records, vid, QF_CACHE_VID, (const void **)json,
		   len);
}

int qf_cache_each_record(struct qf_cache_txn *t,
			 int (*fn)(void *arg, const uint8_t *vid,
				   const char *json, size_t len),
			 void *arg)
{
	MDB_cursor *cur;
	MDB_val k, v;
	int rc;

	rc = mdb_cursor_open(t->txn, t->c->records, &cur);
	if (rc)
		return lmdb_err("cursor", rc);
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); rc == 0;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		if (k.mv_size != QF_CACHE_VID)
			continue;
		if (fn(arg, k.mv_data, v.mv_data, v.mv_size))
			break;
	}
	mdb_cursor_close(cur);
	return 0;
}

int qf_cache_locate(struct qf_cache *c, const void *p, size_t len,
		    int *fd, uint64_t *off)
{
	uintptr_t pg = (uintptr_t)p & ~(uintptr_t)(c->psize - 1);
	MDB_envinfo info;
	size_t pgno;

	/*
	 * LMDB keeps no public map address (me_mapaddr is set only with
	 * MDB_FIXEDMAP), but every page begins with its own page number
	 * (MDB_page.mp_pgno, a size_t at offset 0, stable since 0.9.0), and
	 * a value starts in the page that holds its first byte.  The page
	 * size is the OS page size and the map is page aligned.
	 */
	memcpy(&pgno, (const void *)pg, sizeof(pgno));
	mdb_env_info(c->env, &info);
	if ((uint64_t)pgno > info.me_last_pgno ||
	    (uint64_t)(pgno + 1) * c->psize + len > info.me_mapsize)
		return QF_ECACHE;
	mdb_env_get_fd(c->env, fd);
	*off = (uint64_t)pgno * c->psize + ((uintptr_t)p - pg);
	return 0;
}

int qf_cache_check(struct qf_cache_txn *t, const uint8_t vid[QF_CACHE_VID],
		   const char *name)
{
	uint8_t key[KEY_MAX + 1];
	size_t klen = make_key(vid, name, key), len, slen;
	const void *p, *sp;
	uint64_t sum;
	int ret;

	ret = get(t, t->c->tensors, key, klen, &p, &len);
	if (ret < 0)
		return ret;
	ret = get(t, t->c->sums, key, klen, &sp, &slen);
	if (ret == -ENOENT || (!ret && slen != sizeof(sum)))
		return QF_ECORRUPT;	/* a value without its checksum */
	if (ret < 0)
		return ret;
	memcpy(&sum, sp, sizeof(sum));
	return qf_hash64(p, len, 0) == sum ? 0 : QF_ECORRUPT;
}

/* Delete the keys of "t" and "s" that start with prefix (plen bytes),
 * or exactly the given names; and the record when whole. */
static int del_keys(struct qf_cache *c, const uint8_t *vid,
		    const char *const *names, size_t n, uint64_t *freed)
{
	uint8_t key[KEY_MAX + 1];
	MDB_cursor *cur;
	MDB_txn *txn;
	MDB_val k, v;
	size_t i;
	int rc;

	rc = txn_begin(c, 0, &txn);
	if (rc < 0)
		return rc;
	if (names) {
		for (i = 0, rc = 0; i < n && !rc; i++) {
			k.mv_data = key;
			k.mv_size = make_key(vid, names[i], key);
			if (freed && !mdb_get(txn, c->tensors, &k, &v))
				*freed += v.mv_size;
			rc = mdb_del(txn, c->tensors, &k, NULL);
			if (!rc || rc == MDB_NOTFOUND)
				rc = mdb_del(txn, c->sums, &k, NULL);
			if (rc == MDB_NOTFOUND)
				rc = 0;
		}
	} else {
		MDB_dbi dbs[2] = { c->tensors, c->sums };

		for (i = 0, rc = 0; i < 2 && !rc; i++) {
			rc = mdb_cursor_open(txn, dbs[i], &cur);
			if (rc)
				break;
			k.mv_data = (void *)vid;
			k.mv_size = QF_CACHE_VID;
			for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
			     !rc && k.mv_size >= QF_CACHE_VID &&
			     !memcmp(k.mv_data, vid, QF_CACHE_VID);
			     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
				if (freed && i == 0)
					*freed += v.mv_size;
				rc = mdb_cursor_del(cur, 0);
				if (rc)
					break;
			}
			mdb_cursor_close(cur);
			if (rc == MDB_NOTFOUND)
				rc = 0;
		}
		k.mv_data = (void *)vid;
		k.mv_size = QF_CACHE_VID;
		if (!rc) {
			rc = mdb_del(txn, c->records, &k, NULL);
			if (rc == MDB_NOTFOUND)
				rc = 0;
		}
	}
	if (!rc)
		rc = mdb_txn_commit(txn);
	else
		mdb_txn_abort(txn);
	pthread_rwlock_unlock(&c->resize);
	return rc ? lmdb_err("delete", rc) : 0;
}

int qf_cache_del(struct qf_cache *c, const uint8_t vid[QF_CACHE_VID],
		 const char *const *names, size_t n)
{
	return del_keys(c, vid, names, n, NULL);
}

int qf_cache_drop(struct qf_cache *c, const uint8_t vid[QF_CACHE_VID],
		  uint64_t *freed)
{
	uint64_t files = 0;
	int ret;

	if (freed)
		*freed = 0;
	ret = del_keys(c, vid, NULL, 0, freed);
	if (!ret)
		ret = qf_cache_files(c, vid, true, &files);
	if (freed)
		*freed += files;
	return ret;
}

int qf_cache_each_vid(struct qf_cache_txn *t,
		      int (*fn)(void *arg, const uint8_t *vid, uint64_t bytes,
				uint64_t count),
		      void *arg)
{
	uint8_t cur_vid[QF_CACHE_VID];
	uint64_t bytes = 0, count = 0;
	MDB_cursor *cur;
	MDB_val k, v;
	int rc, stop = 0;

	rc = mdb_cursor_open(t->txn, t->c->tensors, &cur);
	if (rc)
		return lmdb_err("cursor", rc);
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_FIRST); !rc && !stop;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		if (k.mv_size < QF_CACHE_VID)
			continue;
		if (count && memcmp(cur_vid, k.mv_data, QF_CACHE_VID)) {
			stop = fn(arg, cur_vid, bytes, count);
			bytes = count = 0;
		}
		memcpy(cur_vid, k.mv_data, QF_CACHE_VID);
		bytes += v.mv_size;
		count++;
	}
	if (count && !stop)
		fn(arg, cur_vid, bytes, count);
	mdb_cursor_close(cur);
	return 0;
}

int qf_cache_file_bytes(struct qf_cache *c, uint64_t *file, uint64_t *used)
{
	struct qf_buf path = QF_BUF_INIT;
	MDB_envinfo info;
	struct stat st;
	int ret;

	qf_buf_addf(&path, "%s/data.mdb", c->dir);
	ret = path.data && stat(path.data, &st) == 0 ? 0 : -errno;
	qf_buf_release(&path);
	if (ret < 0)
		return ret;
	mdb_env_info(c->env, &info);
	*file = (uint64_t)st.st_blocks * 512;
	*used = (uint64_t)(info.me_last_pgno + 1) * c->psize;
	return 0;
}

const char *qf_cache_dir(const struct qf_cache *c)
{
	return c->dir;
}

int qf_cache_lock_open(struct qf_cache *c, const uint8_t vid[QF_CACHE_VID])
{
	char hex[2 * QF_CACHE_VID + 1];
	struct qf_buf path = QF_BUF_INIT;
	int fd;

	qf_hex(vid, QF_CACHE_VID, hex);
	qf_buf_addf(&path, "%s/locks", c->dir);
	if (path.data)
		qf_mkdir_p(path.data, 02770);
	qf_buf_addf(&path, "/%s", hex);
	fd = path.data ? open(path.data, O_RDWR | O_CREAT | O_CLOEXEC, 0660) :
			 -1;
	if (fd < 0)
		fd = -errno;
	qf_buf_release(&path);
	return fd;
}

int qf_cache_evict(struct qf_cache *c, const uint8_t vid[QF_CACHE_VID],
		   uint64_t *freed)
{
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET,
			    .l_start = 0, .l_len = 0 };
	int fd = qf_cache_lock_open(c, vid), ret;

	if (fd < 0)
		return fd;
	/* any lock of another open file: a reader or a producer */
	if (fcntl(fd, F_OFD_SETLK, &fl) < 0) {
		ret = errno == EAGAIN || errno == EACCES ? -EBUSY : -errno;
		close(fd);
		return ret;
	}
	ret = qf_cache_drop(c, vid, freed);
	close(fd);		/* drops the lock */
	return ret;
}
