/*
 * ops.c - the FUSE low-level operations.  Each is a thin wrapper that
 * finds the node, calls into ns.c / var.c and turns the result into a
 * reply.
 *
 * Files are immutable once their size is published: long entry/attr
 * timeouts and keep_cache.  A file the kernel can read by itself passes
 * through to a backing file (passthrough.c).  Otherwise large files use
 * direct_io where the kernel still lets them be mmapped (session.c), and
 * reads of model.safetensors are spliced from the LMDB and source files:
 * no copy in the daemon.
 */
#define FUSE_USE_VERSION 312

#include <fuse_lowlevel.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <time.h>
#include <unistd.h>

#include "fs_i.h"

struct dir_handle {
	struct qf_buf names;		/* "\0"-separated */
	size_t count;
};

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

/*
 * Names src.c resolves (models, orgs, the root's attributes) are looked
 * up again within QF_SRC_TIMEOUT: a new revision or a changed source is
 * served by the next open after it.  Everything below a model is fixed.
 */
static double attr_timeout(const struct qf_fs *fs, const struct qf_node *n)
{
	bool src = n->kind == QF_NODE_ROOT || n->kind == QF_NODE_ORG ||
		   n->kind == QF_NODE_MODEL;

	return src && fs->o.timeout > QF_SRC_TIMEOUT ? QF_SRC_TIMEOUT :
						      fs->o.timeout;
}

static void fill_entry(struct qf_fs *fs, struct qf_node *n,
		       struct fuse_entry_param *e)
{
	memset(e, 0, sizeof(*e));
	e->ino = n->ino;
	e->generation = 1;
	qf_ns_stat(fs, n, &e->attr);
	e->attr_timeout = attr_timeout(fs, n);
	e->entry_timeout = e->attr_timeout;
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
	struct qf_node *dir = qf_ns_get(fs, parent);
	struct fuse_entry_param e;
	struct qf_node *n;
	int err = -ENOENT;

	if (!dir || !qf_ns_is_dir(dir)) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	/* below a model whose source changed: walk again (see op_open) */
	if (dir->mdl && !qf_ns_current(fs, dir->mdl)) {
		fuse_reply_err(req, ESTALE);
		return;
	}
	/* mixed_dyn / mixed_b: measure outside the namespace lock */
	if (dir->kind == QF_NODE_MODEL && dir->mdl->m) {
		struct qf_spec sp;

		if (qf_spec_parse(name, &sp, NULL) == 0 &&
		    (sp.method == QF_METHOD_MIXED_DYN ||
		     sp.method == QF_METHOD_MIXED_BUDGET))
			qf_job_mixed_prepare(fs, dir->mdl, &sp);
	}
	cur_req = req;		/* a variant setup may wait its turn */
	n = qf_ns_lookup(fs, dir, name, &err);
	cur_req = NULL;
	if (!n) {
		fuse_reply_err(req, qf_fs_errno(err));
		return;
	}
	fill_entry(fs, n, &e);
	fuse_reply_entry(req, &e);
}

static void op_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	struct qf_fs *fs = fs_of(req);
	struct qf_node *n = qf_ns_get(fs, ino);

	if (n) {
		pthread_mutex_lock(&fs->lock);
		n->nlookup -= nlookup < n->nlookup ? nlookup : n->nlookup;
		pthread_mutex_unlock(&fs->lock);
	}
	fuse_reply_none(req);
}

static void op_forget_multi(fuse_req_t req, size_t count,
			    struct fuse_forget_data *f)
{
	struct qf_fs *fs = fs_of(req);
	size_t i;

	for (i = 0; i < count; i++) {
		struct qf_node *n = qf_ns_get(fs, f[i].ino);

		if (!n)
			continue;
		pthread_mutex_lock(&fs->lock);
		n->nlookup -= f[i].nlookup < n->nlookup ? f[i].nlookup :
							  n->nlookup;
		pthread_mutex_unlock(&fs->lock);
	}
	fuse_reply_none(req);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	struct qf_fs *fs = fs_of(req);
	struct qf_node *n = qf_ns_get(fs, ino);
	struct stat st;

