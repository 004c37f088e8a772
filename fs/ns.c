/*
 * ns.c - the namespace: models found under SRC, and the nodes below them.
 *
 *   /                     models
 *   /<model>/             original, presets, cached variants (any valid
 *                         variant name resolves on lookup)
 *   /<model>/original/    the source files, unchanged
 *   /<model>/<variant>/   config.json, model.safetensors,
 *                         quantization.json, passed-through small files
 *
 * Nodes are created on first lookup and live until unmount: the set of
 * names that resolve is finite (models x source files x valid variant
 * names of the methods this build serves), so memory stays bounded.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs_i.h"

/* Listed in every model dir; any other valid name resolves too. */
static const char *const presets[] = {
	"rtn_w4_g128",
	"rtn_w4_g128_sym",
	"rtn_w4_g32_sym",
	"rtn_w3_g128",
	"rtn_w8_gc",
	"rtn_w4_g128_fake",
	"mixed_static",
	/* calibrated: listed where the forward pass supports the model */
	"gptq_w4_g128",
	"gptq_w4_g128_act",
	"gptq_w3_g128",
	"gptq_w4_g32_sym",
	"awq_w4_g128",
	"awq_w4_g128_reflip",
	"brecq_w4_g64_attn6",
	"kq4_k_m",
};
#define NPRESETS (sizeof(presets) / sizeof(presets[0]))
#define NPRESETS_RTN 7

static uint64_t hash_name(uint64_t parent, const char *name)
{
	uint64_t h = 1469598103934665603ULL ^ parent;

	while (*name)
		h = (h ^ (uint8_t)*name++) * 1099511628211ULL;
	return h;
}

/* Caller holds fs->lock. */
static struct qf_node *node_add(struct qf_fs *fs, struct qf_node *parent,
				const char *name, enum qf_node_kind kind)
{
	struct qf_node *n;
	uint64_t h;

	if (fs->nnode == fs->cap) {
		size_t nc = fs->cap ? fs->cap * 2 : 256;
		struct qf_node **p = realloc(fs->node, nc * sizeof(*p));

		if (!p)
			return NULL;
		fs->node = p;
		fs->cap = nc;
	}
	n = calloc(1, sizeof(*n));
	if (!n)
		return NULL;
	n->name = strdup(name);
	if (!n->name) {
		free(n);
		return NULL;
	}
	n->kind = kind;
	n->ino = fs->nnode + 1;
	fs->node[fs->nnode++] = n;
	if (parent) {
		n->parent = parent->ino;
		n->mdl = parent->mdl;
		n->var = parent->var;
		h = hash_name(parent->ino, name) % fs->nhash;
		n->hnext = fs->hash[h];
		fs->hash[h] = n;
	}
	return n;
}

/* Caller holds fs->lock. */
static struct qf_node *node_find(struct qf_fs *fs, uint64_t parent,
				 const char *name)
{
	struct qf_node *n = fs->hash[hash_name(parent, name) % fs->nhash];

	for (; n; n = n->hnext)
		if (n->parent == parent && !strcmp(n->name, name))
			return n;
	return NULL;
}

struct qf_node *qf_ns_get(struct qf_fs *fs, uint64_t ino)
{
	struct qf_node *n = NULL;

	pthread_mutex_lock(&fs->lock);
	if (ino >= 1 && ino <= fs->nnode)
		n = fs->node[ino - 1];
	pthread_mutex_unlock(&fs->lock);
	return n;
}

bool qf_ns_is_dir(const struct qf_node *n)
{
	return n->kind == QF_NODE_ROOT || n->kind == QF_NODE_MODEL ||
	       n->kind == QF_NODE_ORIGDIR || n->kind == QF_NODE_VARDIR;
}

static bool has_suffix(const char *s, const char *suf)
{
	size_t a = strlen(s), b = strlen(suf);

	return a >= b && !strcmp(s + a - b, suf);
}

bool qf_ns_passthrough_name(const char *name)
{
	static const char *const weights[] = {
		".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack",
		".h5", ".ckpt", ".index.json",
	};
	size_t i;

	if (name[0] == '.' || !strcmp(name, "config.json") ||
	    !strcmp(name, "quantization.json"))
		return false;
	for (i = 0; i < sizeof(weights) / sizeof(weights[0]); i++)
		if (has_suffix(name, weights[i]))
			return false;
	return true;
}

