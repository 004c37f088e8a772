/*
 * main.c - the quantfs program: command line, mount lifecycle, helpers.
 *
 *   quantfs mount SRC MNT [-f] [-d] [-o opt,...]
 *   quantfs umount MNT
 *   quantfs mkmodel DIR [--hidden N] [--inter N] [--layers N] ...
 *
 * Thin: it parses options and wires fs/ to a FUSE session.  The only
 * place that calls exit().
 */
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/xattr.h>

#include <cjson/cJSON.h>
#include <unistd.h>

#include "common.h"
#include "fs.h"
#include "opts.h"
#include "quant.h"
#include "report.h"
#include "tools.h"

static const char usage_text[] =
	"usage: quantfs mount [SRC] MNT [-f] [-d] [-o OPTION[,OPTION...]]\n"
	"       quantfs umount MNT\n"
	"       quantfs mkmodel DIR [--hidden N] [--inter N] [--layers N]\n"
	"                       [--heads N] [--kv-heads N] [--vocab N]\n"
	"                       [--head-dim N] [--seed N]\n"
	"                       [--dtype bf16|f16|f32] [--tie]\n"
	"                       [--arch MODEL_TYPE] [--experts N] [--topk K]\n"
	"                       [--moe-inter N]\n"
	"       quantfs rotate SRC DST [--seed N]\n"
	"       quantfs status MNT [--json]\n"
	"       quantfs eval DIR --text FILE [--ctx N] [--json]\n"
	"                    [--scores-vs SRC [--windows N] | --kld-vs SRC]\n"
	"                    [--ids-out FILE]\n"
	"       quantfs generate DIR --prompt TEXT [-n N] [--ids]\n"
	"       quantfs report MNT/MODEL --text FILE [--variants A,B,...]\n"
	"                      [--choices FILE.jsonl [--limit N]] [--ctx N]\n"
	"                      [-o REPORT.md] [--cache DIR] [--kld]\n"
	"       quantfs warm PATH...\n"
	"       quantfs cache ls|du|rm SELECTOR...|gc --max-size SIZE\n"
	"                     [--cache DIR] [--json]\n"
	"       quantfs cache ls|rm SELECTOR...|gc --remote s3://BUCKET[/PREFIX]\n"
	"                     [--endpoint URL] [--region R] [--credentials FILE]\n"
	"                     [--json] [--grace SECONDS] [--dry-run]\n"
	"       mount.quantfs SRC MNT [-o OPTION[,OPTION...]]  (fstab)\n"
	"       quantfs --help | --version\n"
	"\n"
	"mount options (each value checked: a bad or unknown one refuses the\n"
	"mount with exit status 2; relative paths, SRC and MNT included, are\n"
	"taken from the directory quantfs mount runs in):\n"
	"  -f                 stay in the foreground (log to stderr)\n"
	"  -d                 foreground with FUSE debug output\n"
	"  -o cache=DIR       cache directory (default /var/cache/quantfs,\n"
	"                     the machine's shared cache, for root and its\n"
	"                     group; else $XDG_CACHE_HOME/quantfs or\n"
	"                     ~/.cache/quantfs)\n"
	"  -o cache_map=SIZE  initial LMDB map size, 1M to 16T, e.g. 256M,\n"
	"                     4G (grows)\n"
	"  -o timeout=SEC     entry/attribute timeout, a finite number above\n"
	"                     0 and at most 1e9 (default 86400)\n"
	"  -o threads=N       most FUSE worker threads, 1 to 1024 (default\n"
	"                     16)\n"
	"  -o io=auto|direct|cache\n"
	"                     auto (default): kernel passthrough to source\n"
	"                     files and to read files of cached variants\n"
	"                     (Linux 6.9+, root), else as direct; direct:\n"
	"                     large files use direct_io + splice where the\n"
	"                     kernel still allows mmap of them (Linux 6.6+);\n"
	"                     cache: always the page cache\n"
	"  -o calib=FILE      calibration text for gptq (default: sequences\n"
	"                     sampled from the model itself); must be\n"
	"                     readable at mount\n"
	"  -o calib_dir=DIR   sets for the @NAME suffix: DIR/NAME.txt; must\n"
	"                     exist at mount\n"
	"  -o calib_n=N       calibration sequences, 1 to 65536 (default 32)\n"
	"  -o calib_len=N     tokens per sequence, 2 to 131072 (default 256)\n"
	"  -o calib_seed=N    seed of sampled sets, a decimal 64-bit integer\n"
	"                     (default 0)\n"
	"  -o calib_mem=SIZE  activations calibration may hold (default 3G);\n"
	"                     beyond it tokens go through each layer in\n"
	"                     chunks of sequences\n"
	"  -o backend=B       cpu, cuda or auto (default): where calibrated\n"
	"                     variants are computed\n"
	"  -o brecq_iters=N   BRECQ Adam steps per block, 0 to 1000000\n"
	"                     (default 200; 0: round to nearest on the same\n"
	"                     grids)\n"
	"  -o brecq_batch=N   BRECQ sequences per step, 1 to 4096 (default 2)\n"
	"  -o mixed_table=T   mixed_static widths by role, e.g.\n"
	"                     attn=8:mlp=4:other=8\n"
	"  -o mixed_roles=R   role overrides: GLOB=ROLE[:GLOB=ROLE...]\n"
	"  -o mixed_ratio=R   mixed_dyn policy, e.g. high=0.2:low=0.4:\n"
	"                     bits_high=16:bits_mid=8:bits_low=4\n"
	"  -o max_jobs=N      calibrated variants produced at once, 1 to 64\n"
	"                     (default 1; more wait, queued)\n"
	"  -o max_productions=N\n"
	"                     tensor groups and variant setups produced at\n"
	"                     once by readers, 1 to 1024 (default: one per\n"
	"                     CPU; more wait, users with fewer running first)\n"
	"  -o cache_max=SIZE|auto|none\n"
	"                     before writing to the cache, evict least\n"
	"                     recently used variants above SIZE (at most\n"
	"                     1024T) of values and read files; auto\n"
	"                     (default): half the cache's filesystem, and a\n"
	"                     tenth of it always left free (else ENOSPC);\n"
	"                     none or 0: no bound\n"
	"  -o remote=s3://BUCKET[/PREFIX]\n"
	"                     a remote tier a fleet shares: variants made\n"
	"                     anywhere served everywhere, verified (see\n"
	"                     quantfs(1), REMOTE TIER); credentials from\n"
	"                     AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or a\n"
	"                     0600 file, never from options\n"
	"  -o remote_endpoint=URL  http(s)://HOST[:PORT] (default\n"
	"                     AWS_ENDPOINT_URL_S3, AWS_ENDPOINT_URL, AWS)\n"
	"  -o remote_region=R  signed region (default AWS_REGION, us-east-1)\n"
	"  -o remote_credentials=FILE\n"
	"                     AWS credentials file, mode 0600 (default\n"
	"                     ~/.aws/credentials when the environment has none)\n"
	"  -o remote_role=produce|cheap|read\n"
	"                     produce (default): make and publish everything;\n"
	"                     cheap: only uncalibrated variants; read: never\n"
	"                     write, never take a lease\n"
	"  -o remote_lease=SEC  a calibrated job's lease (default 60): a\n"
	"                     producer silent that long is taken over\n"
	"  -o allow_other     let other users read the mount (every mount has\n"
	"                     default_permissions: the kernel checks the\n"
	"                     modes shown for every user)\n"
	"  -o debug           log debug lines\n"
	"  FUSE's allow_root, auto_unmount, max_read=N, fsname=, subtype=,\n"
	"  user= and SELinux context options are passed to FUSE (see\n"
	"  mount.fuse3(8)); fstab words (defaults, noauto, nofail, _netdev,\n"
	"  x-*, comment=, ...) are ignored\n"
	"\n"
	"See quantfs(1) and quantfs-variants(7).\n";

