/*
 * test_s3.c - the S3 client's offline parts: the SigV4 signer against
 * AWS's published vectors, the ListObjectsV2 parser on hand-written and
 * hostile listings, the credentials loader (a temporary HOME), and the
 * date parsers.  No network: the client itself is tried against a real
 * radosgw by the cluster tests (tests/unit/s3_cli.c).
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"
#include "s3.h"
#include "sigv4.h"

#define EMPTY_SHA "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

/*
 * AWS's Signature Version 4 test suite (formerly at
 * https://docs.aws.amazon.com/general/latest/gr/signature-v4-test-suite.html),
 * as kept in bazelbuild/bazel third_party/aws-sig-v4-test-suite/<name>/
 * <name>.sreq (request and Authorization), .creq and .sts where present.
 * Credentials AKIDEXAMPLE / wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY,
 * us-east-1, service "service", 20150830T123600Z; these requests carry no
 * x-amz-content-sha256.
 *
 * The S3 examples: "Signature Calculations for the Authorization Header:
 * Transferring Payload in a Single Chunk (AWS Signature Version 4)",
 * https://docs.aws.amazon.com/AmazonS3/latest/API/sig-v4-header-based-auth.html
 * (GET Object with Range, PUT Object, GET Bucket (List Objects)); keys
 * AKIAIOSFODNN7EXAMPLE / wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY,
 * 20130524T000000Z.  AWS writes that Authorization without the spaces after
 * the commas; the signature is what is compared there.
 */
struct vector {
	const char *name;
	bool s3;		/* the S3 examples' keys, date and host */
	const char *method, *path, *query;
	const char *headers[3];
	const char *payload;
	const char *token;
	const char *creq;	/* expected canonical request */
	const char *sts_hash;	/* published hash in the string to sign, or
				 * NULL: the SHA-256 of creq */
	const char *authz;	/* expected Authorization (suite) */
	const char *sig;	/* expected signature */
};

#define SUITE_AUTH "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/" \
	"us-east-1/service/aws4_request, SignedHeaders="
#define HOST_DATE "host:example.amazonaws.com\nx-amz-date:20150830T123600Z\n"
#define STS_TOKEN "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpSPfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA=="
#define UNRES "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

