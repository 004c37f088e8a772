/*
 * readfile.c - a variant file's read file (cache/files.c keeps the
 * files; pt.c decides when one is wanted): written from the cache's
 * verified values, and recognized later without reading it again.
 *
 * Kernel passthrough hands the read file to the kernel, which reads it
 * without asking the daemon, so its bytes must be right before the first
 * open passes through.  Hashing the file at every mount costs a first
 * read as much as reading it (0.61x of a plain file when the check ran
 * beside the read), and this kernel has no fs-verity (CONFIG_FS_VERITY
 * unset), so the writer records what identifies the file it wrote, in
 * the cache's "m" store under "readfile <vid hex>.<tag>":
 *     (st_dev, st_ino, i_generation, st_size, st_mtim, st_ctim)
 * and the SHA-256 of the bytes.  An open uses the file only when an
 * fstat and an FS_IOC_GETVERSION of it give the record back.  Why that
 * is enough:
 *   - every change of a file's bytes through the file system (write,
 *     truncate, fallocate, a shared mmap's store) sets its ctime to now,
 *     and no call sets a ctime to a chosen value; chmod, chown and xattr
 *     changes set it too (the file is then written again: harmless);
 *   - a file put in its place (rename over it, or unlink and create) is
 *     another inode: another (ino, i_generation) and a new ctime;
 *   - the record is taken from the descriptor the bytes were written
 *     through, after fdatasync, fchmod read-only and the rename (which sets
 *     the ctime on ext4), and only the daemon's user or root may write a
 *     read-only file it owns (the values it came from are no safer: the same
 *     user can write data.mdb);
 *   - the kernels that compare timestamps at a clock tick (before
 *     Linux 6.13's multigrain times) could keep the ctime of a write in
 *     the same tick as the record: only the owner could make one.
 * A mismatch is never served: the file is written again from the values
 * (renamed over the old one) before the open passes through.  What this
 * does not see: bytes changed beneath the file system (the block device
 * written directly), which the cache's own values would not survive
 * either.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs_do.h"
#include "fs_i.h"

#define CHUNK (8u << 20)

/* What identifies a read file's bytes here, and their SHA-256. */
struct rf_record {
	uint64_t dev;
	struct qf_rf_id id;		/* inode, size, times */
	uint32_t gen;			/* i_generation, 0 where unknown */
	uint32_t version;		/* RF_VERSION */
	uint8_t sha256[32];
};
#define RF_VERSION 1
_Static_assert(sizeof(struct rf_record) == 96, "a record has no padding");

static bool has_read_file(const struct qf_node *n)
{
	return n->kind == QF_NODE_WEIGHTS || n->kind == QF_NODE_GGUF;
}

static const uint8_t *node_vid(const struct qf_node *n)
{
	return n->kind == QF_NODE_WEIGHTS ? n->var->vid : qf_gv_vid(n->gv);
}

bool qf_rf_cached(struct qf_fs *fs, struct qf_node *n)
{
	return n->kind == QF_NODE_WEIGHTS ? qf_var_cached(fs, n->var) :
					    qf_gv_cached(fs, n->gv);
}

void qf_rf_tag(struct qf_node *n)
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

/* "<tag>.safetensors" or "<tag>.gguf": the name after the vid. */
static void file_tag(const struct qf_node *n, char *tag, size_t len)
{
	snprintf(tag, len, "%s.%s", n->pt_tag,
		 n->kind == QF_NODE_WEIGHTS ? "safetensors" : "gguf");
}

int qf_rf_path(struct qf_fs *fs, const struct qf_node *n,
	       struct qf_buf *out)
{
	char tag[64];

	file_tag(n, tag, sizeof(tag));
	return qf_cache_file_path(fs->cache, node_vid(n), tag, false, out);
}

static void record_key(const struct qf_node *n, char *key, size_t len)
{
	char hex[2 * QF_CACHE_VID + 1], tag[64];

	qf_hex(node_vid(n), QF_CACHE_VID, hex);
	file_tag(n, tag, sizeof(tag));
	snprintf(key, len, "readfile %s.%s", hex, tag);
}

