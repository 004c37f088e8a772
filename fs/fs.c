/*
 * fs.c - set-up and teardown of a quantfs instance: find the models under
 * SRC, open them, open the cache, create the fixed nodes.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fs_i.h"

#define HASH_BUCKETS 4096

int qf_fs_errno(int err)
{
	if (err >= 0)
		return 0;
	if (err > -4096)
		return -err;
	if (err == QF_ESPEC || err == QF_EUNSUPPORTED)
		return ENOENT;
	return EIO;
}

static bool is_model_dir(const char *dir)
{
	struct qf_buf b = QF_BUF_INIT;
	struct stat st;
	bool ok;

	qf_buf_addf(&b, "%s/config.json", dir);
	ok = b.data && stat(b.data, &st) == 0 && S_ISREG(st.st_mode);
	qf_buf_release(&b);
	return ok;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Model directories: SRC itself, or its subdirectories (sorted). */
static int find_models(struct qf_fs *fs, char ***dirs, size_t *n)
{
	struct dirent *de;
	char **v = NULL;
	size_t k = 0;
	DIR *d;

	if (is_model_dir(fs->src)) {
		v = malloc(sizeof(*v));
		if (!v || !(v[0] = strdup(fs->src)))
			return -ENOMEM;
		*dirs = v;
		*n = 1;
		return 0;
	}
	d = opendir(fs->src);
	if (!d)
		return -errno;
	while ((de = readdir(d))) {
		struct qf_buf b = QF_BUF_INIT;
		struct stat st;
		char **nv;

		if (de->d_name[0] == '.')
			continue;
		qf_buf_addf(&b, "%s/%s", fs->src, de->d_name);
		/* lstat: symlinks in SRC are not followed out of it */
		if (!b.data || lstat(b.data, &st) || !S_ISDIR(st.st_mode) ||
		    !is_model_dir(b.data) ||
		    !(nv = realloc(v, (k + 1) * sizeof(*v)))) {
			qf_buf_release(&b);
			continue;
		}
		v = nv;
		v[k++] = qf_buf_detach(&b, NULL);
	}
	closedir(d);
	if (k)
		qsort(v, k, sizeof(*v), cmp_str);
	*dirs = v;
	*n = k;
	return 0;
}

static int open_models(struct qf_fs *fs)
{
	char **dirs = NULL;
	size_t n = 0, i;
	int ret;

	ret = find_models(fs, &dirs, &n);
	if (ret < 0)
		return ret;
	if (!n) {
		qf_err("'%s' holds no model directory (a directory with "
		       "config.json)", fs->src);
		free(dirs);
		return -ENOENT;
	}
	fs->mdl = calloc(n, sizeof(*fs->mdl));
	if (!fs->mdl) {
		ret = -ENOMEM;
		goto out_free;
	}
	for (i = 0; i < n; i++) {
		struct qf_mdl *m = &fs->mdl[i];

		m->dir = dirs[i];
		dirs[i] = NULL;
		m->name = strdup(strrchr(m->dir, '/') + 1);
		if (!m->name) {
			ret = -ENOMEM;
			goto out_free;
		}
		stat(m->dir, &m->st);
		fs->nmdl++;
		m->open_err = qf_model_open(m->dir, &m->m);
		if (m->open_err < 0)
			qf_err("%s: cannot open the model (%s); only original/ "
			       "is served", m->name, qf_strerror(m->open_err));
		else
			qf_info("%s: %zu tensors in %zu file(s), %.1f MB, "
				"fingerprint %.16s", m->name, m->m->nt,
				m->m->nshard, m->m->weight_bytes / 1e6,
				m->m->fp_hex);
		if (m->m) {
			struct qf_tf_config c;

			m->calibratable = qf_tf_config_parse(m->m, &c) == 0;
		}
	}
	ret = 0;
out_free:
	for (i = 0; i < n; i++)
		free(dirs[i]);
	free(dirs);
	return ret;
}

/*
 * The compute backend of calibrated jobs (-o backend).  "auto" takes
 * the CUDA one only where an NVIDIA driver is loaded (it costs no
 * library load elsewhere); an unusable device falls back to the CPU
 * with the reason logged.
 */
static int select_backend(struct qf_fs *fs)
{
	const char *want = fs->o.backend ? fs->o.backend : "auto";
	char why[256], dev[160];
	int ret;

	if (!strcmp(want, "auto") && access("/proc/driver/nvidia", F_OK)) {
		ret = qf_backend_select("cpu", why, sizeof(why));
		qf_debug("backend: cpu (no NVIDIA driver loaded)");
	} else {
		ret = qf_backend_select(want, why, sizeof(why));
	}
	if (ret < 0) {
		qf_err("backend '%s': use cpu, cuda or auto", want);
		return ret;
	}
	fs->backend = (enum qf_backend)ret;
	qf_backend_describe(dev, sizeof(dev));
	if (why[0])
		qf_warn("backend: cpu (%s)", why);
	else if (fs->backend == QF_BACKEND_CUDA || strcmp(want, "auto"))
		qf_info("backend: %s (%s)", qf_backend_name(fs->backend), dev);
	return 0;
}