static const struct vector vectors[] = {
	{ "get-vanilla", false, "GET", "/", "", { NULL }, EMPTY_SHA, NULL,
	  "GET\n/\n\n" HOST_DATE "\nhost;x-amz-date\n" EMPTY_SHA,
	  "bb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63",
	  SUITE_AUTH "host;x-amz-date, Signature="
	  "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
	  NULL },
	/* get-vanilla-query.sreq: "GET / HTTP/1.1", no query after all */
	{ "get-vanilla-query", false, "GET", "/", "", { NULL }, EMPTY_SHA,
	  NULL, "GET\n/\n\n" HOST_DATE "\nhost;x-amz-date\n" EMPTY_SHA, NULL,
	  SUITE_AUTH "host;x-amz-date, Signature="
	  "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
	  NULL },
	/* "GET /?Param2=value2&Param1=value1": the caller sorts */
	{ "get-vanilla-query-order-key-case", false, "GET", "/",
	  "Param1=value1&Param2=value2", { NULL }, EMPTY_SHA, NULL,
	  "GET\n/\nParam1=value1&Param2=value2\n" HOST_DATE
	  "\nhost;x-amz-date\n" EMPTY_SHA, NULL,
	  SUITE_AUTH "host;x-amz-date, Signature="
	  "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
	  NULL },
	{ "get-vanilla-query-unreserved", false, "GET", "/", UNRES "=" UNRES,
	  { NULL }, EMPTY_SHA, NULL,
	  "GET\n/\n" UNRES "=" UNRES "\n" HOST_DATE "\nhost;x-amz-date\n"
	  EMPTY_SHA, NULL,
	  SUITE_AUTH "host;x-amz-date, Signature="
	  "9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197",
	  NULL },
	/* "GET /\u1234": the path given encoded (qf_sigv4_uri_encode) */
	{ "get-utf8", false, "GET", "/%E1%88%B4", "", { NULL }, EMPTY_SHA,
	  NULL, "GET\n/%E1%88%B4\n\n" HOST_DATE "\nhost;x-amz-date\n"
	  EMPTY_SHA, NULL,
	  SUITE_AUTH "host;x-amz-date, Signature="
	  "8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85",
	  NULL },
	{ "post-vanilla", false, "POST", "/", "", { NULL }, EMPTY_SHA, NULL,
	  "POST\n/\n\n" HOST_DATE "\nhost;x-amz-date\n" EMPTY_SHA, NULL,
	  SUITE_AUTH "host;x-amz-date, Signature="
	  "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
	  NULL },
	/* .creq and .sts published; the body is "Param1=value1" */
	{ "post-x-www-form-urlencoded", false, "POST", "/", "",
	  { "Content-Type:application/x-www-form-urlencoded", NULL },
	  "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e",
	  NULL,
	  "POST\n/\n\ncontent-type:application/x-www-form-urlencoded\n"
	  HOST_DATE "\ncontent-type;host;x-amz-date\n"
	  "9095672bbd1f56dfc5b65f3e153adc8731a4a654192329106275f4c7b24d0b6e",
	  "42a5e5bb34198acb3e84da4f085bb7927f2bc277ca766e6d19c73c2154021281",
	  SUITE_AUTH "content-type;host;x-amz-date, Signature="
	  "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a",
	  NULL },
	{ "get-header-value-trim", false, "GET", "/", "",
	  { "My-Header1: value1", "My-Header2: \"a   b   c\"", NULL },
	  EMPTY_SHA, NULL,
	  "GET\n/\n\nhost:example.amazonaws.com\nmy-header1:value1\n"
	  "my-header2:\"a b c\"\nx-amz-date:20150830T123600Z\n\n"
	  "host;my-header1;my-header2;x-amz-date\n" EMPTY_SHA, NULL,
	  SUITE_AUTH "host;my-header1;my-header2;x-amz-date, Signature="
	  "acc3ed3afb60bb290fc8d2dd0098b9911fcaa05412b367055dee359757a9c736",
	  NULL },
	{ "post-sts-header-before", false, "POST", "/", "", { NULL },
	  EMPTY_SHA, STS_TOKEN,
	  "POST\n/\n\n" HOST_DATE "x-amz-security-token:" STS_TOKEN "\n\n"
	  "host;x-amz-date;x-amz-security-token\n" EMPTY_SHA, NULL,
	  SUITE_AUTH "host;x-amz-date;x-amz-security-token, Signature="
	  "85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead",
	  NULL },
	{ "s3 GET Object", true, "GET", "/test.txt", "",
	  { "Range: bytes=0-9", NULL }, EMPTY_SHA, NULL,
	  "GET\n/test.txt\n\nhost:examplebucket.s3.amazonaws.com\n"
	  "range:bytes=0-9\nx-amz-content-sha256:" EMPTY_SHA "\n"
	  "x-amz-date:20130524T000000Z\n\n"
	  "host;range;x-amz-content-sha256;x-amz-date\n" EMPTY_SHA,
	  "7344ae5b7ee6c3e7e6b0fe0640412a37625d1fbfff95c48bbb2dc43964946972",
	  NULL,
	  "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41" },
	/* the key "test$file.text"; the body "Welcome to Amazon S3." */
	{ "s3 PUT Object", true, "PUT", "/test%24file.text", "",
	  { "Date: Fri, 24 May 2013 00:00:00 GMT",
	    "x-amz-storage-class: REDUCED_REDUNDANCY", NULL },
	  "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072",
	  NULL,
	  "PUT\n/test%24file.text\n\ndate:Fri, 24 May 2013 00:00:00 GMT\n"
	  "host:examplebucket.s3.amazonaws.com\nx-amz-content-sha256:"
	  "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072\n"
	  "x-amz-date:20130524T000000Z\nx-amz-storage-class:"
	  "REDUCED_REDUNDANCY\n\n"
	  "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class\n"
	  "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072",
	  "9e0e90d9c76de8fa5b200d8c849cd5b8dc7a3be3951ddb7f6a76b4158342019d",
	  NULL,
	  "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd" },
	{ "s3 GET Bucket", true, "GET", "/", "max-keys=2&prefix=J", { NULL },
	  EMPTY_SHA, NULL,
	  "GET\n/\nmax-keys=2&prefix=J\nhost:examplebucket.s3.amazonaws.com\n"
	  "x-amz-content-sha256:" EMPTY_SHA "\nx-amz-date:20130524T000000Z\n"
	  "\nhost;x-amz-content-sha256;x-amz-date\n" EMPTY_SHA, NULL, NULL,
	  "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7" },
};

