/*
 * cache.c - LMDB environment handling: open, grow on MDB_MAP_FULL, adopt
 * MDB_MAP_RESIZED, one write transaction per group of values.
 *
 * Locking: LMDB forbids mdb_env_set_mapsize() while this process has any
 * transaction open, so every transaction holds c->resize as a reader and
 * a resize takes it as a writer.  Write transactions are also serialized
 * by LMDB's own (cross-process) writer mutex.
 *
 * A full disk: LMDB copies every page a transaction changes, so even a
 * deletion writes before it frees, and on a full disk it cannot commit.
 * <dir>/reserve holds a little disk back: a deletion that fails for lack
 * of space releases it and tries again, and large deletions commit in
 * bounded steps, each reusing the pages the one before freed.
 */
#include <lmdb.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "cache_i.h"

#define KEY_MAX 511			/* LMDB's default max key size */
#define MAP_DEFAULT (1ULL << 30)
#define RESERVE (2ULL << 20)		/* <dir>/reserve bytes, at most */
#define RESERVE_MIN (256ULL << 10)	/* and at least */
#define DEL_BYTES (64ULL << 20)		/* value bytes a deletion frees */
#define DEL_KEYS 4096			/* values a deletion deletes */
#define FULL_SLACK (1ULL << 20)		/* "full": less free than a write
					 * needed and this */

static int lmdb_err(const char *what, int rc)
{
	if (rc == ENOSPC || rc == EDQUOT)
		return -ENOSPC;
	qf_err("cache: %s: %s", what, mdb_strerror(rc));
	return QF_ECACHE;
}

/* Bytes this process may still write on the cache's filesystem. */
static uint64_t disk_free(const struct qf_cache *c)
{
	struct statvfs sv;

	if (statvfs(c->dir, &sv) < 0)
		return UINT64_MAX;
	/* root may use the blocks the filesystem reserves for it */
	return (uint64_t)(geteuid() == 0 ? sv.f_bfree : sv.f_bavail) *
	       sv.f_frsize;
}

/*
 * A write transaction (or the map growth before one) failed: a full disk
 * (or quota) is -ENOSPC whatever LMDB calls it (a short write is EIO to
 * LMDB, told from an I/O error by the space left); anything else is
 * QF_ECACHE, logged.
 */
static int write_err(const struct qf_cache *c, const char *what, int rc,
		     uint64_t need)
{
	if (rc == ENOSPC || rc == EDQUOT)
		return -ENOSPC;
	if (rc == EIO && disk_free(c) < need + FULL_SLACK)
		return -ENOSPC;
	return lmdb_err(what, rc);
}

static void reserve_path(const struct qf_cache *c, struct qf_buf *b)
{
	qf_buf_reset(b);
	qf_buf_addf(b, "%s/reserve", c->dir);
}

/* The reserve's size: a 64th of the filesystem, within bounds. */
static uint64_t reserve_bytes(const struct qf_cache *c)
{
	struct statvfs sv;
	uint64_t b;

	if (statvfs(c->dir, &sv) < 0)
		return RESERVE;
	b = (uint64_t)sv.f_blocks * sv.f_frsize / 64;
	return b > RESERVE ? RESERVE : b < RESERVE_MIN ? RESERVE_MIN : b;
}

/* Hold some disk back for deletions, when we may (best effort: a cache
 * we only read, or a full disk, has none). */
static void reserve_make(struct qf_cache *c)
{
	struct qf_buf path = QF_BUF_INIT;
	uint64_t want = reserve_bytes(c);
	struct stat st;
	int fd;

	reserve_path(c, &path);
	if (!path.data || (lstat(path.data, &st) == 0 &&
			   (uint64_t)st.st_size >= want)) {
		qf_buf_release(&path);
		return;
	}
	fd = open(path.data, O_WRONLY | O_CREAT | O_CLOEXEC | O_NOFOLLOW,
		  0664);
	if (fd >= 0) {
		if (posix_fallocate(fd, 0, (off_t)want) != 0)
			unlink(path.data);	/* no room: none */
		close(fd);
	}
	qf_buf_release(&path);
}