	(void)fi;
	if (!n) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	qf_ns_stat(fs, n, &st);
	fuse_reply_attr(req, &st, attr_timeout(fs, n));
}

static void op_opendir(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	struct qf_fs *fs = fs_of(req);
	struct qf_node *n = qf_ns_get(fs, ino);
	struct dir_handle *h;
	int ret;

	if (!n || !qf_ns_is_dir(n)) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	h = calloc(1, sizeof(*h));
	if (!h) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	ret = qf_ns_list(fs, n, &h->names, &h->count);
	if (ret < 0) {
		qf_buf_release(&h->names);
		free(h);
		fuse_reply_err(req, qf_fs_errno(ret));
		return;
	}
	fi->fh = (uintptr_t)h;
	fuse_reply_open(req, fi);
}

/* The d_type of entry i (0 and 1: . and ..) of dir: 0 where it varies. */
static mode_t entry_type(const struct qf_node *dir, size_t i)
{
	switch (i < 2 ? QF_NODE_ROOT : dir->kind) {
	case QF_NODE_ROOT:
	case QF_NODE_ORG:
	case QF_NODE_MODEL:
		return S_IFDIR;
	case QF_NODE_VARDIR:
		return S_IFREG;
	default:
		return 0;	/* original/ holds folders too: ask */
	}
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size,
		       off_t off, struct fuse_file_info *fi)
{
	struct dir_handle *h = (struct dir_handle *)(uintptr_t)fi->fh;
	struct qf_node *dir = qf_ns_get(fs_of(req), ino);
	char *buf = calloc(1, size);
	const char *p = h->names.data;
	size_t used = 0, i;
	struct stat st;

	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	memset(&st, 0, sizeof(st));
	for (i = 0; i < h->count + 2; i++) {
		const char *name = i == 0 ? "." : i == 1 ? ".." : p;
		size_t need;

		if (i >= 2)
			p += strlen(p) + 1;
		if ((off_t)i < off)
			continue;
		st.st_ino = i < 2 ? ino : (1ULL << 62) + (uint64_t)i;
		st.st_mode = entry_type(dir, i);
		need = fuse_add_direntry(req, buf + used, size - used, name,
					 &st, (off_t)i + 1);
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
	struct dir_handle *h = (struct dir_handle *)(uintptr_t)fi->fh;

	(void)ino;
	qf_buf_release(&h->names);
	free(h);
	fuse_reply_err(req, 0);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct qf_fs *fs = fs_of(req);
	struct qf_node *n = qf_ns_get(fs, ino);
	int fd, pt;

	if (!n || qf_ns_is_dir(n)) {
		fuse_reply_err(req, n ? EISDIR : ENOENT);
		return;
	}
	if ((fi->flags & O_ACCMODE) != O_RDONLY ||
	    (fi->flags & (O_TRUNC | O_APPEND))) {
		fuse_reply_err(req, EROFS);
		return;
	}
	/* the kernel walks the path again (LOOKUP_REVAL) on ESTALE and
	 * finds the model's new generation */
	if (!qf_ns_current(fs, n->mdl)) {
		qf_info("%s: the source changed: serving it anew", n->mdl->name);
		fuse_reply_err(req, ESTALE);
		return;
	}
	pt = qf_pt_open(fs, n);
	if (pt < 0) {
		fuse_reply_err(req, -pt);
		return;
	}
	if (n->var && n->kind != QF_NODE_SRCFILE)
		qf_var_opened(fs, n->var);	/* eviction leaves it alone */
	if (pt > 0) {			/* the kernel reads the backing file */
		fi->fh = QF_FH_PT;
		qf_fs_open_passthrough(pt);
		fuse_reply_open(req, fi);
		return;
	}
	fi->fh = 0;
	if (n->kind == QF_NODE_SRCFILE) {
		fd = qf_ns_open_src(n);
		if (fd < 0) {
			fuse_reply_err(req, qf_fs_errno(fd));
			qf_pt_release(fs, n, false);
			return;
		}
		fi->fh = (uint64_t)fd + 1;
	}
	fi->keep_cache = 1;
	/* large immutable files: direct reads, mmap still allowed */
	if (fs->direct && n->size >= (1u << 20))
		fi->direct_io = 1;
	fuse_reply_open(req, fi);
}

static void op_release(fuse_req_t req, fuse_ino_t ino,
		       struct fuse_file_info *fi)
{
	struct qf_fs *fs = fs_of(req);
	struct qf_node *n = qf_ns_get(fs, ino);

	if (fi->fh && fi->fh != QF_FH_PT)
		close((int)(fi->fh - 1));
	if (n) {
		qf_pt_release(fs, n, fi->fh == QF_FH_PT);
		if (n->var && n->kind != QF_NODE_SRCFILE)
			qf_var_released(fs, n->var);
	}
	fuse_reply_err(req, 0);
}

/*
 * Reply with [off, end) of a variant's model.safetensors.  The read
 * transaction stays open until the reply is sent, so LMDB cannot reuse
 * the spliced pages meanwhile.
 */
static int read_weights(fuse_req_t req, struct qf_fs *fs, struct qf_var *var,
			uint64_t off, uint64_t end)
{
	struct qf_cache_txn *txn = NULL;
	struct fuse_bufvec *bv = NULL;
	int ret, attempt;

	/* a second time when another process evicted the variant after
	 * this one had it (cache gc): its groups are produced again */
	for (attempt = 0; attempt < 2; attempt++) {
		ret = qf_var_ensure_range(fs, var, off, end);
		if (ret < 0)
			return ret;
		ret = qf_cache_read_begin(fs->cache, &txn);
		if (!ret)
			ret = qf_fs_bufvec(fs, var, txn, off, end, &bv);
		if (ret != -ENOENT)
			break;
		qf_cache_read_end(txn);
		txn = NULL;
		qf_var_revalidate(fs, var);
	}
	if (ret == -ENOENT)
		ret = QF_ECORRUPT;
	if (ret < 0) {
		qf_cache_read_end(txn);
		return ret;
	}
	if (!qf_fs_source_intact(var->mdl->m)) {
		qf_err("%s: source changed while the file was open; open it "
		       "again to read the new version", var->mdl->name);
		ret = QF_ECORRUPT;
	}
	if (!ret)
		fuse_reply_data(req, bv, 0);
	qf_cache_read_end(txn);
	free(bv);
	return ret;
}

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		    struct fuse_file_info *fi)
{
	struct qf_fs *fs = fs_of(req);
	struct qf_node *n = qf_ns_get(fs, ino);
	struct fuse_bufvec bv = FUSE_BUFVEC_INIT(size);
	uint64_t end;
	int ret;

	if (!n) {
		fuse_reply_err(req, ENOENT);
		return;
	}
	__atomic_fetch_add(&n->reads, 1, __ATOMIC_RELAXED);
	switch (n->kind) {
	case QF_NODE_SRCFILE:
		if (fi->fh == QF_FH_PT) {	/* its reads go to the kernel */
			qf_err("%s: a read of a passthrough file reached the "
			       "daemon", n->name);
			fuse_reply_err(req, EIO);
			return;
		}
		bv.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
		bv.buf[0].fd = (int)(fi->fh - 1);
		bv.buf[0].pos = off;
		fuse_reply_data(req, &bv, FUSE_BUF_SPLICE_MOVE);
		return;
	case QF_NODE_GENFILE:
		/* a calibrated variant's results: after its production */
		if (n->bytes == &n->var->manifest && n->var->calibrated) {
			cur_req = req;
			ret = qf_job_manifest(fs, n->var);
			cur_req = NULL;
			if (ret < 0) {
				fuse_reply_err(req, qf_fs_errno(ret));
				return;
			}
		}
		if ((uint64_t)off >= n->size) {
			fuse_reply_buf(req, NULL, 0);
			return;
		}
		end = (uint64_t)off + size < n->size ? (uint64_t)off + size :
						       n->size;
		fuse_reply_buf(req, n->bytes->data + off, end - (uint64_t)off);
		return;
	case QF_NODE_WEIGHTS:
		if ((uint64_t)off >= n->size) {
			fuse_reply_buf(req, NULL, 0);
			return;
		}
		end = (uint64_t)off + size < n->size ? (uint64_t)off + size :
						       n->size;
		cur_req = req;
		ret = read_weights(req, fs, n->var, (uint64_t)off, end);
		cur_req = NULL;
		if (ret < 0)
			fuse_reply_err(req, qf_fs_errno(ret));
		return;
	case QF_NODE_GGUF: {
		struct qf_buf b = QF_BUF_INIT;

		cur_req = req;
		ret = qf_gv_read(fs, n->gv, (uint64_t)off, (uint64_t)off + size,
				 &b);
		cur_req = NULL;
		if (ret < 0)
			fuse_reply_err(req, qf_fs_errno(ret));
		else
			fuse_reply_buf(req, b.data, b.len);
		qf_buf_release(&b);
		return;
	}
	default:
		fuse_reply_err(req, EISDIR);
	}
}

