/* Unit tests of the job stores (server/store.c and store_redis*.c, included for their static functions): URLs, ids,
 * hostile status records, event entries and url-result records built as hiredis replies, the idempotency
 * fingerprint, the local store's table of url keys (expiry, the oldest dropped), and a store whose Redis is down
 * (every call answers SG_STORE_EUNAVAILABLE, nothing blocks or crashes). No Redis is needed. */
#include <stdlib.h>
#include <string.h>

#include "../../server/store.c"
#include "../../server/store_redis.c"
#include "../../server/store_redis_jobs.c"
#include "../../server/store_redis_worker.c"
#include "check.h"

static redisReply *str(const char *s) {
  redisReply *r = calloc(1, sizeof *r);
  if (!s) {
    r->type = REDIS_REPLY_NIL;
    return r;
  }
  r->type = REDIS_REPLY_STRING;
  r->str = strdup(s);
  r->len = strlen(s);
  return r;
}

static redisReply *arr(size_t n, const char *const *v) {
  redisReply *r = calloc(1, sizeof *r);
  r->type = REDIS_REPLY_ARRAY;
  r->elements = n;
  r->element = calloc(n ? n : 1, sizeof *r->element);
  for (size_t i = 0; i < n; i++) r->element[i] = str(v[i]);
  return r;
}

static void test_urls(void) {
  rstore s;
  memset(&s, 0, sizeof s);
  CHECK(parse_url(&s, "redis://127.0.0.1:6380/3") == 0 && !strcmp(s.host, "127.0.0.1") && s.port == 6380 && s.db == 3,
        "full URL");
  CHECK(parse_url(&s, "redis://cache") == 0 && !strcmp(s.host, "cache") && s.port == 6379 && s.db == 0, "host only");
  CHECK(parse_url(&s, "redis://[::1]:7000") == 0 && !strcmp(s.host, "::1") && s.port == 7000, "IPv6");
  const char *bad[] = {"http://x", "redis://", "redis://:1", "redis://h:0", "redis://h:65536", "redis://h:x",
                       "redis://h/16", "redis://user:pw@h", "redis://h:1/2/3", "redis://[::1", NULL, ""};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++)
    CHECK(parse_url(&s, bad[i]) != 0, "refused: %s", bad[i] ? bad[i] : "(null)");
}

static void test_ids(void) {
  CHECK(sg_redis_is_job_id("0123456789abcdef0123456789abcdef"), "an id");
  CHECK(!sg_redis_is_job_id("0123456789ABCDEF0123456789abcdef") && !sg_redis_is_job_id("../../etc/passwd") &&
            !sg_redis_is_job_id("") && !sg_redis_is_job_id(NULL) &&
            !sg_redis_is_job_id("0123456789abcdef0123456789abcde"),
        "not ids");
  CHECK(sg_redis_is_stream_id("1700000000000-0") && sg_redis_is_stream_id("0-0"), "stream ids");
  CHECK(!sg_redis_is_stream_id("1-") && !sg_redis_is_stream_id("-1") && !sg_redis_is_stream_id("1-2-3") &&
            !sg_redis_is_stream_id("$") && !sg_redis_is_stream_id("1 -0") && !sg_redis_is_stream_id(""),
        "not stream ids");
}

