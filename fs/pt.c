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
 * (readfile.c) once every byte of it is cached: written in the
 * background after the last open the daemon served is closed (or while
 * such opens keep the kernel from passing through), and otherwise by the
 * first open that finds none, or one that is not as recorded, before it
 * passes through; concurrent opens wait for that write.  So every open
 * of a complete file passes through, the first one after a daemon was
 * killed before writing its read file included.  Until then, and where
 * the kernel or the daemon's privileges do not allow it
 * (FUSE_DEV_IOC_BACKING_OPEN wants CAP_SYS_ADMIN), the daemon serves
 * the file itself (do.c).
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
#include <unistd.h>

#include "fs_do.h"
#include "fs_i.h"

static bool has_read_file(const struct qf_node *n)
{
	return n->kind == QF_NODE_WEIGHTS || n->kind == QF_NODE_GGUF;
}

static bool candidate(const struct qf_node *n)
{
	return n->kind == QF_NODE_SRCFILE || has_read_file(n);
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

/* Writing or looking ended (ret): waiting opens go on; fs->pt_lock. */
static void written(struct qf_fs *fs, struct qf_node *n, int ret)
{
	n->pt_writing = false;
	/* failed: not again in this mount (no room, unmounting: later) */
	if (ret && ret != -EINTR && ret != -EAGAIN)
		n->pt_failed = true;
	pthread_cond_broadcast(&fs->pt_cond);
}

static void write_done(struct qf_fs *fs, struct qf_node *n, int ret)
{
	pthread_mutex_lock(&fs->pt_lock);
	written(fs, n, ret);
	pthread_mutex_unlock(&fs->pt_lock);
}

struct task {
	struct qf_fs *fs;
	struct qf_node *n;
};

static void *task_main(void *arg)
{
	struct task t = *(struct task *)arg;
	struct qf_fs *fs = t.fs;

	free(arg);
	write_done(fs, t.n, qf_rf_write(fs, t.n));
	pthread_mutex_lock(&fs->job_lock);
	fs->njobs--;
	pthread_cond_broadcast(&fs->job_cond);
	pthread_mutex_unlock(&fs->job_lock);
	return NULL;
}

/* Write n's read file in a detached thread that unmounting waits for. */
static bool spawn(struct qf_fs *fs, struct qf_node *n)
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

/*
 * Start writing n's read file in the background when it has none and is
 * all cached: while opens the daemon serves keep the kernel from passing
 * through, and after the last of them is closed.
 */
static void maybe_write(struct qf_fs *fs, struct qf_node *n)
{
	bool go;
	int fd;

	pthread_mutex_lock(&fs->pt_lock);
	go = !n->pt_writing && !n->pt_failed && allowed(fs);
	if (go)
		n->pt_writing = true;
	pthread_mutex_unlock(&fs->pt_lock);
	if (!go)
		return;
	fd = qf_rf_open(fs, n, true);
	if (fd >= 0)
		close(fd);
	go = fd < 0 && qf_rf_cached(fs, n) && spawn(fs, n);
	if (!go)
		write_done(fs, n, 0);
}

/*
 * n's read file for a first passthrough open, written now when n is all
 * cached and has no read file (or one that is not as recorded): so the
 * first open after a daemon stopped before writing it, or after the file
 * was changed, passes through too.  Caller set n->pt_writing and clears
 * it (with *ret, the write's result) once the file is registered, so the
 * opens waiting meanwhile share it.
 */
static int ready_read_file(struct qf_fs *fs, struct qf_node *n, int *ret)
{
	int fd = qf_rf_open(fs, n, false);

	*ret = 0;
	if (fd < 0 && !n->pt_failed && qf_rf_cached(fs, n)) {
		*ret = qf_rf_write(fs, n);
		if (!*ret)
			fd = qf_rf_open(fs, n, false);
	}
	return fd;
}

/* The registered backing file is still as registered; fs->pt_lock. */
static bool backing_same(const struct qf_node *n)
{
	return qf_rf_same(n->pt_fd, &n->pt_fid);
}

/* Register fd as n's backing file; fs->pt_lock.  The backing id or 0. */
static int backing(struct qf_fs *fs, struct qf_node *n, int fd)
{
	int id = fs->kern->backing_open(fs, fd);

	if (id <= 0 || (has_read_file(n) && qf_rf_id(fd, &n->pt_fid) < 0)) {
		if (id > 0)
			fs->kern->backing_close(fs, id);
		qf_debug("%s: no passthrough: %s", n->name,
			 strerror(id < 0 ? -id : EIO));
		close(fd);
		return 0;
	}
	n->pt_id = id;
	n->pt_fd = fd;
	n->pt_open = 1;
	n->pt_bad = false;
	return id;
}

/* A new open of n while others pass through: its id, or -EIO. */
static int share(struct qf_fs *fs, struct qf_node *n)
{
	if (n->pt_bad)
		return -EIO;		/* shares a changed backing file */
	if (has_read_file(n) && !backing_same(n)) {
		/* changed under opens passed through: theirs cannot be
		 * helped (the kernel reads it), new ones fail */
		struct stat st;
		bool cut = fstat(n->pt_fd, &st) == 0 &&
			   (uint64_t)st.st_size < n->size;

		qf_err("%s/%s: read file %s under %u passthrough open(s): "
		       "new opens fail with EIO until they are closed, then "
		       "it is written again", n->mdl->name, n->name,
		       cut ? "truncated" : "changed", n->pt_open);
		n->pt_bad = true;
		return -EIO;
	}
	n->pt_open++;
	return n->pt_id;
}

int qf_pt_open(struct qf_fs *fs, struct qf_node *n)
{
	bool write = false;
	int id = 0, fd, ret;

	if (!candidate(n))
		return 0;
	pthread_mutex_lock(&fs->pt_lock);
	qf_rf_tag(n);	/* for every later use: all follow an open */
	/* another open is finding or writing the read file: wait for it */
	while (n->pt_writing && !n->pt_open && !n->own_open)
		pthread_cond_wait(&fs->pt_cond, &fs->pt_lock);
	if (n->pt_open) {
		id = share(fs, n);
		pthread_mutex_unlock(&fs->pt_lock);
		return id;
	}
	if (allowed(fs) && !n->own_open) {
		if (n->kind == QF_NODE_SRCFILE) {
			fd = qf_ns_open_src(n);
		} else {
			n->pt_writing = true;
			pthread_mutex_unlock(&fs->pt_lock);
			fd = ready_read_file(fs, n, &ret);
			pthread_mutex_lock(&fs->pt_lock);
			written(fs, n, ret);	/* registered below, locked */
		}
		if (fd >= 0)
			id = backing(fs, n, fd);
	} else {
		/* not usable while the daemon serves opens: later */
		write = allowed(fs) && has_read_file(n);
	}
	if (!id)
		n->own_open++;
	pthread_mutex_unlock(&fs->pt_lock);
	if (write)
		maybe_write(fs, n);
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
		n->pt_bad = false;	/* checked again at the next open */
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
	char *text;
	int fd;

	pthread_mutex_lock(&fs->pt_lock);
	qf_rf_tag(n);		/* asked before any open */
	pthread_mutex_unlock(&fs->pt_lock);
	/* a read file as recorded, which an open would pass on */
	if (has_read_file(n) && (fd = qf_rf_open(fs, n, true)) >= 0) {
		close(fd);
		have = qf_rf_path(fs, n, &path) == 0;
	}
	pthread_mutex_lock(&fs->pt_lock);
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