/* Give the reserve's disk space back; false when there was none. */
static bool reserve_release(struct qf_cache *c)
{
	struct qf_buf path = QF_BUF_INIT;
	bool ok;

	reserve_path(c, &path);
	ok = path.data && unlink(path.data) == 0;
	qf_buf_release(&path);
	if (ok)
		qf_warn("cache '%s': the disk is full: its reserve released "
			"so that a deletion can commit", c->dir);
	return ok;
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
	mdb_env_set_maxdbs(c->env, 8);	/* t v s m, and room */
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
		rc = mdb_dbi_open(txn, "m", MDB_CREATE, &c->meta);
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
	reserve_make(c);
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

/* Called with no transaction of ours open.  Returns an LMDB code. */
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
		return rc;
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
		if (rc)
			return lmdb_err("resize", rc);
	}
	if (rc) {
		pthread_rwlock_unlock(&c->resize);
		return lmdb_err("begin", rc);
	}
	return 0;
}

int qf_cache_write(struct qf_cache *c, uint64_t need,
		   int (*fn)(struct qf_cache *c, MDB_txn *txn, void *arg),
		   void *arg)
{
	MDB_txn *txn;
	int rc;

	for (;;) {
		rc = txn_begin(c, 0, &txn);
		if (rc < 0)
			return rc;
		rc = fn(c, txn, arg);
		if (!rc)
			rc = mdb_txn_commit(txn);
		else
			mdb_txn_abort(txn);
		pthread_rwlock_unlock(&c->resize);
		if (rc != MDB_MAP_FULL)
			break;
		/* (no disk is taken: the file grows as pages are written) */
		rc = grow(c, (qf_cache_map_size(c) + need) * 2);
		if (rc)
			return write_err(c, "resize", rc, need);
	}
	return rc ? write_err(c, "write", rc, need) : 0;
}

struct put {
	MDB_dbi dbi;
	const uint8_t *vid;
	const struct qf_cache_item *items;
	size_t n;
	bool record;			/* key: vid alone */
};

static int put_txn(struct qf_cache *c, MDB_txn *txn, void *arg)
{
	const struct put *p = arg;
	uint8_t key[KEY_MAX + 1];
	size_t i;
	int rc;

	for (i = 0, rc = 0; i < p->n && !rc; i++) {
		MDB_val k, v;

		k.mv_data = key;
		k.mv_size = p->record ? QF_CACHE_VID :
			    make_key(p->vid, p->items[i].name, key);
		if (p->record)
			memcpy(key, p->vid, QF_CACHE_VID);
		v.mv_data = (void *)p->items[i].data;
		v.mv_size = p->items[i].len;
		rc = mdb_put(txn, p->dbi, &k, &v, 0);
		if (!rc && !p->record) {
			uint64_t sum = qf_hash64(p->items[i].data,
						 p->items[i].len, 0);

			v.mv_data = &sum;
			v.mv_size = sizeof(sum);
			rc = mdb_put(txn, c->sums, &k, &v, 0);
		}
	}
	return rc;
}

