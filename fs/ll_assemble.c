/*
 * ll_assemble.c - the bytes of a read (segments, range.c and do.c) as a
 * FUSE buffer vector: memory for header bytes and generated files, file
 * ranges of the source shards and of LMDB's data.mdb, so libfuse can
 * splice them into the reply without a copy in the daemon.
 */
#define FUSE_USE_VERSION 312

#include <fuse_lowlevel.h>
#include <stdlib.h>

#include "fs_do.h"
#include "ll.h"

int qf_ll_bufvec(const struct qf_fs_rd *rd, struct fuse_bufvec **out)
{
	struct fuse_bufvec *bv;
	size_t i;

	bv = calloc(1, sizeof(*bv) + rd->n * sizeof(bv->buf[0]));
	if (!bv)
		return -ENOMEM;
	for (i = 0; i < rd->n; i++) {
		const struct qf_fs_seg *s = &rd->seg[i];
		struct fuse_buf *fb = &bv->buf[i];

		fb->size = s->len;
		if (s->fd < 0) {
			fb->mem = (void *)s->mem;
			continue;
		}
		fb->flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
		fb->fd = s->fd;
		fb->pos = (off_t)s->pos;
	}
	bv->count = rd->n;
	*out = bv;
	return 0;
}
