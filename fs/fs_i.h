/*
 * fs_i.h - private structures of fs/: nodes, models, variants, plans.
 */
#ifndef QF_FS_I_H
#define QF_FS_I_H

#include <pthread.h>
#include <sys/stat.h>

#include "cache.h"
#include "common.h"
#include "flight.h"
#include "fs.h"
#include "mixed.h"
#include "mixed_alloc.h"
#include "remote.h"
#include "quant.h"

enum qf_node_kind {
	QF_NODE_ROOT,
	QF_NODE_ORG,		/* MNT/<org>: models of one organization */
	QF_NODE_MODEL,		/* MNT/[<org>/]<model> */
	QF_NODE_ORIGDIR,	/* MNT/<model>/original */
	QF_NODE_SRCFILE,	/* a source file passed through */
	QF_NODE_SRCDIR,		/* a folder of the model in original/ */
	QF_NODE_VARDIR,		/* MNT/<model>/<variant> */
	QF_NODE_GENFILE,	/* config.json / quantization.json */
	QF_NODE_WEIGHTS,	/* model.safetensors of a variant */
	QF_NODE_GGUF,		/* model.gguf (original/ or a variant) */
};

struct qf_mdl;
struct qf_var;
struct qf_gv;
struct qf_job;

/* What an open read file was when registered (readfile.c). */
struct qf_rf_id {
	uint64_t ino;
	uint64_t size;
	int64_t mtime_s;
	int64_t mtime_ns;
	int64_t ctime_s;
	int64_t ctime_ns;
};

struct qf_node {
	uint64_t ino;
	enum qf_node_kind kind;
	uint64_t parent;		/* parent ino */
	char *name;
	uint64_t nlookup;		/* protected by fs->lock */
	struct qf_mdl *mdl;		/* model (all kinds below root) */
	struct qf_var *var;		/* VARDIR, GENFILE, WEIGHTS */
	char *path;			/* SRCFILE, SRCDIR: the path below the
					 * model directory */
	uid_t uid;			/* ORG, SRC*: served owner, */
	gid_t gid;			/* group */
	mode_t mode;			/* and permission bits */
	const struct qf_buf *bytes;	/* GENFILE: content (var-owned) */
	struct qf_gv *gv;		/* GGUF */
	uint64_t size;			/* GENFILE/WEIGHTS/SRCFILE size */
	struct qf_node *hnext;		/* (parent, name) hash chain */
	/* kernel passthrough (pt.c), fs->pt_lock */
	int pt_id;			/* backing id, 0: none registered */
	int pt_fd;			/* its file, while pt_id */
	unsigned pt_open;		/* opens passed through */
	unsigned own_open;		/* opens the daemon serves */
	uint64_t reads;			/* read requests answered (atomic) */
	char pt_tag[17];		/* read file's header hash (hex), ""
					 * until its first open */
	struct qf_rf_id pt_fid;		/* pt_fd's identity when registered */
	bool pt_bad;			/* its backing file changed under
					 * opens passed through */
	bool pt_writing;		/* its read file is being written or
					 * looked for: opens wait (pt_cond) */
	bool pt_failed;			/* writing it failed: not again in
					 * this mount */
};

/*
 * One source model at one revision, as src.c found it.  A source that
 * changes (a new hub revision, a replaced or rewritten file, a chmod)
 * gets a new qf_mdl and new nodes; the old one stays for the files open
 * on it, until unmount.
 */
