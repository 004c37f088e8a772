/*
 * cluster.h - the remote tier in the core (cluster.c): what flight.c,
 * job.c, job_layer.c and job_calib.c call.  Every function is a no-op
 * (or -ENOENT) on a mount without -o remote.
 */
#ifndef QF_CLUSTER_H
#define QF_CLUSTER_H

#include "fs_i.h"

struct qf_cjob;

/*
 * For flight.c (fs->flight_remote): a slot from the bucket's manifest
 * into the cache, verified (0, or any error: produce it here), and an id
 * completed here published in the background (writers only).
 */
extern const struct qf_flight_remote qf_cluster_flight;
/* Wait for the background publications (unmount). */
void qf_cluster_drain(struct qf_fs *fs);

/* The bucket has nothing (no manifest, no lease) under own and
 * something under alt: a node that does not produce calibrated
 * variants uses alt (var.c, the other backend's id). */
bool qf_cluster_prefer(struct qf_fs *fs, const uint8_t *own,
		       const uint8_t *alt);

/* var's calibration set from the bucket into the cache: 0 or < 0. */
int qf_cluster_calib_fetch(struct qf_fs *fs, struct qf_var *var);
/* Publish the set just made, ids (len bytes), created once.  1 when
 * another machine's other set came first and replaced ours in the cache
 * (read it again), else 0. */
int qf_cluster_calib_publish(struct qf_fs *fs, struct qf_var *var,
			     const void *ids, size_t len);

/*
 * Before a calibrated job computes anything (its local lock held):
 * import the published variant, or take the lease (importing the last
 * checkpoint), or follow another machine's production until one of
 * those.  cached counts the layers in the cache (job_layer.c's, given
 * so that this file and the job's do not call each other).  *out: the
 * job's cluster state (NULL without a remote), for
 * _layer and _end.  Returns 0 (go on: whatever the cache lacks is
 * produced here), -EINTR (unmounting), -EIO (this node may not produce
 * it and no one else does).
 */
int qf_cluster_job_begin(struct qf_fs *fs, struct qf_var *var,
			 int (*cached)(struct qf_fs *, struct qf_var *),
			 struct qf_cjob **out);
/* done layers are in the cache: publish a checkpoint, renew the lease
 * with the progress. */
void qf_cluster_job_layer(struct qf_fs *fs, struct qf_cjob *c, int done);
/* The job ended with ret: publish the manifest (ret 0, lease still
 * ours), drop the lease, free c. */
void qf_cluster_job_end(struct qf_fs *fs, struct qf_cjob *c, int ret);

#endif /* QF_CLUSTER_H */