static void sha_hex(const char *s, char hex[65])
{
	struct qf_sha256 c;
	uint8_t d[32];

	qf_sha256_init(&c);
	qf_sha256_update(&c, s, strlen(s));
	qf_sha256_final(&c, d);
	qf_hex(d, 32, hex);
}

static void test_vector(const struct vector *v)
{
	struct qf_buf out = QF_BUF_INIT, cr = QF_BUF_INIT, sts = QF_BUF_INIT;
	struct qf_sigv4 r = { 0 };
	char hash[65], want_sts[256];
	const char *sig;

	r.method = v->method;
	r.host = v->s3 ? "examplebucket.s3.amazonaws.com" :
		 "example.amazonaws.com";
	r.path = v->path;
	r.query = v->query;
	r.headers = v->headers;
	r.payload_sha256 = v->payload;
	r.amz_date = v->s3 ? "20130524T000000Z" : "20150830T123600Z";
	r.region = "us-east-1";
	r.service = v->s3 ? "s3" : "service";
	r.access_key = v->s3 ? "AKIAIOSFODNN7EXAMPLE" : "AKIDEXAMPLE";
	r.secret_key = v->s3 ? "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY" :
		       "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
	r.session_token = v->token;
	r.omit_content_sha256 = !v->s3;
	CHECK(qf_sigv4_sign(&r, &out, &cr, &sts), ==, 0);
	fprintf(stderr, "%s: %s\n", v->name, out.data);
	CHECK_STR(cr.data, v->creq);
	sha_hex(v->creq, hash);
	if (v->sts_hash)
		CHECK_STR(hash, v->sts_hash);
	snprintf(want_sts, sizeof(want_sts), "AWS4-HMAC-SHA256\n%s\n%.8s/"
		 "us-east-1/%s/aws4_request\n%s", r.amz_date, r.amz_date,
		 r.service, hash);
	CHECK_STR(sts.data, want_sts);
	if (v->authz)
		CHECK_STR(out.data, v->authz);
	sig = strstr(out.data ? out.data : "", "Signature=");
	if (v->sig)
		CHECK_STR(sig ? sig + 10 : "", v->sig);
	qf_buf_release(&out);
	qf_buf_release(&cr);
	qf_buf_release(&sts);
}

static void test_sigv4(void)
{
	struct qf_buf b = QF_BUF_INIT;
	struct qf_sigv4 r = { 0 };
	const char *bad[] = { "no colon here", NULL };
	size_t i;

	for (i = 0; i < sizeof(vectors) / sizeof(vectors[0]); i++)
		test_vector(&vectors[i]);
	CHECK(qf_sigv4_uri_encode("/\xe1\x88\xb4", true, &b), ==, 0);
	CHECK_STR(b.data, "/%E1%88%B4");
	qf_buf_reset(&b);
	CHECK(qf_sigv4_uri_encode("a b/c+d$e=f&~._-", false, &b), ==, 0);
	CHECK_STR(b.data, "a%20b%2Fc%2Bd%24e%3Df%26~._-");
	qf_buf_reset(&b);
	CHECK(qf_sigv4_uri_encode("", false, &b), ==, 0);
	CHECK_STR(b.data, "");
	/* missing fields and a malformed header are refused */
	CHECK(qf_sigv4_sign(&r, &b, NULL, NULL), ==, -EINVAL);
	r = (struct qf_sigv4){ .method = "GET", .host = "h", .path = "/",
			       .query = "", .payload_sha256 = EMPTY_SHA,
			       .amz_date = "20150830T123600Z", .region = "r",
			       .service = "s3", .access_key = "a",
			       .secret_key = "s", .headers = bad };
	CHECK(qf_sigv4_sign(&r, &b, NULL, NULL), ==, -EINVAL);
	r.headers = NULL;
	CHECK(qf_sigv4_sign(&r, &b, NULL, NULL), ==, 0);
	CHECK(strstr(b.data, "SignedHeaders=host;x-amz-content-sha256;"
		     "x-amz-date, ") != NULL, ==, 1);
	qf_buf_release(&b);
}