static void usage(FILE *f)
{
	fputs(usage_text, f);
}

/* One -o list into mo; says why on stderr when it is refused. */
static int parse_o(struct qf_mnt_opts *mo, const char *list, const char *cwd)
{
	char why[512];
	int ret;

	ret = qf_mnt_opts_parse(mo, list, cwd, why, sizeof(why));
	if (ret < 0)
		fprintf(stderr, "quantfs: %s\n", why);
	return ret;
}

/*
 * A mount point whose daemon died answers ENOTCONN: detach it (lazily,
 * so processes still inside it do not block us) before mounting again.
 * Refuse a mount point that is a live quantfs mount.
 */
static int check_mountpoint(const char *mnt)
{
	struct stat st;
	pid_t pid;
	int status;

	/* stat may answer from cached attributes; getxattr always asks
	 * the daemon */
	if (stat(mnt, &st) == 0) {
		if (getxattr(mnt, "user.quantfs.status", NULL, 0) >= 0) {
			fprintf(stderr, "quantfs: '%s' is already a quantfs "
				"mount\n", mnt);
			return -EBUSY;
		}
	}
	if (errno != ENOTCONN)
		return 0;	/* fuse_session_mount() says what is wrong */
	fprintf(stderr, "quantfs: '%s' is a stale mount (its daemon is gone): "
		"detaching it\n", mnt);
	if (geteuid() == 0)
		return umount2(mnt, MNT_DETACH) == 0 ? 0 : -errno;
	pid = fork();
	if (pid == 0) {
		execlp("fusermount3", "fusermount3", "-u", "-z", mnt,
		       (char *)NULL);
		_exit(127);
	}
	if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) ||
	    WEXITSTATUS(status))
		return -EIO;
	return 0;
}

