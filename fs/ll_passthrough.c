/*
 * ll_passthrough.c - the FUSE side of kernel passthrough (Linux 6.9+;
 * which files pass through, and their read files, are pt.c's).
 *
 * Backing files are registered with ioctls on /dev/fuse (fs->kern, which
 * ll_session.c installs).  libfuse 3.16+ knows passthrough, 3.14 does
 * not: an OPEN reply that pt.c chose to pass through gets
 * FOPEN_PASSTHROUGH and the backing id, in the slot 3.14's struct calls
 * padding, from the kernel I/O hooks (ll_session.c).  The worker thread
 * that reads a request also answers it, so the OPEN request's id and the
 * chosen backing id travel in thread-local variables.
 */
#define FUSE_USE_VERSION 312

#include <errno.h>
#include <fuse_lowlevel.h>
#include <linux/fuse.h>
#include <sys/ioctl.h>
#include <sys/uio.h>

#include "fs_i.h"
#include "ll.h"

/* Linux 6.9 uapi (Debian 12's headers predate it) */
struct qf_backing_map {
	int32_t fd;
	uint32_t flags;
	uint64_t padding;
};
#define QF_IOC_BACKING_OPEN _IOW(229, 1, struct qf_backing_map)
#define QF_IOC_BACKING_CLOSE _IOW(229, 2, uint32_t)
#define QF_FOPEN_PASSTHROUGH (1u << 7)

/* fuse_open_out as Linux 6.9 has it (3.14: backing_id is padding) */
struct qf_open_out {
	uint64_t fh;
	uint32_t open_flags;
	int32_t backing_id;
};

static __thread uint64_t open_unique;	/* the OPEN this thread serves */
static __thread int open_backing;	/* its backing id, 0: none */

/*
 * fd -1 asks whether this daemon may register backing files: a map the
 * kernel rejects as invalid (EINVAL) after checking privilege (EPERM).
 */
static int backing_open(struct qf_fs *fs, int fd)
{
	struct qf_backing_map map = { .fd = fd, .flags = fd < 0 ? 1 : 0 };
	int id = ioctl(fuse_session_fd(fs->se), QF_IOC_BACKING_OPEN, &map);

	return id < 0 ? -errno : id;
}

static int backing_close(struct qf_fs *fs, int id)
{
	uint32_t u = (uint32_t)id;

	return ioctl(fuse_session_fd(fs->se), QF_IOC_BACKING_CLOSE, &u) < 0 ?
	       -errno : 0;
}

const struct qf_fs_kernel qf_ll_kernel = {
	.backing_open = backing_open,
	.backing_close = backing_close,
};

void qf_ll_pt_request(uint64_t unique, uint32_t opcode)
{
	open_unique = opcode == FUSE_OPEN ? unique : 0;
	open_backing = 0;
}

void qf_ll_pt_open(int backing_id)
{
	open_backing = backing_id;
}

void qf_ll_pt_reply(struct iovec *iov, int count)
{
	const struct fuse_out_header *oh = iov[0].iov_base;

	if (open_backing && count >= 2 && iov[0].iov_len == sizeof(*oh) &&
	    oh->unique == open_unique && oh->error == 0 &&
	    iov[1].iov_len == sizeof(struct qf_open_out)) {
		struct qf_open_out *o = iov[1].iov_base;

		o->open_flags |= QF_FOPEN_PASSTHROUGH;
		o->backing_id = open_backing;
		open_backing = 0;
	}
}
