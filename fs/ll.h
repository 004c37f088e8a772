/*
 * ll.h - what the FUSE files (ll_*.c, the only ones that include libfuse)
 * share among themselves; the core never includes it.
 */
#ifndef QF_LL_H
#define QF_LL_H

#include <stdint.h>

struct fuse_bufvec;
struct fuse_lowlevel_ops;
struct iovec;
struct qf_fs_rd;

/* ll_ops.c: the operations handed to the session. */
const struct fuse_lowlevel_ops *qf_fs_ops(void);

/* ll_assemble.c: a read's segments as a buffer vector (malloc'd). */
int qf_ll_bufvec(const struct qf_fs_rd *rd, struct fuse_bufvec **out);

/* ll_passthrough.c: backing files for pt.c, installed as fs->kern */
extern const struct qf_fs_kernel qf_ll_kernel;
/* A request arrived on this thread (the kernel I/O hook's read). */
void qf_ll_pt_request(uint64_t unique, uint32_t opcode);
/* The open reply this thread sends next passes through to backing_id. */
void qf_ll_pt_open(int backing_id);
/* A reply leaves this thread: the open reply gets the backing id. */
void qf_ll_pt_reply(struct iovec *iov, int count);

#endif /* QF_LL_H */