/*
 * The calibration text and folder must be there when the mount starts:
 * a missing one would otherwise surface as EIO at the first calibrated
 * variant.  Opened, not stat'ed, so the check is the daemon's own right
 * to read them.
 */
static int check_calib(const struct qf_mnt_opts *mo)
{
	struct stat st;
	int fd;

	/* opened as the daemon will: the link rule, never a FIFO */
	if (mo->calib) {
		fd = qf_src_open_path(mo->calib, 0, &st);
		if (fd < 0) {
			fprintf(stderr, "quantfs: calib=%s: %s\n", mo->calib,
				qf_strerror(fd));
			return fd;
		}
		close(fd);
	}
	if (mo->calib_dir) {
		fd = open(mo->calib_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd < 0) {
			fd = -errno;
			fprintf(stderr, "quantfs: calib_dir=%s: %s\n",
				mo->calib_dir, strerror(-fd));
			return fd;
		}
		close(fd);
	}
	return 0;
}

/*
 * SRC and MNT made absolute against the working directory before the
 * daemon detaches (and changes to /): libfuse unmounts by that name.
 */
static int resolve_args(const char *const pos[2], const char *cwd,
			char *abs[2])
{
	int i;

	for (i = 0; i < 2; i++) {
		abs[i] = qf_mnt_abspath(pos[i], cwd);
		if (!abs[i]) {
			fprintf(stderr, "quantfs: '%s': %s\n", pos[i],
				pos[i][0] == '/' ? "out of memory" :
				"a relative path, and the working directory "
				"is unknown");
			return -EINVAL;
		}
	}
	return 0;
}

/* The Hugging Face hub cache, where huggingface_hub keeps models:
 * $HF_HUB_CACHE, $HF_HOME/hub, or ~/.cache/huggingface/hub. */
static const char *hub_cache(struct qf_buf *b)
{
	const char *v = getenv("HF_HUB_CACHE"), *home = getenv("HOME");

	if (v && *v)
		qf_buf_adds(b, v);
	else if ((v = getenv("HF_HOME")) && *v)
		qf_buf_addf(b, "%s/hub", v);
	else
		qf_buf_addf(b, "%s/.cache/huggingface/hub", home ? home : "");
	return b->data ? b->data : "";
}

/*
 * quantfs mount [SRC] MNT [-f] [-d] [-o ...], or as a mount helper
 * (helper: mount(8) running mount.quantfs, or mount.fuse3 running
 * `quantfs SRC MNT -o ...` for type fuse.quantfs), where -f means "fake"
 * and -s, -n, -v, -t TYPE, -N NS may appear.  Returns the exit status:
 * 2 for a usage error or a refused option.
 */
static int cmd_mount(int argc, char **argv, bool helper)
{
	struct qf_buf hub = QF_BUF_INIT;
	struct qf_mnt_opts mo;
	char cwdbuf[PATH_MAX];
	const char *pos[2];
	const char *cwd;
	char *abs[2] = { NULL, NULL };
	struct qf_fs *fs;
	bool fake = false;
	bool foreground = false;
	bool fuse_debug = false;
	int npos = 0, i, ret = 2;

	cwd = getcwd(cwdbuf, sizeof(cwdbuf));
	if (qf_mnt_opts_init(&mo) < 0) {
		fprintf(stderr, "quantfs: out of memory\n");
		ret = 1;
		goto out_opts;
	}
	for (i = 1; i < argc; i++) {
		if (helper && (!strcmp(argv[i], "-s") ||
			       !strcmp(argv[i], "-n") ||
			       !strcmp(argv[i], "-v"))) {
			continue;
		} else if (helper && (!strcmp(argv[i], "-t") ||
				      !strcmp(argv[i], "-N")) &&
			   i + 1 < argc) {
			i++;
		} else if (!strcmp(argv[i], "-f")) {
			if (helper)
				fake = true;
			else
				foreground = true;
		} else if (!strcmp(argv[i], "-d")) {
			foreground = fuse_debug = true;
		} else if (!strcmp(argv[i], "-o") && i + 1 < argc) {
			if (parse_o(&mo, argv[++i], cwd) < 0)
				goto out_opts;
		} else if (!strncmp(argv[i], "-o", 2) && argv[i][2]) {
			if (parse_o(&mo, argv[i] + 2, cwd) < 0)
				goto out_opts;
		} else if (argv[i][0] == '-' || npos == 2) {
			fprintf(stderr, "quantfs: unexpected argument '%s'\n",
				argv[i]);
			usage(stderr);
			goto out_opts;
		} else {
			pos[npos++] = argv[i];
		}
	}
	if (npos == 1 && !helper) {	/* quantfs mount MNT: the hub cache */
		pos[1] = pos[0];
		pos[0] = hub_cache(&hub);
		npos = 2;
	}
	if (npos != 2) {
		usage(stderr);
		goto out_opts;
	}
	if (resolve_args(pos, cwd, abs) < 0 || check_calib(&mo) < 0)
		goto out_opts;
	ret = 0;
	if (fake)
		goto out_opts;
	if (mo.rw)	/* mount(8) adds rw unless told ro */
		fprintf(stderr, "quantfs: the mount is read-only; 'rw' "
			"ignored\n");
	if (mo.debug)
		qf_log_set_level(QF_LOG_DEBUG);
	ret = 1;
	if (check_mountpoint(abs[1]) < 0)
		goto out_opts;
	mo.fs.src = abs[0];
	ret = qf_fs_new(&mo.fs, &fs);
	if (ret < 0) {
		fprintf(stderr, "quantfs: cannot serve '%s': %s\n", pos[0],
			qf_strerror(ret));
		ret = 1;
		goto out_opts;
	}
	ret = qf_fs_run(fs, abs[1], mo.fuse.data, foreground, fuse_debug,
			mo.threads);
	qf_fs_free(fs);
out_opts:
	free(abs[0]);
	free(abs[1]);
	qf_buf_release(&hub);
	qf_mnt_opts_free(&mo);
	return ret;
}