static int parse(const char *xml, struct qf_s3_list *l, bool *trunc,
		 char **next)
{
	return qf_s3_list_parse(xml, strlen(xml), l, trunc, next);
}

#define HEAD "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ListBucketResult " \
	"xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Name>b</Name>"

static void test_list_ok(void)
{
	struct qf_s3_list l = QF_S3_LIST_INIT;
	char *next = NULL;
	bool t = true;

	CHECK(parse(HEAD "<Prefix></Prefix><KeyCount>0</KeyCount>"
		    "<IsTruncated>false</IsTruncated></ListBucketResult>",
		    &l, &t, &next), ==, 0);
	CHECK(l.n, ==, 0);
	CHECK(t, ==, false);
	CHECK(next == NULL, ==, 1);
	CHECK(parse(HEAD "<Prefix>v/</Prefix><IsTruncated>true</IsTruncated>"
		    "<NextContinuationToken>1ueGcxLPRx1Tr/XYExHnhbYLgveD"
		    "s2J/wm36Hy4vbOwM=</NextContinuationToken>\n"
		    "<Contents><Key>v/a&amp;b &lt;&gt;&quot;&apos;&#65;&#x42;"
		    "&#xe9;</Key><LastModified>2009-10-12T17:50:30.000Z"
		    "</LastModified><ETag>&quot;fba9dede5f27731c9771645a39863328"
		    "&quot;</ETag><Size>434234</Size><Owner><ID>x</ID>"
		    "<DisplayName/></Owner><StorageClass>STANDARD"
		    "</StorageClass></Contents>\n<Contents><Key>v/z</Key>"
		    "<Size>18446744073709551615</Size></Contents>"
		    "</ListBucketResult>", &l, &t, &next), ==, 0);
	CHECK(l.n, ==, 2);
	CHECK(t, ==, true);
	CHECK_STR(next, "1ueGcxLPRx1Tr/XYExHnhbYLgveDs2J/wm36Hy4vbOwM=");
	CHECK_STR(l.obj[0].key, "v/a&b <>\"'AB\xc3\xa9");
	CHECK_STR(l.obj[0].etag, "fba9dede5f27731c9771645a39863328");
	CHECK(l.obj[0].size, ==, 434234);
	CHECK_NEAR(l.obj[0].last_modified, 1255369830.0, 1e-6);
	CHECK_STR(l.obj[1].key, "v/z");
	CHECK(l.obj[1].size == UINT64_MAX, ==, 1);
	CHECK(l.obj[1].last_modified, ==, 0);
	free(next);
	qf_s3_list_free(&l);
	CHECK(l.n, ==, 0);
}

