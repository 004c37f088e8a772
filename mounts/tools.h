/*
 * tools.h - the commands of mounts/ besides mount itself: cache
 * administration and warming variants ahead of time.
 */
#ifndef QF_TOOLS_H
#define QF_TOOLS_H

#include <stdbool.h>
#include <stdint.h>

/* quantfs cache ls|du|rm|gc ...; returns the exit status. */
int qf_cmd_cache(int argc, char **argv);
/* quantfs cache ls|rm|gc --remote URL ... (tools_remote.c): argv as
 * for qf_cmd_cache; returns the exit status. */
int qf_cmd_cache_remote(int argc, char **argv);
/* Does this `quantfs cache` command line name --remote? */
bool qf_cmd_cache_is_remote(int argc, char **argv);
/*
 * Does selector sel pick this id: an id prefix of 8 to 32 hex digits, or
 * a shell pattern matching "model/variant" or "model" (model and variant
 * NULL: an id without a record, matched by its id only)?
 */
bool qf_cache_selector_match(const char *sel, const char *id_hex,
			     const char *model, const char *variant);
/* quantfs warm PATH...; returns the exit status. */
int qf_cmd_warm(int argc, char **argv);
/* quantfs rotate SRC DST [--seed N]; returns the exit status. */
int qf_cmd_rotate(int argc, char **argv);
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
