/*
 * src.c - where models are under SRC, and which revision is served.
 *
 * Three layouts, looked up by name on every lookup (never a table made at
 * mount, so models and revisions that arrive later appear):
 *
 *   SRC/config.json ...                 SRC is one model: MNT/<basename>
 *   SRC/NAME/config.json                MNT/NAME
 *   SRC/ORG/NAME/config.json            MNT/ORG/NAME
 *   SRC/models--ORG--NAME/              a Hugging Face hub cache:
 *       refs/main                       MNT/ORG/NAME at the commit refs/main
 *       snapshots/<commit>/FILE -> ../../blobs/<hash>      names;
 *                                       MNT/ORG/NAME@REF, @<commit prefix>
 *                                       other revisions (not listed)
 *
 * Every directory and file is opened under the link rule of
 * qf_src_openat() (common/srcfile.c).  A hub snapshot is served only when
 * complete: config.json there and every weight file it needs resolving
 * (a download in progress has its blobs as *.incomplete and its links
 * not yet made); otherwise the name is absent and the log says why, once.
 *
 * A model's signature hashes what it was opened from (the directories on
 * the way, each entry of the model directory with its inode, size, times,
 * owner and mode), so a changed source (a new revision, a replaced or
 * rewritten file, a chmod) is noticed by comparing signatures.
 */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "fs_i.h"

#define HUB_PREFIX "models--"
#define REF_MAX 256			/* bytes of a refs/ file */
#define INDEX_MAX (64u << 20)		/* model.safetensors.index.json */

mode_t qf_src_meet(mode_t mode, uid_t uid, gid_t gid, const struct stat *st,
		   unsigned need)
{
	unsigned o, g, a = st->st_mode & 7;

	g = st->st_gid == gid ? (st->st_mode >> 3) & 7 : a;
	o = st->st_uid == uid ? (st->st_mode >> 6) & 7 : g;
	if ((o & need) != need)
		mode &= ~(mode_t)0700;
	if ((g & need) != need)
		mode &= ~(mode_t)0070;
	if ((a & need) != need)
		mode &= ~(mode_t)0007;
	return mode;
}

static void sig_stat(struct qf_sha256 *h, const char *name, int ret,
		     const struct stat *st)
{
	int64_t v[12] = { ret };

	if (!ret) {
		v[1] = (int64_t)st->st_dev;
		v[2] = (int64_t)st->st_ino;
		v[3] = (int64_t)st->st_size;
		v[4] = st->st_mtim.tv_sec;
		v[5] = st->st_mtim.tv_nsec;
		v[6] = st->st_ctim.tv_sec;
		v[7] = st->st_ctim.tv_nsec;
		v[8] = st->st_mode;
		v[9] = st->st_uid;
		v[10] = st->st_gid;
	}
	qf_sha256_update(h, name, strlen(name) + 1);
	qf_sha256_update(h, v, sizeof(v));
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void names_free(char **v, size_t n)
{
	while (n--)
		free(v[n]);
	free(v);
}

/* Names in dirfd (no dot files), sorted; *out is malloc'd, each too
 * (NULL and 0 on failure). */
static int dir_names(int dirfd, char ***out, size_t *n)
{
	/* a description of its own: threads list one directory at once */
	int fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = fd < 0 ? NULL : fdopendir(fd);
	struct dirent *de;
	char **v = NULL, **nv;
	size_t k = 0;

	*out = NULL;			/* names_free() is safe on failure */
	*n = 0;
	if (!d) {
		if (fd >= 0)
			close(fd);
		return -errno;
	}
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		nv = realloc(v, (k + 1) * sizeof(*v));
		if (nv)
			v = nv;
		if (!nv || !(v[k] = strdup(de->d_name))) {
			closedir(d);
			names_free(v, k);
			return -ENOMEM;
		}
		k++;
	}
	closedir(d);
	if (k)
		qsort(v, k, sizeof(*v), cmp_str);
	*out = v;
	*n = k;
	return 0;
}