static void test_list_hostile(void)
{
	static const char *const bad[] = {
		HEAD "<Contents><Key>a</Key>",			/* unclosed */
		HEAD "<Contents><Key>a</Key><Size>1",		/* no '<' */
		HEAD "<Contents><Key>a",
		HEAD "<Contents><Key>a</Key",
		HEAD "<Contents><Key>a</Key><Size>18446744073709551616"
		"</Size></Contents>",				/* 2^64 */
		HEAD "<Contents><Key>a</Key><Size>-1</Size></Contents>",
		HEAD "<Contents><Key>a</Key><Size></Size></Contents>",
		HEAD "<Contents><Key>a&bogus;</Key></Contents>",
		HEAD "<Contents><Key>a&#0;b</Key></Contents>",
		HEAD "<Contents><Key>a&#xD800;</Key></Contents>",
		HEAD "<Contents><Key>a&#x110000;</Key></Contents>",
		HEAD "<Contents><Key>a&#99999999999;</Key></Contents>",
		HEAD "<Contents><Key>a&amp</Key></Contents>",
		HEAD "<Contents><Key></Key></Contents>",
		HEAD "<Contents><Size>1</Size></Contents>",	/* no key */
		HEAD "<Contents><Contents><Key>a</Key></Contents>",
		HEAD "</Contents>",
		HEAD "<Contents><Key>a</Key><Key>b</Key></Contents>",
		HEAD "<Contents><Key><![CDATA[a]]></Key></Contents>",
		HEAD "<Contents><Key>a</Key><LastModified>2009-13-12T17:50:"
		"30.000Z</LastModified></Contents>",
		HEAD "<Contents><Key>a</Key><LastModified>yesterday"
		"</LastModified></Contents>",
		HEAD "<Contents><Key>a</Key><ETag>\"0123456789012345678901234"
		"567890123456789012345678901234567890123456789012345678901234"
		"5678901234567890123456789\"</ETag></Contents>",
		HEAD "<!-- unterminated",
		"<<<>>>",
		"<",
	};
	struct qf_s3_list l = QF_S3_LIST_INIT;
	char *next = (char *)"stale";
	size_t i;
	char *big;
	bool t;

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int ret = parse(bad[i], &l, &t, &next);

		if (ret != QF_EFORMAT)
			fprintf(stderr, "accepted hostile listing %zu\n", i);
		CHECK(ret, ==, QF_EFORMAT);
		CHECK(l.n, ==, 0);
		CHECK(next == NULL, ==, 1);
	}
	/* a key of 1024 bytes passes, 1025 does not */
	big = malloc(2048);
	for (i = 1024; i <= 1025; i++) {
		snprintf(big, 2048, HEAD "<Contents><Key>%0*d</Key>"
			 "</Contents>", (int)i, 7);
		CHECK(parse(big, &l, &t, &next), ==, i == 1024 ? 0 : QF_EFORMAT);
	}
	CHECK(l.n, ==, 1);
	CHECK(strlen(l.obj[0].key), ==, 1024);
	free(big);
	/* a failure keeps what an earlier page appended */
	CHECK(parse(HEAD "<Contents><Key>b</Key></Contents><Contents><Key>c",
		    &l, &t, &next), ==, QF_EFORMAT);
	CHECK(l.n, ==, 1);
	CHECK(qf_s3_list_parse("<a/>", QF_S3_LIST_MAX_BODY + 1, &l, &t,
			       &next), ==, QF_EFORMAT);
	qf_s3_list_free(&l);
}

