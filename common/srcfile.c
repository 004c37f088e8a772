/*
 * srcfile.c - opening what lies under SRC and calib_dir, with quantfs's
 * one rule for symbolic links (quantfs(1), SECURITY):
 *
 *   a link is followed only when the link and the file or directory it
 *   leads to have the same owner (Apache's SymLinksIfOwnerMatch).
 *
 * A user who may write SRC can then make the daemon open only what that
 * same user owns, never another user's file; the Hugging Face hub cache
 * (snapshots/<rev>/NAME -> ../../blobs/<hash>, link and blob made by the
 * one user who downloaded them) passes.  Every name is one path component
 * opened relative to a directory that was itself opened under the rule,
 * so no component of a path is followed unchecked.  Files are opened
 * O_NONBLOCK and must be regular: a FIFO planted in SRC cannot block the
 * daemon.
 *
 * Also here: whole-buffer pread/pwrite, and the unnamed temporary files
 * into which calibration spills what it does not hold in memory.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

static bool plain_name(const char *name)
{
	return name[0] && strcmp(name, ".") && strcmp(name, "..") &&
	       !strchr(name, '/');
}

/* Opened what was expected: a directory, or a regular file made blocking. */
static int check_kind(int fd, int flags, const struct stat *st)
{
	if (flags & O_DIRECTORY)
		return S_ISDIR(st->st_mode) ? 0 : -ENOTDIR;
	if (!S_ISREG(st->st_mode))
		return S_ISDIR(st->st_mode) ? -EISDIR : -EINVAL;
	if (fcntl(fd, F_SETFL, 0) < 0)
		return -errno;
	return 0;
}

/* name in dirfd is a link (lst): open what it leads to if the owners match. */
static int open_link(int dirfd, const char *name, int oflags,
		     const struct stat *lst, struct stat *st)
{
	struct stat again;
	int fd;

	fd = openat(dirfd, name, oflags);
	if (fd < 0)
		return -errno;
	if (fstat(fd, st) < 0) {
		close(fd);
		return -errno;
	}
	/* the link checked must be the link followed */
	if (st->st_uid != lst->st_uid ||
	    fstatat(dirfd, name, &again, AT_SYMLINK_NOFOLLOW) < 0 ||
	    again.st_ino != lst->st_ino || again.st_dev != lst->st_dev ||
	    again.st_uid != lst->st_uid) {
		qf_warn("'%s': a link owned by uid %u to a file of uid %u is "
			"not followed (quantfs(1), SECURITY)", name,
			(unsigned)lst->st_uid, (unsigned)st->st_uid);
		close(fd);
		return QF_ELINK;
	}
	return fd;
}

int qf_src_openat(int dirfd, const char *name, int flags, struct stat *st)
{
	int oflags = O_RDONLY | O_CLOEXEC | (flags & O_DIRECTORY ?
					      O_DIRECTORY : O_NONBLOCK);
	struct stat lst;
	int fd, ret;

	if (!plain_name(name))
		return -ENOENT;
	fd = openat(dirfd, name, oflags | O_NOFOLLOW);
	if (fd < 0) {
		ret = -errno;
		if ((ret != -ELOOP && ret != -ENOTDIR) ||
		    fstatat(dirfd, name, &lst, AT_SYMLINK_NOFOLLOW) < 0 ||
		    !S_ISLNK(lst.st_mode))
			return ret;
		fd = open_link(dirfd, name, oflags, &lst, st);
		if (fd < 0)
			return fd;
	} else if (fstat(fd, st) < 0) {
		ret = -errno;
		close(fd);
		return ret;
	}
	ret = check_kind(fd, flags, st);
	if (ret < 0) {
		close(fd);
		return ret;
	}
	return fd;
}