static int put_items(struct qf_cache *c, MDB_dbi dbi,
		     const uint8_t *vid, const struct qf_cache_item *items,
		     size_t n, bool record)
{
	struct put p = { dbi, vid, items, n, record };
	uint64_t need = 0;
	size_t i;

	for (i = 0; i < n; i++)
		need += items[i].len;
	return qf_cache_write(c, need, put_txn, &p);
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

bool qf_cache_has(struct qf_cache *c, const uint8_t vid[QF_CACHE_VID],
		  const char *name, size_t len)
{
	struct qf_cache_txn *txn;
	const void *p;
	size_t got;
	int ret;

	if (qf_cache_read_begin(c, &txn) < 0)
		return false;
	ret = qf_cache_get(txn, vid, name, &p, &got);
	qf_cache_read_end(txn);
	return ret == 0 && got == len;
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

/* What a deletion transaction does, and what it did. */
struct del {
	const uint8_t *vid;
	const char *const *names;	/* these names; NULL: a step of all */
	size_t n;
	uint64_t freed;			/* value bytes, this one */
	bool more;			/* values are left for another step */
};

/* Exactly the given names of vid, in "t" and "s". */
static int del_names(struct qf_cache *c, MDB_txn *txn, struct del *d)
{
	uint8_t key[KEY_MAX + 1];
	MDB_val k, v;
	size_t i;
	int rc = 0;

	for (i = 0; i < d->n && !rc; i++) {
		k.mv_data = key;
		k.mv_size = make_key(d->vid, d->names[i], key);
		if (!mdb_get(txn, c->tensors, &k, &v))
			d->freed += v.mv_size;
		rc = mdb_del(txn, c->tensors, &k, NULL);
		if (!rc || rc == MDB_NOTFOUND)
			rc = mdb_del(txn, c->sums, &k, NULL);
		if (rc == MDB_NOTFOUND)
			rc = 0;
	}
	return rc;
}

/*
 * One step of deleting all of vid: at most DEL_BYTES of values (and
 * their checksums), so that the pages listing what it frees fit in what
 * the step before freed; the leftover checksums and the record when no
 * value is left.  The record goes last: a drop cut short leaves a
 * recorded variant missing values (produced again), never values that
 * gc cannot see.
 */
static int del_step(struct qf_cache *c, MDB_txn *txn, struct del *d)
{
	uint8_t key[KEY_MAX + 1];
	MDB_cursor *cur;
	MDB_val k, v;
	size_t count = 0;
	int rc;

	rc = mdb_cursor_open(txn, c->tensors, &cur);
	if (rc)
		return rc;
	k.mv_data = (void *)d->vid;
	k.mv_size = QF_CACHE_VID;
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
	     !rc && k.mv_size >= QF_CACHE_VID && k.mv_size <= KEY_MAX &&
	     !memcmp(k.mv_data, d->vid, QF_CACHE_VID);
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		MDB_val sk = { k.mv_size, key };

		if (count && (d->freed >= DEL_BYTES || count >= DEL_KEYS)) {
			d->more = true;
			break;
		}
		memcpy(key, k.mv_data, k.mv_size);	/* k is in the map */
		d->freed += v.mv_size;
		count++;
		rc = mdb_cursor_del(cur, 0);
		if (!rc)
			rc = mdb_del(txn, c->sums, &sk, NULL);
		if (rc == MDB_NOTFOUND)
			rc = 0;
		if (rc)
			break;
	}
	mdb_cursor_close(cur);
	if (rc == MDB_NOTFOUND)
		rc = 0;
	if (rc || d->more)
		return rc;
	/* checksums without a value (none normally), then the record */
	rc = mdb_cursor_open(txn, c->sums, &cur);
	if (rc)
		return rc;
	k.mv_data = (void *)d->vid;
	k.mv_size = QF_CACHE_VID;
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE);
	     !rc && k.mv_size >= QF_CACHE_VID &&
	     !memcmp(k.mv_data, d->vid, QF_CACHE_VID);
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		rc = mdb_cursor_del(cur, 0);
		if (rc)
			break;
	}
	mdb_cursor_close(cur);
	if (rc == MDB_NOTFOUND)
		rc = 0;
	k.mv_data = (void *)d->vid;
	k.mv_size = QF_CACHE_VID;
	if (!rc)
		rc = mdb_del(txn, c->records, &k, NULL);
	return rc == MDB_NOTFOUND ? 0 : rc;
}

/*
 * One deletion transaction; on a full disk the reserve is released and
 * it is tried once more.  Returns 0, -ENOSPC, QF_ECACHE.
 */
static int del_txn(struct qf_cache *c, struct del *d)
{
	bool retried = false;
	MDB_txn *txn;
	int rc, ret;

	for (;;) {
		d->freed = 0;
		d->more = false;
		rc = txn_begin(c, 0, &txn);
		if (rc < 0)
			return rc;
		rc = d->names ? del_names(c, txn, d) : del_step(c, txn, d);
		if (!rc)
			rc = mdb_txn_commit(txn);
		else
			mdb_txn_abort(txn);
		pthread_rwlock_unlock(&c->resize);
		if (!rc)
			return 0;
		ret = write_err(c, "delete", rc, 0);
		if (ret != -ENOSPC || retried || !reserve_release(c))
			return ret;
		retried = true;
	}
}

int qf_cache_del(struct qf_cache *c, const uint8_t vid[QF_CACHE_VID],
		 const char *const *names, size_t n)
{
	struct del d = { vid, names, n, 0, false };

	return del_txn(c, &d);
}