static void test_status_records(void) {
  const char *good[N_STATUS_FIELDS] = {"succeeded", "3", "3", "0", "1700000000.5", "1700000001", "1700000002", "",
                                       "", "2", "2", "42"};
  redisReply *h = arr(N_STATUS_FIELDS, good);
  sg_job_status st;
  CHECK(status_from("0123456789abcdef0123456789abcdef", h, -1, &st) == 0, "a good record");
  CHECK(st.state == SG_JOB_SUCCEEDED && st.step == 3 && st.total == 3 && st.n_images == 2 && st.n_ready == 2 &&
            st.seed == 42 && st.error == SG_JOB_ERR_NONE && st.queue_position == -1,
        "its fields");
  CHECK(st.queue_ms > 499 && st.queue_ms < 501 && st.inference_ms > 999 && st.inference_ms < 1001, "its durations");
  freeReplyObject(h);
  /* each required field broken in turn: the record is refused, never half-read */
  struct {
    int field;
    const char *value;
  } cases[] = {{F_STATE, "exploded"}, {F_STATE, NULL}, {F_TOTAL, "x"},   {F_TOTAL, "0"},     {F_N, "65"},
               {F_N, "-1"},        {F_SEED, "-5"},  {F_SEED, "1e9"},  {F_CREATED, "nan"}, {F_CREATED, NULL},
               {F_ERROR, "oops"}};
  for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
    const char *v[N_STATUS_FIELDS];
    memcpy(v, good, sizeof v);
    v[cases[i].field] = cases[i].value;
    h = arr(N_STATUS_FIELDS, v);
    CHECK(status_from("0123456789abcdef0123456789abcdef", h, -1, &st) == SG_STORE_EBADDATA, "case %zu refused", i);
    freeReplyObject(h);
  }
  /* optional fields out of range fall back to safe values; n_ready above n is not trusted */
  const char *odd[N_STATUS_FIELDS] = {"running", "99", "3", "-4", "1700000000", NULL, NULL, NULL, NULL, "1", "7", "1"};
  h = arr(N_STATUS_FIELDS, odd);
  CHECK(status_from("0123456789abcdef0123456789abcdef", h, 5, &st) == 0 && st.step == 0 && st.worker == -1 &&
            st.n_ready == 0 && st.queue_position == -1,
        "odd optional fields");
  freeReplyObject(h);
  h = arr(3, good); /* too few elements */
  CHECK(status_from("0123456789abcdef0123456789abcdef", h, -1, &st) == SG_STORE_EBADDATA, "short reply");
  freeReplyObject(h);
}

static void test_events(void) {
  sg_job_event ev;
  char msg[256];
  const char *prog[] = {"kind", "progress", "state", "running", "step", "2", "total", "5"};
  redisReply *r = arr(8, prog);
  CHECK(event_from("x", r, &ev, msg, sizeof msg) == 0 && ev.kind == SG_JOB_EVENT_PROGRESS && ev.step == 2 &&
            ev.total == 5,
        "a progress event");
  freeReplyObject(r);
  const char *end[] = {"kind", "end", "state", "failed", "step", "1", "total", "5", "error", "runtime", "message",
                       "boom", "n", "0"};
  r = arr(14, end);
  CHECK(event_from("x", r, &ev, msg, sizeof msg) == 0 && ev.kind == SG_JOB_EVENT_END &&
            ev.error == SG_JOB_ERR_RUNTIME && !strcmp(ev.message, "boom"),
        "an end event");
  freeReplyObject(r);
  const char *bad1[] = {"kind", "progress", "state", "running", "step", "-7", "total", "5"};
  const char *bad2[] = {"kind", "party", "state", "running", "step", "1", "total", "5"};
  const char *bad3[] = {"kind", "end", "state", "failed", "step", "1", "total", "5", "n", "999"};
  const char *bad4[] = {"kind", "progress", "state"};
  const char *const *bad[] = {bad1, bad2, bad3, bad4};
  size_t nbad[] = {8, 8, 10, 3};
  for (int i = 0; i < 4; i++) {
    r = arr(nbad[i], bad[i]);
    CHECK(event_from("x", r, &ev, msg, sizeof msg) != 0, "malformed event %d refused", i);
    freeReplyObject(r);
  }
}

static void test_fingerprint(void) {
  sg_job_request q;
  memset(&q, 0, sizeof q);
  q.prompt = "a red star";
  q.steps = 10;
  q.n_images = 1;
  q.seed = 5;
  char a[33], b[33], c[33], d[33];
  fingerprint(&q, 0, 0, a);
  fingerprint(&q, 0, 0, b);
  CHECK(!strcmp(a, b) && strlen(a) == 32, "stable");
  q.seed = 6;
  fingerprint(&q, 0, 0, c);
  CHECK(strcmp(a, c), "a given seed counts");
  fingerprint(&q, 1, 0, c);
  q.seed = 7;
  fingerprint(&q, 1, 0, d);
  CHECK(!strcmp(c, d), "a drawn seed does not");
  q.prompt = "a red stars";
  fingerprint(&q, 1, 0, d);
  CHECK(strcmp(c, d), "the prompt counts");
}