/* Hash every entry of the model directory into h. */
static int sig_entries(struct qf_sha256 *h, int dirfd)
{
	char **names;
	struct stat st;
	size_t n, i;
	int ret;

	ret = dir_names(dirfd, &names, &n);
	if (ret < 0)
		return ret;
	for (i = 0; i < n; i++) {
		ret = qf_src_statat(dirfd, names[i], &st);
		sig_stat(h, names[i], ret, &st);
	}
	names_free(names, n);
	return 0;
}

/* Open the directory name in dirfd; on the way, cut the served mode. */
static int open_dir(int dirfd, const char *name, struct qf_src_at *at)
{
	struct stat st;
	int fd;

	if (!strcmp(name, ".")) {	/* SRC itself, as the mount names it */
		fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd < 0)
			return -errno;
		if (fstat(fd, &st) < 0) {
			close(fd);
			return -errno;
		}
	} else {
		fd = qf_src_openat(dirfd, name, O_DIRECTORY, &st);
		if (fd < 0)
			return fd;
	}
	qf_sha256_update(&at->h, "dir", 4);
	sig_stat(&at->h, name, 0, &st);
	if (strcmp(name, ".") && qf_buf_addf(&at->path, "/%s", name) < 0) {
		close(fd);
		return -ENOMEM;
	}
	at->path_st[at->npath < 4 ? at->npath++ : 3] = st;
	return fd;
}

/* Served owner and mode from the directories on the way (the last is the
 * model's own). */
static void settle(struct qf_src_at *at)
{
	const struct stat *m = &at->path_st[at->npath - 1];
	int i;

	at->uid = m->st_uid;
	at->gid = m->st_gid;
	at->st = *m;
	at->dmode = m->st_mode & 0555;
	for (i = 0; i < at->npath - 1; i++)
		at->dmode = qf_src_meet(at->dmode, at->uid, at->gid,
					&at->path_st[i], 1);
}

static bool is_hex(const char *s, size_t min)
{
	size_t n = strspn(s, "0123456789abcdef");

	return n >= min && !s[n];
}

/* The names in the repository's snapshots/ (none when it cannot be read). */
static void snapshot_names(int repo, char ***names, size_t *n)
{
	int snaps = qf_src_openat(repo, "snapshots", O_DIRECTORY,
				  &(struct stat){ 0 });

	*names = NULL;
	*n = 0;
	if (snaps < 0)
		return;
	dir_names(snaps, names, n);
	close(snaps);
}

/* The one snapshot of a repository without refs/main. */
static int lone_snapshot(int repo, char *out, size_t cap, const char **why)
{
	char **names;
	size_t n;

	snapshot_names(repo, &names, &n);
	if (n == 1)
		snprintf(out, cap, "%s", names[0]);
	else
		*why = n ? "no refs/main and several snapshots" :
			   "no snapshot";
	names_free(names, n);
	return n == 1 ? 0 : -ENOENT;
}

/*
 * The commit that refs/<rev> names (rev NULL: main, or the lone snapshot
 * when there is no refs/main), or the snapshot a unique prefix of at
 * least 7 hex digits names; into out.
 */
static int pick_revision(int repo, const char *rev, char *out, size_t cap,
			 const char **why)
{
	struct qf_buf b = QF_BUF_INIT;
	char **names;
	size_t n, i, hit = 0;
	int refs, ret;

	refs = qf_src_openat(repo, "refs", O_DIRECTORY, &(struct stat){ 0 });
	ret = refs < 0 ? refs : qf_src_read(refs, rev ? rev : "main",
					    REF_MAX, &b);
	if (refs >= 0)
		close(refs);
	if (!ret) {
		b.len = strcspn(b.data, " \t\r\n");
		b.data[b.len] = 0;
		ret = is_hex(b.data, 7) && b.len < cap ? 0 : QF_EFORMAT;
		if (!ret)
			memcpy(out, b.data, b.len + 1);
		else
			*why = "its ref does not name a commit";
		qf_buf_release(&b);
		return ret;
	}
	qf_buf_release(&b);
	if (!rev)
		return lone_snapshot(repo, out, cap, why);
	if (!is_hex(rev, 7) || strlen(rev) >= cap)
		return -ENOENT;
	snapshot_names(repo, &names, &n);
	for (i = 0; i < n; i++)
		if (!strncmp(names[i], rev, strlen(rev)) && hit++ == 0)
			snprintf(out, cap, "%s", names[i]);
	names_free(names, n);
	if (hit > 1)
		*why = "the commit prefix is ambiguous";
	return hit == 1 ? 0 : -ENOENT;
}