struct qf_mdl {
	struct qf_mdl *next;		/* fs->mdls, protected by fs->lock */
	char *name;			/* "ORG/NAME[@REV]": for logs */
	char *org;			/* MNT/<org>, or NULL */
	char *base;			/* NAME[@REV], its name in MNT */
	char *dir;			/* absolute source path */
	char *rev;			/* hub commit, or NULL */
	int dirfd;			/* dir, opened under the link rule */
	struct qf_model *m;		/* NULL when it failed to open */
	int open_err;			/* why, when m is NULL */
	bool calibratable;		/* the forward pass supports it */
	bool moe;			/* mixture of experts: of the
					 * calibrated methods, GPTQ only */
	struct stat st;			/* of dir: times */
	uid_t uid;			/* served owner: the directory's */
	gid_t gid;
	mode_t dmode;			/* directories below MNT/<model> */
	mode_t fmode;			/* files made from the model: no more
					 * than its files and directories
					 * allow each class (src.c) */
	uint8_t sig[32];		/* what it was opened from (src.c) */
	pthread_mutex_t fp_lock;	/* m->fp_set and fp_busy (src_fp.c) */
	pthread_cond_t fp_cond;		/* fp_busy cleared */
	bool fp_busy;			/* fp_lock: a thread is finding the
					 * fingerprint */
	struct qf_var *vars;		/* protected by fs->lock */
	struct qf_gv *gv;		/* original/model.gguf, fs->lock */
	bool gv_tried;			/* fs->lock */
	struct qf_model *rot;		/* fp_lock: the rotated model of the
					 * _rot variants (src_rot.c), owned */
};

/* src.c: a model directory found under SRC. */
struct qf_src_at {
	int dirfd;			/* the model directory, or -1 */
	struct qf_buf path;		/* its absolute path */
	char *rev;			/* hub commit, or NULL */
	struct stat path_st[4];		/* directories on the way, the
					 * model's last */
	int npath;
	struct stat st;			/* the model directory's */
	uid_t uid;			/* served owner and directory mode */
	gid_t gid;
	mode_t dmode;
	bool quick;			/* no completeness check (qf_src_model) */
	struct qf_sha256 h;		/* signature being hashed */
	uint8_t sig[32];
};

/* A segment of an assembled file: header bytes or one tensor. */
struct qf_seg {
	uint64_t off;			/* file offset */
	uint64_t len;
	const struct qf_vtensor *t;	/* NULL: header bytes */
};

/* A variant of one model, shared by all its nodes. */
struct qf_var {
	struct qf_var *next;		/* in mdl->vars, fs->lock */
	struct qf_mdl *mdl;
	struct qf_variant *v;
	uint8_t vid[QF_CACHE_VID];	/* cache variant id */
	struct qf_buf config;		/* config.json */
	struct qf_buf manifest;		/* quantization.json */
	struct qf_buf header;		/* safetensors header bytes */
	struct qf_seg *seg;		/* sorted by off; seg[0] = header */
	size_t nseg;
	uint64_t size;			/* model.safetensors bytes */
	char *label;			/* "<model>/<variant>", for logs */
	struct qf_flight fl;		/* its groups: one slot each */
	pthread_mutex_t lock;		/* the fields marked lock */
	pthread_cond_t cond;		/* job progress (job.c), lock */
	int nopen;			/* open files of it, lock */
	double touched;			/* last access written, lock */
	struct qf_var *base;		/* calibrated _fake: packed variant */
	struct qf_gv *gv;		/* model.gguf, fs->lock */
	bool gv_tried;			/* fs->lock */
	bool calibrated;		/* produced by a layer job (job.c) */
	/* calibrated: what qf_job_setup() (or the base) sets for the key,
	 * the record and the manifest */
	struct qf_calib_info ci;	/* manifest fields */
	struct qf_mixed_alloc *alloc;	/* mixed_dyn / mixed_b (not _fake) */
	uint8_t calib_vid[QF_CACHE_VID]; /* cache id of the token set */
	struct qf_job *job;		/* calibrated, not _fake: its layer
					 * job (job.c), else NULL */
	bool manifest_ready;		/* lock: manifest holds the results */
	double prod_s;			/* production seconds, lock */
	uint64_t prod_src;		/* source bytes quantized, lock */
	struct qf_ahead *ahead;		/* its worker (ahead.c), lock */
	struct qf_stash *stash;		/* groups made while the source was
					 * hashed (stash.c), or NULL */
};

