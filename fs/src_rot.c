/*
 * src_rot.c - the rotated model behind a model's `_rot` variants
 * (quant/method/rot.c), made once per model generation and kept.
 *
 * The `_rot` variants quantize a rewritten copy of the source, so the
 * copy is a model directory of its own under CACHE/rot/, named by the
 * source's fingerprint and the rotation's seed: written into a
 * temporary directory and renamed, so a crash never leaves a half model
 * that a later mount would trust.  It is opened like any source and
 * carries the source's fingerprint and directory (what the variants'
 * ids and quantization.json name), its own files otherwise.  Its bytes
 * are the source's size again; `quantfs cache gc` does not count them
 * (rm -r CACHE/rot frees them; they are made again when needed).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fs_i.h"

static int rot_open(struct qf_mdl *mdl, const char *dir, struct qf_model **out)
{
	struct qf_model *rm = NULL;
	char *d = strdup(mdl->m->dir);
	int ret = d ? qf_model_open(dir, &rm) : -ENOMEM;

	if (ret < 0) {
		free(d);
		return ret;
	}
	/* the rotation is a function of the source: named by it */
	free(rm->dir);
	rm->dir = d;
	memcpy(rm->fp, mdl->m->fp, sizeof(rm->fp));
	memcpy(rm->fp_hex, mdl->m->fp_hex, sizeof(rm->fp_hex));
	rm->fp_set = true;
	*out = rm;
	return 0;
}

/* Remove the files of a temporary rotated model (flat directory). */
static void rot_rmdir(const char *dir)
{
	static const char *const names[] = {
		"config.json", "model.safetensors", "tokenizer.json",
		"tokenizer_config.json", "special_tokens_map.json",
		"generation_config.json", "tokenizer.model", "vocab.json",
		"merges.txt",
	};
	char p[4400];
	size_t i;

	for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		snprintf(p, sizeof(p), "%s/%s", dir, names[i]);
		unlink(p);
	}
	rmdir(dir);
}

static int rot_make(struct qf_fs *fs, struct qf_mdl *mdl, const char *dir)
{
	char top[4096], tmp[4200];
	int ret;

	snprintf(top, sizeof(top), "%s/rot", fs->cache_dir);
	if (mkdir(top, 0755) < 0 && errno != EEXIST)
		return -errno;
	snprintf(tmp, sizeof(tmp), "%s.tmp%ld", dir, (long)getpid());
	rot_rmdir(tmp);
	if (mkdir(tmp, 0755) < 0)
		return -errno;
	qf_info("%s: writing the rotated model for _rot variants (%s)",
		mdl->name, dir);
	ret = qf_rot_write(mdl->m, QF_ROT_SEED, tmp);
	if (!ret && rename(tmp, dir) < 0 && errno != ENOTEMPTY &&
	    errno != EEXIST)
		ret = -errno;
	rot_rmdir(tmp);		/* lost a race, or failed: not needed */
	return ret;
}

int qf_src_rot(struct qf_fs *fs, struct qf_mdl *mdl, struct qf_model **out)
{
	char dir[4096];
	struct stat st;
	int ret = 0;

	pthread_mutex_lock(&mdl->fp_lock);
	if (!mdl->rot) {
		/* a new construction (QF_ROT_NAME) needs a new name */
		snprintf(dir, sizeof(dir), "%s/rot/%s-%llx-v1", fs->cache_dir,
			 mdl->m->fp_hex, (unsigned long long)QF_ROT_SEED);
		if (stat(dir, &st) < 0)
			ret = rot_make(fs, mdl, dir);
		if (!ret)
			ret = rot_open(mdl, dir, &mdl->rot);
	}
	pthread_mutex_unlock(&mdl->fp_lock);
	*out = mdl->rot;
	return ret;
}