/* fd's identity into r (its sha256 untouched). */
static int identify(int fd, struct rf_record *r)
{
	unsigned int gen = 0;
	struct stat st;

	if (fstat(fd, &st) < 0)
		return -errno;
	if (!S_ISREG(st.st_mode))
		return QF_ECORRUPT;
	/* ext4, xfs, btrfs, tmpfs answer; elsewhere ino and ctime remain */
	if (ioctl(fd, FS_IOC_GETVERSION, &gen) < 0)
		gen = 0;
	r->dev = (uint64_t)st.st_dev;
	r->id.ino = (uint64_t)st.st_ino;
	r->id.size = (uint64_t)st.st_size;
	r->id.mtime_s = (int64_t)st.st_mtim.tv_sec;
	r->id.mtime_ns = st.st_mtim.tv_nsec;
	r->id.ctime_s = (int64_t)st.st_ctim.tv_sec;
	r->id.ctime_ns = st.st_ctim.tv_nsec;
	r->gen = gen;
	r->version = RF_VERSION;
	return 0;
}

static bool same_id(const struct qf_rf_id *a, const struct qf_rf_id *b)
{
	return a->ino == b->ino && a->size == b->size &&
	       a->mtime_s == b->mtime_s && a->mtime_ns == b->mtime_ns &&
	       a->ctime_s == b->ctime_s && a->ctime_ns == b->ctime_ns;
}

static bool same_file(const struct rf_record *a, const struct rf_record *b)
{
	return a->dev == b->dev && same_id(&a->id, &b->id) &&
	       a->gen == b->gen && a->version == b->version;
}