/*
 * What the core asks of the kernel's FUSE device (ll_passthrough.c
 * provides it with the session): register fd as a backing file, its id
 * (> 0) or -errno (fd -1 only asks whether this daemon may: -EPERM when
 * it lacks the privilege); and unregister one.
 */
struct qf_fs_kernel {
	int (*backing_open)(struct qf_fs *fs, int fd);
	int (*backing_close)(struct qf_fs *fs, int id);
};

/*
 * What the core asks the FUSE layer about the request a thread serves
 * (limits.c): registered by it, so the core never calls into it.
 */
struct qf_fs_req_hooks {
	/* the request was interrupted, or the session is ending */
	bool (*interrupted)(struct qf_fs *fs);
	/* its caller's uid; fs->uid when the thread serves none */
	uid_t (*uid)(const struct qf_fs *fs);
};

struct qf_fs {
	struct qf_fs_opts o;
	char *src;			/* absolute */
	char *cache_dir;
	struct qf_cache *cache;
	enum qf_backend backend;	/* of calibrated jobs */
	struct qf_mixed_static mtable;	/* -o mixed_table */
	char **mroles;			/* -o mixed_roles, NULL-terminated */
	struct qf_mixed_ratio mratio;	/* -o mixed_ratio */
	int srcfd;			/* src, opened at mount */
	char *single;			/* SRC is this one model, or NULL */
	size_t nmodels;			/* models found at mount */
	struct qf_mdl *mdls;		/* every model generation, fs->lock */
	pthread_mutex_t src_lock;	/* src_said */
	struct qf_buf src_said;		/* reasons logged ("\0"-separated) */
	pthread_mutex_t lock;		/* nodes, hash, vars lists */
	pthread_mutex_t sens_lock;	/* mixed sensitivity measurements */
	struct qf_node **node;		/* by ino - 1, fs->lock */
	size_t nnode;
	size_t cap;
	struct qf_node **hash;		/* (parent, name), fs->lock */
	size_t nhash;
	uid_t uid;
	gid_t gid;
	uint64_t kflags;		/* kernel INIT flags (ll_session.c) */
	uint64_t init_unique;		/* INIT request id until replied */
	bool direct;			/* direct_io + mmap negotiated */
	bool passthrough;		/* FUSE_PASSTHROUGH negotiated */
	int pt_state;			/* backing files: 0 not tried yet,
					 * 1 allowed, -1 refused (privilege) */
	pthread_mutex_t pt_lock;	/* the nodes' pt_* fields */
	pthread_cond_t pt_cond;		/* a node's pt_writing cleared */
	struct fuse_session *se;	/* set before the loop starts */
	const struct qf_fs_kernel *kern; /* with se (ll_passthrough.c);
					 * NULL: no mount, no passthrough */
	const struct qf_fs_req_hooks *req; /* set by the FUSE layer's init,
					 * before any request; NULL: none */
	pthread_mutex_t job_lock;
	pthread_cond_t job_cond;
	int njobs;			/* job threads, job_lock */
	int nrunning;			/* of them past the queue, job_lock */
	bool stopping;			/* job_lock: unmounting */
	int npub;			/* publications running, job_lock */
	struct qf_remote *remote;	/* -o remote (cluster.c), or NULL */
	const struct qf_flight_remote *flight_remote; /* with remote */
	/* limits.c: the cache's bound */
	pthread_mutex_t room_lock;
	uint64_t room_used;		/* room_lock: cache bytes, estimate */
	double room_t;			/* room_lock: when measured, 0 never */
	double nospace_t;		/* room_lock: last ENOSPC line */
	double over_t;			/* room_lock: last "above" line */
	/* limits.c: concurrent productions */
	pthread_mutex_t prod_lock;
	pthread_cond_t prod_cond;
	int prod_max;			/* -o max_productions */
	int prod_running;		/* prod_lock */
	int prod_waiting;		/* prod_lock */
	uint64_t prod_next;		/* prod_lock: next arrival ticket */
	struct qf_prod_wait *prod_waiters; /* prod_lock */
	struct qf_prod_user *prod_users; /* prod_lock: running per uid */
	size_t nprod_users;		/* prod_lock */
};