int qf_cache_drop(struct qf_cache *c, const uint8_t vid[QF_CACHE_VID],
		  uint64_t *freed)
{
	struct qf_cache_files_stat fst;
	struct del d = { vid, NULL, 0, 0, false };
	uint64_t total;
	int ret;

	/* the read files first: unlinking frees disk at once, also what
	 * the values' deletion needs on a full disk */
	ret = qf_cache_files(c, vid, QF_FILES_DROP | QF_FILES_CLEAN, &fst);
	total = fst.bytes[QF_CACHE_FILE_READ] + fst.bytes[QF_CACHE_FILE_STRAY];
	do {
		if (!ret)
			ret = del_txn(c, &d);
		total += ret ? 0 : d.freed;
	} while (!ret && d.more);
	if (freed)
		*freed = total;
	if (!ret)
		reserve_make(c);	/* again, once there is room */
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

int qf_cache_each_value(struct qf_cache_txn *t,
			const uint8_t vid[QF_CACHE_VID],
			int (*fn)(void *arg, const char *name,
				  const void *data, size_t len),
			void *arg)
{
	char name[KEY_MAX + 1];
	MDB_cursor *cur;
	MDB_val k = { QF_CACHE_VID, (void *)vid }, v;
	int rc, stop = 0;

	rc = mdb_cursor_open(t->txn, t->c->tensors, &cur);
	if (rc)
		return lmdb_err("cursor", rc);
	for (rc = mdb_cursor_get(cur, &k, &v, MDB_SET_RANGE); !rc && !stop;
	     rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)) {
		size_t n = k.mv_size - QF_CACHE_VID;

		if (k.mv_size < QF_CACHE_VID ||
		    memcmp(k.mv_data, vid, QF_CACHE_VID))
			break;
		if (!n || ((const char *)k.mv_data)[QF_CACHE_VID] == 0)
			continue;	/* a hashed (too long) name */
		memcpy(name, (const char *)k.mv_data + QF_CACHE_VID, n);
		name[n] = 0;
		stop = fn(arg, name, v.mv_data, v.mv_size);
	}
	mdb_cursor_close(cur);
	return stop;
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

int qf_cache_mdb_usage(struct qf_cache *c, uint64_t *values,
		       uint64_t *mdb_free)
{
	struct qf_buf path = QF_BUF_INIT;
	uint64_t pages = 0, end;
	MDB_envinfo info;
	MDB_cursor *cur;
	struct stat st;
	MDB_val k, v;
	MDB_txn *txn;
	int rc;

	*values = *mdb_free = 0;
	rc = txn_begin(c, MDB_RDONLY, &txn);
	if (rc < 0)
		return rc;
	rc = mdb_cursor_open(txn, c->tensors, &cur);
	if (!rc) {
		/* (a big value's size is in its node: its pages are not
		 * read) */
		while (!(rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT)))
			*values += v.mv_size;
		mdb_cursor_close(cur);
	}
	/* the free list, database 0: each value counts its pages first */
	if (rc == MDB_NOTFOUND)
		rc = mdb_cursor_open(txn, 0, &cur);
	if (!rc) {
		while (!(rc = mdb_cursor_get(cur, &k, &v, MDB_NEXT))) {
			size_t n = 0;

			if (v.mv_size >= sizeof(n))
				memcpy(&n, v.mv_data, sizeof(n));
			pages += n;
		}
		mdb_cursor_close(cur);
	}
	mdb_env_info(c->env, &info);
	mdb_txn_abort(txn);
	pthread_rwlock_unlock(&c->resize);
	if (rc != MDB_NOTFOUND)
		return lmdb_err("free list", rc);
	/* and the file past its last page (written by a failed commit) */
	qf_buf_addf(&path, "%s/data.mdb", c->dir);
	end = (uint64_t)(info.me_last_pgno + 1) * c->psize;
	if (path.data && stat(path.data, &st) == 0 &&
	    (uint64_t)st.st_size > end)
		pages += ((uint64_t)st.st_size - end) / c->psize;
	qf_buf_release(&path);
	*mdb_free = pages * c->psize;
	return 0;
}

int qf_cache_file_path(const struct qf_cache *c,
		       const uint8_t vid[QF_CACHE_VID], const char *tag,
		       bool tmp, struct qf_buf *out)
{
	return qf_files_path(c->dir, vid, tag, tmp, out);
}

int qf_cache_file_create(const struct qf_cache *c,
			 const uint8_t vid[QF_CACHE_VID], const char *tag,
			 struct qf_buf *tmp)
{
	return qf_files_create(c->dir, vid, tag, tmp);
}

int qf_cache_files(struct qf_cache *c, const uint8_t *vid, unsigned flags,
		   struct qf_cache_files_stat *st)
{
	return qf_files_count(c->dir, vid, flags, st);
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
