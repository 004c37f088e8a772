/*
 * range.c - where the bytes of a read are: a variant's model.safetensors
 * as segments (header bytes, ranges of the source shards, ranges of
 * LMDB's data.mdb), made after the groups they touch are produced.
 *
 * Segments point into files and into the cache's map, never into copies:
 * the FUSE side (ll_assemble.c) splices them into the reply, passthrough
 * read files (pt.c) and tests copy them (qf_fs_rd_copy).
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs_do.h"
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

/*
 * Segments of [off, end) of var's model.safetensors into rd.  Every group
 * in range must be in the cache; rd->txn stays open while they are used.
 * Returns 0, -ENOENT (evicted meanwhile), QF_ECORRUPT, QF_ECACHE, -ENOMEM.
 */
static int plan(struct qf_fs *fs, struct qf_var *var, uint64_t off,
		uint64_t end, struct qf_fs_rd *rd)
{
	size_t first = qf_var_seg_at(var, off), s;
	int ret = 0;

	rd->seg = calloc(var->nseg - first, sizeof(*rd->seg));
	if (!rd->seg)
		return -ENOMEM;
	for (s = first; s < var->nseg && var->seg[s].off < end; s++) {
		const struct qf_seg *g = &var->seg[s];
		const struct qf_vtensor *t = g->t;
		uint64_t a = off > g->off ? off - g->off : 0;
		uint64_t b = end - g->off < g->len ? end - g->off : g->len;
		struct qf_fs_seg *sg = &rd->seg[rd->n++];
		const void *p;
		size_t len;

		sg->fd = -1;
		sg->len = b - a;
		if (!t) {
			sg->mem = var->header.data + a;
			continue;
		}
		if (t->group == QF_VT_PASSTHROUGH) {
			sg->fd = t->src->shard->fd;
			sg->pos = t->src->shard->hdr.data_off +
				  t->src->t->begin + a;
			continue;
		}
		ret = qf_cache_get(rd->txn, var->vid, t->name, &p, &len);
		if (ret == 0 && len != g->len)
			ret = QF_ECORRUPT;
		if (ret < 0) {
			if (ret != -ENOENT)	/* evicted: the caller retries */
				qf_err("%s/%s: tensor %s unreadable in the "
				       "cache: %s", var->mdl->name,
				       var->v->name, t->name,
				       qf_strerror(ret));
			return ret;
		}
		if (qf_cache_locate(fs->cache, p, len, &sg->fd, &sg->pos) < 0) {
			sg->fd = -1;	/* copy from the map instead */
			sg->mem = (const char *)p + a;
			continue;
		}
		sg->pos += a;
	}
	return 0;
}

/* Drop what plan() made, for another try. */
static void unplan(struct qf_fs_rd *rd)
{
	qf_cache_read_end(rd->txn);
	rd->txn = NULL;
	free(rd->seg);
	rd->seg = NULL;
	rd->n = 0;
}

int qf_fs_read_weights(struct qf_fs *fs, struct qf_var *var, uint64_t off,
		       uint64_t end, struct qf_fs_rd *rd)
{
	int ret, attempt;

	/* a second time when another process evicted the variant after
	 * this one had it (cache gc): its groups are produced again */
	for (attempt = 0; attempt < 2; attempt++) {
		ret = qf_var_ensure_range(fs, var, off, end);
		if (ret < 0)
			return ret;
		ret = qf_cache_read_begin(fs->cache, &rd->txn);
		if (!ret)
			ret = plan(fs, var, off, end, rd);
		if (ret != -ENOENT)
			break;
		unplan(rd);
		qf_var_revalidate(fs, var);
	}
	if (ret == -ENOENT)
		ret = QF_ECORRUPT;
	if (ret < 0)
		return ret;
	if (!qf_fs_source_intact(var->mdl->m)) {
		qf_err("%s: source changed while the file was open; open it "
		       "again to read the new version", var->mdl->name);
		return QF_ECORRUPT;
	}
	return 0;
}

void qf_fs_rd_release(struct qf_fs_rd *rd)
{
	qf_cache_read_end(rd->txn);
	if (rd->seg != &rd->one)
		free(rd->seg);
	qf_buf_release(&rd->buf);
	memset(rd, 0, sizeof(*rd));
}

int qf_fs_rd_copy(const struct qf_fs_rd *rd, uint8_t *dst, uint64_t *len)
{
	uint64_t done = 0;
	size_t i;

	for (i = 0; i < rd->n; i++) {
		const struct qf_fs_seg *s = &rd->seg[i];
		uint64_t k = 0;

		if (s->fd < 0) {
			memcpy(dst + done, s->mem, s->len);
			done += s->len;
			continue;
		}
		while (k < s->len) {
			ssize_t r = pread(s->fd, dst + done + k, s->len - k,
					  (off_t)(s->pos + k));

			if (r < 0 && errno == EINTR)
				continue;
			if (r < 0)
				return -errno;
			if (r == 0)
				break;
			k += (uint64_t)r;
		}
		done += k;
		/* only a source file's read ends at its end */
		if (k < s->len && (!rd->move || i + 1 < rd->n))
			return QF_ECORRUPT;
		if (k < s->len)
			break;
	}
	*len = done;
	return 0;
}
