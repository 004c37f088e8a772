/*
 * fs.c - set-up and teardown of a quantfs instance: find the models under
 * SRC, open them, open the cache, create the fixed nodes.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cluster.h"
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
	if (err == QF_ELINK)
		return EACCES;
	return EIO;
}

/*
 * SRC, opened once: a model directory itself, or a tree src.c walks on
 * every lookup.  Refused when it holds no model now (a typo'd path).
 */
static int open_source(struct qf_fs *fs)
{
	struct stat st;
	size_t n;

	fs->srcfd = open(fs->src, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fs->srcfd < 0) {
		qf_err("cannot open '%s': %s", fs->src, strerror(errno));
		return -errno;
	}
	if (qf_src_statat(fs->srcfd, "config.json", &st) == 0 &&
	    S_ISREG(st.st_mode)) {
		const char *base = strrchr(fs->src, '/');

		fs->single = strdup(base && base[1] ? base + 1 : "model");
		if (!fs->single)
			return -ENOMEM;
	}
	n = qf_src_count(fs);
	if (!n) {
		qf_err("'%s' holds no model: a directory with config.json, "
		       "NAME/ or ORG/NAME/ directories of them, or a Hugging "
		       "Face hub cache (models--ORG--NAME)", fs->src);
		return -ENOENT;
	}
	fs->nmodels = n;
	return 0;
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

/* -o remote: the bucket below the cache (a misconfiguration fails the
 * mount; an unreachable bucket does not). */
static int open_remote(struct qf_fs *fs)
{
	const struct qf_fs_opts *o = &fs->o;
	struct qf_remote_cfg cfg = {
		.url = o->remote,
		.endpoint = o->remote_endpoint,
		.region = o->remote_region,
		.creds_file = o->remote_creds,
		.role = (enum qf_remote_role)o->remote_role,
		.lease_s = o->remote_lease,
		.probe = true,
	};
	int ret = qf_remote_open(&cfg, &fs->remote);

	if (!ret)
		fs->flight_remote = &qf_cluster_flight;
	if (!ret)
		qf_info("remote tier %s, role %s%s",
			qf_remote_describe(fs->remote),
			qf_remote_role(fs->remote) == QF_REMOTE_PRODUCE ?
			"produce" : qf_remote_role(fs->remote) ==
			QF_REMOTE_CHEAP ? "cheap" : "read",
			fs->backend == QF_BACKEND_CUDA ? "; calibrated "
			"variants made here have the ids of backend cuda" : "");
	return ret;
}

int qf_fs_new(const struct qf_fs_opts *o, struct qf_fs **out)
{
	struct qf_node *root;
	struct qf_fs *fs;
	int ret;

	fs = calloc(1, sizeof(*fs));
	if (!fs)
		return -ENOMEM;
	pthread_mutex_init(&fs->lock, NULL);
	pthread_mutex_init(&fs->src_lock, NULL);
	pthread_mutex_init(&fs->sens_lock, NULL);
	fs->srcfd = -1;
	pthread_mutex_init(&fs->pt_lock, NULL);
	pthread_cond_init(&fs->pt_cond, NULL);
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
	ret = open_source(fs);
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
	if (!ret && o->remote)
		ret = open_remote(fs);
	if (ret < 0)
		goto out_free;
	root = qf_ns_node_root(fs);
	if (!root) {
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
	qf_fs_ahead_stop_all(fs);
	qf_cluster_drain(fs);
	qf_remote_close(fs->remote);
	qf_mixed_overrides_free(fs->mroles);
	for (i = 0; i < fs->nnode; i++) {
		free(fs->node[i]->name);
		free(fs->node[i]->path);
		free(fs->node[i]);
	}
	free(fs->node);
	free(fs->hash);
	while (fs->mdls) {
		struct qf_mdl *m = fs->mdls;

		fs->mdls = m->next;
		qf_mdl_free(m);
	}
	qf_cache_close(fs->cache);
	free(fs->cache_dir);
	if (fs->srcfd >= 0)
		close(fs->srcfd);
	free(fs->single);
	qf_buf_release(&fs->src_said);
	free(fs->src);
	pthread_mutex_destroy(&fs->lock);
	pthread_mutex_destroy(&fs->src_lock);
	pthread_mutex_destroy(&fs->job_lock);
	pthread_mutex_destroy(&fs->pt_lock);
	pthread_cond_destroy(&fs->pt_cond);
	pthread_cond_destroy(&fs->job_cond);
	qf_fs_limits_free(fs);
	free(fs);
}

size_t qf_fs_model_count(const struct qf_fs *fs)
{
	return fs->nmodels;
}
