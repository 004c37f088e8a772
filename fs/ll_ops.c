/*
 * ll_ops.c - the FUSE low-level operations.  Each is a thin wrapper around
 * one qf_fs_do_<op>() (do.c): it passes the request's arguments in and
 * turns the plain result into a reply (a read's segments into a spliced
 * buffer vector, ll_assemble.c).
 *
 * The thread's current request is kept for the hooks the core asks
 * (struct qf_fs_req_hooks, registered at init: is the request interrupted,
 * whose is it) while a lookup's variant setup or a read's production
 * runs; the core never calls into this file.
 */
#define FUSE_USE_VERSION 312

#include <fuse_lowlevel.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>

#include "fs_do.h"
#include "fs_i.h"
#include "ll.h"

/* The request this worker thread serves, for interruptible waits. */
static __thread fuse_req_t cur_req;

static struct qf_fs *fs_of(fuse_req_t req)
{
	return fuse_req_userdata(req);
}

/* The core's view of the request a thread serves (qf_fs_req_hooks). */
static uid_t req_uid(const struct qf_fs *fs)
{
	const struct fuse_ctx *ctx = cur_req ? fuse_req_ctx(cur_req) : NULL;

	return ctx ? ctx->uid : fs->uid;
}

static bool req_interrupted(struct qf_fs *fs)
{
	return (cur_req && fuse_req_interrupted(cur_req)) ||
	       (fs->se && fuse_session_exited(fs->se));
}

static const struct qf_fs_req_hooks req_hooks = {
	.interrupted = req_interrupted,
	.uid = req_uid,
};

static void fill_entry(const struct qf_fs_entry *q,
		       struct fuse_entry_param *e)
{
	memset(e, 0, sizeof(*e));
	e->ino = q->ino;
	e->generation = 1;
	e->attr = q->st;
	e->attr_timeout = q->timeout;
	e->entry_timeout = q->timeout;
}

/* /proc/sys/fs/pipe-max-size, or the 1 MiB default. */
static unsigned pipe_max(void)
{
	FILE *f = fopen("/proc/sys/fs/pipe-max-size", "re");
	unsigned v = 1u << 20;

	if (f) {
		if (fscanf(f, "%u", &v) != 1)
			v = 1u << 20;
		fclose(f);
	}
	return v;
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
	/* before any request: the core's waits ask these */
	qf_fs_set_req_hooks(userdata, &req_hooks);
	/* the kernel may cache and read ahead freely: files never change */
	if (conn->capable & FUSE_CAP_ASYNC_READ)
		conn->want |= FUSE_CAP_ASYNC_READ;
	conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA;
	/* replies are spliced from the LMDB and source files */
	if (conn->capable & FUSE_CAP_SPLICE_WRITE)
		conn->want |= FUSE_CAP_SPLICE_WRITE;
	/*
	 * libfuse 3.14 splices a reply only if its pipe can hold the data
	 * plus one page per buffer plus two (fuse_send_data_iov), and an
	 * unprivileged pipe stops at pipe-max-size (1 MiB): past that it
	 * silently copies every reply.  With the default pipe-max-size,
	 * requests of 248 pages leave room for six buffers; where the
	 * administrator raised it (fs.pipe-max-size >= 2 MiB), requests are
	 * 1 MiB.  max_pages (the request size) follows max_write.
	 */
	conn->max_write = pipe_max() >= (2u << 20) ? 256 * 4096 : 248 * 4096;
	conn->max_readahead = conn->max_readahead > (1u << 20) ?
			      conn->max_readahead : (1u << 20);
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct qf_fs *fs = fs_of(req);
	struct fuse_entry_param e;
	struct qf_fs_entry q;
	int ret;

	ret = qf_fs_do_measure(fs, parent, name);
	if (!ret) {
		cur_req = req;		/* a variant setup may wait its turn */
		ret = qf_fs_do_lookup(fs, parent, name, &q);
		cur_req = NULL;
	}
	if (ret < 0) {
		fuse_reply_err(req, -ret);
		return;
	}
	fill_entry(&q, &e);
	fuse_reply_entry(req, &e);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	qf_fs_do_forget(fs_of(req), ino, nlookup);
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count,
			    struct fuse_forget_data *f)
{
	size_t i;

	for (i = 0; i < count; i++)
		qf_fs_do_forget(fs_of(req), f[i].ino, f[i].nlookup);
	fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	struct qf_fs_entry q;
	int ret = qf_fs_do_getattr(fs_of(req), ino, &q);

	(void)fi;
	if (ret < 0)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_attr(req, &q.st, q.timeout);
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	struct qf_fs_dir *d;
	int ret = qf_fs_do_opendir(fs_of(req), ino, &d);

	if (ret < 0) {
		fuse_reply_err(req, -ret);
		return;
	}
	fi->fh = (uintptr_t)d;
	fuse_reply_open(req, fi);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size,
		       off_t off, struct fuse_file_info *fi)
{
	const struct qf_fs_dir *d = (struct qf_fs_dir *)(uintptr_t)fi->fh;
	char *buf = calloc(1, size);
	size_t used = 0, i;
	struct stat st;

	(void)ino;
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	memset(&st, 0, sizeof(st));
	for (i = off > 0 ? (size_t)off : 0; i < d->n; i++) {
		size_t need;

		st.st_ino = d->ent[i].ino;
		st.st_mode = d->ent[i].type;
		need = fuse_add_direntry(req, buf + used, size - used,
					 d->ent[i].name, &st, (off_t)i + 1);
		if (need > size - used)
			break;
		used += need;
	}
	fuse_reply_buf(req, buf, used);
	free(buf);
}

