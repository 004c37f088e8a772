/*
 * ll_session.c - the FUSE session: mount, daemonize, the multithreaded loop,
 * and the kernel I/O hooks.
 *
 * Kernel I/O hooks: libfuse 3.14 cannot ask for FUSE_DIRECT_IO_ALLOW_MMAP
 * (Linux 6.6+), which lets a direct_io file still be mmapped MAP_SHARED
 * through the page cache.  With it, model files are served with direct_io
 * (reads arrive in requests of up to max_pages, replied by splice with no
 * copy in the daemon) and loaders can still mmap them.  The hooks watch
 * the INIT request go by and add the flag to libfuse's INIT reply when the
 * kernel offered it; everything else passes through unchanged.  Without
 * the flag (older kernels) files stay in page-cache mode.
 *
 * Kernel passthrough (FUSE_PASSTHROUGH, Linux 6.9+; libfuse 3.16+ knows
 * it, 3.14 does not): the INIT reply asks for it the same way, and the
 * OPEN replies that pt.c chose to pass through are marked on their way
 * out (ll_passthrough.c).
 */
#define FUSE_USE_VERSION 312

#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <linux/fuse.h>
#include <stddef.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "fs_i.h"
#include "ll.h"

#ifndef FUSE_DIRECT_IO_ALLOW_MMAP
#define FUSE_DIRECT_IO_ALLOW_MMAP (1ULL << 36)	/* Linux 6.6 uapi */
#endif
#define QF_FUSE_PASSTHROUGH (1ULL << 37)	/* Linux 6.9 uapi */

static ssize_t kio_read(int fd, void *buf, size_t len, void *userdata)
{
	struct qf_fs *fs = userdata;
	const struct fuse_in_header *h = buf;
	ssize_t n = read(fd, buf, len);

	if (n >= (ssize_t)sizeof(*h))
		qf_ll_pt_request(h->unique, h->opcode);
	if (n >= (ssize_t)(sizeof(*h) + offsetof(struct fuse_init_in,
						   unused)) &&
	    h->opcode == FUSE_INIT) {
		const struct fuse_init_in *in = (const void *)(h + 1);
		uint64_t flags = in->flags;

		if (flags & FUSE_INIT_EXT)
			flags |= (uint64_t)in->flags2 << 32;
		fs->kflags = flags;
		fs->init_unique = h->unique;
	}
	return n;
}

static ssize_t kio_writev(int fd, struct iovec *iov, int count,
			  void *userdata)
{
	struct qf_fs *fs = userdata;
	const struct fuse_out_header *oh = iov[0].iov_base;

	qf_ll_pt_reply(iov, count);
	if (fs->init_unique && count >= 2 && iov[0].iov_len == sizeof(*oh) &&
	    oh->unique == fs->init_unique) {
		struct fuse_init_out *o = iov[1].iov_base;

		fs->init_unique = 0;
		if (oh->error == 0 && fs->o.io != QF_IO_CACHE &&
		    iov[1].iov_len >= offsetof(struct fuse_init_out, unused) &&
		    (o->flags & FUSE_INIT_EXT) &&
		    (fs->kflags & FUSE_DIRECT_IO_ALLOW_MMAP)) {
			o->flags2 |= (uint32_t)(FUSE_DIRECT_IO_ALLOW_MMAP >> 32);
			fs->direct = true;
		}
		/*
		 * Passthrough: reads and mmap of a backing file go straight
		 * to it.  Stack depth 1: backing files on ordinary
		 * filesystems (one on overlayfs is refused, and served as
		 * above).  Writeback caching, which excludes it, is off.
		 */
		if (oh->error == 0 && fs->o.io == QF_IO_AUTO &&
		    iov[1].iov_len >= offsetof(struct fuse_init_out, unused) +
				      sizeof(uint32_t) &&
		    (o->flags & FUSE_INIT_EXT) &&
		    (fs->kflags & QF_FUSE_PASSTHROUGH) &&
		    !(o->flags & FUSE_WRITEBACK_CACHE)) {
			o->flags2 |= (uint32_t)(QF_FUSE_PASSTHROUGH >> 32);
			o->unused[0] = 1;	/* max_stack_depth */
			fs->passthrough = true;
		}
		/*
		 * Lookups of one directory in parallel (libfuse 3.14 never
		 * asks): a mixed variant measuring its sensitivities must not
		 * hold up the other names of its model directory.  The
		 * namespace takes its own locks.
		 */
		if (oh->error == 0 && (fs->kflags & FUSE_PARALLEL_DIROPS))
			o->flags |= FUSE_PARALLEL_DIROPS;
		qf_info("kernel FUSE %u.%u, max_pages %u; model files served "
			"with %s%s", o->major, o->minor, o->max_pages,
			fs->passthrough ? "kernel passthrough once cached, "
					  "else " : "",
			fs->direct ? "direct_io + splice (mmap allowed)" :
				     "the page cache");
	}
	return writev(fd, iov, count);
}

static ssize_t kio_splice_send(int fdin, off_t *offin, int fdout,
			       off_t *offout, size_t len, unsigned int flags,
			       void *userdata)
{
	(void)userdata;
	return splice(fdin, offin, fdout, offout, len, flags);
}

static const struct fuse_custom_io kio = {
	.read = kio_read,
	.writev = kio_writev,
	.splice_send = kio_splice_send,
};

int qf_fs_run(struct qf_fs *fs, const char *mnt, const char *fuse_opts,
	      bool foreground, bool debug, int threads)
{
	struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
	struct fuse_loop_config *cfg;
	struct fuse_session *se;
	int fd;
	int ret = 1;

	fuse_opt_add_arg(&args, "quantfs");
	fuse_opt_add_arg(&args, "-o");
	fuse_opt_add_arg(&args, fuse_opts);
	if (debug)
		fuse_opt_add_arg(&args, "-d");
	se = fuse_session_new(&args, qf_fs_ops(), sizeof(*qf_fs_ops()), fs);
	if (!se)
		goto out_args;
	if (fuse_set_signal_handlers(se) != 0)
		goto out_session;
	if (fuse_session_mount(se, mnt) != 0)
		goto out_signals;
	/* the same /dev/fuse descriptor, now through our hooks */
	fd = fuse_session_fd(se);
	if (fuse_session_custom_io(se, &kio, fd) != 0)
		qf_warn("cannot install the kernel I/O hooks; page-cache mode");
	fs->se = se;
	fs->kern = &qf_ll_kernel;
	qf_info("mounted %zu model(s) on %s", fs->nmodels, mnt);
	if (!foreground)
		qf_log_set_syslog(true);
	fuse_daemonize(foreground);
	cfg = fuse_loop_cfg_create();
	fuse_loop_cfg_set_max_threads(cfg, (unsigned)threads);
	fuse_loop_cfg_set_idle_threads(cfg, 4);
	ret = fuse_session_loop_mt(se, cfg);
	/* SIGTERM, SIGINT, SIGHUP: a clean stop (jobs end after their
	 * current layer in destroy, which the unmount below triggers) */
	if (ret < 0)
		ret = -ret;	/* libfuse versions differ in the sign */
	if (ret == SIGTERM || ret == SIGINT || ret == SIGHUP) {
		qf_info("signal %d: unmounting %s", ret, mnt);
		ret = 0;
	}
	ret = ret ? 1 : 0;
	fuse_loop_cfg_destroy(cfg);
	fuse_session_unmount(se);
out_signals:
	fuse_remove_signal_handlers(se);
out_session:
	fuse_session_destroy(se);
out_args:
	fuse_opt_free_args(&args);
	return ret;
}
