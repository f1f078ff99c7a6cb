/* Unit tests of the redis job store's parsing (server/store_redis.c, included for its static functions): URLs, ids,
 * hostile status records and event entries built as hiredis replies, the idempotency fingerprint, and a store whose
 * Redis is down (every call answers SG_STORE_EUNAVAILABLE, nothing blocks or crashes). No Redis is needed. */
#include <stdlib.h>
#include <string.h>

#include "../../server/store.c"
#include "../../server/store_redis.c"
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
  CHECK(is_job_id("0123456789abcdef0123456789abcdef"), "an id");
  CHECK(!is_job_id("0123456789ABCDEF0123456789abcdef") && !is_job_id("../../etc/passwd") && !is_job_id("") &&
            !is_job_id(NULL) && !is_job_id("0123456789abcdef0123456789abcde"),
        "not ids");
  CHECK(is_stream_id("1700000000000-0") && is_stream_id("0-0"), "stream ids");
  CHECK(!is_stream_id("1-") && !is_stream_id("-1") && !is_stream_id("1-2-3") && !is_stream_id("$") &&
            !is_stream_id("1 -0") && !is_stream_id(""),
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
  test_redis_down();
  if (failures) fprintf(stderr, "%d failure(s)\n", failures);
  return failures ? 1 : 0;
}