/* Entry and attribute timeout of the names src.c resolves (seconds). */
#define QF_SRC_TIMEOUT 1.0

/* src.c */
/*
 * Find [org/]base (base NAME or NAME@REV) under SRC; *at is released
 * with qf_src_at_release() (also after an error).  quick: only to compare
 * signatures with a model found before (a hub snapshot's completeness is
 * not checked again).
 */
int qf_src_model(struct qf_fs *fs, const char *org, const char *base,
		 bool quick, struct qf_src_at *at);
void qf_src_at_init(struct qf_src_at *at);
void qf_src_at_release(struct qf_src_at *at);
/* org holds models (hub repositories or model directories): 0, st of
 * its directory (the root's for a hub org); -ENOENT otherwise. */
int qf_src_org(struct qf_fs *fs, const char *org, struct stat *st);
/* Names of the models and orgs under org (NULL: the root). */
int qf_src_list(struct qf_fs *fs, const char *org, struct qf_buf *out,
		size_t *count);
/* Models SRC holds now (for the mount's first log line). */
size_t qf_src_count(struct qf_fs *fs);
/*
 * mode with the bits of each class of (uid, gid) cleared where that class
 * lacks need (4 read, 1 search) on st: what is served from a file or
 * through a directory gives no class more than the source gives it.
 */
mode_t qf_src_meet(mode_t mode, uid_t uid, gid_t gid, const struct stat *st,
		   unsigned need);

/*
 * src_fp.c: mdl->m's content fingerprint, found once per model
 * generation: each weight file's SHA-256 from the cache's "m" store or,
 * when hash, read and hashed here (a second per GB; other threads wait)
 * and kept there.  After 0, mdl->m->fp and fp_hex may be read without a
 * lock.  Returns 0, -EAGAIN (!hash and not known without hashing, or
 * another thread is finding it), -ESTALE (a weight file's size changed:
 * a new generation serves it), mdl->open_err, QF_ECORRUPT, -ENOMEM,
 * -errno.
 */
int qf_src_fp(struct qf_fs *fs, struct qf_mdl *mdl, bool hash);

/*
 * src_rot.c: the rotated model of mdl (fingerprint set first), made or
 * found in the cache directory once; *out borrowed from mdl.  Returns 0,
 * QF_EUNSUPPORTED (an architecture without rotations), -errno, -ENOMEM.
 */
int qf_src_rot(struct qf_fs *fs, struct qf_mdl *mdl, struct qf_model **out);

/* ns.c */
struct qf_node *qf_ns_node_root(struct qf_fs *fs);
/* The model generation is what its source holds now (else ESTALE). */
bool qf_ns_current(struct qf_fs *fs, const struct qf_mdl *mdl);
/* Open a source file node's file under the link rule: fd or -errno. */
int qf_ns_open_src(const struct qf_node *n);
void qf_mdl_free(struct qf_mdl *mdl);
struct qf_node *qf_ns_get(struct qf_fs *fs, uint64_t ino);
/* Child by name, created on first lookup; NULL + *err when absent. */
struct qf_node *qf_ns_lookup(struct qf_fs *fs, struct qf_node *dir,
			     const char *name, int *err);
/* Names in a directory, "\0"-separated, into out. */
int qf_ns_list(struct qf_fs *fs, struct qf_node *dir, struct qf_buf *out,
	       size_t *count);
void qf_ns_stat(struct qf_fs *fs, const struct qf_node *n, struct stat *st);
bool qf_ns_is_dir(const struct qf_node *n);
/* Source files of a model dir that a variant passes through. */
bool qf_ns_passthrough_name(const char *name);

