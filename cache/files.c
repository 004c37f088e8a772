/*
 * files.c - read files: <dir>/files/<vid hex>.<tag>, the whole bytes of
 * one served file of a variant, which the mount hands to the kernel as a
 * passthrough backing file (fs/passthrough.c).  They are derived from
 * the values, written once, and go with their variant: dropped with it,
 * counted with it by `quantfs cache` and eviction.
 *
 * A read file is written as .<vid hex>.<tag>.<pid>.tmp, synced and
 * renamed into place, so a file under its final name is complete.
 */
#include <dirent.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cache.h"

#define HEX (2 * QF_CACHE_VID)

int qf_cache_file_path(const struct qf_cache *c,
		       const uint8_t vid[QF_CACHE_VID], const char *tag,
		       bool tmp, struct qf_buf *out)
{
	char hex[HEX + 1];
	struct stat st;
	int ret;

	qf_hex(vid, QF_CACHE_VID, hex);
	qf_buf_reset(out);
	qf_buf_addf(out, "%s/files", qf_cache_dir(c));
	if (!out->data)
		return -ENOMEM;
	ret = qf_mkdir_p(out->data, 02775);
	if (ret < 0)
		return ret;
	if (lstat(out->data, &st) < 0)
		return -errno;
	if (!S_ISDIR(st.st_mode))	/* a link: not followed */
		return -ENOTDIR;
	if (tmp)
		qf_buf_addf(out, "/.%s.%s.%ld.tmp", hex, tag, (long)getpid());
	else
		qf_buf_addf(out, "/%s.%s", hex, tag);
	return out->data ? 0 : -ENOMEM;
}

/* A temporary file whose writer is gone (killed mid-write). */
static bool stale_tmp(const char *name)
{
	const char *end = strrchr(name, '.'), *dot;
	long pid;

	if (name[0] != '.' || !end || strcmp(end, ".tmp"))
		return false;
	for (dot = end - 1; dot > name && *dot != '.'; dot--)
		;
	pid = strtol(dot + 1, NULL, 10);
	return pid > 0 && kill((pid_t)pid, 0) < 0 && errno == ESRCH;
}

int qf_cache_files(struct qf_cache *c, const uint8_t *vid, bool drop,
		   uint64_t *bytes)
{
	struct qf_buf path = QF_BUF_INIT;
	char hex[HEX + 1] = "";
	struct dirent *de;
	size_t base;
	DIR *d;
	int ret = 0;

	*bytes = 0;
	if (vid)
		qf_hex(vid, QF_CACHE_VID, hex);
	qf_buf_addf(&path, "%s/files", qf_cache_dir(c));
	if (!path.data)
		return -ENOMEM;
	d = opendir(path.data);
	if (!d) {
		ret = errno == ENOENT ? 0 : -errno;
		qf_buf_release(&path);
		return ret;
	}
	base = path.len;
	while ((de = readdir(d))) {
		const char *n = de->d_name;
		bool tmp = n[0] == '.';
		struct stat st;

		if (vid ? strncmp(n + tmp, hex, HEX) || n[tmp + HEX] != '.' :
			  !tmp)
			continue;
		if (tmp && !stale_tmp(n))	/* a writer is at work */
			continue;
		path.len = base;
		qf_buf_addf(&path, "/%s", n);
		if (!path.data || lstat(path.data, &st) < 0 ||
		    !S_ISREG(st.st_mode))
			continue;
		if ((tmp || drop) && unlink(path.data) < 0 && errno != ENOENT)
			ret = -errno;
		if (!tmp)
			*bytes += (uint64_t)st.st_size;
	}
	closedir(d);
	qf_buf_release(&path);
	return ret;
}