static void test_local_files(void) {
  sg_store *s = local_new(NULL, 2); /* the file keys never touch the job manager */
  char k1[SG_STORE_FILE_KEY_LEN], k2[SG_STORE_FILE_KEY_LEN], k3[SG_STORE_FILE_KEY_LEN], id[SG_JOB_ID_LEN];
  int32_t i = -1;
  double exp = 0;
  const char *job = "0123456789abcdef0123456789abcdef";
  CHECK(sg_store_file_put(s, job, 1, 1000.0, k1) == 0 && is_hex32(k1), "a key");
  CHECK(sg_store_file_put(s, job, 2, 2000.0, k2) == 0 && strcmp(k1, k2), "keys differ");
  CHECK(sg_store_file_get(s, k1, 999.0, id, &i, &exp) == 0 && i == 1 && !strcmp(id, job), "found before expiry");
  CHECK(sg_store_file_get(s, k1, 1000.0, id, &i, &exp) == SG_JOBS_EEXPIRED && exp == 1000.0, "expired at it");
  CHECK(sg_store_file_get(s, "0123", 0, id, &i, NULL) == SG_JOBS_ENOTFOUND, "a short key");
  char wrong[SG_STORE_FILE_KEY_LEN];
  memcpy(wrong, k2, sizeof wrong);
  wrong[31] = wrong[31] == '0' ? '1' : '0';
  CHECK(sg_store_file_get(s, wrong, 0, id, &i, NULL) == SG_JOBS_ENOTFOUND, "one digit off");
  memcpy(wrong, k2, sizeof wrong);
  wrong[0] = (char)toupper((unsigned char)(wrong[0] >= 'a' ? wrong[0] : 'a'));
  CHECK(sg_store_file_get(s, wrong, 0, id, &i, NULL) == SG_JOBS_ENOTFOUND, "upper case is not a key");
  CHECK(sg_store_file_put(s, "../etc", 0, 1.0, k3) == SG_JOBS_EINVAL && !k3[0], "not a job id");
  CHECK(sg_store_file_put(s, job, SG_JOBS_MAX_IMAGES, 1.0, k3) == SG_JOBS_EINVAL, "index out of range");
  CHECK(sg_store_file_put(s, job, 3, 3000.0, k3) == 0, "a third key");
  CHECK(sg_store_file_get(s, k1, 0, id, &i, NULL) == SG_JOBS_ENOTFOUND, "the oldest is dropped beyond cap");
  CHECK(sg_store_file_get(s, k3, 0, id, &i, NULL) == 0 && i == 3, "the newest is kept");
  sg_store_free(s);
}

static void test_file_records(void) {
  char id[SG_JOB_ID_LEN];
  int32_t i = -1;
  double exp = 0;
  const char *good = "0123456789abcdef0123456789abcdef 3 1700000600.250";
  CHECK(file_from(good, strlen(good), id, &i, &exp) == 0 && i == 3 && exp == 1700000600.25 &&
            !strcmp(id, "0123456789abcdef0123456789abcdef"),
        "a good record");
  const char *bad[] = {"", "garbage", "0123456789abcdef0123456789abcdef 3", "0123456789abcdef0123456789abcdef 3 1 x",
                       "0123456789ABCDEF0123456789abcdef 3 1", "../../../../etc/passwd/0123456789ab 3 1",
                       "0123456789abcdef0123456789abcdef -1 1", "0123456789abcdef0123456789abcdef 64 1",
                       "0123456789abcdef0123456789abcdef 3 nan", "0123456789abcdef0123456789abcdef 3 inf",
                       "0123456789abcdef0123456789abcdef  3 1", "0123456789abcdef0123456789abcdef 3 1e999",
                       "0123456789abcdef0123456789abcdef 99999999999999999999 1"};
  for (size_t k = 0; k < sizeof bad / sizeof *bad; k++)
    CHECK(file_from(bad[k], strlen(bad[k]), id, &i, &exp) == SG_STORE_EBADDATA, "refused: '%s'", bad[k]);
  char nul[64];
  memcpy(nul, good, strlen(good));
  nul[33] = 0; /* "...def \0 1700..." */
  CHECK(file_from(nul, strlen(good), id, &i, &exp) == SG_STORE_EBADDATA, "a NUL inside");
  char big[4096];
  memset(big, '1', sizeof big);
  memcpy(big, good, strlen(good));
  CHECK(file_from(big, sizeof big, id, &i, &exp) == SG_STORE_EBADDATA, "too long");
  CHECK(file_from(NULL, 0, id, &i, &exp) == SG_STORE_EBADDATA, "none");
}