/*
 * Progress as extended attributes: user.quantfs.progress on a variant
 * directory (JSON), user.quantfs.status on the root (a JSON array of the
 * calibrated variants this mount knows, for `quantfs status`); and
 * user.quantfs.io on a file (how it is served, passthrough.c).
 */
static int xattr_value(struct qf_fs *fs, struct qf_node *n, const char *name,
		       struct qf_buf *out)
{
	struct qf_buf one = QF_BUF_INIT;
	struct qf_mdl *mdl;
	size_t k = 0;
	int ret = 0;

	if (n->kind == QF_NODE_VARDIR &&
	    !strcmp(name, "user.quantfs.progress")) {
		if (!n->var->calibrated)
			return qf_buf_addf(out, "{\"model\": \"%s\", "
					   "\"variant\": \"%s\", \"state\": "
					   "\"per tensor, on read\"}",
					   n->mdl->name, n->var->v->name);
		return qf_job_progress(n->var, out);
	}
	if (!qf_ns_is_dir(n) && !strcmp(name, "user.quantfs.io"))
		return qf_pt_describe(fs, n, out);
	if (n->kind != QF_NODE_ROOT || strcmp(name, "user.quantfs.status"))
		return -ENODATA;
	qf_buf_adds(out, "[");
	pthread_mutex_lock(&fs->lock);
	for (mdl = fs->mdls; mdl && !ret; mdl = mdl->next) {
		struct qf_var *v;

		for (v = mdl->vars; v && !ret; v = v->next) {
			if (!v->calibrated || v->base)
				continue;
			ret = qf_job_progress(v, &one);
			if (!ret)
				ret = qf_buf_addf(out, "%s%s", k++ ? ", " : "",
						  one.data);
		}
	}
	pthread_mutex_unlock(&fs->lock);
	qf_buf_release(&one);
	return ret ? ret : qf_buf_adds(out, "]\n");
}

static void op_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name,
			size_t size)
{
	struct qf_fs *fs = fs_of(req);
	struct qf_node *n = qf_ns_get(fs, ino);
	struct qf_buf b = QF_BUF_INIT;
	int ret;

	ret = n ? xattr_value(fs, n, name, &b) : -ENOENT;
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
	struct qf_node *n = qf_ns_get(fs_of(req), ino);
	const char *names = "";
	size_t len = 0;

	if (n && n->kind == QF_NODE_VARDIR)
		names = "user.quantfs.progress", len = 22;
	else if (n && n->kind == QF_NODE_ROOT)
		names = "user.quantfs.status", len = 20;
	else if (n)
		names = "user.quantfs.io", len = 16;
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
	if (statvfs(fs_of(req)->src, &sv) < 0)
		memset(&sv, 0, sizeof(sv));
	sv.f_bfree = sv.f_bavail = 0;
	sv.f_ffree = sv.f_favail = 0;
	sv.f_flag |= ST_RDONLY;
	sv.f_namemax = 255;
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