/* A regular file in the model dir (symlinks are not followed out). */
static int src_file(struct qf_mdl *mdl, const char *name, char **path,
		    uint64_t *size)
{
	struct qf_buf b = QF_BUF_INIT;
	struct stat st;

	if (strchr(name, '/') || !strcmp(name, ".") || !strcmp(name, ".."))
		return -ENOENT;
	if (qf_buf_addf(&b, "%s/%s", mdl->dir, name) < 0)
		return -ENOMEM;
	if (lstat(b.data, &st) < 0 || !S_ISREG(st.st_mode)) {
		qf_buf_release(&b);
		return -ENOENT;
	}
	*size = (uint64_t)st.st_size;
	*path = qf_buf_detach(&b, NULL);
	return 0;
}

static struct qf_var *find_var(struct qf_mdl *mdl, const char *name)
{
	struct qf_var *v;

	for (v = mdl->vars; v; v = v->next)
		if (!strcmp(v->v->name, name))
			return v;
	return NULL;
}

/* Caller holds fs->lock; drops and retakes it around variant setup. */
static struct qf_var *var_locked(struct qf_fs *fs, struct qf_mdl *mdl,
				 const char *name, int *err)
{
	struct qf_var *var, *other;
	int ret;

	if (!mdl->m) {
		*err = mdl->open_err;
		return NULL;
	}
	var = find_var(mdl, name);
	if (var)
		return var;
	pthread_mutex_unlock(&fs->lock);
	/* a setup costs as a production does: it waits its turn */
	ret = qf_fs_prod_begin(fs);
	if (!ret) {
		ret = qf_var_new(fs, mdl, name, &var);
		qf_fs_prod_end(fs);
	}
	pthread_mutex_lock(&fs->lock);
	if (ret < 0) {
		*err = ret;
		return NULL;
	}
	other = find_var(mdl, name);	/* lost a race? */
	if (other) {
		qf_var_free(var);
		return other;
	}
	var->next = mdl->vars;
	mdl->vars = var;
	return var;
}

struct qf_var *qf_ns_var(struct qf_fs *fs, struct qf_mdl *mdl,
			 const char *name, int *err)
{
	struct qf_var *var;

	pthread_mutex_lock(&fs->lock);
	var = var_locked(fs, mdl, name, err);
	pthread_mutex_unlock(&fs->lock);
	return var;
}

/* Caller holds fs->lock. */
static struct qf_node *lookup_variant(struct qf_fs *fs, struct qf_node *dir,
				      const char *name, int *err)
{
	struct qf_var *var = var_locked(fs, dir->mdl, name, err);
	struct qf_node *n;

	if (!var)
		return NULL;
	n = node_find(fs, dir->ino, name);
	if (!n) {
		n = node_add(fs, dir, name, QF_NODE_VARDIR);
		if (n)
			n->var = var;
	}
	if (!n)
		*err = -ENOMEM;
	return n;
}

/* The model.gguf view of var (NULL: original/), made on first use;
 * NULL when there is none.  Caller holds fs->lock. */
static struct qf_gv *gguf_of(struct qf_fs *fs, struct qf_mdl *mdl,
			     struct qf_var *var)
{
	struct qf_gv **slot = var ? &var->gv : &mdl->gv;
	bool *tried = var ? &var->gv_tried : &mdl->gv_tried;

	if (!*tried) {
		*tried = true;
		if (qf_gv_new(fs, mdl, var, slot) < 0)
			*slot = NULL;
	}
	return *slot;
}

static bool src_has(const struct qf_mdl *mdl, const char *name)
{
	struct qf_buf p = QF_BUF_INIT;
	struct stat st;
	bool ok;

	qf_buf_addf(&p, "%s/%s", mdl->dir, name);
	ok = p.data && lstat(p.data, &st) == 0;
	qf_buf_release(&p);
	return ok;
}