static int cmd_umount(int argc, char **argv)
{
	pid_t pid;
	int status;

	if (argc != 2) {
		usage(stderr);
		return 2;
	}
	if (geteuid() == 0) {
		if (umount2(argv[1], 0) == 0)
			return 0;
		fprintf(stderr, "quantfs: cannot unmount '%s': %s\n", argv[1],
			strerror(errno));
		return 1;
	}
	pid = fork();
	if (pid == 0) {
		execlp("fusermount3", "fusermount3", "-u", argv[1],
		       (char *)NULL);
		_exit(127);
	}
	if (pid < 0 || waitpid(pid, &status, 0) < 0)
		return 1;
	return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}

static int cmd_mkmodel(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "hidden", required_argument, NULL, 'h' },
		{ "inter", required_argument, NULL, 'i' },
		{ "layers", required_argument, NULL, 'l' },
		{ "heads", required_argument, NULL, 'a' },
		{ "kv-heads", required_argument, NULL, 'k' },
		{ "vocab", required_argument, NULL, 'v' },
		{ "seed", required_argument, NULL, 's' },
		{ "dtype", required_argument, NULL, 't' },
		{ "tie", no_argument, NULL, 'T' },
		{ "head-dim", required_argument, NULL, 'H' },
		{ "arch", required_argument, NULL, 'A' },
		{ "experts", required_argument, NULL, 'E' },
		{ "topk", required_argument, NULL, 'K' },
		{ "moe-inter", required_argument, NULL, 'M' },
		{ NULL, 0, NULL, 0 },
	};
	struct qf_mkmodel_opts o;
	int c, ret;

	qf_mkmodel_defaults(&o);
	optind = 1;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 'h': o.hidden = atoi(optarg); break;
		case 'i': o.inter = atoi(optarg); break;
		case 'l': o.layers = atoi(optarg); break;
		case 'a': o.heads = atoi(optarg); break;
		case 'k': o.kv_heads = atoi(optarg); break;
		case 'v': o.vocab = atoi(optarg); break;
		case 's': o.seed = strtoull(optarg, NULL, 0); break;
		case 'T': o.tie = true; break;
		case 'H': o.head_dim = atoi(optarg); break;
		case 'E': o.experts = atoi(optarg); break;
		case 'K': o.topk = atoi(optarg); break;
		case 'M': o.moe_inter = atoi(optarg); break;
		case 'A':
			if (!qf_arch_find(optarg)) {
				char names[256];

				qf_arch_names(names, sizeof(names));
				fprintf(stderr, "quantfs: mkmodel: --arch '%s' "
					"is none of %s\n", optarg, names);
				return 2;
			}
			o.arch = optarg;
			break;
		case 't':
			if (!strcmp(optarg, "bf16"))
				o.dtype = QF_DT_BF16;
			else if (!strcmp(optarg, "f16"))
				o.dtype = QF_DT_F16;
			else if (!strcmp(optarg, "f32"))
				o.dtype = QF_DT_F32;
			else
				o.dtype = QF_DT_COUNT;
			break;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc - 1) {
		usage(stderr);
		return 2;
	}
	ret = qf_mkmodel_write(argv[optind], &o);
	if (ret < 0) {
		fprintf(stderr, "quantfs: mkmodel '%s': %s\n", argv[optind],
			ret == -EINVAL ? "invalid shape options" :
					 qf_strerror(ret));
		return 1;
	}
	return 0;
}