/* Find or create the variant of mdl named name. */
struct qf_var *qf_ns_var(struct qf_fs *fs, struct qf_mdl *mdl,
			 const char *name, int *err);

/* var.c */
/*
 * The variant name of mdl; base: for a _fake of a calibrated or mixed
 * method, its packed variant (ns.c resolves it), else NULL.
 */
int qf_var_new(struct qf_fs *fs, struct qf_mdl *mdl, const char *name,
	       struct qf_var *base, struct qf_var **out);
/* Every group of var is in the cache (nothing is produced). */
bool qf_var_cached(struct qf_fs *fs, struct qf_var *var);
/*
 * A file of the variant was opened / released: while any is open the
 * mount holds a shared QF_LOCK_USE lock (cache eviction skips it) and
 * the record's last-access time is kept within a minute.
 */
void qf_var_opened(struct qf_fs *fs, struct qf_var *var);
/* Forget groups no longer in the cache (evicted): produced again. */
void qf_var_revalidate(struct qf_fs *fs, struct qf_var *var);
void qf_var_released(struct qf_fs *fs, struct qf_var *var);
/* A cache record: what `ls`, `quantfs cache` and gc know of vid
 * ("created" survives rewrites, "accessed" is now). */
int qf_fs_record(struct qf_fs *fs, const uint8_t *vid,
		 const struct qf_mdl *mdl, const char *name, const char *calib);
void qf_var_free(struct qf_var *var);
/* Make sure group gi is in the cache (single flight). */
int qf_var_ensure(struct qf_fs *fs, struct qf_var *var, uint32_t gi);
/*
 * A calibrated variant's job is done and its final manifest written
 * (its job, or its base's for a _fake, runs first if needed): GGUF views
 * wait here for the importance matrix, so they know var.c, not job.c.
 */
int qf_var_results(struct qf_fs *fs, struct qf_var *var);
/* Make sure every group that bytes [off, end) touch is in the cache. */
int qf_var_ensure_range(struct qf_fs *fs, struct qf_var *var, uint64_t off,
			uint64_t end);
/* Segment index holding offset off. */
size_t qf_var_seg_at(const struct qf_var *var, uint64_t off);

/* stash.c */
/*
 * Plain RTN of a source whose fingerprint is not known yet: start making
 * spec's groups in memory while it is hashed.  NULL: nothing to do (or
 * no memory: the groups are made when read, as always).
 */
struct qf_stash *qf_stash_begin(struct qf_fs *fs, struct qf_mdl *mdl,
				const struct qf_spec *spec);
/* The fingerprint is known: make no more (s may be NULL). */
void qf_stash_hashed(struct qf_stash *s);
/*
 * Group gi of v, made: its tensors' buffers into bufs, the stash's, the
 * caller's to read until it calls qf_stash_done().  False: not made (or
 * taken, or not the same plan, or the source changed).
 */
bool qf_stash_take(struct qf_stash *s, const struct qf_variant *v,
		   uint32_t gi, void **bufs);
/* A group taken is stored: its buffers may go. */
void qf_stash_done(struct qf_stash *s);
/* Stop, join, and free what was not taken (s may be NULL). */
void qf_stash_free(struct qf_stash *s);

/* ahead.c */
/*
 * A read of bytes [off, end) of var's model.safetensors: when it goes
 * past the header and begins at 0 or where the last one ended (a
 * sequential reader), its worker
 * thread (started on the first call) produces the groups of what
 * follows, while production slots are free (nothing for calibrated
 * variants and _fake ones of them).
 */
void qf_var_ahead(struct qf_fs *fs, struct qf_var *var, uint64_t off,
		  uint64_t end);
/* End and join var's worker, if it has one (before var is freed). */
void qf_var_ahead_stop(struct qf_var *var);
/* The same for every variant, as the mount stops: before the remote tier
 * and the cache a production uses are closed. */
void qf_fs_ahead_stop_all(struct qf_fs *fs);

