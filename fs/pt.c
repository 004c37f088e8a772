/*
 * pt.c - kernel passthrough (Linux 6.9+): reads and mmap of an open file
 * go to a backing file inside the kernel, at a plain file's speed, with
 * no request to the daemon.  This is the part without FUSE: which file
 * backs a node, read files, the count of opens; ll_passthrough.c
 * registers backing files with /dev/fuse (fs->kern) and marks the open
 * reply.
 *
 * Backing files: a source file passed through is its own.  A variant's
 * model.safetensors or model.gguf gets a read file in the cache
 * (cache/files.c) once every byte of it is cached: written in the
 * background from the cache, checksums verified, when the last open of a
 * complete file is released or a complete file is opened without one.
 * Until then, and where the kernel or the daemon's privileges do not
 * allow it (FUSE_DEV_IOC_BACKING_OPEN wants CAP_SYS_ADMIN), the daemon
 * serves the file itself (do.c).
 *
 * The kernel keeps one backing file per inode and wants the opens of an
 * inode to agree: while one open passes through every new open must, and
 * an open the daemon serves (page cache, or direct_io that may be
 * mmapped) forbids passthrough until it is released; a wrong guess fails
 * the open with EIO.  So each node counts both kinds (fs->pt_lock), and
 * its backing id stays registered while it has passthrough opens.
 */
#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include "fs_do.h"
#include "fs_i.h"

#define CHUNK (8u << 20)
#define SUM_XATTR "user.quantfs.sum"	/* qf_hash64 chained per CHUNK */

static bool has_read_file(const struct qf_node *n)
{
	return n->kind == QF_NODE_WEIGHTS || n->kind == QF_NODE_GGUF;
}

static bool candidate(const struct qf_node *n)
{
	return n->kind == QF_NODE_SRCFILE || has_read_file(n);
}

static const uint8_t *node_vid(const struct qf_node *n)
{
	return n->kind == QF_NODE_WEIGHTS ? n->var->vid : qf_gv_vid(n->gv);
}

/* Every byte of n is in the cache (nothing is produced). */
static bool cached(struct qf_fs *fs, struct qf_node *n)
{
	return n->kind == QF_NODE_WEIGHTS ? qf_var_cached(fs, n->var) :
					    qf_gv_cached(fs, n->gv);
}

/*
 * The read file's tag: the first 64 bits of the sha256 of the file's
 * header and size, so a header that changes while the cache id does not
 * (a new quantfs) names another file.  Hashed once per node, on its
 * first open (a GGUF header holds the whole vocabulary, megabytes);
 * caller holds fs->pt_lock.
 */
static void need_tag(struct qf_node *n)
{
	const struct qf_buf *h;
	struct qf_sha256 c;
	uint8_t d[32];

	if (n->pt_tag[0] || !has_read_file(n))
		return;
	h = n->kind == QF_NODE_WEIGHTS ? &n->var->header : qf_gv_header(n->gv);
	qf_sha256_init(&c);
	qf_sha256_update(&c, h->data, h->len);
	qf_sha256_update(&c, &n->size, sizeof(n->size));
	qf_sha256_final(&c, d);
	qf_hex(d, 8, n->pt_tag);
}

/* The read file's path, from the cache id and the tag (need_tag()). */
static int read_file_path(struct qf_fs *fs, const struct qf_node *n,
			  bool tmp, struct qf_buf *out)
{
	char tag[64];

	snprintf(tag, sizeof(tag), "%s.%s", n->pt_tag,
		 n->kind == QF_NODE_WEIGHTS ? "safetensors" : "gguf");
	return qf_cache_file_path(fs->cache, node_vid(n), tag, tmp, out);
}