static void op_releasedir(fuse_req_t req, fuse_ino_t ino,
			  struct fuse_file_info *fi)
{
	(void)ino;
	qf_fs_do_releasedir((struct qf_fs_dir *)(uintptr_t)fi->fh);
	fuse_reply_err(req, 0);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct qf_fs_open o;
	int ret = qf_fs_do_open(fs_of(req), ino, fi->flags, &o);

	if (ret < 0) {
		fuse_reply_err(req, -ret);
		return;
	}
	fi->fh = o.fh;
	fi->keep_cache = o.keep_cache;
	fi->direct_io = o.direct_io;
	if (o.backing)		/* the kernel reads the backing file */
		qf_ll_pt_open(o.backing);
	fuse_reply_open(req, fi);
}

static void op_release(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	qf_fs_do_release(fs_of(req), ino, fi->fh);
	fuse_reply_err(req, 0);
}

/*
 * Reply with the read's segments.  Cached pages stay held (rd's read
 * transaction) until the reply is sent, so LMDB cannot reuse the spliced
 * pages meanwhile.
 */
static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct fuse_bufvec *bv = NULL;
	struct qf_fs_rd rd;
	int ret;

	cur_req = req;
	ret = qf_fs_do_read(fs_of(req), ino, fi->fh, (uint64_t)off, size, &rd);
	cur_req = NULL;
	if (!ret && rd.n == 0)
		fuse_reply_buf(req, NULL, 0);
	else if (!ret && rd.n == 1 && rd.seg[0].fd < 0)
		fuse_reply_buf(req, rd.seg[0].mem, rd.seg[0].len);
	else if (!ret && (ret = qf_ll_bufvec(&rd, &bv)) == 0)
		fuse_reply_data(req, bv, rd.move ? FUSE_BUF_SPLICE_MOVE : 0);
	if (ret < 0)
		fuse_reply_err(req, -ret);
	free(bv);
	qf_fs_rd_release(&rd);
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
			size_t size)
{
	struct qf_buf b = QF_BUF_INIT;
	int ret = qf_fs_do_getxattr(fs_of(req), ino, name, &b);

	if (ret < 0)
		fuse_reply_err(req, -ret);
	else if (size == 0)
		fuse_reply_xattr(req, b.len);
	else if (size < b.len)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, b.data, b.len);
	qf_buf_release(&b);
}

static void op_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	const char *names;
	size_t len;

	qf_fs_do_listxattr(fs_of(req), ino, &names, &len);
	if (size == 0)
		fuse_reply_xattr(req, len);
	else if (size < len)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, names, len);
}

static void op_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct statvfs sv;

	(void)ino;
	qf_fs_do_statfs(fs_of(req), &sv);
	fuse_reply_statfs(req, &sv);
}

/* The mount is read-only: everything that would write says so. */
static void op_erofs_name(fuse_req_t req, fuse_ino_t p, const char *name)
{
	(void)p, (void)name;
	fuse_reply_err(req, EROFS);
}

static void op_mkdir(fuse_req_t req, fuse_ino_t p, const char *name,
		     mode_t mode)
{
	(void)mode;
	op_erofs_name(req, p, name);
}

static void op_create(fuse_req_t req, fuse_ino_t p, const char *name,
		      mode_t mode, struct fuse_file_info *fi)
{
	(void)mode, (void)fi;
	op_erofs_name(req, p, name);
}

static void op_mknod(fuse_req_t req, fuse_ino_t p, const char *name,
		     mode_t mode, dev_t rdev)
{
	(void)mode, (void)rdev;
	op_erofs_name(req, p, name);
}

static void op_rename(fuse_req_t req, fuse_ino_t p, const char *name,
		      fuse_ino_t np, const char *nn, unsigned int flags)
{
	(void)np, (void)nn, (void)flags;
	op_erofs_name(req, p, name);
}

static void op_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr,
		       int to_set, struct fuse_file_info *fi)
{
	(void)ino, (void)attr, (void)to_set, (void)fi;
	fuse_reply_err(req, EROFS);
}

static void op_write(fuse_req_t req, fuse_ino_t ino, const char *buf,
		     size_t size, off_t off, struct fuse_file_info *fi)
{
	(void)ino, (void)buf, (void)size, (void)off, (void)fi;
	fuse_reply_err(req, EROFS);
}

static const struct fuse_lowlevel_ops ops = {
	.init = op_init,
	.lookup = op_lookup,
	.forget = op_forget,
	.forget_multi = op_forget_multi,
	.getattr = op_getattr,
	.opendir = op_opendir,
	.readdir = op_readdir,
	.releasedir = op_releasedir,
	.open = op_open,
	.read = op_read,
	.release = op_release,
	.statfs = op_statfs,
	.getxattr = op_getxattr,
	.listxattr = op_listxattr,
	.mkdir = op_mkdir,
	.create = op_create,
	.mknod = op_mknod,
	.unlink = op_erofs_name,
	.rmdir = op_erofs_name,
	.rename = op_rename,
	.setattr = op_setattr,
	.write = op_write,
};

const struct fuse_lowlevel_ops *qf_fs_ops(void)
{
	return &ops;
}