/*
 * Greedy text from a model directory (a source or a mounted variant):
 * shows what a quantization did to the model's output.  Recomputes the
 * whole sequence per token: meant for small models and short texts.
 */
/*
 * The ids generation stops at: generation_config.json's eos_token_id (an
 * id or a list: Gemma 3 ends a turn with <end_of_turn>, not <eos>), else
 * config.json's, and always the tokenizer's end token.  Into ids[cap].
 */
static int stop_ids(const struct qf_model *m, const struct qf_tok *tok,
		    int32_t *ids, int cap)
{
	struct qf_buf b = QF_BUF_INIT;
	cJSON *gc = NULL, *e, *it;
	int n = 0;

	ids[n++] = qf_tok_eos(tok);
	if (!qf_src_read(m->dirfd, "generation_config.json", 1 << 20, &b))
		gc = cJSON_ParseWithLength(b.data ? b.data : "", b.len);
	qf_buf_release(&b);
	e = cJSON_GetObjectItem(gc, "eos_token_id");
	if (!e)
		e = cJSON_GetObjectItem(m->config, "eos_token_id");
	if (cJSON_IsNumber(e) && n < cap)
		ids[n++] = (int32_t)e->valuedouble;
	if (cJSON_IsArray(e))
		cJSON_ArrayForEach(it, e)
			if (cJSON_IsNumber(it) && n < cap)
				ids[n++] = (int32_t)it->valuedouble;
	cJSON_Delete(gc);
	return n;
}

static int cmd_generate(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "prompt", required_argument, NULL, 'p' },
		{ "ids", no_argument, NULL, 'i' },
		{ NULL, 0, NULL, 0 },
	};
	struct qf_buf text = QF_BUF_INIT;
	struct qf_tf_config cfg;
	struct qf_model *m = NULL;
	struct qf_tok *tok = NULL;
	const char *prompt = NULL, *why = NULL;
	int32_t *ids = NULL, *grown;
	float *lg = NULL;
	size_t n = 0, i;
	bool show_ids = false;
	int steps = 64, c, k, ret, nstop = 0;
	int32_t stop[8];

	optind = 1;
	while ((c = getopt_long(argc, argv, "n:", lo, NULL)) != -1) {
		switch (c) {
		case 'p': prompt = optarg; break;
		case 'n': steps = atoi(optarg); break;
		case 'i': show_ids = true; break;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc - 1 || !prompt || steps < 1 || steps > 4096) {
		usage(stderr);
		return 2;
	}
	ret = qf_model_open(argv[optind], &m);
	if (!ret)
		ret = qf_tf_config_parse(m, &cfg);
	if (!ret)
		ret = qf_model_tokenizer(m, &tok, &why);
	if (!ret)
		ret = qf_tok_encode(tok, prompt, strlen(prompt), true, &ids, &n);
	if (!ret)
		nstop = stop_ids(m, tok, stop, 8);
	for (k = 0; k < steps && !ret; k++) {
		int32_t best = 0;

		grown = realloc(ids, (n + 1) * sizeof(*ids));
		lg = realloc(lg, n * (size_t)cfg.vocab * sizeof(*lg));
		if (!grown || !lg) {
			ids = grown ? grown : ids;
			ret = -ENOMEM;
			break;
		}
		ids = grown;
		ret = qf_tf_logits(m, &cfg, ids, 1, (int)n, lg);
		for (c = 1; !ret && c < cfg.vocab; c++)
			if (lg[(n - 1) * cfg.vocab + c] >
			    lg[(n - 1) * cfg.vocab + best])
				best = c;
		ids[n++] = best;
		for (c = 0; c < nstop && best != stop[c]; c++)
			;
		if (c < nstop)
			break;
	}
	if (!ret)
		ret = qf_tok_decode(tok, ids, n, true, &text);
	if (ret < 0) {
		fprintf(stderr, "quantfs: generate '%s': %s\n", argv[optind],
			why ? why : qf_strerror(ret));
	} else if (show_ids) {
		for (i = 0; i < n; i++)
			printf("%s%d", i ? " " : "", ids[i]);
		printf("\n");
	} else {
		printf("%s\n", text.data ? text.data : "");
	}
	free(ids);
	free(lg);
	qf_tok_close(tok);
	qf_model_close(m);
	qf_buf_release(&text);
	return ret < 0 ? 1 : 0;
}