/* Caller holds fs->lock. */
static struct qf_node *lookup_locked(struct qf_fs *fs, struct qf_node *dir,
				     const char *name, int *err)
{
	struct qf_node *n = node_find(fs, dir->ino, name);
	enum qf_node_kind kind = QF_NODE_SRCFILE;
	uint64_t size = 0;
	char *path = NULL;
	int ret;

	if (n)
		return n;
	*err = -ENOENT;
	switch (dir->kind) {
	case QF_NODE_ROOT:
		return NULL;		/* models are added at start */
	case QF_NODE_MODEL:
		if (!strcmp(name, "original")) {
			n = node_add(fs, dir, name, QF_NODE_ORIGDIR);
			break;
		}
		return lookup_variant(fs, dir, name, err);
	case QF_NODE_ORIGDIR:
		ret = src_file(dir->mdl, name, &path, &size);
		if (ret == -ENOENT && !strcmp(name, "model.gguf") &&
		    gguf_of(fs, dir->mdl, NULL)) {
			kind = QF_NODE_GGUF;
			size = qf_gv_size(dir->mdl->gv);
			ret = 0;
		}
		if (ret < 0) {
			*err = ret;
			return NULL;
		}
		break;
	case QF_NODE_VARDIR:
		if (!strcmp(name, "config.json") ||
		    !strcmp(name, "quantization.json")) {
			kind = QF_NODE_GENFILE;
		} else if (!strcmp(name, "model.safetensors")) {
			if (dir->var->v->spec.method == QF_METHOD_KQUANT)
				return NULL;	/* model.gguf only */
			kind = QF_NODE_WEIGHTS;
			size = dir->var->size;
		} else if (!strcmp(name, "model.gguf")) {
			if (!gguf_of(fs, dir->mdl, dir->var))
				return NULL;
			kind = QF_NODE_GGUF;
			size = qf_gv_size(dir->var->gv);
		} else if (!qf_ns_passthrough_name(name) ||
			   src_file(dir->mdl, name, &path, &size) < 0) {
			return NULL;
		}
		break;
	default:
		*err = -ENOTDIR;
		return NULL;
	}
	if (!n)
		n = node_add(fs, dir, name, kind);
	if (!n) {
		free(path);
		*err = -ENOMEM;
		return NULL;
	}
	n->path = path;
	n->size = size;
	if (kind == QF_NODE_GGUF)
		n->gv = dir->kind == QF_NODE_ORIGDIR ? dir->mdl->gv :
			dir->var->gv;
	if (kind == QF_NODE_GENFILE) {
		n->bytes = !strcmp(name, "config.json") ? &n->var->config :
							  &n->var->manifest;
		n->size = n->bytes->len;
	}
	return n;
}

struct qf_node *qf_ns_lookup(struct qf_fs *fs, struct qf_node *dir,
			     const char *name, int *err)
{
	struct qf_node *n;

	pthread_mutex_lock(&fs->lock);
	n = lookup_locked(fs, dir, name, err);
	if (n)
		n->nlookup++;
	pthread_mutex_unlock(&fs->lock);
	return n;
}

static int add_name(struct qf_buf *out, size_t *count, const char *name)
{
	(*count)++;
	return qf_buf_add(out, name, strlen(name) + 1);
}

/* Regular files of a model dir that pass the filter. */
static int list_src(struct qf_mdl *mdl, bool variant, struct qf_buf *out,
		    size_t *count)
{
	struct dirent *de;
	DIR *d = opendir(mdl->dir);
	int ret = 0;

	if (!d)
		return -errno;
	while ((de = readdir(d)) && !ret) {
		struct stat st;

		if (de->d_name[0] == '.' ||
		    fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) ||
		    !S_ISREG(st.st_mode))
			continue;
		if (variant && !qf_ns_passthrough_name(de->d_name))
			continue;
		ret = add_name(out, count, de->d_name);
	}
	closedir(d);
	return ret;
}

struct list_ctx {
	struct qf_mdl *mdl;
	struct qf_buf *out;
	size_t *count;
	const char *const *seen;
	size_t nseen;
};