/* job_mixed.c: mixed_dyn / mixed_b allocations (mixed_alloc.h) */
/*
 * Measure (or find in the cache) the sensitivity of every linear of mdl
 * on spec's calibration set and allocate precisions by spec's policy.
 */
int qf_job_mixed_alloc(struct qf_fs *fs, struct qf_mdl *mdl,
		       const struct qf_spec *spec,
		       struct qf_mixed_alloc **out);
/*
 * The sensitivity tables of spec's model and calibration set into the
 * cache, measured now if they are not there: lookups call it without
 * fs->lock, so a long measurement blocks only the lookups of mixed
 * directories (one at a time, fs->sens_lock), never the rest of the
 * mount.
 */
int qf_job_mixed_prepare(struct qf_fs *fs, struct qf_mdl *mdl,
			 const struct qf_spec *spec);

/* job_calib.c: calibrated variants (GPTQ, AWQ, BRECQ, kq) */
/* Calibration set, layer maps and placeholder manifest fields. */
int qf_job_setup(struct qf_fs *fs, struct qf_var *var);
void qf_job_free(struct qf_var *var);
/* job.c */
/* Wait until group gi's layer is in the cache, starting the job. */
int qf_job_ensure(struct qf_fs *fs, struct qf_var *var, uint32_t gi);
/* Group gi's layer was computed (by this process's job). */
bool qf_job_group_done(struct qf_var *var, uint32_t gi);
/* Group gi is gone or damaged: the job computes its layer again. */
void qf_job_forget(struct qf_var *var, uint32_t gi);
/* Wait until the whole variant and its final manifest are done. */
int qf_job_manifest(struct qf_fs *fs, struct qf_var *var);
/* JSON progress of var's production (user.quantfs.progress). */
int qf_job_progress(struct qf_var *var, struct qf_buf *out);
/* Ask running jobs to stop after their current layer, and wait. */
void qf_job_stop_all(struct qf_fs *fs);

/* gguf_view.c: model.gguf of original/ (var NULL) or of a variant whose
 * grid is a ggml block type; QF_EUNSUPPORTED when there is none. */
int qf_gv_new(struct qf_fs *fs, struct qf_mdl *mdl, struct qf_var *var,
	      struct qf_gv **out);
void qf_gv_free(struct qf_gv *gv);
/* Before the first open of the view's file: its cache id, which needs
 * the model's fingerprint (qf_src_fp(); caller holds no lock).  Returns
 * 0 or qf_src_fp()'s error. */
int qf_gv_ready(struct qf_fs *fs, struct qf_gv *gv);
uint64_t qf_gv_size(const struct qf_gv *gv);
/* Bytes [off, end) into out, producing the tensors they touch. */
int qf_gv_read(struct qf_fs *fs, struct qf_gv *gv, uint64_t off,
	       uint64_t end, struct qf_buf *out);
/* Every tensor of the view is in the cache (nothing is produced). */
bool qf_gv_cached(struct qf_fs *fs, struct qf_gv *gv);
const uint8_t *qf_gv_vid(const struct qf_gv *gv);
/* The file's header bytes (metadata, tensor infos, padding). */
const struct qf_buf *qf_gv_header(const struct qf_gv *gv);

/*
 * gguf_kq.c: a k-quant view and its calibration job (issue #24: the job
 * encodes the linears that GPTQ needs a Hessian for, the view copies).
 * qf_kq_types: the view's types of spec s into ty (its llama.cpp mix);
 * returns the main one, QF_GGML_F32 for a name with no mix.
 * qf_kq_plan: var's view's plan (as qf_gv_new's; logged on failure),
 * the caller's to free (qf_gguf_plan_free).
 */
enum qf_ggml_type qf_kq_types(const struct qf_spec *s,
			      struct qf_gguf_types *ty);