static void test_dates(void)
{
	double d = -1;

#define HTTP(s) qf_s3_parse_http_date(s, strlen(s), &d)
#define ISO(s) qf_s3_parse_iso8601(s, strlen(s), &d)
	CHECK(HTTP("Sun, 06 Nov 1994 08:49:37 GMT"), ==, 0);
	CHECK_NEAR(d, 784111777.0, 0);
	CHECK(HTTP("Thu, 01 Jan 1970 00:00:00 GMT"), ==, 0);
	CHECK_NEAR(d, 0.0, 0);
	CHECK(HTTP("Sun, 06 Dec 2026 09:05:52 GMT"), ==, 0);
	CHECK(HTTP("Mon, 06 Nov 1994 08:49:37 GMT"), ==, QF_EFORMAT);
	CHECK(HTTP("Sunday, 06-Nov-94 08:49:37 GMT"), ==, QF_EFORMAT);
	CHECK(HTTP("Sun Nov  6 08:49:37 1994"), ==, QF_EFORMAT);
	CHECK(HTTP("Sun, 06 Nov 1994 08:49:37 UTC"), ==, QF_EFORMAT);
	CHECK(HTTP("Sun, 06 Nov 1994 24:49:37 GMT"), ==, QF_EFORMAT);
	CHECK(HTTP("Sun, 6 Nov 1994 08:49:37 GMT "), ==, QF_EFORMAT);
	CHECK(HTTP("Wed, 31 Feb 2024 00:00:00 GMT"), ==, QF_EFORMAT);
	CHECK(HTTP("Thu, 29 Feb 2024 00:00:00 GMT"), ==, 0);
	CHECK(HTTP("Sun, 06 Nov 1994 08:49:3x GMT"), ==, QF_EFORMAT);
	CHECK(HTTP(""), ==, QF_EFORMAT);
	CHECK(ISO("2009-10-12T17:50:30.000Z"), ==, 0);
	CHECK_NEAR(d, 1255369830.0, 0);
	CHECK(ISO("2009-10-12T17:50:30.5Z"), ==, 0);
	CHECK_NEAR(d, 1255369830.5, 1e-9);
	CHECK(ISO("2009-10-12T17:50:30Z"), ==, 0);
	CHECK(ISO("2009-10-12T17:50:30.Z"), ==, QF_EFORMAT);
	CHECK(ISO("2009-10-12 17:50:30Z"), ==, QF_EFORMAT);
	CHECK(ISO("2009-10-12T17:50:30+01:00"), ==, QF_EFORMAT);
	CHECK(ISO("2009-02-30T17:50:30Z"), ==, QF_EFORMAT);
#undef HTTP
#undef ISO
}

static void write_file(const char *path, const char *text, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);

	CHECK(fd >= 0, ==, 1);
	CHECK(write(fd, text, strlen(text)), ==, (long long)strlen(text));
	close(fd);
	CHECK(chmod(path, mode), ==, 0);
}

#define CREDS "# test\n[default]\naws_access_key_id = AKDEF\n" \
	"aws_secret_access_key=SDEF \n\n[other]\n; comment\n" \
	"aws_access_key_id=AKOTHER\naws_secret_access_key = S=OTHER\n" \
	"aws_session_token = TOK\n[nokeys]\naws_access_key_id = X\n"