/* The weight files of a snapshot resolve (a download may be under way). */
static int snapshot_complete(int dirfd, const char **why)
{
	struct qf_buf b = QF_BUF_INIT;
	struct stat st;
	cJSON *j, *it;
	int ret;

	if (qf_src_statat(dirfd, "config.json", &st) || !S_ISREG(st.st_mode)) {
		*why = "no config.json";
		return -ENOENT;
	}
	ret = qf_src_read(dirfd, "model.safetensors.index.json", INDEX_MAX,
			  &b);
	if (ret == -ENOENT) {
		ret = qf_src_statat(dirfd, "model.safetensors", &st);
		if (ret < 0)
			*why = "model.safetensors is missing";
		return ret;
	}
	if (ret < 0) {
		*why = "its model.safetensors.index.json cannot be read";
		return ret;
	}
	j = cJSON_ParseWithLength(b.data, b.len);
	qf_buf_release(&b);
	cJSON_ArrayForEach(it, cJSON_GetObjectItemCaseSensitive(j,
							      "weight_map")) {
		if (!cJSON_IsString(it))
			continue;
		ret = qf_src_statat(dirfd, it->valuestring, &st);
		if (ret < 0) {
			*why = "a shard its index names is missing";
			break;
		}
	}
	cJSON_Delete(j);
	return ret;
}

/* Say once per repository and reason why a snapshot is not served. */
static void not_served(struct qf_fs *fs, const char *repo, const char *rev,
		       const char *why)
{
	struct qf_buf key = QF_BUF_INIT;

	if (qf_buf_addf(&key, "%s@%s: %s", repo, rev, why) < 0)
		return;
	pthread_mutex_lock(&fs->src_lock);
	if (!fs->src_said.data || !memmem(fs->src_said.data, fs->src_said.len,
					  key.data, key.len + 1)) {
		qf_buf_add(&fs->src_said, key.data, key.len + 1);
		qf_warn("%s: revision %s is not served: %s", repo, rev, why);
	}
	pthread_mutex_unlock(&fs->src_lock);
	qf_buf_release(&key);
}

/* models--ORG--NAME at rev (NULL: main) into at; at->quick: a known
 * snapshot is being checked, not found (its signature says more). */
static int find_hub(struct qf_fs *fs, const char *repo, const char *rev,
		    struct qf_src_at *at)
{
	const char *why = NULL;
	char commit[128];
	int fd, snaps, ret;

	fd = open_dir(fs->srcfd, repo, at);
	if (fd < 0)
		return fd;
	ret = pick_revision(fd, rev, commit, sizeof(commit), &why);
	if (ret < 0) {
		close(fd);
		if (why)
			not_served(fs, repo, rev ? rev : "main", why);
		return -ENOENT;
	}
	snaps = open_dir(fd, "snapshots", at);
	close(fd);
	if (snaps < 0)
		return snaps;
	at->dirfd = open_dir(snaps, commit, at);
	close(snaps);
	if (at->dirfd < 0) {
		not_served(fs, repo, commit, "its snapshot is missing");
		return -ENOENT;
	}
	ret = at->quick ? 0 : snapshot_complete(at->dirfd, &why);
	if (ret < 0) {
		not_served(fs, repo, commit, why);
		return -ENOENT;
	}
	at->rev = strdup(commit);
	return at->rev ? 0 : -ENOMEM;
}

/* SRC/[ORG/]NAME with a config.json into at. */
static int find_plain(struct qf_fs *fs, const char *org, const char *name,
		      struct qf_src_at *at)
{
	struct stat st;
	int fd = -1, ret;