/* The remote tier's line of `quantfs status`, when the mount has one. */
static void remote_line(const char *mnt)
{
	char buf[2048];
	ssize_t n = getxattr(mnt, "user.quantfs.remote", buf, sizeof(buf) - 1);
	cJSON *o;

	if (n <= 0)
		return;
	buf[n] = 0;
	o = cJSON_Parse(buf);
	printf("remote tier %s: role %s, %s; requests GET %.0f HEAD %.0f "
	       "PUT %.0f LIST %.0f; values imported %.0f, published %.0f, "
	       "failed verification %.0f\n\n",
	       cJSON_GetStringValue(cJSON_GetObjectItem(o, "bucket")),
	       cJSON_GetStringValue(cJSON_GetObjectItem(o, "role")),
	       cJSON_IsTrue(cJSON_GetObjectItem(o, "down")) ?
	       "NOT ANSWERING (serving local production)" : "answering",
	       cJSON_GetNumberValue(cJSON_GetObjectItem(o, "get")),
	       cJSON_GetNumberValue(cJSON_GetObjectItem(o, "head")),
	       cJSON_GetNumberValue(cJSON_GetObjectItem(o, "put")),
	       cJSON_GetNumberValue(cJSON_GetObjectItem(o, "list")),
	       cJSON_GetNumberValue(cJSON_GetObjectItem(o, "imported")),
	       cJSON_GetNumberValue(cJSON_GetObjectItem(o, "published")),
	       cJSON_GetNumberValue(cJSON_GetObjectItem(o, "bad")));
	cJSON_Delete(o);
}

/* Calibrated jobs of a mount, from the root's user.quantfs.status. */
static int cmd_status(int argc, char **argv)
{
	bool json = argc == 3 && !strcmp(argv[2], "--json");
	cJSON *root, *it;
	char *buf;
	ssize_t n;

	if (argc != 2 && !json) {
		usage(stderr);
		return 2;
	}
	n = getxattr(argv[1], "user.quantfs.status", NULL, 0);
	if (n < 0 || !(buf = calloc(1, (size_t)n + 1))) {
		fprintf(stderr, "quantfs: '%s' is not a quantfs mount: %s\n",
			argv[1], strerror(errno));
		return 1;
	}
	n = getxattr(argv[1], "user.quantfs.status", buf, (size_t)n);
	root = n > 0 ? cJSON_Parse(buf) : NULL;
	if (json || !root) {
		fputs(buf, stdout);
	} else {
		remote_line(argv[1]);
		printf("%-40s %-30s %8s %9s %8s  %s\n", "VARIANT", "STATE",
		       "LAYERS", "ELAPSED", "ETA", "PRODUCER");
		cJSON_ArrayForEach(it, root) {
			char name[256], lay[32], el[32], eta[32];
			cJSON *e = cJSON_GetObjectItem(it, "eta_s");
			const char *p;

			snprintf(name, sizeof(name), "%s/%s",
				 cJSON_GetStringValue(cJSON_GetObjectItem(it, "model")),
				 cJSON_GetStringValue(cJSON_GetObjectItem(it, "variant")));
			snprintf(lay, sizeof(lay), "%d/%d",
				 cJSON_GetObjectItem(it, "layers_done")->valueint,
				 cJSON_GetObjectItem(it, "layers")->valueint);
			snprintf(el, sizeof(el), "%.0f s",
				 cJSON_GetNumberValue(cJSON_GetObjectItem(it, "elapsed_s")));
			if (cJSON_IsNumber(e))
				snprintf(eta, sizeof(eta), "%.0f s", e->valuedouble);
			else
				snprintf(eta, sizeof(eta), "-");
			p = cJSON_GetStringValue(cJSON_GetObjectItem(it,
								     "producer"));
			printf("%-40s %-30s %8s %9s %8s  %s\n", name,
			       cJSON_GetStringValue(cJSON_GetObjectItem(it, "state")),
			       lay, el, eta, p ? p : "this machine");
		}
	}
	cJSON_Delete(root);
	free(buf);
	return 0;
}