static void test_creds(void)
{
	char home[] = "/tmp/qf_s3_credsXXXXXX", path[512], dir[256];
	struct qf_s3_creds c;

	CHECK(mkdtemp(home) != NULL, ==, 1);
	unsetenv("AWS_ACCESS_KEY_ID");
	unsetenv("AWS_SECRET_ACCESS_KEY");
	unsetenv("AWS_SESSION_TOKEN");
	unsetenv("AWS_PROFILE");
	unsetenv("AWS_SHARED_CREDENTIALS_FILE");
	setenv("HOME", home, 1);
	CHECK(qf_s3_creds_load(NULL, &c), ==, -ENOENT);	/* no file */
	snprintf(dir, sizeof(dir), "%s/.aws", home);
	CHECK(mkdir(dir, 0700), ==, 0);
	snprintf(path, sizeof(path), "%s/credentials", dir);
	write_file(path, CREDS, 0644);
	CHECK(qf_s3_creds_load(NULL, &c), ==, -EPERM);
	CHECK(c.access_key == NULL, ==, 1);
	chmod(path, 0640);
	CHECK(qf_s3_creds_load(NULL, &c), ==, -EPERM);
	chmod(path, 0600);
	CHECK(qf_s3_creds_load(NULL, &c), ==, 0);
	CHECK_STR(c.access_key, "AKDEF");
	CHECK_STR(c.secret_key, "SDEF");
	CHECK(c.session_token == NULL, ==, 1);
	qf_s3_creds_free(&c);
	chmod(path, 0400);
	setenv("AWS_PROFILE", "other", 1);
	CHECK(qf_s3_creds_load(NULL, &c), ==, 0);
	CHECK_STR(c.access_key, "AKOTHER");
	CHECK_STR(c.secret_key, "S=OTHER");
	CHECK_STR(c.session_token, "TOK");
	qf_s3_creds_free(&c);
	setenv("AWS_PROFILE", "missing", 1);
	CHECK(qf_s3_creds_load(NULL, &c), ==, -ENOENT);
	setenv("AWS_PROFILE", "nokeys", 1);
	CHECK(qf_s3_creds_load(NULL, &c), ==, QF_EFORMAT);
	unsetenv("AWS_PROFILE");
	/* the environment comes first, even with a usable file */
	setenv("AWS_ACCESS_KEY_ID", "AKENV", 1);
	setenv("AWS_SECRET_ACCESS_KEY", "SENV", 1);
	CHECK(qf_s3_creds_load(NULL, &c), ==, 0);
	CHECK_STR(c.access_key, "AKENV");
	CHECK_STR(c.secret_key, "SENV");
	qf_s3_creds_free(&c);
	setenv("AWS_SECRET_ACCESS_KEY", "", 1);	/* incomplete: the file */
	CHECK(qf_s3_creds_load(NULL, &c), ==, 0);
	CHECK_STR(c.access_key, "AKDEF");
	qf_s3_creds_free(&c);
	unsetenv("AWS_ACCESS_KEY_ID");
	unsetenv("AWS_SECRET_ACCESS_KEY");
	/* an explicit file, $AWS_SHARED_CREDENTIALS_FILE, a bad line, a dir */
	snprintf(path, sizeof(path), "%s/other", home);
	write_file(path, "[default]\naws_access_key_id=A2\n"
		   "aws_secret_access_key=S2\n", 0600);
	CHECK(qf_s3_creds_load(path, &c), ==, 0);
	CHECK_STR(c.access_key, "A2");
	qf_s3_creds_free(&c);
	setenv("AWS_SHARED_CREDENTIALS_FILE", path, 1);
	CHECK(qf_s3_creds_load(NULL, &c), ==, 0);
	CHECK_STR(c.secret_key, "S2");
	qf_s3_creds_free(&c);
	write_file(path, "[default]\njunk line\n", 0600);
	CHECK(qf_s3_creds_load(NULL, &c), ==, QF_EFORMAT);
	CHECK(qf_s3_creds_load(dir, &c), ==, -EPERM);
	snprintf(path, sizeof(path), "%s/none", home);
	CHECK(qf_s3_creds_load(path, &c), ==, -ENOENT);
	unsetenv("AWS_SHARED_CREDENTIALS_FILE");
	snprintf(path, sizeof(path), "rm -rf '%s'", home);
	CHECK(system(path), ==, 0);
}

/* The client without a server: a refused connection is -ECONNREFUSED. */
static void test_client_offline(void)
{
	struct qf_s3_creds cr = { (char *)"AK", (char *)"SK", NULL };
	struct qf_s3_cfg cfg = { "http://127.0.0.1:1/", "bkt", NULL, &cr,
				 500, 2000, 0 };
	struct qf_s3_resp r = QF_S3_RESP_INIT;
	struct qf_s3 *s = NULL;

	CHECK(qf_s3_open(&cfg, &s), ==, 0);
	CHECK_STR(qf_s3_describe(s), "s3://bkt at http://127.0.0.1:1");
	CHECK(qf_s3_head(s, "k", &r), ==, -ECONNREFUSED);
	CHECK(r.status, ==, 0);
	CHECK(r.error[0] != '\0', ==, 1);
	CHECK(qf_s3_get(s, "", 10, &r), ==, -EINVAL);
	qf_s3_resp_free(&r);
	qf_s3_close(s);
	cfg.endpoint = "ftp://x";
	CHECK(qf_s3_open(&cfg, &s), ==, -EINVAL);
}

int main(void)
{
	test_sigv4();
	test_list_ok();
	test_list_hostile();
	test_dates();
	test_creds();
	test_client_offline();
	return qf_check_exit();
}