	if (org) {
		fd = open_dir(fs->srcfd, org, at);
		if (fd < 0)
			return fd;
	}
	at->dirfd = open_dir(org ? fd : fs->srcfd, name, at);
	if (fd >= 0)
		close(fd);
	if (at->dirfd < 0)
		return at->dirfd;
	ret = qf_src_statat(at->dirfd, "config.json", &st);
	if (!ret && !S_ISREG(st.st_mode))
		ret = -ENOENT;
	return ret;
}

void qf_src_at_init(struct qf_src_at *at)
{
	memset(at, 0, sizeof(*at));
	at->dirfd = -1;
	qf_sha256_init(&at->h);
}

void qf_src_at_release(struct qf_src_at *at)
{
	if (at->dirfd >= 0)
		close(at->dirfd);
	free(at->rev);
	qf_buf_release(&at->path);
	qf_src_at_init(at);
}

int qf_src_model(struct qf_fs *fs, const char *org, const char *base,
		 bool quick, struct qf_src_at *at)
{
	struct qf_buf repo = QF_BUF_INIT;
	const char *at_sign = strrchr(base, '@');
	char *name = strndup(base, at_sign ? (size_t)(at_sign - base) :
					     strlen(base));
	int ret;

	qf_src_at_init(at);
	at->quick = quick;
	if (!name || qf_buf_adds(&at->path, fs->src) < 0) {
		free(name);
		return -ENOMEM;
	}
	if (fs->single) {
		ret = !org && !at_sign && !strcmp(name, fs->single) ?
		      open_dir(fs->srcfd, ".", at) : -ENOENT;
		at->dirfd = ret;
		ret = ret < 0 ? ret : 0;
	} else {
		/* a hub repository first ("--" separates its parts) */
		ret = !*name || strstr(name, "--") ||
		      (org && strstr(org, "--")) ? -ENOENT :
		      qf_buf_addf(&repo, HUB_PREFIX "%s%s%s", org ? org : "",
				  org ? "--" : "", name);
		if (!ret)
			ret = find_hub(fs, repo.data,
				       at_sign ? at_sign + 1 : NULL, at);
		if (ret == -ENOENT && !at_sign && !at->npath) {
			qf_src_at_release(at);
			at->quick = quick;
			ret = qf_buf_adds(&at->path, fs->src);
			if (!ret)
				ret = find_plain(fs, org, name, at);
		}
	}
	free(name);
	qf_buf_release(&repo);
	if (!ret)
		ret = sig_entries(&at->h, at->dirfd);
	if (ret < 0) {
		qf_src_at_release(at);
		return ret;
	}
	settle(at);
	qf_sha256_final(&at->h, at->sig);
	return 0;
}

/* A folder in dirfd holds a model directory (a folder with config.json). */
static bool holds_models(int dirfd)
{
	char **names;
	struct stat st;
	bool found = false;
	size_t n, i;
	int m;

	if (dir_names(dirfd, &names, &n) < 0)
		return false;
	for (i = 0; i < n && !found; i++) {
		m = qf_src_openat(dirfd, names[i], O_DIRECTORY, &st);
		if (m >= 0) {
			found = qf_src_statat(m, "config.json", &st) == 0;
			close(m);
		}
	}
	names_free(names, n);
	return found;
}

/* Whether ORG in SRC holds models: models--ORG--* or SRC/ORG/x/config.json */
int qf_src_org(struct qf_fs *fs, const char *org, struct stat *st)
{
	struct qf_buf pre = QF_BUF_INIT;
	char **names = NULL;
	size_t n = 0, i;
	bool found = false;
	int fd, ret;

	if (fs->single || org[0] == '.')
		return -ENOENT;
	ret = strstr(org, "--") ? 0 : qf_buf_addf(&pre, HUB_PREFIX "%s--",
						   org);
	if (!ret && pre.data)
		ret = dir_names(fs->srcfd, &names, &n);
	for (i = 0; !ret && i < n && !found; i++)
		found = !strncmp(names[i], pre.data, pre.len);
	names_free(names, n);
	qf_buf_release(&pre);
	if (ret < 0)
		return ret;
	if (found)
		return fstat(fs->srcfd, st) < 0 ? -errno : 0;
	fd = qf_src_openat(fs->srcfd, org, O_DIRECTORY, st);
	if (fd < 0)
		return fd;
	found = holds_models(fd);
	close(fd);
	return found ? 0 : -ENOENT;
}