/* The node's read file, open, when it is there and whole; else -1. */
static int open_read_file(struct qf_fs *fs, const struct qf_node *n)
{
	struct qf_buf path = QF_BUF_INIT;
	struct stat st = { .st_size = -1 };
	int fd = -1;

	if (read_file_path(fs, n, false, &path) == 0)
		fd = open(path.data, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	/* a truncated one would give short reads: never passed on */
	if (fd >= 0 && (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
			(uint64_t)st.st_size != n->size)) {
		qf_err("%s: read file damaged (%lld bytes, want %llu): "
		       "deleted; its file is served from the cache values "
		       "again", path.data, (long long)st.st_size,
		       (unsigned long long)n->size);
		unlink(path.data);
		close(fd);
		fd = -1;
	}
	qf_buf_release(&path);
	return fd;
}

/*
 * May this daemon register backing files?  Asked once (-EPERM: it lacks
 * the privilege).  Caller holds fs->pt_lock.
 */
static bool allowed(struct qf_fs *fs)
{
	if (!fs->passthrough || !fs->kern)
		return false;
	if (!fs->pt_state) {
		fs->pt_state = 1;
		if (fs->kern->backing_open(fs, -1) == -EPERM) {
			fs->pt_state = -1;
			qf_info("kernel passthrough needs CAP_SYS_ADMIN: files "
				"are served by the daemon");
		}
	}
	return fs->pt_state > 0;
}

static int pwrite_all(int fd, const uint8_t *p, size_t len, uint64_t off)
{
	while (len) {
		ssize_t k = pwrite(fd, p, len, (off_t)off);

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return k < 0 ? -errno : -EIO;
		p += k;
		len -= (size_t)k;
		off += (uint64_t)k;
	}
	return 0;
}

static int pread_all(int fd, uint8_t *p, size_t len, uint64_t off)
{
	while (len) {
		ssize_t k = pread(fd, p, len, (off_t)off);

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return k < 0 ? -errno : QF_ECORRUPT;
		p += k;
		len -= (size_t)k;
		off += (uint64_t)k;
	}
	return 0;
}

/* Bytes [off, end) of a variant's model.safetensors into dst. */
static int weights_range(struct qf_fs *fs, struct qf_var *var, uint64_t off,
			 uint64_t end, uint8_t *dst)
{
	struct qf_fs_rd rd = { 0 };
	uint64_t len = 0;
	int ret;

	ret = qf_fs_read_weights(fs, var, off, end, &rd);
	if (!ret)
		ret = qf_fs_rd_copy(&rd, dst, &len);
	if (!ret && len != end - off)
		ret = QF_ECORRUPT;
	qf_fs_rd_release(&rd);
	return ret;
}

/*
 * Room for n's read file: within the cache's bound (evicting what it
 * asks), and never the disk's last bytes whatever the bound: a read file
 * is only faster, the daemon serves the file without one.
 */
static bool room_for(struct qf_fs *fs, struct qf_node *n)
{
	struct qf_cache_space sp;
	uint64_t keep;

	if (qf_cache_space(fs->cache, false, &sp) < 0)
		return true;		/* cannot tell: the write will */
	keep = sp.fs_bytes / 10 < (64u << 20) ? sp.fs_bytes / 10 : 64u << 20;
	if (qf_fs_room(fs, n->size, true) < 0 ||
	    (qf_cache_space(fs->cache, false, &sp) == 0 &&
	     sp.fs_free < n->size + keep)) {
		qf_debug("%s/%s: no room for a read file (%.1f MB free): "
			 "served by the daemon", n->mdl->name, n->name,
			 sp.fs_free / 1e6);
		return false;
	}
	return true;
}

/*
 * Write n's read file: a temporary name (locked while it is written, so
 * it is never taken for a stray one), synced, renamed into place.
 * Meanwhile the variant is marked in use (a shared QF_LOCK_USE lock, as
 * for an open file), so eviction, which drops read files with the values,
 * cannot run between and leave one behind.  -EAGAIN: evicted before the
 * lock was taken, or no room now (tried again later).
 */
static int write_read_file(struct qf_fs *fs, struct qf_node *n)
{
	struct qf_buf tmp = QF_BUF_INIT, path = QF_BUF_INIT, b = QF_BUF_INIT;
	struct flock fl = { .l_type = F_RDLCK, .l_whence = SEEK_SET,
			    .l_start = QF_LOCK_USE, .l_len = 1 };
	double t0 = qf_now();
	uint8_t *chunk = malloc(CHUNK);
	uint64_t off, sum = 0;
	int fd = -1, lockfd, ret;
	char tag[64];

	lockfd = qf_cache_lock_open(fs->cache, node_vid(n));
	if (lockfd >= 0 && fcntl(lockfd, F_OFD_SETLKW, &fl) < 0) {
		close(lockfd);
		lockfd = -1;
	}
	if (lockfd < 0 || !cached(fs, n) || !room_for(fs, n)) {
		if (lockfd >= 0)
			close(lockfd);
		free(chunk);
		return -EAGAIN;
	}
	snprintf(tag, sizeof(tag), "%s.%s", n->pt_tag,
		 n->kind == QF_NODE_WEIGHTS ? "safetensors" : "gguf");
	ret = chunk ? read_file_path(fs, n, false, &path) : -ENOMEM;
	if (!ret) {
		fd = qf_cache_file_create(fs->cache, node_vid(n), tag, &tmp);
		ret = fd < 0 ? fd : 0;
	}
	for (off = 0; !ret && off < n->size; off += CHUNK) {
		uint64_t end = n->size - off > CHUNK ? off + CHUNK : n->size;

		if (qf_fs_stopping(fs)) {
			ret = -EINTR;
		} else if (n->kind == QF_NODE_WEIGHTS) {
			ret = weights_range(fs, n->var, off, end, chunk);
			if (!ret)
				ret = pwrite_all(fd, chunk, end - off, off);
			sum = qf_hash64(chunk, end - off, sum);
		} else {
			ret = qf_gv_read(fs, n->gv, off, end, &b);
			if (!ret && b.len != end - off)
				ret = QF_ECORRUPT;
			if (!ret)
				ret = pwrite_all(fd, (const uint8_t *)b.data,
						 b.len, off);
			sum = qf_hash64(b.data, b.len, sum);
		}
	}
	/* where user xattrs are missing the file is just not verified */
	if (!ret && fsetxattr(fd, SUM_XATTR, &sum, sizeof(sum), 0) < 0)
		qf_debug("%s: no checksum attribute: %s", tmp.data,
			 strerror(errno));
	if (!ret && n->kind == QF_NODE_WEIGHTS &&
	    !qf_fs_source_intact(n->var->mdl->m))
		ret = QF_ECORRUPT;	/* the source moved under us */
	if (!ret && fdatasync(fd) < 0)
		ret = -errno;
	/* renamed while still locked: never stray meanwhile */
	if (!ret && rename(tmp.data, path.data) < 0)
		ret = -errno;
	if (ret && fd >= 0)
		unlink(tmp.data);
	if (fd >= 0 && close(fd) < 0 && !ret)
		ret = -errno;
	if (!ret)
		qf_info("%s: read file written (%.1f MB in %.2f s): later "
			"opens pass through to it", path.data, n->size / 1e6,
			qf_now() - t0);
	else if (ret != -EINTR)
		qf_warn("%s/%s: cannot write the read file for passthrough "
			"(%s): the daemon keeps serving it", n->mdl->name,
			n->name, qf_strerror(ret));
	close(lockfd);			/* drops the lock */
	free(chunk);
	qf_buf_release(&b);
	qf_buf_release(&tmp);
	qf_buf_release(&path);
	return ret;
}

/*
 * Check a read file against the checksum written with it, once per node
 * and process, in the background of its first passthrough open (before
 * would cost a first read a second pass over the file).  A damaged file
 * is deleted: opens that share its backing file then fail with EIO until
 * the last is closed, and later opens are served from the values.
 */
static int verify_read_file(struct qf_fs *fs, struct qf_node *n)
{
	struct qf_buf path = QF_BUF_INIT;
	uint8_t *chunk = malloc(CHUNK);
	uint64_t off, sum = 0, want = 0;
	struct stat st;
	int fd = -1, ret;

	ret = chunk ? read_file_path(fs, n, false, &path) : -ENOMEM;
	if (!ret && (fd = open(path.data, O_RDONLY | O_CLOEXEC)) < 0)
		ret = -errno;
	/* shorter than its file (truncated since the open): damaged */
	if (!ret && (fstat(fd, &st) < 0 || (uint64_t)st.st_size != n->size))
		ret = QF_ECORRUPT;
	if (!ret && fgetxattr(fd, SUM_XATTR, &want, sizeof(want)) !=
		    (ssize_t)sizeof(want))
		ret = -ENODATA;		/* written where xattrs fail */
	for (off = 0; !ret && off < n->size; off += CHUNK) {
		size_t len = n->size - off > CHUNK ? CHUNK : n->size - off;

		ret = qf_fs_stopping(fs) ? -EINTR :
		      pread_all(fd, chunk, len, off);
		sum = qf_hash64(chunk, len, sum);
	}
	if ((!ret && sum != want) || ret == QF_ECORRUPT) {
		qf_err("%s: read file damaged (checksum or size): deleted; "
		       "its file is served from the cache values again",
		       path.data);
		pthread_mutex_lock(&fs->pt_lock);
		n->pt_bad = true;
		pthread_mutex_unlock(&fs->pt_lock);
		unlink(path.data);
		ret = QF_ECORRUPT;
	}
	if (fd >= 0)
		close(fd);
	free(chunk);
	qf_buf_release(&path);
	return ret;
}

struct task {
	struct qf_fs *fs;
	struct qf_node *n;
	bool write;			/* write_read_file, else verify */
};

static void *task_main(void *arg)
{
	struct task t = *(struct task *)arg;
	struct qf_fs *fs = t.fs;
	int ret;

	free(arg);
	if (t.write) {
		ret = write_read_file(fs, t.n);
		pthread_mutex_lock(&fs->pt_lock);
		/* failed: not again in this mount (no room: later) */
		t.n->pt_writing = ret && ret != -EINTR && ret != -EAGAIN;
		pthread_mutex_unlock(&fs->pt_lock);
	} else {
		verify_read_file(fs, t.n);
	}
	pthread_mutex_lock(&fs->job_lock);
	fs->njobs--;
	pthread_cond_broadcast(&fs->job_cond);
	pthread_mutex_unlock(&fs->job_lock);
	return NULL;
}

/* Run a task in a detached thread that unmounting waits for. */
static bool spawn(struct qf_fs *fs, struct qf_node *n, bool write)
{
	struct task *t = malloc(sizeof(*t));
	pthread_attr_t attr;
	pthread_t th;
	bool go;

	pthread_mutex_lock(&fs->job_lock);
	go = t && !fs->stopping;
	if (go)
		fs->njobs++;
	pthread_mutex_unlock(&fs->job_lock);
	if (!go) {
		free(t);
		return false;
	}
	t->fs = fs;
	t->n = n;
	t->write = write;
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	if (pthread_create(&th, &attr, task_main, t) != 0) {
		free(t);
		pthread_mutex_lock(&fs->job_lock);
		fs->njobs--;
		pthread_cond_broadcast(&fs->job_cond);
		pthread_mutex_unlock(&fs->job_lock);
		go = false;
	}
	pthread_attr_destroy(&attr);
	return go;
}

/* Start writing n's read file when it has none and is all cached. */
static void maybe_write(struct qf_fs *fs, struct qf_node *n)
{
	bool go;
	int fd;

	pthread_mutex_lock(&fs->pt_lock);
	go = !n->pt_writing && allowed(fs);
	if (go)
		n->pt_writing = true;
	pthread_mutex_unlock(&fs->pt_lock);
	if (!go)
		return;
	fd = open_read_file(fs, n);
	if (fd >= 0)
		close(fd);
	go = fd < 0 && cached(fs, n);
	go = go && spawn(fs, n, true);
	if (!go) {
		pthread_mutex_lock(&fs->pt_lock);
		n->pt_writing = false;
		pthread_mutex_unlock(&fs->pt_lock);
	}
}

/* The registered backing file still has every byte; fs->pt_lock. */
static bool backing_whole(const struct qf_node *n)
{
	struct stat st;

	return fstat(n->pt_fd, &st) == 0 && (uint64_t)st.st_size == n->size;
}

static void unlink_read_file(struct qf_fs *fs, const struct qf_node *n)
{
	struct qf_buf path = QF_BUF_INIT;

	if (read_file_path(fs, n, false, &path) == 0)
		unlink(path.data);
	qf_buf_release(&path);
}

int qf_pt_open(struct qf_fs *fs, struct qf_node *n)
{
	bool write = false, verify = false;
	int id = 0, fd;

	if (!candidate(n))
		return 0;
	pthread_mutex_lock(&fs->pt_lock);
	need_tag(n);	/* for every later use: all follow an open */
	if (n->pt_open && n->pt_bad) {
		pthread_mutex_unlock(&fs->pt_lock);
		return -EIO;		/* shares a damaged backing file */
	}
	if (n->pt_open && has_read_file(n) && !backing_whole(n)) {
		/* truncated under opens passed through: theirs cannot be
		 * helped (the kernel reads it), new ones fail */
		qf_err("%s/%s: read file truncated under %u passthrough "
		       "open(s): deleted; new opens fail with EIO until they "
		       "are closed", n->mdl->name, n->name, n->pt_open);
		n->pt_bad = true;
		pthread_mutex_unlock(&fs->pt_lock);
		unlink_read_file(fs, n);
		return -EIO;
	}
	if (n->pt_open) {
		n->pt_open++;
		id = n->pt_id;
	} else if (allowed(fs)) {
		fd = n->own_open ? -1 : n->kind == QF_NODE_SRCFILE ?
		     qf_ns_open_src(n) :
		     open_read_file(fs, n);
		if (fd >= 0) {
			id = fs->kern->backing_open(fs, fd);
			if (id > 0) {
				n->pt_id = id;
				n->pt_fd = fd;
				n->pt_open = 1;
				n->pt_bad = false;
				verify = has_read_file(n) && !n->pt_verified;
				n->pt_verified = true;
			} else {
				qf_debug("%s: no passthrough: %s", n->name,
					 strerror(-id));
				close(fd);
				id = 0;
			}
		}
		/* none yet, or not usable while the daemon serves opens */
		write = !id && has_read_file(n);
	}
	if (!id)
		n->own_open++;
	pthread_mutex_unlock(&fs->pt_lock);
	if (write)
		maybe_write(fs, n);
	if (verify)
		spawn(fs, n, false);
	return id;
}

void qf_pt_release(struct qf_fs *fs, struct qf_node *n, bool pt)
{
	bool idle;

	if (!candidate(n))
		return;
	pthread_mutex_lock(&fs->pt_lock);
	if (pt && n->pt_open && --n->pt_open == 0) {
		int ret = fs->kern->backing_close(fs, n->pt_id);

		if (ret < 0)
			qf_warn("%s: closing backing file %d: %s", n->name,
				n->pt_id, strerror(-ret));
		close(n->pt_fd);
		n->pt_id = 0;
		n->pt_fd = -1;
		n->pt_bad = false;	/* its file is gone: not used again */
	} else if (!pt && n->own_open) {
		n->own_open--;
	}
	idle = !n->pt_open && !n->own_open;
	pthread_mutex_unlock(&fs->pt_lock);
	if (idle && !pt && has_read_file(n))
		maybe_write(fs, n);
}

int qf_pt_describe(struct qf_fs *fs, struct qf_node *n, struct qf_buf *out)
{
	struct qf_buf path = QF_BUF_INIT;
	cJSON *o = cJSON_CreateObject();
	bool have = false, pt;
	struct stat st;
	char *text;

	pthread_mutex_lock(&fs->pt_lock);
	need_tag(n);		/* asked before any open */
	if (has_read_file(n) && read_file_path(fs, n, false, &path) == 0)
		have = stat(path.data, &st) == 0 &&
		       (uint64_t)st.st_size == n->size;
	pt = n->pt_open > 0 || (candidate(n) && allowed(fs) &&
				(n->kind == QF_NODE_SRCFILE || have));
	cJSON_AddStringToObject(o, "mode", pt ? "passthrough" :
				fs->direct && n->size >= (1u << 20) ?
				"direct" : "cache");
	cJSON_AddNumberToObject(o, "open_passthrough", n->pt_open);
	cJSON_AddNumberToObject(o, "open_daemon", n->own_open);
	pthread_mutex_unlock(&fs->pt_lock);
	cJSON_AddNumberToObject(o, "daemon_reads", (double)__atomic_load_n(
					&n->reads, __ATOMIC_RELAXED));
	if (have)
		cJSON_AddStringToObject(o, "read_file", path.data);
	else
		cJSON_AddNullToObject(o, "read_file");
	text = cJSON_PrintUnformatted(o);
	cJSON_Delete(o);
	qf_buf_release(&path);
	if (!text)
		return -ENOMEM;
	qf_buf_adds(out, text);
	free(text);
	return out->data ? 0 : -ENOMEM;
}
