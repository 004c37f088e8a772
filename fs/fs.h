/*
 * fs.h - the quantfs filesystem: namespace, file assembler, FUSE ops.
 *
 * The only module that includes fuse_lowlevel.h (its ll_*.c files alone)
 * and chooses errno values.  mounts/ creates a qf_fs and runs the FUSE
 * session on it (qf_fs_run); the operations without FUSE are fs_do.h's.
 */
#ifndef QF_FS_H
#define QF_FS_H

#include <stdbool.h>
#include <stdint.h>

struct qf_fs;

struct qf_fs_opts {
	const char *src;		/* a model dir or a dir of model dirs */
	const char *cache_dir;		/* NULL: qf_cache_default_dir() */
	uint64_t cache_map;		/* initial LMDB map bytes, 0: 1 GiB */
	double timeout;			/* entry/attr timeout, seconds */
	int io;				/* QF_IO_*: how files reach the kernel */
	const char *calib;		/* calibration text, NULL: sampled */
	const char *calib_dir;		/* @name sets: <dir>/<name>.txt */
	int calib_n;			/* sequences (default 32) */
	int calib_len;			/* tokens per sequence (default 256) */
	uint64_t calib_seed;		/* sampled sets (default 0) */
	uint64_t calib_mem;		/* bytes of calibration's activations,
					 * 0: 3 GiB (qf_calib_chunk_seqs) */
	int max_jobs;			/* concurrent calibrated jobs, 0: 1 */
	int max_productions;		/* RTN groups, GGUF tensors, setups
					 * at once; 0: one per CPU */
	uint64_t cache_max;		/* bytes: evict LRU variants above
					 * it; QF_CACHE_MAX_AUTO or _NONE */
	const char *backend;		/* "cpu", "cuda", "auto" (NULL) */
	int brecq_iters;		/* Adam steps per block, 0: default,
					 * -1: none (round to nearest) */
	int brecq_batch;		/* sequences per step, 0: default */
	const char *mixed_table;	/* mixed_static: "attn=8,mlp=4,..." */
	const char *mixed_roles;	/* "glob=role,..." role overrides */
	const char *mixed_ratio;	/* mixed_dyn: "high=0.2,low=0.4,..." */
	/* the remote tier (cache/remote.h), NULL: none */
	const char *remote;		/* s3://BUCKET[/PREFIX] */
	const char *remote_endpoint;	/* NULL: the AWS variables', AWS */
	const char *remote_region;
	const char *remote_creds;	/* credentials file, NULL: default */
	int remote_role;		/* enum qf_remote_role */
	double remote_lease;		/* seconds, 0: 60 */
};

/* -o cache_max=auto (the default): half the cache's filesystem, with a
 * tenth of it always left free; none: no bound */
#define QF_CACHE_MAX_AUTO 0
#define QF_CACHE_MAX_NONE UINT64_MAX

enum {
	QF_IO_AUTO,		/* kernel passthrough where it can, else: */
	QF_IO_DIRECT,		/* direct_io + splice where mmap survives it */
	QF_IO_CACHE,		/* always the page cache */
};

/*
 * Scan src, open every model (a model that fails to open is listed and
 * answers EIO below it), open the cache.  Caller owns *out; free with
 * qf_fs_free().  Returns 0, -errno, QF_ECACHE.
 */
int qf_fs_new(const struct qf_fs_opts *o, struct qf_fs **out);
void qf_fs_free(struct qf_fs *fs);
size_t qf_fs_model_count(const struct qf_fs *fs);
/*
 * Mount on mnt with the given FUSE -o option string, daemonize unless
 * foreground, and serve until unmounted or signalled.  Returns the exit
 * status for main(): 0 or 1.
 */
int qf_fs_run(struct qf_fs *fs, const char *mnt, const char *fuse_opts,
	      bool foreground, bool debug, int threads);

#endif /* QF_FS_H */