int qf_rf_open(struct qf_fs *fs, struct qf_node *n, bool quiet)
{
	struct qf_buf path = QF_BUF_INIT;
	struct rf_record want, got;
	const char *why = NULL;
	char key[128];
	int fd = -1, ret;

	ret = qf_rf_path(fs, n, &path);
	if (!ret) {
		fd = open(path.data, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
		ret = fd < 0 ? -errno : identify(fd, &got);
	}
	if (!ret) {
		record_key(n, key, sizeof(key));
		ret = qf_cache_meta_get(fs->cache, key, &want, sizeof(want));
		if (ret == -ENOENT || ret == QF_ECORRUPT)
			why = "no record of its writing";
		else if (!ret && got.id.size != n->size)
			why = "its size is not its file's";
		else if (!ret && !same_file(&want, &got))
			why = "changed or replaced since it was written";
		if (why)
			ret = QF_ECORRUPT;
	}
	if (why && !quiet)
		qf_err("%s: read file damaged (%s): never passed on; its file "
		       "is written again from the cache values", path.data,
		       why);
	if (ret && fd >= 0) {
		close(fd);
		fd = -1;
	}
	qf_buf_release(&path);
	return fd;
}

bool qf_rf_same(int fd, const struct qf_rf_id *id)
{
	struct rf_record r;

	return identify(fd, &r) == 0 && same_id(&r.id, id);
}

int qf_rf_id(int fd, struct qf_rf_id *id)
{
	struct rf_record r;
	int ret = identify(fd, &r);

	if (!ret)
		*id = r.id;
	return ret;
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

/* Bytes [off, end) of n from the cache's values (checksums verified). */
static int node_range(struct qf_fs *fs, struct qf_node *n, uint64_t off,
		      uint64_t end, uint8_t *dst, struct qf_buf *b)
{
	int ret;

	if (n->kind == QF_NODE_WEIGHTS)
		return weights_range(fs, n->var, off, end, dst);
	ret = qf_gv_read(fs, n->gv, off, end, b);
	if (!ret && b->len != end - off)
		ret = QF_ECORRUPT;
	if (!ret)
		memcpy(dst, b->data, b->len);
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

/* n's bytes into fd, their SHA-256 into r. */
static int fill(struct qf_fs *fs, struct qf_node *n, int fd,
		struct rf_record *r)
{
	struct qf_buf b = QF_BUF_INIT;
	uint8_t *chunk = malloc(CHUNK);
	struct qf_sha256 h;
	uint64_t off;
	int ret = chunk ? 0 : -ENOMEM;

	qf_sha256_init(&h);
	for (off = 0; !ret && off < n->size; off += CHUNK) {
		uint64_t end = n->size - off > CHUNK ? off + CHUNK : n->size;

		ret = qf_fs_stopping(fs) ? -EINTR :
		      node_range(fs, n, off, end, chunk, &b);
		if (!ret)
			ret = qf_pwrite_all(fd, chunk, end - off, off);
		if (!ret)
			qf_sha256_update(&h, chunk, end - off);
	}
	qf_sha256_final(&h, r->sha256);
	free(chunk);
	qf_buf_release(&b);
	return ret;
}

/* Synced, read-only, in place, and its identity recorded. */
static int seal(struct qf_fs *fs, struct qf_node *n, int fd,
		const char *tmp, const char *path, struct rf_record *r)
{
	struct stat st;
	char key[128];
	int ret = 0;

	if (n->kind == QF_NODE_WEIGHTS && !qf_fs_source_intact(n->var->mdl->m))
		ret = QF_ECORRUPT;	/* the source moved under us */
	if (!ret && fdatasync(fd) < 0)
		ret = -errno;
	/* read-only, with the read bits the cache's umask left it (a
	 * cache of private models gives others none: 0440) */
	if (!ret && (fstat(fd, &st) < 0 || fchmod(fd, st.st_mode & 0444) < 0))
		ret = -errno;
	/* renamed while still locked: never stray meanwhile */
	if (!ret && rename(tmp, path) < 0)
		ret = -errno;
	if (ret)
		return ret;
	/* after the rename, which sets the ctime (ext4) */
	ret = identify(fd, r);
	record_key(n, key, sizeof(key));
	if (!ret)
		ret = qf_cache_meta_put(fs->cache, key, r, sizeof(*r));
	if (ret)		/* unrecorded: never used, so not kept */
		unlink(path);
	return ret;
}

int qf_rf_write(struct qf_fs *fs, struct qf_node *n)
{
	struct qf_buf tmp = QF_BUF_INIT, path = QF_BUF_INIT;
	struct flock fl = { .l_type = F_RDLCK, .l_whence = SEEK_SET,
			    .l_start = QF_LOCK_USE, .l_len = 1 };
	struct rf_record r;
	double t0 = qf_now();
	int fd = -1, lockfd, ret;
	char tag[64];

	/* marked in use (as an open file is), so eviction, which drops
	 * read files with the values, cannot run between */
	lockfd = qf_cache_lock_open(fs->cache, node_vid(n));
	if (lockfd >= 0 && fcntl(lockfd, F_OFD_SETLKW, &fl) < 0) {
		close(lockfd);
		lockfd = -1;
	}
	if (lockfd < 0 || !qf_rf_cached(fs, n) || !room_for(fs, n)) {
		if (lockfd >= 0)
			close(lockfd);
		return -EAGAIN;
	}
	file_tag(n, tag, sizeof(tag));
	ret = qf_rf_path(fs, n, &path);
	if (!ret) {
		fd = qf_cache_file_create(fs->cache, node_vid(n), tag, &tmp);
		ret = fd < 0 ? fd : 0;
	}
	if (!ret)
		ret = fill(fs, n, fd, &r);
	if (!ret)
		ret = seal(fs, n, fd, tmp.data, path.data, &r);
	if (ret && fd >= 0)
		unlink(tmp.data);
	if (fd >= 0 && close(fd) < 0 && !ret)
		ret = -errno;
	if (!ret)
		qf_info("%s: read file written (%.1f MB in %.2f s): opens pass "
			"through to it", path.data, n->size / 1e6,
			qf_now() - t0);
	else if (ret != -EINTR)
		qf_warn("%s/%s: cannot write the read file for passthrough "
			"(%s): the daemon keeps serving it", n->mdl->name,
			n->name, qf_strerror(ret));
	close(lockfd);			/* drops the lock */
	qf_buf_release(&tmp);
	qf_buf_release(&path);
	return ret;
}
