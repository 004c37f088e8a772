/*
 * files.c - read files: <dir>/files/<vid hex>.<tag>, the whole bytes of
 * one served file of a variant, which the mount hands to the kernel as a
 * passthrough backing file (fs/pt.c).  They are derived from
 * the values, written once, and go with their variant: dropped with it
 * (first: unlinking frees disk space at once, even on a full disk),
 * counted with it by `quantfs cache` and eviction.
 *
 * A read file is written as .<vid hex>.<tag>.<pid>.tmp, synced and
 * renamed into place, so a file under its final name is complete.  Its
 * writer holds an exclusive lock on the temporary file (an open file
 * description lock, which the kernel drops when the writer dies), so a
 * temporary file nobody holds is stray: left by a killed writer, removed
 * at mount and by eviction, counted until then.
 *
 * It knows only the cache directory, not struct qf_cache: cache.c's
 * qf_cache_file*() pass it in, so cache.c calls here and never back.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cache_i.h"

#define HEX (2 * QF_CACHE_VID)
/* an unlocked temporary file this old is stray even if its pid lives
 * (reused, or another pid namespace): a writer locks it at creation */
#define STRAY_AGE 60

int qf_files_path(const char *dir, const uint8_t vid[QF_CACHE_VID],
		  const char *tag, bool tmp, struct qf_buf *out)
{
	char hex[HEX + 1];
	struct stat st;
	int ret;

	qf_hex(vid, QF_CACHE_VID, hex);
	qf_buf_reset(out);
	qf_buf_addf(out, "%s/files", dir);
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

int qf_files_create(const char *dir, const uint8_t vid[QF_CACHE_VID],
		    const char *tag, struct qf_buf *tmp)
{
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET };
	int fd, ret;

	ret = qf_files_path(dir, vid, tag, true, tmp);
	if (ret < 0)
		return ret;
	/* never through a link planted under the temporary name */
	unlink(tmp->data);
	fd = open(tmp->data, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW |
		  O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	if (fcntl(fd, F_OFD_SETLK, &fl) < 0) {
		ret = -errno;
		close(fd);
		unlink(tmp->data);
		return ret;
	}
	return fd;
}

/* A temporary file whose writer is gone (killed mid-write). */
static bool stray_tmp(const char *path, const char *name,
		      const struct stat *st)
{
	struct flock fl = { .l_type = F_RDLCK, .l_whence = SEEK_SET };
	const char *end = strrchr(name, '.'), *dot;
	bool held;
	long pid;
	int fd;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (fd < 0)
		return false;
	/* a test only: a writer locking it meanwhile is not disturbed */
	held = fcntl(fd, F_OFD_GETLK, &fl) < 0 || fl.l_type != F_UNLCK;
	close(fd);
	if (held)
		return false;
	for (dot = end - 1; dot > name && *dot != '.'; dot--)
		;
	pid = strtol(dot + 1, NULL, 10);
	if (pid > 0 && kill((pid_t)pid, 0) < 0 && errno == ESRCH)
		return true;
	/* its pid lives: a writer between creating and locking it, or an
	 * older quantfs that does not lock (its writes keep it young) */
	return time(NULL) - st->st_mtime > STRAY_AGE;
}

/* <vid hex> at the start of a file name into vid. */
static bool name_vid(const char *n, uint8_t *vid)
{
	return qf_unhex(n, QF_CACHE_VID, vid) == 0 && n[HEX] == '.';
}

int qf_files_each(const char *dir, const uint8_t *vid, unsigned flags,
		  int (*fn)(void *arg, const uint8_t *vid,
			    enum qf_cache_file_kind kind, uint64_t bytes),
		  void *arg)
{
	struct qf_buf path = QF_BUF_INIT;
	uint8_t fvid[QF_CACHE_VID];
	struct dirent *de;
	size_t base;
	DIR *d;
	int ret = 0;

	qf_buf_addf(&path, "%s/files", dir);
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
		enum qf_cache_file_kind kind = QF_CACHE_FILE_READ;
		struct stat st;
		size_t len = strlen(n);

		if (tmp && (len < 4 || strcmp(n + len - 4, ".tmp")))
			continue;
		if (!name_vid(n + tmp, fvid) ||
		    (vid && memcmp(vid, fvid, QF_CACHE_VID)))
			continue;
		path.len = base;
		qf_buf_addf(&path, "/%s", n);
		if (!path.data || lstat(path.data, &st) < 0 ||
		    !S_ISREG(st.st_mode))
			continue;
		if (tmp)
			kind = stray_tmp(path.data, n, &st) ?
			       QF_CACHE_FILE_STRAY : QF_CACHE_FILE_TMP;
		if (((kind == QF_CACHE_FILE_READ && (flags & QF_FILES_DROP)) ||
		     (kind == QF_CACHE_FILE_STRAY && (flags & QF_FILES_CLEAN)))
		    && unlink(path.data) < 0 && errno != ENOENT)
			ret = -errno;
		if (fn && fn(arg, fvid, kind, (uint64_t)st.st_size))
			break;
	}
	closedir(d);
	qf_buf_release(&path);
	return ret;
}

static int add_stat(void *arg, const uint8_t *vid,
		    enum qf_cache_file_kind kind, uint64_t bytes)
{
	struct qf_cache_files_stat *st = arg;

	(void)vid;
	st->bytes[kind] += bytes;
	st->count[kind]++;
	return 0;
}

int qf_files_count(const char *dir, const uint8_t *vid, unsigned flags,
		   struct qf_cache_files_stat *st)
{
	struct qf_cache_files_stat dummy;

	if (!st)
		st = &dummy;
	memset(st, 0, sizeof(*st));
	if (!vid)
		flags &= ~QF_FILES_DROP;	/* never every read file */
	return qf_files_each(dir, vid, flags, add_stat, st);
}
