/*
 * assemble.c - the bytes of a variant's model.safetensors as a FUSE buffer
 * vector.
 *
 * A range maps to segments (header bytes, passthrough source tensors,
 * cached tensors); the vector points at the header in memory and at file
 * ranges of the source shards and of LMDB's data.mdb, so libfuse can
 * splice them into the reply without a copy in the daemon.
 */
#define FUSE_USE_VERSION 312

#include <fuse_lowlevel.h>
#include <stdlib.h>
#include <string.h>

#include "fs_i.h"

bool qf_fs_source_intact(const struct qf_model *m)
{
	size_t i;

	for (i = 0; i < m->nshard; i++) {
		const struct qf_st_file *f = m->shard[i];
		struct stat st;

		if (fstat(f->fd, &st) < 0 || st.st_size != f->st.st_size ||
		    st.st_mtim.tv_sec != f->st.st_mtim.tv_sec ||
		    st.st_mtim.tv_nsec != f->st.st_mtim.tv_nsec)
			return false;
	}
	return true;
}

int qf_fs_bufvec(struct qf_fs *fs, struct qf_var *var,
		 struct qf_cache_txn *txn, uint64_t off, uint64_t end,
		 struct fuse_bufvec **out)
{
	size_t first = qf_var_seg_at(var, off), s, n = 0;
	struct fuse_bufvec *bv;
	int ret = 0;

	bv = calloc(1, sizeof(*bv) + (var->nseg - first) * sizeof(bv->buf[0]));
	if (!bv)
		return -ENOMEM;
	for (s = first; s < var->nseg && var->seg[s].off < end; s++) {
		const struct qf_seg *g = &var->seg[s];
		const struct qf_vtensor *t = g->t;
		uint64_t a = off > g->off ? off - g->off : 0;
		uint64_t b = end - g->off < g->len ? end - g->off : g->len;
		struct fuse_buf *fb = &bv->buf[n++];
		const void *p;
		size_t len;
		uint64_t pos;

		fb->size = b - a;
		if (!t) {
			fb->mem = var->header.data + a;
			continue;
		}
		fb->flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
		if (t->group == QF_VT_PASSTHROUGH) {
			fb->fd = t->src->shard->fd;
			fb->pos = (off_t)(t->src->shard->hdr.data_off +
					  t->src->t->begin + a);
			continue;
		}
		ret = qf_cache_get(txn, var->vid, t->name, &p, &len);
		if (ret == 0 && len != g->len)
			ret = QF_ECORRUPT;
		if (ret < 0) {
			if (ret != -ENOENT)	/* evicted: the caller retries */
				qf_err("%s/%s: tensor %s unreadable in the "
				       "cache: %s", var->mdl->name,
				       var->v->name, t->name,
				       qf_strerror(ret));
			free(bv);
			return ret;
		}
		if (qf_cache_locate(fs->cache, p, len, &fb->fd, &pos) < 0) {
			fb->flags = 0;	/* copy from the map instead */
			fb->mem = (void *)((const char *)p + a);
			continue;
		}
		fb->pos = (off_t)(pos + a);
	}
	bv->count = n;
	*out = bv;
	return ret;
}
