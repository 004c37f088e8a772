/*
 * do.c - the filesystem's operations, one qf_fs_do_<op>() per FUSE op
 * (fs_do.h): find the node, call into ns.c / var.c / pt.c, hand back
 * plain results.  ll_ops.c turns them into replies; tests/unit/test_fs.c
 * calls them with no mount.
 *
 * Files are immutable once their size is published: long entry/attr
 * timeouts and keep_cache.  A file the kernel can read by itself passes
 * through to a backing file (pt.c).  Otherwise large files use direct_io
 * where the kernel still lets them be mmapped (ll_session.c), and reads
 * of model.safetensors are segments of the LMDB and source files
 * (range.c) that the reply splices: no copy in the daemon.
 */
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs_do.h"
#include "fs_i.h"

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
		       struct qf_fs_entry *e)
{
	memset(e, 0, sizeof(*e));
	e->ino = n->ino;
	qf_ns_stat(fs, n, &e->st);
	e->timeout = attr_timeout(fs, n);
}

/* The directory parent, where names below it may be looked up. */
static int lookup_dir(struct qf_fs *fs, uint64_t parent,
		      struct qf_node **out)
{
	struct qf_node *dir = qf_ns_get(fs, parent);

	if (!dir || !qf_ns_is_dir(dir))
		return -ENOTDIR;
	/* below a model whose source changed: walk again (see do_open) */
	if (dir->mdl && !qf_ns_current(fs, dir->mdl))
		return -ESTALE;
	*out = dir;
	return 0;
}

int qf_fs_do_measure(struct qf_fs *fs, uint64_t parent, const char *name)
{
	struct qf_node *dir;
	struct qf_spec sp;
	int ret = lookup_dir(fs, parent, &dir);

	if (ret < 0)
		return ret;
	/* mixed_dyn / mixed_b: measure outside the namespace lock */
	if (dir->kind == QF_NODE_MODEL && dir->mdl->m &&
	    qf_spec_parse(name, &sp, NULL) == 0 && qf_spec_mixed_measured(&sp))
		qf_job_mixed_prepare(fs, dir->mdl, &sp);
	return 0;
}

int qf_fs_do_lookup(struct qf_fs *fs, uint64_t parent, const char *name,
		    struct qf_fs_entry *e)
{
	struct qf_node *dir, *n;
	int err = lookup_dir(fs, parent, &dir);

	if (err < 0)
		return err;
	err = -ENOENT;
	n = qf_ns_lookup(fs, dir, name, &err);	/* a setup may wait */
	if (!n)
		return err < 0 ? -qf_fs_errno(err) : -ENOENT;
	fill_entry(fs, n, e);
	return 0;
}

void qf_fs_do_forget(struct qf_fs *fs, uint64_t ino, uint64_t nlookup)
{
	struct qf_node *n = qf_ns_get(fs, ino);

	if (!n)
		return;
	pthread_mutex_lock(&fs->lock);
	n->nlookup -= nlookup < n->nlookup ? nlookup : n->nlookup;
	pthread_mutex_unlock(&fs->lock);
}