/* -o mixed_table, mixed_roles, mixed_ratio: parsed once, errors named */
static int mixed_options(struct qf_fs *fs)
{
	char why[256] = "";
	int ret = 0;

	qf_mixed_static_defaults(&fs->mtable);
	qf_mixed_ratio_defaults(&fs->mratio);
	if (fs->o.mixed_table)
		ret = qf_mixed_static_parse(fs->o.mixed_table, &fs->mtable, why,
					    sizeof(why));
	if (!ret && (fs->mtable.bits[QF_ROLE_EMBED] != 16 ||
		     fs->mtable.bits[QF_ROLE_HEAD] != 16)) {
		snprintf(why, sizeof(why), "embeddings and lm_head stay in "
			 "the source precision in this build (embed=16, "
			 "head=16)");
		ret = QF_ESPEC;
	}
	if (!ret && fs->o.mixed_roles)
		ret = qf_mixed_overrides_parse(fs->o.mixed_roles, &fs->mroles,
					       why, sizeof(why));
	if (!ret && fs->o.mixed_ratio)
		ret = qf_mixed_ratio_parse(fs->o.mixed_ratio, &fs->mratio, why,
					   sizeof(why));
	if (ret < 0)
		qf_err("mixed precision options: %s", why[0] ? why :
		       qf_strerror(ret));
	return ret;
}

int qf_fs_new(const struct qf_fs_opts *o, struct qf_fs **out)
{
	struct qf_node *root;
	struct qf_fs *fs;
	size_t i;
	int ret;

	fs = calloc(1, sizeof(*fs));
	if (!fs)
		return -ENOMEM;
	pthread_mutex_init(&fs->lock, NULL);
	pthread_mutex_init(&fs->sens_lock, NULL);
	pthread_mutex_init(&fs->pt_lock, NULL);
	pthread_mutex_init(&fs->job_lock, NULL);
	pthread_cond_init(&fs->job_cond, NULL);
	fs->o = *o;
	qf_fs_limits_init(fs);
	if (fs->o.timeout <= 0)
		fs->o.timeout = 86400;
	fs->uid = getuid();
	fs->gid = getgid();
	fs->src = realpath(o->src, NULL);
	if (!fs->src) {
		ret = -errno;
		qf_err("cannot open '%s': %s", o->src, strerror(-ret));
		goto out_free;
	}
	fs->cache_dir = o->cache_dir ? strdup(o->cache_dir) :
				       qf_cache_default_dir();
	fs->nhash = HASH_BUCKETS;
	fs->hash = calloc(fs->nhash, sizeof(*fs->hash));
	if (!fs->cache_dir || !fs->hash) {
		ret = -ENOMEM;
		goto out_free;
	}
	ret = open_models(fs);
	if (ret < 0)
		goto out_free;
	ret = qf_cache_open(fs->cache_dir, o->cache_map, &fs->cache);
	if (ret < 0)
		goto out_free;
	qf_fs_clean_files(fs);
	qf_fs_trim_cache(fs);
	ret = select_backend(fs);
	if (!ret)
		ret = mixed_options(fs);
	if (ret < 0)
		goto out_free;
	root = qf_ns_node_root(fs);
	if (!root) {
		ret = -ENOMEM;
		goto out_free;
	}
	for (i = 0; i < fs->nmdl; i++)
		if (!qf_ns_node_model(fs, root, &fs->mdl[i])) {
			ret = -ENOMEM;
			goto out_free;
		}
	*out = fs;
	return 0;

out_free:
	qf_fs_free(fs);
	return ret;
}

void qf_fs_free(struct qf_fs *fs)
{
	size_t i;

	if (!fs)
		return;
	qf_job_stop_all(fs);
	qf_mixed_overrides_free(fs->mroles);
	for (i = 0; i < fs->nnode; i++) {
		free(fs->node[i]->name);
		free(fs->node[i]->path);
		free(fs->node[i]);
	}
	free(fs->node);
	free(fs->hash);
	for (i = 0; i < fs->nmdl; i++) {
		struct qf_mdl *m = &fs->mdl[i];

		while (m->vars) {
			struct qf_var *v = m->vars;

			m->vars = v->next;
			qf_var_free(v);
		}
		qf_gv_free(m->gv);
		qf_model_close(m->m);
		free(m->name);
		free(m->dir);
	}
	free(fs->mdl);
	qf_cache_close(fs->cache);
	free(fs->cache_dir);
	free(fs->src);
	pthread_mutex_destroy(&fs->lock);
	pthread_mutex_destroy(&fs->job_lock);
	pthread_mutex_destroy(&fs->pt_lock);
	pthread_cond_destroy(&fs->job_cond);
	qf_fs_limits_free(fs);
	free(fs);
}

size_t qf_fs_model_count(const struct qf_fs *fs)
{
	return fs->nmdl;
}