/* quantfs eval VARIANT --scores-vs SRC: attention-score error per layer. */
static int eval_scores(const char *dir, const char *src, const char *tfile,
		       int ctx, int windows, bool json)
{
	struct qf_buf text = QF_BUF_INIT;
	struct qf_model *m = NULL, *s = NULL;
	struct qf_tf_config c;
	struct qf_tok *tok = NULL;
	const char *why = NULL;
	double *err = NULL, mean = 0;
	int l, ret;

	ret = qf_read_file(tfile, 1u << 30, &text);
	if (!ret)
		ret = qf_model_open(dir, &m);
	if (!ret)
		ret = qf_model_open(src, &s);
	if (!ret)
		ret = qf_model_tokenizer(s, &tok, &why);
	if (!ret)
		ret = qf_tf_config_parse(s, &c);
	if (!ret && !(err = calloc((size_t)c.layers, sizeof(*err))))
		ret = -ENOMEM;
	if (!ret)
		ret = qf_eval_scores(s, m, tok, text.data, text.len, ctx,
				     windows, err);
	if (ret < 0) {
		fprintf(stderr, "quantfs: eval '%s' --scores-vs '%s': %s\n",
			dir, src, ret == -EINVAL ? "text too short for the "
			"windows" : why ? why : qf_strerror(ret));
	} else {
		for (l = 0; l < c.layers; l++)
			mean += err[l] / c.layers;
		if (json) {
			printf("{\"model\": \"%s\", \"source\": \"%s\", "
			       "\"windows\": %d, \"ctx\": %d, "
			       "\"score_error\": [", dir, src, windows, ctx);
			for (l = 0; l < c.layers; l++)
				printf("%s%.6e", l ? ", " : "", err[l]);
			printf("], \"mean\": %.6e}\n", mean);
		} else {
			printf("relative attention-score error (pre-RoPE, %d "
			       "windows of %d tokens) of %s vs %s\n", windows,
			       ctx, dir, src);
			for (l = 0; l < c.layers; l++)
				printf("  layer %2d  %.6e\n", l, err[l]);
			printf("  mean      %.6e\n", mean);
		}
	}
	free(err);
	qf_tok_close(tok);
	qf_model_close(m);
	qf_model_close(s);
	qf_buf_release(&text);
	return ret < 0 ? 1 : 0;
}

/* The text's token ids as eval sees them, for other tools to compare:
 * {"bos": ID or -1, "ids": [...]}. */
static int write_ids(const struct qf_tok *tok, const struct qf_buf *text,
		     const char *path)
{
	int32_t *ids = NULL;
	size_t n = 0, i;
	FILE *f;
	int ret;

	ret = qf_tok_encode(tok, text->data, text->len, false, &ids, &n);
	if (ret < 0)
		return ret;
	f = fopen(path, "w");
	if (!f) {
		ret = -errno;
		free(ids);
		return ret;
	}
	fprintf(f, "{\"bos\": %d, \"ids\": [", qf_tok_bos(tok));
	for (i = 0; i < n; i++)
		fprintf(f, "%s%d", i ? "," : "", ids[i]);
	fprintf(f, "]}\n");
	ret = fclose(f) ? -errno : 0;
	free(ids);
	return ret;
}

/* Perplexity of a model directory (a source, or a mounted variant). */
static int cmd_eval(int argc, char **argv)
{
	static const struct option lo[] = {
		{ "text", required_argument, NULL, 't' },
		{ "ctx", required_argument, NULL, 'c' },
		{ "json", no_argument, NULL, 'j' },
		{ "scores-vs", required_argument, NULL, 's' },
		{ "windows", required_argument, NULL, 'w' },
		{ "ids-out", required_argument, NULL, 'o' },
		{ "kld-vs", required_argument, NULL, 'k' },
		{ NULL, 0, NULL, 0 },
	};
	struct qf_buf text = QF_BUF_INIT;
	struct qf_eval_result r;
	const char *ids_out = NULL;
	struct qf_model *m = NULL, *ref = NULL;
	struct qf_tok *tok = NULL;
	const char *tfile = NULL, *why = NULL, *vs = NULL, *kvs = NULL;
	bool json = false;
	int ctx = 512, windows = 4, c, ret;

	optind = 1;
	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 't': tfile = optarg; break;
		case 'c': ctx = atoi(optarg); break;
		case 'j': json = true; break;
		case 's': vs = optarg; break;
		case 'w': windows = atoi(optarg); break;
		case 'o': ids_out = optarg; break;
		case 'k': kvs = optarg; break;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc - 1 || !tfile || ctx < 2 || windows < 1 ||
	    (vs && kvs)) {
		usage(stderr);
		return 2;
	}
	if (vs)
		return eval_scores(argv[optind], vs, tfile, ctx, windows, json);
	ret = qf_read_file(tfile, 1u << 30, &text);
	if (ret < 0) {
		fprintf(stderr, "quantfs: cannot read '%s': %s\n", tfile,
			qf_strerror(ret));
		return 1;
	}
	ret = qf_model_open(argv[optind], &m);
	if (!ret) {
		ret = qf_model_tokenizer(m, &tok, &why);
		if (ret < 0)
			fprintf(stderr, "quantfs: %s/tokenizer.json: %s\n",
				m->dir, why ? why : qf_strerror(ret));
	}
	if (!ret && kvs && (ret = qf_model_open(kvs, &ref)) < 0)
		fprintf(stderr, "quantfs: eval --kld-vs '%s': %s\n", kvs,
			qf_strerror(ret));
	if (!ret && ids_out)
		ret = write_ids(tok, &text, ids_out);
	if (!ret)
		ret = ref ? qf_eval_kld(m, ref, tok, text.data, text.len, ctx,
					&r) :
			    qf_eval_ppl(m, tok, text.data, text.len, ctx, &r);
	if (ret < 0) {
		fprintf(stderr, "quantfs: eval '%s': %s\n", argv[optind],
			ret == -EINVAL ? "text too short for one window" :
			ref && ret == QF_EFORMAT ? "the reference's vocabulary "
			"or hidden width differs" : qf_strerror(ret));
	} else if (json) {
		printf("{\"model\": \"%s\", \"text\": \"%s\", "
		       "\"protocol\": \"non-overlapping windows of %d tokens, "
		       "BOS + %d\", \"windows\": %d, \"tokens\": %lld, "
		       "\"nll\": %.6f, \"ppl\": %.4f, \"weight_bytes\": %llu, ",
		       m->dir, tfile, r.ctx, r.ctx - 1, r.windows,
		       (long long)r.tokens, r.nll, r.ppl,
		       (unsigned long long)r.weight_bytes);
		if (ref)
			printf("\"reference\": \"%s\", \"ref_nll\": %.6f, "
			       "\"ref_ppl\": %.4f, \"kld\": %.6e, "
			       "\"same_top1\": %.6f, ", ref->dir, r.ref_nll,
			       exp(r.ref_nll), r.kld, r.top1);
		printf("\"seconds\": %.3f, \"tokens_per_s\": %.1f}\n",
		       r.seconds, r.tokens / r.seconds);
	} else {
		printf("%-12s %s\n", "model", m->dir);
		printf("%-12s %s (%zu bytes)\n", "text", tfile, text.len);
		printf("%-12s non-overlapping windows of %d tokens (BOS + "
		       "%d), %d windows\n", "protocol", r.ctx, r.ctx - 1,
		       r.windows);
		printf("%-12s %lld\n", "tokens", (long long)r.tokens);
		printf("%-12s %.6f nats/token\n", "mean nll", r.nll);
		printf("%-12s %.4f\n", "perplexity", r.ppl);
		printf("%-12s %llu\n", "weight bytes",
		       (unsigned long long)r.weight_bytes);
		if (ref) {
			printf("%-12s %s, perplexity %.4f\n", "reference",
			       ref->dir, exp(r.ref_nll));
			printf("%-12s %.6e nats/token (KL(reference || "
			       "model))\n", "mean KLD", r.kld);
			printf("%-12s %.4f %%\n", "same top-1", 100 * r.top1);
		}
		printf("%-12s %.2f s (%.0f tokens/s)\n", "wall time",
		       r.seconds, r.tokens / r.seconds);
	}
	qf_tok_close(tok);
	qf_model_close(m);
	qf_model_close(ref);
	qf_buf_release(&text);
	return ret < 0 ? 1 : 0;
}

