/*
 * tools.h - the commands of mounts/ besides mount itself: cache
 * administration and warming variants ahead of time.
 */
#ifndef QF_TOOLS_H
#define QF_TOOLS_H

#include <stdint.h>

/* quantfs cache ls|du|rm|gc ...; returns the exit status. */
int qf_cmd_cache(int argc, char **argv);
/* quantfs warm PATH...; returns the exit status. */
int qf_cmd_warm(int argc, char **argv);
/* Why qf_mnt_parse_size() (opts.h) refused, for a message. */
const char *qf_size_error(int err);

/*
 * ", state, layer 3/6, eta 20 s" from the user.quantfs.progress xattr of
 * a variant directory; "" when it has none or it is not a layer job.
 */
void qf_progress_note(const char *dir, char *out, size_t cap);
/* "1.23 GiB", "4.56 MiB", "7.8 KiB", "12 B". */
void qf_human_size(uint64_t b, char *out, size_t cap);

#endif /* QF_TOOLS_H */
