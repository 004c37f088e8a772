/*
 * s3_date.c - the dates the S3 client reads from servers (see s3.h): the
 * HTTP Date and Last-Modified headers (RFC 7231 IMF-fixdate only, the
 * form every server sends) and the ISO 8601 times of listings.  Strict:
 * a date that does not parse is no date (0), never a guess, because lease
 * ages are computed from them.
 */
#include <ctype.h>
#include <string.h>
#include <time.h>

#include "s3.h"

/* n digits at s into *v, within [lo, hi] */
static bool digits(const char *s, int n, int lo, int hi, int *v)
{
	int i;

	*v = 0;
	for (i = 0; i < n; i++) {
		if (!isdigit((unsigned char)s[i]))
			return false;
		*v = *v * 10 + (s[i] - '0');
	}
	return *v >= lo && *v <= hi;
}

/* tm (UTC, fields already in range) into seconds; the day checked
 * against its month */
static int tm_seconds(struct tm *tm, double *out)
{
	int mday = tm->tm_mday;
	time_t t = timegm(tm);

	if (t == (time_t)-1 || tm->tm_mday != mday)
		return QF_EFORMAT;	/* 31 Feb normalized to March */
	*out = (double)t;
	return 0;
}

int qf_s3_parse_http_date(const char *s, size_t len, double *out)
{
	static const char days[] = "SunMonTueWedThuFriSat";
	static const char months[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
	struct tm tm = { 0 };
	const char *m;
	int wday, v;

	/* "Sun, 06 Nov 1994 08:49:37 GMT" */
	if (len != 29 || s[3] != ',' || s[4] != ' ' || s[7] != ' ' ||
	    s[11] != ' ' || s[16] != ' ' || s[19] != ':' || s[22] != ':' ||
	    memcmp(s + 25, " GMT", 4))
		return QF_EFORMAT;
	m = memmem(days, 21, s, 3);
	if (!m || (m - days) % 3)
		return QF_EFORMAT;
	wday = (int)(m - days) / 3;
	m = memmem(months, 36, s + 8, 3);
	if (!m || (m - months) % 3)
		return QF_EFORMAT;
	tm.tm_mon = (int)(m - months) / 3;
	if (!digits(s + 5, 2, 1, 31, &tm.tm_mday) ||
	    !digits(s + 12, 4, 1900, 9999, &v) ||
	    !digits(s + 17, 2, 0, 23, &tm.tm_hour) ||
	    !digits(s + 20, 2, 0, 59, &tm.tm_min) ||
	    !digits(s + 23, 2, 0, 60, &tm.tm_sec))
		return QF_EFORMAT;
	tm.tm_year = v - 1900;
	if (tm_seconds(&tm, out))
		return QF_EFORMAT;
	return tm.tm_wday == wday ? 0 : QF_EFORMAT;
}

int qf_s3_parse_iso8601(const char *s, size_t len, double *out)
{
	struct tm tm = { 0 };
	double frac = 0, scale = 0.1;
	size_t i;
	int v;

	/* "2009-10-12T17:50:30Z" or with ".000" before the Z */
	if (len < 20 || s[4] != '-' || s[7] != '-' || s[10] != 'T' ||
	    s[13] != ':' || s[16] != ':' || s[len - 1] != 'Z')
		return QF_EFORMAT;
	if (!digits(s, 4, 1900, 9999, &v) ||
	    !digits(s + 5, 2, 1, 12, &tm.tm_mon) ||
	    !digits(s + 8, 2, 1, 31, &tm.tm_mday) ||
	    !digits(s + 11, 2, 0, 23, &tm.tm_hour) ||
	    !digits(s + 14, 2, 0, 59, &tm.tm_min) ||
	    !digits(s + 17, 2, 0, 60, &tm.tm_sec))
		return QF_EFORMAT;
	if (len > 20) {
		if (s[19] != '.' || len == 21 || len > 30)
			return QF_EFORMAT;
		for (i = 20; i < len - 1; i++, scale /= 10) {
			if (!isdigit((unsigned char)s[i]))
				return QF_EFORMAT;
			frac += (s[i] - '0') * scale;
		}
	}
	tm.tm_year = v - 1900;
	tm.tm_mon--;
	if (tm_seconds(&tm, out))
		return QF_EFORMAT;
	*out += frac;
	return 0;
}