static int add_unique(struct qf_buf *out, size_t *count, const char *name)
{
	const char *p = out->data, *end = p ? p + out->len : NULL;

	for (; p && p < end; p += strlen(p) + 1)
		if (!strcmp(p, name))
			return 0;
	(*count)++;
	return qf_buf_add(out, name, strlen(name) + 1);
}

/* A hub entry models--ORG--NAME under org (NULL: the root). */
static int list_hub(struct qf_fs *fs, const char *org, const char *e,
		    struct qf_buf *out, size_t *count)
{
	const char *rest = e + strlen(HUB_PREFIX), *sep = strstr(rest, "--");
	struct qf_src_at at;
	char *o;
	int ret;

	if (!org) {
		if (!sep)	/* an org-less repo: a model at the root */
			goto model;
		o = strndup(rest, (size_t)(sep - rest));
		ret = o ? add_unique(out, count, o) : -ENOMEM;
		free(o);
		return ret;
	}
	if (!sep || strncmp(rest, org, (size_t)(sep - rest)) ||
	    strlen(org) != (size_t)(sep - rest))
		return 0;
	rest = sep + 2;
model:
	qf_src_at_init(&at);
	ret = find_hub(fs, e, NULL, &at);
	qf_src_at_release(&at);
	return ret < 0 ? 0 : add_unique(out, count, rest);
}

int qf_src_list(struct qf_fs *fs, const char *org, struct qf_buf *out,
		size_t *count)
{
	char **names = NULL;
	size_t n = 0, i;
	struct stat st;
	int fd, ret;

	if (fs->single)
		return org ? 0 : add_unique(out, count, fs->single);
	ret = dir_names(fs->srcfd, &names, &n);
	for (i = 0; !ret && i < n; i++)
		if (!strncmp(names[i], HUB_PREFIX, strlen(HUB_PREFIX)))
			ret = list_hub(fs, org, names[i], out, count);
	names_free(names, n);
	if (ret < 0)
		return ret;
	fd = org ? qf_src_openat(fs->srcfd, org, O_DIRECTORY, &st) :
		   fcntl(fs->srcfd, F_DUPFD_CLOEXEC, 0);
	if (fd < 0)
		return 0;
	ret = dir_names(fd, &names, &n);
	for (i = 0; !ret && i < n; i++) {
		int m;

		if (!strncmp(names[i], HUB_PREFIX, strlen(HUB_PREFIX)))
			continue;
		m = qf_src_openat(fd, names[i], O_DIRECTORY, &st);
		if (m < 0)
			continue;
		/* a model, or (at the root) an org of them; hub orgs were
		 * listed above */
		if (qf_src_statat(m, "config.json", &st) == 0 ||
		    (!org && holds_models(m)))
			ret = add_unique(out, count, names[i]);
		close(m);
	}
	names_free(names, n);
	close(fd);
	return ret;
}

size_t qf_src_count(struct qf_fs *fs)
{
	struct qf_buf top = QF_BUF_INIT, sub = QF_BUF_INIT;
	size_t n = 0, k = 0, total = 0;
	struct qf_src_at at;
	const char *p;

	if (qf_src_list(fs, NULL, &top, &n) < 0)
		return 0;
	for (p = top.data; p && p < top.data + top.len; p += strlen(p) + 1) {
		if (qf_src_model(fs, NULL, p, false, &at) == 0) {
			qf_src_at_release(&at);
			total++;
			continue;
		}
		k = 0;
		qf_buf_reset(&sub);
		if (qf_src_list(fs, p, &sub, &k) == 0)
			total += k;
	}
	qf_buf_release(&top);
	qf_buf_release(&sub);
	return total;
}