int qf_kq_plan(const struct qf_var *var, struct qf_gguf_plan *p);
/*
 * Where t's importance sits in its layer's imatrix record: off[e] for
 * each expert of a 3-D tensor, off[0] otherwise; *l its layer, *lin its
 * dense linear (a fused tensor's first) or -1 (an expert's).  False for
 * tensors outside the decoder layers' linears.
 */
bool qf_kq_tensor_off(const struct qf_tf_config *c,
		      const struct qf_gguf_tensor *t, int *l, size_t *off,
		      int *lin);
/*
 * t is one the job encodes: a dense linear of layer *l (*lin, *off as
 * above), output.weight (*l the last layer, *lin QF_TF_NLINEAR), or with
 * p->fold (kq _awq) a norm that feeds a scaled group: attn_norm (*lin
 * QF_TF_Q) or ffn_norm (*lin QF_TF_GATE), 1-D.
 */
bool qf_kq_job_tensor(const struct qf_gguf_plan *p,
		      const struct qf_gguf_tensor *t, int *l, int *lin,
		      size_t *off);
#define QF_KQ_NAME 192			/* an encoded tensor's item name */
#define QF_KQ_ITEMS (QF_TF_NLINEAR + 3)	/* a layer's: linears, head, norms */
/* kq _awq: the scale group of linear k's input: 0 q/k/v, 1 o, 2 gate/up,
 * 3 down (the job's kq_awq[] and qf_kq_encode's s[]). */
int qf_kq_scale_group(enum qf_tf_linear k);
/* The job's item of t: "__kqe__.<ggml type>.<tensor name>". */
void qf_kq_item_name(const struct qf_gguf_tensor *t, char *buf, size_t cap);
/* The plan has output.weight (its factor comes with the last layer). */
bool qf_kq_head(const struct qf_gguf_plan *p);
/*
 * Layer l's job tensors of plan p (of model m) as the view serves them:
 * GPTQ on their k-quant grid (qf_gguf_produce_gptq) with the layer's
 * importance imat (qf_kq_imatrix_len floats) and the factors u
 * [QF_TF_NLINEAR + 1] (at qf_kq_u_owner's linears, the head's last;
 * NULL: the plain encoder), with p->fold the layer's AWQ scales s[4]
 * (q/k/v's input, o's, gate/up's, down's; NULL: 1) folded in, each into
 * buf[k] (k < QF_KQ_ITEMS; replaced; the caller frees) with its item
 * (name[k]) at items[*n], *n advanced.  Returns 0, -ENOMEM,
 * qf_gguf_produce_gptq's errors.
 */
int qf_kq_encode(const struct qf_model *m, const struct qf_gguf_plan *p,
		 int l, const float *imat, float *const *u,
		 float *const *s, char (*name)[QF_KQ_NAME], void **buf,
		 struct qf_cache_item *items, size_t *n);

/*
 * pt.c: kernel passthrough of source files and of variant files
 * whose bytes are all cached.  An open asks qf_pt_open(): a backing id
 * (> 0) to put in the open reply, or 0 (the daemon serves this open);
 * every open is paired with one qf_pt_release() saying which it was.
 */
#define QF_FH_PT UINT64_MAX		/* fi->fh of a passthrough open */
int qf_pt_open(struct qf_fs *fs, struct qf_node *n);
void qf_pt_release(struct qf_fs *fs, struct qf_node *n, bool pt);
/*
 * user.quantfs.io of a file: how it reaches the kernel ("passthrough",
 * "direct", "cache"), its opens of each kind, the reads the daemon
 * answered, its read file (JSON).
 */
int qf_pt_describe(struct qf_fs *fs, struct qf_node *n, struct qf_buf *out);

/*
 * readfile.c: read files written from the values and recognized by the
 * identity recorded with them (see there).  qf_rf_tag() names a node's
 * read file (hashes its header once; caller holds fs->pt_lock) before
 * any of the others.  qf_rf_open(): the read file, open, when it is the
 * one recorded; else -1 (a mismatch logged unless quiet).
 * qf_rf_write(): 0, -EAGAIN (not all cached, evicted, no room: later),
 * -EINTR (unmounting), or an error (logged).
 */