static void test_redis_down(void) {
  /* a port nobody listens on: connection refused at once */
  int port = 1;
  char url[64], err[256];
  snprintf(url, sizeof url, "redis://127.0.0.1:%d", port);
  sg_store_redis_params p = sg_store_redis_default_params();
  p.url = url;
  sg_store *s = sg_store_redis_new(p, err, sizeof err);
  CHECK(s != NULL, "created while Redis is down: %s", err);
  if (!s) return;
  CHECK(!strcmp(sg_store_kind(s), "redis") && !sg_store_ready(s), "not ready");
  sg_job_status st;
  CHECK(sg_store_status(s, "0123456789abcdef0123456789abcdef", &st) == SG_STORE_EUNAVAILABLE, "status");
  CHECK(sg_store_status(s, "nope", &st) == SG_JOBS_ENOTFOUND, "a malformed id needs no Redis");
  CHECK(sg_store_cancel(s, "0123456789abcdef0123456789abcdef") == SG_STORE_EUNAVAILABLE, "cancel");
  char key[SG_STORE_FILE_KEY_LEN], fid[SG_JOB_ID_LEN];
  int32_t fi;
  CHECK(sg_store_file_put(s, "0123456789abcdef0123456789abcdef", 0, 1e10, key) == SG_STORE_EUNAVAILABLE && !key[0],
        "file put");
  CHECK(sg_store_file_get(s, "0123456789abcdef0123456789abcdef", 0, fid, &fi, NULL) == SG_STORE_EUNAVAILABLE,
        "file get");
  CHECK(sg_store_file_get(s, "0123456789abcdef0123456789abcdef*", 0, fid, &fi, NULL) == SG_JOBS_ENOTFOUND,
        "a malformed key needs no Redis");
  sg_job_request q;
  memset(&q, 0, sizeof q);
  q.prompt = "p";
  q.steps = 1;
  q.n_images = 1;
  char id[SG_JOB_ID_LEN];
  int64_t seed;
  CHECK(sg_store_submit(s, &q, NULL, NULL, NULL, id, &seed, NULL, err, sizeof err) == SG_STORE_EUNAVAILABLE,
        "submit");
  sg_jobs_stats js;
  CHECK(sg_store_stats(s, &js) == SG_STORE_EUNAVAILABLE, "stats");
  sg_model_info info;
  sg_job_request d;
  CHECK(sg_store_model(s, &info, &d) == SG_STORE_EUNAVAILABLE, "model");
  char *m = sg_store_metrics_text(s, "sketchguide");
  CHECK(m && strstr(m, "sketchguide_redis_up 0"), "metrics say Redis is down: %s", m ? m : "(null)");
  free(m);
  sg_store_free(s);
  p.url = "redis://127.0.0.1:1";
  p.lease_seconds = 1;
  p.heartbeat_seconds = 1;
  CHECK(sg_store_redis_new(p, err, sizeof err) == NULL && strstr(err, "lease_seconds"), "lease below 2 heartbeats");
}

int main(void) {
  test_urls();
  test_ids();
  test_status_records();
  test_events();
  test_fingerprint();
  test_local_files();
  test_file_records();
  test_redis_down();
  if (failures) fprintf(stderr, "%d failure(s)\n", failures);
  return failures ? 1 : 0;
}