int qf_src_statat(int dirfd, const char *name, struct stat *st)
{
	struct stat lst;

	if (!plain_name(name))
		return -ENOENT;
	if (fstatat(dirfd, name, &lst, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	if (!S_ISLNK(lst.st_mode)) {
		*st = lst;
		return 0;
	}
	if (fstatat(dirfd, name, st, 0) < 0)
		return -errno;
	return st->st_uid == lst.st_uid ? 0 : QF_ELINK;
}

/* Read all of fd (a regular file) into out, at most max bytes. */
static int read_fd(int fd, const struct stat *st, size_t max,
		   struct qf_buf *out)
{
	size_t want;
	ssize_t n;
	int ret;

	if ((uint64_t)st->st_size > max)
		return -EFBIG;
	want = (size_t)st->st_size;
	ret = qf_buf_grow(out, want);
	if (ret < 0)
		return ret;
	while (want > 0) {
		n = read(fd, out->data + out->len, want);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			break;
		out->len += (size_t)n;
		want -= (size_t)n;
	}
	out->data[out->len] = '\0';
	return 0;
}

int qf_src_read(int dirfd, const char *name, size_t max, struct qf_buf *out)
{
	struct stat st;
	int fd, ret;

	fd = qf_src_openat(dirfd, name, 0, &st);
	if (fd < 0)
		return fd;
	ret = read_fd(fd, &st, max, out);
	close(fd);
	return ret;
}

int qf_src_parent(int dirfd, const char *rel, const char **leaf)
{
	const char *p = rel, *slash;
	char part[256];
	struct stat st;
	int fd, next;

	fd = openat(dirfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	while ((slash = strchr(p, '/'))) {
		if ((size_t)(slash - p) >= sizeof(part)) {
			close(fd);
			return -ENAMETOOLONG;
		}
		memcpy(part, p, (size_t)(slash - p));
		part[slash - p] = 0;
		next = qf_src_openat(fd, part, O_DIRECTORY, &st);
		close(fd);
		if (next < 0)
			return next;
		fd = next;
		p = slash + 1;
	}
	*leaf = p;
	return fd;
}

int qf_src_open_path(const char *path, int flags, struct stat *st)
{
	const char *slash = strrchr(path, '/');
	char *dir;
	int dfd, fd;

	if (!slash)
		return qf_src_openat(AT_FDCWD, path, flags, st);
	dir = slash == path ? strdup("/") : strndup(path, (size_t)(slash -
								   path));
	if (!dir)
		return -ENOMEM;
	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	free(dir);
	if (dfd < 0)
		return -errno;
	fd = qf_src_openat(dfd, slash + 1, flags, st);
	close(dfd);
	return fd;
}

int qf_src_read_path(const char *path, size_t max, struct qf_buf *out)
{
	struct stat st;
	int fd, ret;

	fd = qf_src_open_path(path, 0, &st);
	if (fd < 0)
		return fd;
	ret = read_fd(fd, &st, max, out);
	close(fd);
	return ret;
}

int qf_read_file(const char *path, size_t max, struct qf_buf *out)
{
	struct stat st;
	int fd, ret;

	fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0)
		ret = -errno;
	else
		ret = check_kind(fd, 0, &st);
	if (!ret)
		ret = read_fd(fd, &st, max, out);
	close(fd);
	return ret;
}

int qf_pread_all(int fd, void *p, size_t len, uint64_t off)
{
	uint8_t *d = p;

	while (len) {
		ssize_t k = pread(fd, d, len, (off_t)off);

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return k < 0 ? -errno : -EIO;
		d += k;
		len -= (size_t)k;
		off += (uint64_t)k;
	}
	return 0;
}

int qf_pwrite_all(int fd, const void *p, size_t len, uint64_t off)
{
	const uint8_t *s = p;

	while (len) {
		ssize_t k = pwrite(fd, s, len, (off_t)off);

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return k < 0 ? -errno : -EIO;
		s += k;
		len -= (size_t)k;
		off += (uint64_t)k;
	}
	return 0;
}

/* An unnamed temporary file in dir: its descriptor, or -errno. */
static int tmpfile_in(const char *dir)
{
	char path[4096];
	int fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);

	if (fd >= 0 || (errno != EOPNOTSUPP && errno != EISDIR &&
			errno != EINVAL))
		return fd >= 0 ? fd : -errno;
	/* a file system without O_TMPFILE: named, unlinked at once */
	if (snprintf(path, sizeof(path), "%s/.qf-spill.XXXXXX", dir) >=
	    (int)sizeof(path))
		return -ENAMETOOLONG;
	fd = mkostemp(path, O_CLOEXEC);
	if (fd < 0)
		return -errno;
	unlink(path);
	return fd;
}

int qf_spill_open(const char *dir)
{
	const char *tmp = getenv("TMPDIR");
	int fd = dir && *dir ? tmpfile_in(dir) : -ENOENT;

	if (fd < 0)
		fd = tmpfile_in(tmp && *tmp ? tmp : "/tmp");
	return fd;
}