int qf_fs_do_getattr(struct qf_fs *fs, uint64_t ino, struct qf_fs_entry *e)
{
	struct qf_node *n = qf_ns_get(fs, ino);

	if (!n)
		return -ENOENT;
	fill_entry(fs, n, e);
	return 0;
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

int qf_fs_do_opendir(struct qf_fs *fs, uint64_t ino, struct qf_fs_dir **out)
{
	struct qf_node *n = qf_ns_get(fs, ino);
	struct qf_fs_dir *d;
	const char *p;
	size_t count = 0, i;
	int ret;

	if (!n || !qf_ns_is_dir(n))
		return -ENOTDIR;
	d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	ret = qf_ns_list(fs, n, &d->names, &count);
	if (!ret) {
		d->ent = calloc(count + 2, sizeof(*d->ent));
		ret = d->ent ? 0 : -ENOMEM;
	}
	if (ret < 0) {
		qf_fs_do_releasedir(d);
		return -qf_fs_errno(ret);
	}
	p = d->names.data;
	for (i = 0; i < count + 2; i++) {
		struct qf_fs_dirent *e = &d->ent[i];

		e->name = i == 0 ? "." : i == 1 ? ".." : p;
		if (i >= 2)
			p += strlen(p) + 1;
		e->ino = i < 2 ? ino : (1ULL << 62) + (uint64_t)i;
		e->type = entry_type(n, i);
	}
	d->n = count + 2;
	*out = d;
	return 0;
}

void qf_fs_do_releasedir(struct qf_fs_dir *d)
{
	if (!d)
		return;
	qf_buf_release(&d->names);
	free(d->ent);
	free(d);
}

int qf_fs_do_open(struct qf_fs *fs, uint64_t ino, int flags,
		  struct qf_fs_open *o)
{
	struct qf_node *n = qf_ns_get(fs, ino);
	int fd, pt;

	memset(o, 0, sizeof(*o));
	if (!n || qf_ns_is_dir(n))
		return n ? -EISDIR : -ENOENT;
	if ((flags & O_ACCMODE) != O_RDONLY || (flags & (O_TRUNC | O_APPEND)))
		return -EROFS;
	/* the kernel walks the path again (LOOKUP_REVAL) on ESTALE and
	 * finds the model's new generation */
	if (!qf_ns_current(fs, n->mdl)) {
		qf_info("%s: the source changed: serving it anew", n->mdl->name);
		return -ESTALE;
	}
	if (n->kind == QF_NODE_GGUF) {	/* its id, before any use */
		pt = qf_gv_ready(fs, n->gv);
		if (pt < 0)
			return -qf_fs_errno(pt);
	}
	pt = qf_pt_open(fs, n);
	if (pt < 0)
		return pt;
	if (n->var && n->kind != QF_NODE_SRCFILE)
		qf_var_opened(fs, n->var);	/* eviction leaves it alone */
	if (pt > 0) {			/* the kernel reads the backing file */
		o->fh = QF_FH_PT;
		o->backing = pt;
		return 0;
	}
	if (n->kind == QF_NODE_SRCFILE) {
		fd = qf_ns_open_src(n);
		if (fd < 0) {
			qf_pt_release(fs, n, false);
			return -qf_fs_errno(fd);
		}
		o->fh = (uint64_t)fd + 1;
	}
	o->keep_cache = true;
	/* large immutable files: direct reads, mmap still allowed */
	o->direct_io = fs->direct && n->size >= (1u << 20);
	return 0;
}

void qf_fs_do_release(struct qf_fs *fs, uint64_t ino, uint64_t fh)
{
	struct qf_node *n = qf_ns_get(fs, ino);

	if (fh && fh != QF_FH_PT)
		close((int)(fh - 1));
	if (n) {
		qf_pt_release(fs, n, fh == QF_FH_PT);
		if (n->var && n->kind != QF_NODE_SRCFILE)
			qf_var_released(fs, n->var);
	}
}

/* rd's one segment: len bytes at mem, or at pos of fd. */
static void one_seg(struct qf_fs_rd *rd, int fd, uint64_t pos,
		    const void *mem, uint64_t len)
{
	rd->one = (struct qf_fs_seg){ fd, pos, mem, len };
	rd->seg = &rd->one;
	rd->n = 1;
}

/* A generated file: a calibrated variant's results after production. */
static int read_gen(struct qf_fs *fs, struct qf_node *n, uint64_t off,
		    uint64_t end, struct qf_fs_rd *rd)
{
	int ret;

	if (n->bytes == &n->var->manifest && n->var->calibrated) {
		ret = qf_job_manifest(fs, n->var);
		if (ret < 0)
			return ret;
	}
	if (off < n->size)
		one_seg(rd, -1, 0, n->bytes->data + off,
			(end < n->size ? end : n->size) - off);
	return 0;
}

int qf_fs_do_read(struct qf_fs *fs, uint64_t ino, uint64_t fh, uint64_t off,
		  uint64_t size, struct qf_fs_rd *rd)
{
	struct qf_node *n = qf_ns_get(fs, ino);
	uint64_t end = off + size;
	int ret = 0;

	memset(rd, 0, sizeof(*rd));
	if (!n)
		return -ENOENT;
	__atomic_fetch_add(&n->reads, 1, __ATOMIC_RELAXED);
	switch (n->kind) {
	case QF_NODE_SRCFILE:
		if (fh == QF_FH_PT) {	/* its reads go to the kernel */
			qf_err("%s: a read of a passthrough file reached the "
			       "daemon", n->name);
			return -EIO;
		}
		if (!fh)		/* not from qf_fs_do_open() */
			return -EBADF;
		one_seg(rd, (int)(fh - 1), off, NULL, size);
		rd->move = true;
		return 0;
	case QF_NODE_GENFILE:
		ret = read_gen(fs, n, off, end, rd);
		break;
	case QF_NODE_WEIGHTS:
		if (off < n->size)	/* what follows, meanwhile */
			qf_var_ahead(fs, n->var, off, end);
		if (off < n->size)
			ret = qf_fs_read_weights(fs, n->var, off,
						 end < n->size ? end : n->size,
						 rd);
		break;
	case QF_NODE_GGUF:
		ret = qf_gv_read(fs, n->gv, off, end, &rd->buf);
		if (!ret)
			one_seg(rd, -1, 0, rd->buf.data, rd->buf.len);
		break;
	default:
		return -EISDIR;
	}
	return ret < 0 ? -qf_fs_errno(ret) : 0;
}

/*
 * Progress as extended attributes: user.quantfs.progress on a variant
 * directory (JSON), user.quantfs.status on the root (a JSON array of the
 * calibrated variants this mount knows, for `quantfs status`); and
 * user.quantfs.io on a file (how it is served, pt.c).
 */
static int xattr_status(struct qf_fs *fs, struct qf_buf *out)
{
	struct qf_buf one = QF_BUF_INIT;
	struct qf_mdl *mdl;
	size_t k = 0;
	int ret = 0;

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

/* user.quantfs.remote: the remote tier's state and counters. */
static int xattr_remote(struct qf_fs *fs, struct qf_buf *out)
{
	static const char *const roles[] = { "produce", "cheap", "read" };
	struct qf_remote_stats st;
	int npub;

	qf_remote_stats(fs->remote, &st);
	pthread_mutex_lock(&fs->job_lock);
	npub = fs->npub;
	pthread_mutex_unlock(&fs->job_lock);
	return qf_buf_addf(out, "{\"bucket\": \"%s\", \"role\": \"%s\", "
			   "\"down\": %s, \"get\": %llu, \"head\": %llu, "
			   "\"put\": %llu, \"list\": %llu, \"delete\": %llu, "
			   "\"bytes_in\": %llu, \"bytes_out\": %llu, "
			   "\"imported\": %llu, \"published\": %llu, "
			   "\"bad\": %llu, \"publishing\": %d}\n",
			   qf_remote_describe(fs->remote),
			   roles[qf_remote_role(fs->remote)],
			   st.down ? "true" : "false",
			   (unsigned long long)st.get,
			   (unsigned long long)st.head,
			   (unsigned long long)st.put,
			   (unsigned long long)st.list,
			   (unsigned long long)st.del,
			   (unsigned long long)st.bytes_in,
			   (unsigned long long)st.bytes_out,
			   (unsigned long long)st.imported,
			   (unsigned long long)st.published,
			   (unsigned long long)st.bad, npub);
}

int qf_fs_do_getxattr(struct qf_fs *fs, uint64_t ino, const char *name,
		      struct qf_buf *out)
{
	struct qf_node *n = qf_ns_get(fs, ino);
	int ret;

	if (!n)
		return -ENOENT;
	if (n->kind == QF_NODE_VARDIR &&
	    !strcmp(name, "user.quantfs.progress")) {
		if (!n->var->calibrated)
			ret = qf_buf_addf(out, "{\"model\": \"%s\", "
					  "\"variant\": \"%s\", \"state\": "
					  "\"per tensor, on read\"}",
					  n->mdl->name, n->var->v->name);
		else
			ret = qf_job_progress(n->var, out);
	} else if (!qf_ns_is_dir(n) && !strcmp(name, "user.quantfs.io")) {
		ret = qf_pt_describe(fs, n, out);
	} else if (n->kind == QF_NODE_ROOT &&
		   !strcmp(name, "user.quantfs.status")) {
		ret = xattr_status(fs, out);
	} else if (n->kind == QF_NODE_ROOT && fs->remote &&
		   !strcmp(name, "user.quantfs.remote")) {
		ret = xattr_remote(fs, out);
	} else {
		ret = -ENODATA;
	}
	return ret < 0 ? -qf_fs_errno(ret) : 0;
}

int qf_fs_do_listxattr(struct qf_fs *fs, uint64_t ino, const char **names,
		       size_t *len)
{
	struct qf_node *n = qf_ns_get(fs, ino);

	*names = "";
	*len = 0;
	if (n && n->kind == QF_NODE_VARDIR)
		*names = "user.quantfs.progress", *len = 22;
	else if (n && n->kind == QF_NODE_ROOT && fs->remote)
		*names = "user.quantfs.status\0user.quantfs.remote", *len = 40;
	else if (n && n->kind == QF_NODE_ROOT)
		*names = "user.quantfs.status", *len = 20;
	else if (n)
		*names = "user.quantfs.io", *len = 16;
	return 0;
}

void qf_fs_do_statfs(struct qf_fs *fs, struct statvfs *sv)
{
	if (statvfs(fs->src, sv) < 0)
		memset(sv, 0, sizeof(*sv));
	sv->f_bfree = sv->f_bavail = 0;
	sv->f_ffree = sv->f_favail = 0;
	sv->f_flag |= ST_RDONLY;
	sv->f_namemax = 255;
}
