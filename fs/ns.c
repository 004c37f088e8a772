/*
 * ns.c - the namespace: models found under SRC, and the nodes below them.
 *
 *   /                     models and orgs (src.c finds them on lookup)
 *   /<org>/               models of one org (ORG/NAME trees, hub caches)
 *   /[<org>/]<model>/     original, presets, cached variants (any valid
 *                         variant name resolves on lookup)
 *   /<model>/original/    the source files, unchanged
 *   /<model>/<variant>/   config.json, model.safetensors,
 *                         quantization.json, passed-through small files
 *
 * Nodes are created on first lookup and live until unmount: the set of
 * names that resolve is finite (models x source files x valid variant
 * names of the methods this build serves), so memory stays bounded.
 * A model whose source changed gets a new generation (struct qf_mdl) and
 * a new node under the same name; the old node leaves the name hash but
 * stays for the files open below it.
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
	"gptq_w4_g128_head8",
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

	if (qf_grow(&fs->node, fs->nnode + 1, &fs->cap, 256,
		    sizeof(*fs->node)) < 0)
		return NULL;
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
	return n->kind == QF_NODE_ROOT || n->kind == QF_NODE_ORG ||
	       n->kind == QF_NODE_MODEL || n->kind == QF_NODE_ORIGDIR ||
	       n->kind == QF_NODE_SRCDIR || n->kind == QF_NODE_VARDIR;
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

/* A file or folder below the model dir, links followed under the rule. */
static int src_entry(struct qf_mdl *mdl, const char *rel, struct stat *st)
{
	const char *leaf;
	int fd, ret;

	fd = qf_src_parent(mdl->dirfd, rel, &leaf);
	if (fd < 0)
		return fd;
	ret = qf_src_statat(fd, leaf, st);
	close(fd);
	if (!ret && !S_ISREG(st->st_mode) && !S_ISDIR(st->st_mode))
		ret = -ENOENT;
	return ret;
}

/* A regular file in the model dir itself. */
static int src_file(struct qf_mdl *mdl, const char *name, struct stat *st)
{
	int ret = qf_src_statat(mdl->dirfd, name, st);

	if (!ret && !S_ISREG(st->st_mode))
		ret = -ENOENT;
	return ret;
}

int qf_ns_open_src(const struct qf_node *n)
{
	const char *leaf;
	struct stat st;
	int dfd, fd;

	dfd = qf_src_parent(n->mdl->dirfd, n->path, &leaf);
	if (dfd < 0)
		return dfd;
	fd = qf_src_openat(dfd, leaf, 0, &st);
	close(dfd);
	return fd;
}

static struct qf_var *find_var(struct qf_mdl *mdl, const char *name)
{
	struct qf_var *v;

	for (v = mdl->vars; v; v = v->next)
		if (!strcmp(v->v->name, name))
			return v;
	return NULL;
}

/*
 * A _fake of a calibrated method (mixed_dyn and mixed_b among them)
 * dequantizes its packed variant (or takes its allocation): that one,
 * found or set up first, into *base; NULL for every other name.
 * fs->lock is not held.
 */
static int fake_base(struct qf_fs *fs, struct qf_mdl *mdl, const char *name,
		     struct qf_var **base)
{
	struct qf_spec spec;
	char bname[128];
	int ret;

	*base = NULL;
	/* (a bad name is qf_var_new's to report) */
	if (qf_spec_parse(name, &spec, NULL) < 0 ||
	    !(spec.flags & QF_SPEC_FAKE) || !qf_spec_is_calibrated(&spec))
		return 0;
	spec.flags &= ~QF_SPEC_FAKE;
	ret = qf_spec_print(&spec, bname, sizeof(bname));
	if (ret >= 0)
		*base = qf_ns_var(fs, mdl, bname, &ret);
	return *base ? 0 : ret;
}