int main(int argc, char **argv)
{
	const char *prog = strrchr(argv[0], '/');

	qf_blas_fix_kernels(argv);
	prog = prog ? prog + 1 : argv[0];
	/* mount(8) helper, or mount.fuse3 for type fuse.quantfs */
	if (!strcmp(prog, "mount.quantfs") ||
	    (argc >= 3 && argv[1][0] == '/' && argv[2][0] == '/'))
		exit(cmd_mount(argc, argv, true));
	if (argc < 2) {
		usage(stderr);
		exit(2);
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		usage(stdout);
		exit(0);
	}
	if (!strcmp(argv[1], "--version")) {
		printf("quantfs %s\n", QF_VERSION);
		exit(0);
	}
	if (!strcmp(argv[1], "mount"))
		exit(cmd_mount(argc - 1, argv + 1, false));
	if (!strcmp(argv[1], "cache"))
		exit(qf_cmd_cache_is_remote(argc - 1, argv + 1) ?
		     qf_cmd_cache_remote(argc - 1, argv + 1) :
		     qf_cmd_cache(argc - 1, argv + 1));
	if (!strcmp(argv[1], "warm"))
		exit(qf_cmd_warm(argc - 1, argv + 1));
	if (!strcmp(argv[1], "umount"))
		exit(cmd_umount(argc - 1, argv + 1));
	if (!strcmp(argv[1], "mkmodel"))
		exit(cmd_mkmodel(argc - 1, argv + 1));
	if (!strcmp(argv[1], "rotate"))
		exit(qf_cmd_rotate(argc - 1, argv + 1));
	if (!strcmp(argv[1], "eval"))
		exit(cmd_eval(argc - 1, argv + 1));
	if (!strcmp(argv[1], "status"))
		exit(cmd_status(argc - 1, argv + 1));
	if (!strcmp(argv[1], "generate"))
		exit(cmd_generate(argc - 1, argv + 1));
	if (!strcmp(argv[1], "report"))
		exit(qf_cmd_report(argc - 1, argv + 1));
	fprintf(stderr, "quantfs: unknown command '%s'\n", argv[1]);
	usage(stderr);
	exit(2);
}
