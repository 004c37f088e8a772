/*
 * log.c - log lines to stderr, or to syslog once the daemon has detached.
 */
#include <pthread.h>
#include <stdio.h>
#include <syslog.h>
#include <time.h>

#include "common.h"

static enum qf_log_level log_level = QF_LOG_INFO;
static bool log_syslog;

void qf_log_set_level(enum qf_log_level lvl)
{
	log_level = lvl;
}

void qf_log_set_syslog(bool on)
{
	log_syslog = on;
}

void qf_log(enum qf_log_level lvl, const char *fmt, ...)
{
	static const int prio[] = { LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG };
	static const char *const tag[] = { "error: ", "warning: ", "", "debug: " };
	char line[1024];
	va_list ap;

	if (lvl > log_level)
		return;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (log_syslog)
		syslog(prio[lvl], "%s%s", tag[lvl], line);
	else
		fprintf(stderr, "quantfs: %s%s\n", tag[lvl], line);
}