void qf_rf_tag(struct qf_node *n);
bool qf_rf_cached(struct qf_fs *fs, struct qf_node *n);
int qf_rf_path(struct qf_fs *fs, const struct qf_node *n,
	       struct qf_buf *out);
int qf_rf_open(struct qf_fs *fs, struct qf_node *n, bool quiet);
int qf_rf_write(struct qf_fs *fs, struct qf_node *n);
/* fd's identity into *id; qf_rf_same(): fd still matches *id. */
int qf_rf_id(int fd, struct qf_rf_id *id);
bool qf_rf_same(int fd, const struct qf_rf_id *id);

/* range.c */
struct qf_fs_rd;
/*
 * Segments of [off, end) of var's model.safetensors into rd (fs_do.h),
 * after producing the groups they touch (again, when another process
 * evicted them meanwhile).  rd holds a cache read transaction until
 * qf_fs_rd_release(), also after an error.  Returns 0, QF_ECORRUPT (also:
 * the source changed since it was opened), QF_ECACHE, -ENOMEM, -EINTR.
 */
int qf_fs_read_weights(struct qf_fs *fs, struct qf_var *var, uint64_t off,
		       uint64_t end, struct qf_fs_rd *rd);
/* True when no shard of the model changed since it was opened. */
bool qf_fs_source_intact(const struct qf_model *m);

/* limits.c: disk, productions and the waits of the core (see there) */
void qf_fs_limits_init(struct qf_fs *fs);
void qf_fs_limits_free(struct qf_fs *fs);
/*
 * Before incoming bytes are written to the cache (file: as a read file):
 * evict least recently used variants down to -o cache_max.  Returns 0,
 * or -ENOSPC (logged) where the auto bound cannot keep its tenth of the
 * filesystem free.
 */
int qf_fs_room(struct qf_fs *fs, uint64_t incoming, bool file);
/* The same at mount and when a variant is complete, with nothing new. */
void qf_fs_trim_cache(struct qf_fs *fs);
/*
 * qf_cache_put() after qf_fs_room(); a full disk is logged (once in a
 * while) with the cache directory and its free space.  Returns 0,
 * -ENOSPC, QF_ECACHE.
 */
int qf_fs_cache_put(struct qf_fs *fs, const uint8_t *vid,
		    const struct qf_cache_item *items, size_t n);
/*
 * A production or variant setup begins / ends on this thread: waits for
 * one of the max_productions slots (nested calls share it).  Returns 0
 * or -EINTR (the request was interrupted, or the mount is going away).
 */
int qf_fs_prod_begin(struct qf_fs *fs);
void qf_fs_prod_end(struct qf_fs *fs);
/* A production slot is free and nobody waits for one (ahead.c). */
bool qf_fs_prod_free(struct qf_fs *fs);
/* At mount: delete the temporary files of killed writers (logged). */
void qf_fs_clean_files(struct qf_fs *fs);
/*
 * The request hook: the FUSE layer registers it once, before the first
 * request (h is borrowed for the mount's life).
 */
void qf_fs_set_req_hooks(struct qf_fs *fs, const struct qf_fs_req_hooks *h);
/* The uid of the request this thread serves (the daemon's if none). */
uid_t qf_fs_req_uid(const struct qf_fs *fs);
/* True once unmounting began: background work gives up (-EINTR). */
bool qf_fs_stopping(struct qf_fs *fs);
/*
 * Wait on cond (lock held) for at most a moment; -EINTR when the
 * request this thread serves was interrupted or the session is ending.
 */
int qf_fs_wait(struct qf_fs *fs, pthread_cond_t *cond, pthread_mutex_t *lock);

/* errno for a qf error code (fs/ alone decides errno values). */
int qf_fs_errno(int err);

#endif /* QF_FS_I_H */