/* Caller holds fs->lock; drops and retakes it around variant setup. */
static struct qf_var *var_locked(struct qf_fs *fs, struct qf_mdl *mdl,
				 const char *name, int *err)
{
	struct qf_var *var, *other, *base;
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
		ret = fake_base(fs, mdl, name, &base);
		if (!ret)
			ret = qf_var_new(fs, mdl, name, base, &var);
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
	struct stat st;

	return qf_src_statat(mdl->dirfd, name, &st) == 0;
}

/* Caller holds fs->lock. */
static struct qf_node *lookup_locked(struct qf_fs *fs, struct qf_node *dir,
				     const char *name, int *err)
{
	struct qf_node *n = node_find(fs, dir->ino, name);
	enum qf_node_kind kind = QF_NODE_SRCFILE;
	struct qf_buf rel = QF_BUF_INIT;
	struct stat st = { 0 };
	uint64_t size = 0;
	int ret;

	if (n)
		return n;
	*err = -ENOENT;
	switch (dir->kind) {
	case QF_NODE_MODEL:
		if (!strcmp(name, "original")) {
			kind = QF_NODE_ORIGDIR;
			break;
		}
		return lookup_variant(fs, dir, name, err);
	case QF_NODE_ORIGDIR:
	case QF_NODE_SRCDIR:
		if (qf_buf_addf(&rel, "%s%s%s", dir->path ? dir->path : "",
				dir->path ? "/" : "", name) < 0)
			return NULL;
		ret = src_entry(dir->mdl, rel.data, &st);
		size = (uint64_t)st.st_size;
		if (!ret && S_ISDIR(st.st_mode))
			kind = QF_NODE_SRCDIR;
		if (ret == -ENOENT && dir->kind == QF_NODE_ORIGDIR &&
		    !strcmp(name, "model.gguf") &&
		    gguf_of(fs, dir->mdl, NULL)) {
			kind = QF_NODE_GGUF;
			size = qf_gv_size(dir->mdl->gv);
			ret = 0;
		}
		if (ret < 0) {
			qf_buf_release(&rel);
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
			   src_file(dir->mdl, name, &st) < 0) {
			return NULL;
		} else {
			size = (uint64_t)st.st_size;
		}
		break;
	default:
		*err = -ENOTDIR;
		return NULL;
	}
	if (!n)
		n = node_add(fs, dir, name, kind);
	if (!n) {
		qf_buf_release(&rel);
		*err = -ENOMEM;
		return NULL;
	}
	n->size = size;
	n->uid = st.st_uid;
	n->gid = st.st_gid;
	n->mode = st.st_mode & (kind == QF_NODE_SRCDIR ? 0555 : 0444);
	if (kind == QF_NODE_SRCFILE || kind == QF_NODE_SRCDIR)
		n->path = rel.data ? qf_buf_detach(&rel, NULL) : strdup(name);
	qf_buf_release(&rel);		/* original/model.gguf: unused */
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

void qf_mdl_free(struct qf_mdl *mdl)
{
	if (!mdl)
		return;
	while (mdl->vars) {
		struct qf_var *v = mdl->vars;

		mdl->vars = v->next;
		qf_var_ahead_stop(v);
		qf_gv_free(v->gv);
		qf_var_free(v);
	}
	qf_gv_free(mdl->gv);
	qf_model_close(mdl->m);
	qf_model_close(mdl->rot);
	pthread_mutex_destroy(&mdl->fp_lock);
	pthread_cond_destroy(&mdl->fp_cond);
	if (mdl->dirfd >= 0)
		close(mdl->dirfd);
	free(mdl->name);
	free(mdl->org);
	free(mdl->base);
	free(mdl->dir);
	free(mdl->rev);
	free(mdl);
}

/* Files a variant is made from: its files give no class more access. */
static mode_t derived_mode(const struct qf_mdl *mdl)
{
	static const char *const from[] = {
		"config.json", "model.safetensors.index.json",
		"tokenizer.json", "tokenizer_config.json",
	};
	mode_t mode = mdl->dmode & 0444;
	struct stat st;
	size_t i;

	for (i = 0; i < sizeof(from) / sizeof(from[0]); i++)
		if (qf_src_statat(mdl->dirfd, from[i], &st) == 0)
			mode = qf_src_meet(mode, mdl->uid, mdl->gid, &st, 4);
	for (i = 0; mdl->m && i < mdl->m->nshard; i++)
		mode = qf_src_meet(mode, mdl->uid, mdl->gid,
				   &mdl->m->shard[i]->st, 4);
	return mode;
}

/* A new generation of [org/]base from what src.c found (at). */
static int mdl_new(const char *org, const char *base, struct qf_src_at *at,
		   struct qf_mdl **out)
{
	struct qf_buf name = QF_BUF_INIT;
	struct qf_mdl *mdl = calloc(1, sizeof(*mdl));
	size_t blen = strcspn(base, "@");
	char *plain;

	if (!mdl)
		return -ENOMEM;
	pthread_mutex_init(&mdl->fp_lock, NULL);
	pthread_cond_init(&mdl->fp_cond, NULL);
	mdl->dirfd = at->dirfd;		/* taken */
	at->dirfd = -1;
	qf_buf_addf(&name, "%s%s%s", org ? org : "", org ? "/" : "", base);
	mdl->name = qf_buf_detach(&name, NULL);
	mdl->org = org ? strdup(org) : NULL;
	mdl->base = strdup(base);
	mdl->dir = qf_buf_detach(&at->path, NULL);
	mdl->rev = at->rev;
	at->rev = NULL;
	plain = strndup(base, blen);
	if (!mdl->name || (org && !mdl->org) || !mdl->base || !mdl->dir ||
	    !plain) {
		free(plain);
		qf_mdl_free(mdl);
		return -ENOMEM;
	}
	mdl->st = at->st;
	mdl->uid = at->uid;
	mdl->gid = at->gid;
	mdl->dmode = at->dmode;
	memcpy(mdl->sig, at->sig, sizeof(mdl->sig));
	mdl->open_err = qf_model_open_at(mdl->dirfd, mdl->dir, plain, &mdl->m);
	free(plain);
	if (mdl->open_err < 0) {
		qf_err("%s: cannot open the model (%s); only original/ is "
		       "served", mdl->name, qf_strerror(mdl->open_err));
	} else {
		struct qf_tf_config c;

		/* (its fingerprint when a variant is wanted: src_fp.c) */
		qf_info("%s%s%.12s: %zu tensors in %zu file(s), %.1f MB",
			mdl->name, mdl->rev ? " at " : "",
			mdl->rev ? mdl->rev : "", mdl->m->nt, mdl->m->nshard,
			mdl->m->weight_bytes / 1e6);
		mdl->calibratable = qf_tf_config_parse(mdl->m, &c) == 0;
		if (mdl->calibratable && c.moe) {
			/* experts: GPTQ, AWQ, BRECQ, kq and mixed precision */
			qf_info("%s: a mixture-of-experts model (%s): of the "
				"calibrated methods GPTQ, AWQ, BRECQ, the "
				"k-quants and mixed precision are offered",
				mdl->name, c.model_type);
			mdl->calibratable = false;
			mdl->moe = true;
		}
	}
	mdl->fmode = derived_mode(mdl);
	*out = mdl;
	return 0;
}

static bool same_mdl(const struct qf_mdl *m, const char *org,
		     const char *base, const uint8_t sig[32])
{
	return !strcmp(m->base, base) && !memcmp(m->sig, sig, 32) &&
	       (org ? m->org && !strcmp(m->org, org) : !m->org);
}

/* The generation of [org/]base that at found: known, or opened now. */
static struct qf_mdl *mdl_for(struct qf_fs *fs, const char *org,
			      const char *base, struct qf_src_at *at, int *err)
{
	struct qf_mdl *m, *made = NULL;

	pthread_mutex_lock(&fs->lock);
	for (m = fs->mdls; m && !same_mdl(m, org, base, at->sig); m = m->next)
		;
	pthread_mutex_unlock(&fs->lock);
	if (m)
		return m;
	*err = mdl_new(org, base, at, &made);	/* unlocked: reads files */
	if (*err < 0)
		return NULL;
	pthread_mutex_lock(&fs->lock);
	for (m = fs->mdls; m && !same_mdl(m, org, base, made->sig);
	     m = m->next)
		;
	if (!m) {			/* else another thread won */
		made->next = fs->mdls;
		fs->mdls = made;
		m = made;
		made = NULL;
	}
	pthread_mutex_unlock(&fs->lock);
	qf_mdl_free(made);
	return m;
}

bool qf_ns_current(struct qf_fs *fs, const struct qf_mdl *mdl)
{
	struct qf_src_at at;
	bool same;

	same = qf_src_model(fs, mdl->org, mdl->base, true, &at) == 0 &&
	       !memcmp(at.sig, mdl->sig, sizeof(at.sig));
	qf_src_at_release(&at);
	return same;
}

/* Caller holds fs->lock. */
static void hash_remove(struct qf_fs *fs, struct qf_node *n)
{
	struct qf_node **p = &fs->hash[hash_name(n->parent, n->name) %
				       fs->nhash];

	for (; *p; p = &(*p)->hnext)
		if (*p == n) {
			*p = n->hnext;
			n->hnext = NULL;
			return;
		}
}

/* name in the root or an org: a model (its current generation) or an
 * org, found in SRC now; I/O outside fs->lock. */
static struct qf_node *lookup_source(struct qf_fs *fs, struct qf_node *dir,
				     const char *name, int *err)
{
	const char *org = dir->kind == QF_NODE_ORG ? dir->name : NULL;
	struct qf_mdl *mdl = NULL;
	struct qf_node *n;
	struct qf_src_at at;
	struct stat st;

	*err = qf_src_model(fs, org, name, false, &at);
	if (!*err)
		mdl = mdl_for(fs, org, name, &at, err);
	qf_src_at_release(&at);
	if (!mdl && (*err != -ENOENT || org || qf_src_org(fs, name, &st)))
		return NULL;
	pthread_mutex_lock(&fs->lock);
	n = node_find(fs, dir->ino, name);
	if (n && (n->kind == QF_NODE_MODEL ? n->mdl != mdl : !!mdl)) {
		hash_remove(fs, n);	/* the source changed */
		n = NULL;
	}
	if (!n)
		n = node_add(fs, dir, name, mdl ? QF_NODE_MODEL : QF_NODE_ORG);
	if (n && mdl) {
		n->mdl = mdl;
	} else if (n) {
		n->uid = st.st_uid;
		n->gid = st.st_gid;
		n->mode = st.st_mode & 0555;
	}
	if (n)
		n->nlookup++;
	else
		*err = -ENOMEM;
	pthread_mutex_unlock(&fs->lock);
	return n;
}

struct qf_node *qf_ns_lookup(struct qf_fs *fs, struct qf_node *dir,
			     const char *name, int *err)
{
	struct qf_node *n;

	if (dir->kind == QF_NODE_ROOT || dir->kind == QF_NODE_ORG)
		return lookup_source(fs, dir, name, err);
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

/*
 * Entries of a model dir (rel NULL) or of a folder below it (links under
 * the rule): regular files, and folders too unless for a variant dir,
 * whose files pass the filter.
 */
static int list_src(struct qf_mdl *mdl, const char *rel, bool variant,
		    struct qf_buf *out, size_t *count)
{
	struct stat st;
	const char *leaf;
	int fd, pfd;
	struct dirent *de;
	DIR *d;
	int ret = 0;

	if (rel) {
		pfd = qf_src_parent(mdl->dirfd, rel, &leaf);
		fd = pfd < 0 ? pfd : qf_src_openat(pfd, leaf, O_DIRECTORY, &st);
		if (pfd >= 0)
			close(pfd);
	} else {
		fd = openat(mdl->dirfd, ".", O_RDONLY | O_DIRECTORY |
			    O_CLOEXEC);
		fd = fd < 0 ? -errno : fd;
	}
	if (fd < 0)
		return fd;
	d = fdopendir(fd);
	if (!d) {
		close(fd);
		return -errno;
	}
	while ((de = readdir(d)) && !ret) {
		if (de->d_name[0] == '.' ||
		    qf_src_statat(dirfd(d), de->d_name, &st) ||
		    !(S_ISREG(st.st_mode) || (!variant && S_ISDIR(st.st_mode))))
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

	if (!memmem(json, len, c->mdl->m->fp_hex, 64))
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
		return qf_src_list(fs, NULL, out, count);
	case QF_NODE_ORG:
		return qf_src_list(fs, dir->name, out, count);
	case QF_NODE_MODEL:
		add_name(out, count, "original");
		if (!dir->mdl->m)
			return 0;
		for (i = 0; i < NPRESETS; i++)
			if (i < NPRESETS_RTN || dir->mdl->calibratable ||
			    (dir->mdl->moe && (!strncmp(presets[i], "gptq_", 5) ||
					       !strncmp(presets[i], "awq_", 4) ||
					       !strncmp(presets[i], "brecq_", 6) ||
					       !strncmp(presets[i], "kq", 2))))
				add_name(out, count, presets[i]);
		ctx = (struct list_ctx){ dir->mdl, out, count, presets,
					 NPRESETS };
		/* the variants cached before, when the fingerprint is known
		 * without hashing (it was, or the cache has every file's) */
		if (qf_src_fp(fs, dir->mdl, false) == 0 &&
		    qf_cache_read_begin(fs->cache, &txn) == 0) {
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
		return list_src(dir->mdl, NULL, false, out, count);
	case QF_NODE_SRCDIR:
		return list_src(dir->mdl, dir->path, false, out, count);
	case QF_NODE_VARDIR:
		add_name(out, count, "config.json");
		if (dir->var->v->spec.method != QF_METHOD_KQUANT)
			add_name(out, count, "model.safetensors");
		pthread_mutex_lock(&fs->lock);
		if (gguf_of(fs, dir->mdl, dir->var))
			add_name(out, count, "model.gguf");
		pthread_mutex_unlock(&fs->lock);
		add_name(out, count, "quantization.json");
		return list_src(dir->mdl, NULL, true, out, count);
	default:
		return -ENOTDIR;
	}
}

void qf_ns_stat(struct qf_fs *fs, const struct qf_node *n, struct stat *st)
{
	struct stat src;

	memset(st, 0, sizeof(*st));
	st->st_ino = n->ino;
	st->st_nlink = qf_ns_is_dir(n) ? 2 : 1;
	if (n->mdl) {
		st->st_uid = n->mdl->uid;
		st->st_gid = n->mdl->gid;
		st->st_mode = qf_ns_is_dir(n) ? S_IFDIR | n->mdl->dmode :
						S_IFREG | n->mdl->fmode;
		st->st_mtim = n->mdl->st.st_mtim;
		st->st_ctim = n->mdl->st.st_ctim;
		st->st_atim = n->mdl->st.st_mtim;
	}
	switch (n->kind) {
	case QF_NODE_ROOT:
		if (fstat(fs->srcfd, &src) < 0)
			src.st_mode = 0;
		st->st_uid = src.st_uid;
		st->st_gid = src.st_gid;
		st->st_mode = S_IFDIR | (src.st_mode & 0555);
		st->st_mtim = st->st_ctim = st->st_atim = src.st_mtim;
		return;
	case QF_NODE_ORG:
		st->st_uid = n->uid;
		st->st_gid = n->gid;
		st->st_mode = S_IFDIR | n->mode;
		return;
	case QF_NODE_SRCDIR:
		st->st_uid = n->uid;
		st->st_gid = n->gid;
		st->st_mode = S_IFDIR | n->mode;
		return;
	case QF_NODE_SRCFILE:
		st->st_uid = n->uid;
		st->st_gid = n->gid;
		st->st_mode = S_IFREG | n->mode;
		break;
	default:
		if (qf_ns_is_dir(n))
			return;
	}
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