static int add_cached(void *arg, const uint8_t *vid, const char *json,
		      size_t len)
{
	static const char key[] = "\"variant\":\"";
	struct list_ctx *c = arg;
	char name[128];
	const char *p, *e;
	size_t i;

	if (!c->mdl->m || !memmem(json, len, c->mdl->m->fp_hex, 64))
		return 0;
	p = memmem(json, len, key, sizeof(key) - 1);
	if (!p)
		return 0;
	p += sizeof(key) - 1;
	e = memchr(p, '"', len - (size_t)(p - json));
	if (!e || e - p >= (long)sizeof(name))
		return 0;
	memcpy(name, p, (size_t)(e - p));
	name[e - p] = 0;
	for (i = 0; i < c->nseen; i++)
		if (!strcmp(c->seen[i], name))
			return 0;
	if (qf_spec_parse(name, &(struct qf_spec){ 0 }, NULL) == 0)
		add_name(c->out, c->count, name);
	return 0;
}

int qf_ns_list(struct qf_fs *fs, struct qf_node *dir, struct qf_buf *out,
	       size_t *count)
{
	struct qf_cache_txn *txn;
	struct list_ctx ctx;
	size_t i;

	*count = 0;
	switch (dir->kind) {
	case QF_NODE_ROOT:
		for (i = 0; i < fs->nmdl; i++)
			add_name(out, count, fs->mdl[i].name);
		return 0;
	case QF_NODE_MODEL:
		add_name(out, count, "original");
		if (!dir->mdl->m)
			return 0;
		for (i = 0; i < (dir->mdl->calibratable ? NPRESETS :
						   NPRESETS_RTN); i++)
			add_name(out, count, presets[i]);
		ctx = (struct list_ctx){ dir->mdl, out, count, presets,
					 NPRESETS };
		if (qf_cache_read_begin(fs->cache, &txn) == 0) {
			qf_cache_each_record(txn, add_cached, &ctx);
			qf_cache_read_end(txn);
		}
		return 0;
	case QF_NODE_ORIGDIR:
		pthread_mutex_lock(&fs->lock);
		if (gguf_of(fs, dir->mdl, NULL) && !src_has(dir->mdl,
							    "model.gguf"))
			add_name(out, count, "model.gguf");
		pthread_mutex_unlock(&fs->lock);
		return list_src(dir->mdl, false, out, count);
	case QF_NODE_VARDIR:
		add_name(out, count, "config.json");
		if (dir->var->v->spec.method != QF_METHOD_KQUANT)
			add_name(out, count, "model.safetensors");
		pthread_mutex_lock(&fs->lock);
		if (gguf_of(fs, dir->mdl, dir->var))
			add_name(out, count, "model.gguf");
		pthread_mutex_unlock(&fs->lock);
		add_name(out, count, "quantization.json");
		return list_src(dir->mdl, true, out, count);
	default:
		return -ENOTDIR;
	}
}

void qf_ns_stat(struct qf_fs *fs, const struct qf_node *n, struct stat *st)
{
	memset(st, 0, sizeof(*st));
	st->st_ino = n->ino;
	st->st_uid = n->mdl ? n->mdl->st.st_uid : fs->uid;
	st->st_gid = n->mdl ? n->mdl->st.st_gid : fs->gid;
	if (n->mdl) {
		st->st_mtim = n->mdl->st.st_mtim;
		st->st_ctim = n->mdl->st.st_ctim;
		st->st_atim = n->mdl->st.st_mtim;
	}
	if (qf_ns_is_dir(n)) {
		st->st_mode = S_IFDIR | 0555;
		st->st_nlink = 2;
		return;
	}
	st->st_mode = S_IFREG | 0444;
	st->st_nlink = 1;
	st->st_size = (off_t)n->size;
	st->st_blksize = 1 << 20;
	st->st_blocks = (blkcnt_t)((n->size + 511) / 512);
}

struct qf_node *qf_ns_node_root(struct qf_fs *fs)
{
	struct qf_node *n;

	pthread_mutex_lock(&fs->lock);
	n = node_add(fs, NULL, "", QF_NODE_ROOT);
	pthread_mutex_unlock(&fs->lock);
	return n;
}

struct qf_node *qf_ns_node_model(struct qf_fs *fs, struct qf_node *root,
				 struct qf_mdl *mdl)
{
	struct qf_node *n;

	pthread_mutex_lock(&fs->lock);
	n = node_add(fs, root, mdl->name, QF_NODE_MODEL);
	if (n)
		n->mdl = mdl;
	pthread_mutex_unlock(&fs->lock);
	return n;
}
