/* Tests of server/jobs*.c on the bundled model: results as PNG, queue order and limits, cancel, deadlines, expiry,
 * events, the uncollected count, many threads at once, drain and shutdown, and batches of jobs (max_batch). The
 * three files are included rather than linked, so that check_books can compare the count with the records and a
 * test can make an image's copy fail. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "generate.h"
#include "image.h"

#include "check.h"

static int copy_failures; /* the next this many image copies fail as if out of memory */

static void *test_copy_alloc(size_t n) {
  int left = __atomic_load_n(&copy_failures, __ATOMIC_SEQ_CST);
  while (left > 0)
    if (__atomic_compare_exchange_n(&copy_failures, &left, left - 1, 0, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST))
      return NULL;
  return malloc(n);
}

#define SG_JOBS_COPY_ALLOC test_copy_alloc
#include "../../server/jobs.c"
#include "../../server/jobs_records.c"
#include "../../server/jobs_worker.c"

#define PROMPT "a red star on a plain blue background"
#define LONG_STEPS 999 /* a job that runs until it is cancelled (the most DDIM takes on 1000 timesteps) */

static sg_model *model;
static double slow = 1; /* SG_TEST_SLOW: a factor on every wait, for runs under valgrind */

static void sleep_s(double s) {
  struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
  nanosleep(&ts, NULL);
}

static sg_job_request request(sg_jobs *q, int32_t steps) {
  sg_job_request r = sg_jobs_default_request(q);
  r.prompt = PROMPT;
  r.steps = steps;
  r.cfg = 1.0; /* one U-Net pass per step: fast */
  r.seed = 7;
  return r;
}

static void submit_ok(sg_jobs *q, const sg_job_request *r, char *id) {
  char err[256];
  int rc = sg_jobs_submit(q, r, id, err, sizeof err);
  CHECK(rc == 0, "submit: %d %s", rc, err);
}

static sg_job_status status_of(sg_jobs *q, const char *id) {
  sg_job_status st;
  int rc = sg_jobs_status(q, id, &st);
  CHECK(rc == 0, "status %s: %d", id, rc);
  return st;
}

/* Polls until the job is running (final = 0) or finished (final = 1); returns its status. */
static sg_job_status wait_for(sg_jobs *q, const char *id, int final, double timeout) {
  timeout *= slow;
  double end = sg_jobs_now() + timeout;
  sg_job_status st;
  memset(&st, 0, sizeof st);
  while (sg_jobs_now() < end) {
    if (sg_jobs_status(q, id, &st)) break;
    if (final ? st.state >= SG_JOB_SUCCEEDED : st.state != SG_JOB_QUEUED) return st;
    sleep_s(0.002);
  }
  CHECK(0, "job %s did not become %s in %.0f s (state %s)", id, final ? "final" : "running", timeout,
        sg_job_state_name(st.state));
  return st;
}

/* Records the events of one watch. */
typedef struct {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int progress, ends, out_of_order, after_end;
  int32_t last_step, end_step;
  sg_job_state end_state;
  sg_job_error end_error;
  sg_job_watch *self;    /* unwatch_at: unwatch this handle from inside the callback at that step */
  int32_t unwatch_at;
} collector;

static void collector_init(collector *c) {
  memset(c, 0, sizeof *c);
  pthread_mutex_init(&c->mu, NULL);
  pthread_cond_init(&c->cv, NULL);
}

static void collector_destroy(collector *c) {
  pthread_cond_destroy(&c->cv);
  pthread_mutex_destroy(&c->mu);
}

static void collect(void *user, const sg_job_event *ev) {
  collector *c = user;
  pthread_mutex_lock(&c->mu);
  if (c->ends) c->after_end++;
  if (ev->kind == SG_JOB_EVENT_PROGRESS) {
    if (ev->step != c->last_step + 1 || ev->state != SG_JOB_RUNNING) c->out_of_order++;
    c->last_step = ev->step;
    c->progress++;
  } else {
    c->ends++;
    c->end_state = ev->state;
    c->end_error = ev->error;
    c->end_step = ev->step;
  }
  sg_job_watch *self = c->unwatch_at && ev->step == c->unwatch_at ? c->self : NULL;
  pthread_cond_broadcast(&c->cv);
  pthread_mutex_unlock(&c->mu);
  if (self) sg_jobs_unwatch(self); /* from inside its own callback */
}

static int wait_end(collector *c, double timeout) {
  double end = sg_jobs_now() + timeout * slow;
  pthread_mutex_lock(&c->mu);
  while (!c->ends && sg_jobs_now() < end) {
    pthread_mutex_unlock(&c->mu);
    sleep_s(0.002);
    pthread_mutex_lock(&c->mu);
  }
  int got = c->ends;
  pthread_mutex_unlock(&c->mu);
  return got;
}

static int log_lines;
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;

static void count_log(void *user, sg_jobs_log_level level, const char *msg) {
  pthread_mutex_lock(&log_mu);
  log_lines++;
  pthread_mutex_unlock(&log_mu);
}

static sg_jobs *manager(int32_t workers, sg_jobs_params p) {
  sg_model *models[4] = {model, model, model, model};
  char err[256];
  sg_jobs *q = sg_jobs_new(models, workers, p, err, sizeof err);
  CHECK(q, "sg_jobs_new: %s", err);
  if (!q) exit(1);
  return q;
}

/* Returns whether the PNG in (png, len) has a text chunk key = value (tEXt layout: key NUL value). */
static int has_text(const uint8_t *png, size_t len, const char *key, const char *value) {
  size_t kl = strlen(key), vl = strlen(value);
  for (size_t at = 8; at + 12 <= len;) {
    uint32_t n = (uint32_t)png[at] << 24 | (uint32_t)png[at + 1] << 16 | (uint32_t)png[at + 2] << 8 | png[at + 3];
    if (at + 12 + (size_t)n > len) return 0;
    const uint8_t *d = png + at + 8;
    if (!memcmp(png + at + 4, "tEXt", 4) && n == kl + 1 + vl && !memcmp(d, key, kl) && d[kl] == 0 &&
        !memcmp(d + kl + 1, value, vl))
      return 1;
    at += 12 + (size_t)n;
  }
  return 0;
}

/* The debug check of the books: the uncollected count is never negative and equals the number of finished records
 * still kept whose outcome nobody collected; the finished list holds n_finished records, all in the id table. */
static void check_books(sg_jobs *q, const char *where) {
  pthread_mutex_lock(&q->mu);
  int32_t kept = 0, open = 0, in_table = 1;
  for (const job *j = q->fhead; j; j = j->next) {
    kept++;
    open += !j->collected;
    in_table &= j->in_table && j->state >= SG_JOB_SUCCEEDED;
  }
  int32_t count = q->n_uncollected, finished = q->n_finished;
  pthread_mutex_unlock(&q->mu);
  CHECK(count >= 0 && count == open && kept == finished && in_table,
        "%s: books: uncollected count %d, %d uncollected of %d records kept (n_finished %d)", where, (int)count,
        (int)open, (int)kept, (int)finished);
}

static int32_t uncollected(sg_jobs *q) {
  sg_jobs_stats s;
  CHECK(sg_jobs_stats_get(q, &s) == 0, "stats");
  check_books(q, "uncollected");
  return s.uncollected;
}

/* stats.uncollected: a succeeded job until each image was fetched (fetching one twice is not both), a failed one
 * until a status read or an END watch saw it finished, a cancelled one at once. */
static void test_collected(void) {
  sg_jobs *q = manager(1, sg_jobs_default_params());
  char a[SG_JOB_ID_LEN], b[SG_JOB_ID_LEN], c[SG_JOB_ID_LEN], d[SG_JOB_ID_LEN];
  sg_job_request r = request(q, 2);
  r.n_images = 2;
  submit_ok(q, &r, a);
  CHECK(uncollected(q) == 0, "a queued or running job is not a result yet");
  wait_for(q, a, 1, 60);
  CHECK(uncollected(q) == 1, "succeeded, nothing fetched: %d", uncollected(q));
  CHECK(status_of(q, a).state == SG_JOB_SUCCEEDED && uncollected(q) == 1, "a status read does not collect images");
  uint8_t *png = NULL;
  size_t len = 0;
  for (int k = 0; k < 2; k++) {
    CHECK(sg_jobs_image(q, a, 0, &png, &len) == 0, "image 0");
    free(png);
  }
  CHECK(uncollected(q) == 1, "image 0 twice is not both images");
  CHECK(sg_jobs_image(q, a, 1, &png, &len) == 0, "image 1");
  free(png);
  CHECK(uncollected(q) == 0, "both images fetched: %d", uncollected(q));
  /* failed jobs (deadline while queued behind a long one): one told by an END watch, one read by status */
  sg_job_request blocker = request(q, LONG_STEPS);
  submit_ok(q, &blocker, d);
  wait_for(q, d, 0, 60);
  sg_job_request late = request(q, 2);
  late.deadline = sg_jobs_now() + 0.05;
  submit_ok(q, &late, b);
  submit_ok(q, &late, c);
  sleep_s(0.3);
  CHECK(status_of(q, d).state == SG_JOB_RUNNING, "the blocker still runs (raise its steps)");
  CHECK(uncollected(q) == 2, "two unread failures: %d", uncollected(q));
  collector col;
  collector_init(&col);
  sg_job_watch *w = NULL;
  CHECK(sg_jobs_watch(q, b, collect, &col, &w) == 0 && !w, "watch of a finished job");
  CHECK(col.ends == 1 && col.end_state == SG_JOB_FAILED && col.end_error == SG_JOB_ERR_TIMEOUT, "its END");
  collector_destroy(&col);
  CHECK(uncollected(q) == 1, "a failure told by END is collected: %d", uncollected(q));
  CHECK(status_of(q, c).state == SG_JOB_FAILED && uncollected(q) == 0, "a status read collects a failure");
  CHECK(sg_jobs_cancel(q, d) == 0, "cancel the running blocker");
  wait_for(q, d, 1, 60);
  CHECK(uncollected(q) == 0, "a job someone cancelled is collected: %d", uncollected(q));
  sg_jobs_free(q);
  printf("collected: ok\n");
}

/* An END callback that first makes the manager evict what is due (keep_finished_count 0: the job itself, before
 * its END has been delivered), as a status read or the timer thread may do at that moment on another thread. */
typedef struct {
  collector c;
  int32_t kept_in_cb;         /* stats.finished_kept seen inside the callback, after the eviction */
  const sg_job_request *then; /* first submit this job and wait until it succeeded (it pushes ours out) */
  char then_id[SG_JOB_ID_LEN];
} evicting_watch;

static void evict_then_collect(void *user, const sg_job_event *ev) {
  evicting_watch *e = user;
  sg_jobs_stats s;
  if (ev->kind == SG_JOB_EVENT_END && e->then) {
    submit_ok(ev->_q, e->then, e->then_id);
    wait_for(ev->_q, e->then_id, 1, 120);
  }
  if (ev->kind == SG_JOB_EVENT_END && sg_jobs_stats_get(ev->_q, &s) == 0) e->kept_in_cb = s.finished_kept;
  collect(&e->c, ev);
}

/* The uncollected count when a failed or a cancelled job is evicted before its END reaches its watcher: the
 * eviction takes it out of the count and the END delivered afterwards does not take it out again (the count
 * went to -1 here, so that a draining service read 0 while one result was still unfetched). */
static void test_books_evicted_before_end(void) {
  sg_jobs_params p = sg_jobs_default_params();
  p.keep_finished_count = 0;
  sg_jobs *q = manager(1, p);
  sg_jobs_stats s;
  /* failed: a deadline passes while it runs; its END comes from the worker (run_job, dispatch) */
  sg_job_request lr = request(q, LONG_STEPS);
  lr.deadline = sg_jobs_now() + 0.5 * slow;
  char a[SG_JOB_ID_LEN], blocker[SG_JOB_ID_LEN], b[SG_JOB_ID_LEN];
  submit_ok(q, &lr, a);
  evicting_watch ea;
  memset(&ea, 0, sizeof ea);
  collector_init(&ea.c);
  ea.kept_in_cb = -1;
  sg_job_watch *w = NULL;
  CHECK(sg_jobs_watch(q, a, evict_then_collect, &ea, &w) == 0 && w, "watch the job before its deadline");
  CHECK(wait_end(&ea.c, 120), "no END for the job that runs past its deadline");
  sg_jobs_unwatch(w);
  CHECK(ea.c.end_state == SG_JOB_FAILED && ea.c.end_error == SG_JOB_ERR_TIMEOUT, "failed by its deadline: %s",
        sg_job_state_name(ea.c.end_state));
  CHECK(ea.kept_in_cb == 0, "evicted before its END was delivered (%d kept)", (int)ea.kept_in_cb);
  CHECK(uncollected(q) == 0, "a failure evicted, then told by END: %d uncollected", uncollected(q));
  /* cancelled: a queued job that drain's timeout cancels; its END comes from the draining thread (send_ends) */
  lr.deadline = 0;
  submit_ok(q, &lr, blocker);
  sg_job_request r = request(q, 2);
  submit_ok(q, &r, b); /* behind the blocker, which runs until it is cancelled */
  evicting_watch eb;
  memset(&eb, 0, sizeof eb);
  collector_init(&eb.c);
  eb.kept_in_cb = -1;
  CHECK(sg_jobs_watch(q, b, evict_then_collect, &eb, &w) == 0 && w, "watch the queued job");
  CHECK(sg_jobs_drain(q, 0.05) == SG_JOBS_ETIMEDOUT, "drain that cancels");
  sg_jobs_unwatch(w);
  CHECK(eb.c.ends == 1 && eb.c.end_state == SG_JOB_CANCELLED && eb.c.end_error == SG_JOB_ERR_SHUTDOWN,
        "queued job cancelled by the drain: %d END, %s", eb.c.ends, sg_job_state_name(eb.c.end_state));
  CHECK(eb.kept_in_cb == 0, "evicted before its END was delivered (%d kept)", (int)eb.kept_in_cb);
  CHECK(uncollected(q) == 0, "a cancel evicted, then told by END: %d uncollected", uncollected(q));
  sg_jobs_stats_get(q, &s);
  CHECK(s.failed == 1 && s.cancelled == 2 && s.finished_kept == 0, "stats: %d failed, %d cancelled, %d kept",
        (int)s.failed, (int)s.cancelled, (int)s.finished_kept);
  sg_jobs_free(q);
  collector_destroy(&ea.c);
  collector_destroy(&eb.c);

  /* with keep_finished_count 1 and a result kept: the failed job is pushed out by one that succeeds (submitted
   * from its END callback, run by the other worker) before its END is delivered; a drained service must still see
   * the succeeded job's unfetched image (the count read 0 here) */
  p.keep_finished_count = 1;
  q = manager(2, p);
  lr.deadline = sg_jobs_now() + 0.5 * slow;
  submit_ok(q, &lr, a);
  memset(&ea, 0, sizeof ea);
  collector_init(&ea.c);
  ea.kept_in_cb = -1;
  ea.then = &r;
  CHECK(sg_jobs_watch(q, a, evict_then_collect, &ea, &w) == 0 && w, "watch the job before its deadline");
  CHECK(wait_end(&ea.c, 240), "no END");
  sg_jobs_unwatch(w);
  CHECK(ea.c.end_state == SG_JOB_FAILED && ea.kept_in_cb == 1, "failed (%s), pushed out before its END (%d kept)",
        sg_job_state_name(ea.c.end_state), (int)ea.kept_in_cb);
  CHECK(sg_jobs_status(q, a, &(sg_job_status){0}) == SG_JOBS_EEXPIRED, "the failed job was evicted");
  CHECK(sg_jobs_drain(q, 60 * slow) == 0, "drain");
  CHECK(uncollected(q) == 1, "the succeeded job's image is unfetched: %d uncollected", uncollected(q));
  uint8_t *png = NULL;
  size_t len = 0;
  CHECK(sg_jobs_image(q, ea.then_id, 0, &png, &len) == 0, "fetch it");
  free(png);
  CHECK(uncollected(q) == 0, "fetched: %d uncollected", uncollected(q));
  sg_jobs_free(q);
  collector_destroy(&ea.c);
  printf("books (evicted before END): ok\n");
}

/* An image whose copy fails for lack of memory is not a fetch: the job stays uncollected until a copy succeeds. */
static void test_books_copy_nomem(void) {
  sg_jobs *q = manager(1, sg_jobs_default_params());
  sg_job_request r = request(q, 2);
  r.n_images = 2;
  char a[SG_JOB_ID_LEN];
  submit_ok(q, &r, a);
  wait_for(q, a, 1, 120);
  CHECK(uncollected(q) == 1, "succeeded, nothing fetched");
  uint8_t *png = (uint8_t *)"x";
  size_t len = 7;
  CHECK(sg_jobs_image(q, a, 0, &png, &len) == 0, "image 0");
  free(png);
  __atomic_store_n(&copy_failures, 1, __ATOMIC_SEQ_CST);
  int rc = sg_jobs_image(q, a, 1, &png, &len);
  CHECK(rc == SG_JOBS_ENOMEM && !png && len == 0, "a copy that fails: rc %d", rc);
  CHECK(uncollected(q) == 1, "image 1 never went out, so the job is not collected: %d", uncollected(q));
  CHECK(sg_jobs_image(q, a, 1, &png, &len) == 0 && len > 8 && !memcmp(png, "\x89PNG", 4), "image 1 again");
  free(png);
  CHECK(uncollected(q) == 0, "both images out: %d", uncollected(q));
  __atomic_store_n(&copy_failures, 0, __ATOMIC_SEQ_CST);
  sg_jobs_free(q);
  printf("books (copy out of memory): ok\n");
}

/* What the HTTP service's synchronous waiter does in its END callback: copy the status and the images. */
typedef struct {
  sg_jobs *q;
  int ends, progress, status_rc, by_id_rc, images_ok;
  int32_t n_images;
  int64_t seed;
  sg_job_state state;
  double inference_ms;
} sync_waiter;

static void sync_copy(sync_waiter *s, const sg_job_event *ev) {
  sg_job_status js;
  uint8_t *png = NULL;
  size_t len = 0;
  s->by_id_rc = sg_jobs_image(s->q, ev->id, 0, &png, &len); /* the old way: EEXPIRED for the evicted one */
  free(png);
  s->status_rc = sg_jobs_event_status(ev, &js);
  s->state = js.state;
  s->seed = js.seed;
  s->n_images = js.n_ready;
  s->inference_ms = js.inference_ms;
  s->images_ok = 0;
  for (int32_t i = 0; i < ev->n_images; i++) {
    png = NULL;
    int rc = sg_jobs_event_image(ev, i, &png, &len);
    s->images_ok += rc == 0 && len > 8 && !memcmp(png, "\x89PNG", 4);
    free(png);
  }
  __atomic_add_fetch(&s->ends, 1, __ATOMIC_SEQ_CST);
}

static void sync_end(void *user, const sg_job_event *ev) {
  sync_waiter *s = user;
  if (ev->kind != SG_JOB_EVENT_END) return;
  /* hold the callback until both jobs have finished, then evict what is due: with keep_finished_count 1, the
   * older of the two leaves the table before its waiter has copied anything */
  sg_jobs_stats st;
  double end = sg_jobs_now() + 120 * slow;
  while (sg_jobs_stats_get(s->q, &st) == 0 && st.succeeded + st.failed + st.cancelled < 2 && sg_jobs_now() < end)
    sleep_s(0.002);
  sync_copy(s, ev);
}

/* The same waiter for a job on its own; counts the progress events too. */
static void sync_end_alone(void *user, const sg_job_event *ev) {
  sync_waiter *s = user;
  if (ev->kind == SG_JOB_EVENT_PROGRESS) s->progress++;
  else sync_copy(s, ev);
}

/* Two jobs finishing on two workers with keep_finished_count 1: each END callback gets its job's status and
 * images although one of the jobs was evicted before its callback read anything (the HTTP service answered that
 * synchronous request with a 500). */
static void test_sync_evicted(void) {
  sg_jobs_params p = sg_jobs_default_params();
  p.keep_finished_count = 1;
  sg_jobs *q = manager(2, p);
  sg_job_request r = request(q, 2);
  r.n_images = 2;
  char ids[2][SG_JOB_ID_LEN];
  sync_waiter sw[2];
  sg_job_watch *w[2] = {NULL, NULL};
  for (int i = 0; i < 2; i++) {
    memset(&sw[i], 0, sizeof sw[i]);
    sw[i].q = q;
    r.seed = 100 + i;
    submit_ok(q, &r, ids[i]);
    CHECK(sg_jobs_watch(q, ids[i], sync_end, &sw[i], &w[i]) == 0, "watch %d", i);
  }
  double end = sg_jobs_now() + 240 * slow;
  while ((__atomic_load_n(&sw[0].ends, __ATOMIC_SEQ_CST) < 1 || __atomic_load_n(&sw[1].ends, __ATOMIC_SEQ_CST) < 1) &&
         sg_jobs_now() < end)
    sleep_s(0.002);
  for (int i = 0; i < 2; i++) sg_jobs_unwatch(w[i]);
  int expired = 0;
  for (int i = 0; i < 2; i++) {
    CHECK(sw[i].ends == 1, "job %d: %d END", i, sw[i].ends);
    CHECK(sw[i].status_rc == 0 && sw[i].state == SG_JOB_SUCCEEDED && sw[i].seed == 100 + i && sw[i].n_images == 2 &&
              sw[i].inference_ms > 0,
          "job %d: status from its END: rc %d, %s, seed %lld, %d images", i, sw[i].status_rc,
          sg_job_state_name(sw[i].state), (long long)sw[i].seed, (int)sw[i].n_images);
    CHECK(sw[i].images_ok == 2, "job %d: %d of 2 images copied from its END", i, sw[i].images_ok);
    CHECK(sw[i].by_id_rc == 0 || sw[i].by_id_rc == SG_JOBS_EEXPIRED, "job %d: image by id: %d", i, sw[i].by_id_rc);
    expired += sw[i].by_id_rc == SG_JOBS_EEXPIRED;
  }
  CHECK(expired == 1, "one of the two was evicted before its callback read it (%d)", expired);
  CHECK(uncollected(q) == 0, "both jobs' images went out: %d uncollected", uncollected(q));
  sg_job_event progress = {SG_JOB_EVENT_PROGRESS, ids[0], SG_JOB_RUNNING, 1, 2, SG_JOB_ERR_NONE, "", 0, NULL, NULL};
  sg_job_status js;
  uint8_t *png = (uint8_t *)"x";
  size_t len = 1;
  CHECK(sg_jobs_event_status(&progress, &js) == SG_JOBS_EINVAL && sg_jobs_event_image(&progress, 0, &png, &len) ==
            SG_JOBS_EINVAL && !png && !len,
        "event calls outside an END");
  sg_jobs_free(q);
  printf("sync (evicted before its END was read): ok\n");
}

/* A job that ends and is evicted between its submit and a watch (keep_finished_count 0) cannot be watched
 * afterwards (what a synchronous HTTP request could meet); sg_jobs_submit_watch watches it from its queuing: every
 * event arrives, and the END callback copies the status and the image of a record already evicted. */
static void test_submit_watch(void) {
  sg_jobs_params p = sg_jobs_default_params();
  p.keep_finished_count = 0;
  sg_jobs *q = manager(1, p);
  sg_job_request r = request(q, 3);
  char a[SG_JOB_ID_LEN], b[SG_JOB_ID_LEN];
  submit_ok(q, &r, a);
  sg_jobs_stats s;
  double end = sg_jobs_now() + 120 * slow;
  while (sg_jobs_stats_get(q, &s) == 0 && s.succeeded < 1 && sg_jobs_now() < end) sleep_s(0.002);
  collector c;
  collector_init(&c);
  sg_job_watch *w = NULL;
  CHECK(sg_jobs_watch(q, a, collect, &c, &w) == SG_JOBS_EEXPIRED && !w && !c.ends,
        "a watch after the job ended and was evicted: too late");
  collector_destroy(&c);
  sync_waiter sw;
  memset(&sw, 0, sizeof sw);
  sw.q = q;
  char err[256] = "";
  int rc = sg_jobs_submit_watch(q, &r, sync_end_alone, &sw, b, &w, err, sizeof err);
  CHECK(rc == 0 && w && strlen(b) == 32, "submit_watch: %d %s", rc, err);
  end = sg_jobs_now() + 120 * slow;
  while (__atomic_load_n(&sw.ends, __ATOMIC_SEQ_CST) < 1 && sg_jobs_now() < end) sleep_s(0.002);
  sg_jobs_unwatch(w);
  CHECK(sw.ends == 1 && sw.progress == 3, "submit_watch: %d END, %d progress", sw.ends, sw.progress);
  CHECK(sw.status_rc == 0 && sw.state == SG_JOB_SUCCEEDED && sw.n_images == 1 && sw.images_ok == 1,
        "submit_watch: END copied status (rc %d, %s) and %d image", sw.status_rc, sg_job_state_name(sw.state),
        sw.images_ok);
  CHECK(sg_jobs_status(q, b, &(sg_job_status){0}) == SG_JOBS_EEXPIRED && uncollected(q) == 0,
        "evicted at once, its image fetched from the END");
  /* refusals leave no watch behind */
  w = (sg_job_watch *)&sw;
  sg_job_request bad = r;
  bad.steps = 0;
  CHECK(sg_jobs_submit_watch(q, &bad, sync_end_alone, &sw, b, &w, err, sizeof err) == SG_JOBS_EINVAL && !w &&
            !strncmp(err, "steps", 5),
        "submit_watch of a bad request: %s", err);
  CHECK(sg_jobs_submit_watch(q, &r, NULL, &sw, b, &w, err, sizeof err) == SG_JOBS_EINVAL && !w, "no callback");
  CHECK(sg_jobs_submit_watch(q, &r, sync_end_alone, &sw, b, NULL, err, sizeof err) == SG_JOBS_EINVAL, "no handle");
  sg_jobs_drain(q, 60 * slow);
  CHECK(sg_jobs_submit_watch(q, &r, sync_end_alone, &sw, b, &w, err, sizeof err) == SG_JOBS_EDRAINING && !w,
        "submit_watch while draining");
  sg_jobs_stats_get(q, &s);
  CHECK(s.submitted == 2 && s.rejected_draining == 1, "submit_watch stats: %d submitted", (int)s.submitted);
  sg_jobs_free(q);
  printf("submit_watch: ok\n");
}

/* A job with a sketch, two images and extra text: PNGs that decode to sg_generate's pixels, with the text chunks. */
static void test_result(void) {
  log_lines = 0;
  sg_jobs_params p = sg_jobs_default_params();
  p.log = count_log;
  sg_jobs *q = manager(1, p);
  int32_t S = sg_model_get_info(model)->image_size;
  float *sketch = calloc((size_t)S * S, sizeof *sketch);
  for (int32_t y = S / 4; y < 3 * S / 4; y++) sketch[y * S + S / 4] = sketch[y * S + 3 * S / 4] = 1.0f;
  const char *extra[] = {"software", "sketchguide test"};
  char *prompt = strdup(PROMPT);
  sg_job_request r = sg_jobs_default_request(q);
  r.prompt = prompt;
  r.negative_prompt = "blurry";
  r.sketch = sketch;
  r.steps = 3;
  r.seed = 41;
  r.n_images = 2;
  r.extra_text = extra;
  r.n_extra_text = 1;
  char id[SG_JOB_ID_LEN];
  submit_ok(q, &r, id);
  CHECK(strlen(id) == 32 && strspn(id, "0123456789abcdef") == 32, "id %s", id);
  memset(prompt, 'x', strlen(prompt)); /* submit copied it */
  collector c;
  collector_init(&c);
  sg_job_watch *w = NULL;
  CHECK(sg_jobs_watch(q, id, collect, &c, &w) == 0, "watch");
  sg_job_status st = wait_for(q, id, 1, 300);
  CHECK(wait_end(&c, 10), "no end event");
  CHECK(st.state == SG_JOB_SUCCEEDED && st.error == SG_JOB_ERR_NONE, "state %s: %s", sg_job_state_name(st.state),
        st.message);
  CHECK(st.step == 3 && st.total == 3 && st.n_images == 2 && st.n_ready == 2 && st.seed == 41, "status counts");
  CHECK(st.queue_position == -1 && st.worker == 0, "position %d worker %d", st.queue_position, st.worker);
  CHECK(st.created > 1e9 && st.started >= st.created && st.finished >= st.started, "times");
  CHECK(st.queue_ms >= 0 && st.inference_ms > 0 && st.timings.total > 0 && st.guided_steps == 2, "durations");
  if (w) {
    /* unwatch can only race the end event; the counts settle once it returns */
    sg_jobs_unwatch(w);
  }
  CHECK(c.progress == 3 && c.ends == 1 && !c.out_of_order && c.end_state == SG_JOB_SUCCEEDED,
        "events: %d progress, %d end", c.progress, c.ends);

  /* the same request straight through sg_generate */
  sg_generate_params gp = sg_generate_default_params(model);
  gp.prompt = PROMPT;
  gp.negative_prompt = "blurry";
  gp.sketch = sketch;
  gp.steps = 3;
  gp.seed = 41;
  gp.n_images = 2;
  sg_result ref;
  char err[256];
  CHECK(sg_generate(model, &gp, &ref, err, sizeof err) == 0, "sg_generate: %s", err);
  for (int32_t k = 0; k < 2; k++) {
    uint8_t *png = NULL;
    size_t len = 0;
    CHECK(sg_jobs_image(q, id, k, &png, &len) == 0 && png && len > 8, "image %d", k);
    if (!png) continue;
    CHECK(!memcmp(png, "\x89PNG\r\n\x1a\n", 8), "PNG signature");
    char seed[16];
    snprintf(seed, sizeof seed, "%d", 41 + k);
    CHECK(has_text(png, len, "prompt", PROMPT) && has_text(png, len, "negative_prompt", "blurry") &&
              has_text(png, len, "seed", seed) && has_text(png, len, "steps", "3") &&
              has_text(png, len, "sampler", "ddim") && has_text(png, len, "model", sg_model_get_info(model)->name) &&
              has_text(png, len, "software", "sketchguide test"),
          "image %d: text chunks", k);
    sg_image im;
    int rc = sg_image_decode(png, len, sg_image_default_params(), &im, err, sizeof err);
    CHECK(rc == 0, "decode: %s", err);
    if (rc == 0) {
      CHECK(im.width == S && im.height == S && im.channels == 3, "decoded %dx%dx%d", im.width, im.height,
            im.channels);
      size_t px = (size_t)S * S * 3;
      int diff = 0;
      for (size_t i = 0; i < px && im.width == S && im.channels == 3; i++) {
        int d = abs((int)im.pixels[i] - (int)ref.pixels[(size_t)k * px + i]);
        if (d > diff) diff = d;
      }
      CHECK(diff == 0, "image %d differs from sg_generate's by %d levels", k, diff);
      sg_image_free(&im);
    }
    free(png);
  }
  sg_result_free(&ref);
  uint8_t *png = (uint8_t *)"x";
  size_t len = 1;
  CHECK(sg_jobs_image(q, id, 2, &png, &len) == SG_JOBS_ENOIMAGE && !png && !len, "image 2");
  CHECK(sg_jobs_image(q, id, -1, &png, &len) == SG_JOBS_ENOIMAGE, "image -1");
  CHECK(sg_jobs_cancel(q, id) == SG_JOBS_EFINISHED, "cancel of a finished job");

  /* watching a finished job: its end at once, no handle */
  collector c2;
  collector_init(&c2);
  sg_job_watch *w2 = (sg_job_watch *)&c2;
  CHECK(sg_jobs_watch(q, id, collect, &c2, &w2) == 0 && !w2, "watch finished");
  CHECK(c2.ends == 1 && c2.progress == 0 && c2.end_state == SG_JOB_SUCCEEDED, "finished watch events");
  sg_jobs_unwatch(w2);

  CHECK(sg_jobs_drain(q, 60 * slow) == 0, "drain"); /* the worker is done with the job */
  sg_jobs_stats s;
  sg_jobs_stats_get(q, &s);
  CHECK(s.submitted == 1 && s.succeeded == 1 && s.images == 2 && s.steps == 3 && s.queued == 0 && s.running == 0 &&
            s.finished_kept == 1 && s.workers == 1 && s.max_queue == 16,
        "stats");
  CHECK(s.queue_seconds.count == 1 && s.inference_seconds.count == 1 && s.inference_seconds.sum > 0 &&
            s.inference_seconds.buckets[SG_JOBS_HIST_BUCKETS - 1] <= 1,
        "histograms");
  const double *le = sg_jobs_hist_bounds();
  for (int i = 1; i < SG_JOBS_HIST_BUCKETS; i++) CHECK(le[i] > le[i - 1], "bounds ascending");
  sg_jobs_free(q);
  CHECK(log_lines > 0, "no log lines");
  collector_destroy(&c);
  collector_destroy(&c2);
  free(prompt);
  free(sketch);
  printf("result: ok\n");
}

/* Positions, a full queue, cancel while queued (at once) and while running (at the next step). */
static void test_queue(void) {
  sg_jobs_params p = sg_jobs_default_params();
  p.max_queue = 3;
  sg_jobs *q = manager(1, p);
  sg_job_request lr = request(q, LONG_STEPS), sr = request(q, 2);
  char blocker[SG_JOB_ID_LEN], a[SG_JOB_ID_LEN], b[SG_JOB_ID_LEN], c[SG_JOB_ID_LEN], d[SG_JOB_ID_LEN];
  submit_ok(q, &lr, blocker);
  wait_for(q, blocker, 0, 120);
  submit_ok(q, &sr, a);
  submit_ok(q, &sr, b);
  submit_ok(q, &sr, c);
  CHECK(status_of(q, blocker).queue_position == -1 && status_of(q, blocker).state == SG_JOB_RUNNING, "blocker");
  CHECK(status_of(q, a).queue_position == 0 && status_of(q, b).queue_position == 1 &&
            status_of(q, c).queue_position == 2,
        "positions");
  char err[256];
  CHECK(sg_jobs_submit(q, &sr, d, err, sizeof err) == SG_JOBS_EFULL && !d[0], "full queue");
  sg_jobs_stats s;
  sg_jobs_stats_get(q, &s);
  CHECK(s.queued == 3 && s.running == 1 && s.rejected_full == 1 && s.submitted == 4, "stats full");

  collector cb;
  collector_init(&cb);
  sg_job_watch *wb;
  CHECK(sg_jobs_watch(q, b, collect, &cb, &wb) == 0 && wb, "watch b");
  CHECK(sg_jobs_cancel(q, a) == 0, "cancel a");
  sg_job_status st = status_of(q, a);
  CHECK(st.state == SG_JOB_CANCELLED && st.error == SG_JOB_ERR_CANCELLED && st.started == 0 && st.worker == -1,
        "a cancelled at once (%s)", sg_job_state_name(st.state));
  CHECK(status_of(q, b).queue_position == 0 && status_of(q, c).queue_position == 1, "positions after cancel");
  CHECK(sg_jobs_cancel(q, a) == SG_JOBS_EFINISHED, "cancel twice");
  CHECK(sg_jobs_cancel(q, b) == 0, "cancel b");
  CHECK(cb.ends == 1 && cb.progress == 0 && cb.end_state == SG_JOB_CANCELLED, "b's end before cancel returned");
  sg_jobs_unwatch(wb);

  collector cl;
  collector_init(&cl);
  sg_job_watch *wl;
  CHECK(sg_jobs_watch(q, blocker, collect, &cl, &wl) == 0 && wl, "watch blocker");
  CHECK(sg_jobs_cancel(q, blocker) == 0, "cancel running");
  CHECK(wait_end(&cl, 60), "no end for the running job");
  st = status_of(q, blocker);
  CHECK(st.state == SG_JOB_CANCELLED && st.error == SG_JOB_ERR_CANCELLED && st.step < LONG_STEPS && st.started > 0,
        "running cancel: %s at %d", sg_job_state_name(st.state), st.step);
  CHECK(cl.end_state == SG_JOB_CANCELLED && cl.end_error == SG_JOB_ERR_CANCELLED && !cl.after_end, "blocker end");
  sg_jobs_unwatch(wl);
  st = wait_for(q, c, 1, 120);
  CHECK(st.state == SG_JOB_SUCCEEDED, "c after the cancels: %s", sg_job_state_name(st.state));
  CHECK(sg_jobs_drain(q, 60 * slow) == 0, "drain");
  sg_jobs_stats_get(q, &s);
  CHECK(s.cancelled == 3 && s.succeeded == 1 && s.queued == 0 && s.running == 0, "stats after");
  sg_jobs_free(q);
  collector_destroy(&cb);
  collector_destroy(&cl);
  printf("queue: ok\n");
}

/* A queued job fails at its deadline without running (the timer ends it while the worker is busy); a running one
 * stops at the next step past its deadline; a deadline already past at submit never runs. */
static void test_deadlines(void) {
  sg_jobs *q = manager(1, sg_jobs_default_params());
  sg_job_request lr = request(q, LONG_STEPS);
  char blocker[SG_JOB_ID_LEN], d1[SG_JOB_ID_LEN], d2[SG_JOB_ID_LEN], d3[SG_JOB_ID_LEN];
  submit_ok(q, &lr, blocker);
  wait_for(q, blocker, 0, 120);
  sg_job_request r = request(q, 2);
  r.deadline = sg_jobs_now() + 0.3;
  submit_ok(q, &r, d1);
  collector c;
  collector_init(&c);
  sg_job_watch *w;
  CHECK(sg_jobs_watch(q, d1, collect, &c, &w) == 0, "watch");
  CHECK(wait_end(&c, 30), "queued deadline: no end");
  CHECK(status_of(q, blocker).state == SG_JOB_RUNNING, "the worker was busy throughout");
  sg_job_status st = status_of(q, d1);
  CHECK(st.state == SG_JOB_FAILED && st.error == SG_JOB_ERR_TIMEOUT && st.started == 0 && st.step == 0 &&
            c.end_error == SG_JOB_ERR_TIMEOUT,
        "queued deadline: %s/%s", sg_job_state_name(st.state), sg_job_error_name(st.error));
  sg_jobs_unwatch(w);
  r.deadline = sg_jobs_now() - 1;
  submit_ok(q, &r, d3);
  CHECK(sg_jobs_cancel(q, blocker) == 0, "cancel blocker");
  st = wait_for(q, d3, 1, 60);
  CHECK(st.state == SG_JOB_FAILED && st.error == SG_JOB_ERR_TIMEOUT && st.started == 0, "past deadline: %s",
        sg_job_state_name(st.state));

  wait_for(q, blocker, 1, 60); /* the worker is free: the next job starts before its deadline */
  /* it starts at once; how many steps it makes before the deadline depends on the machine's load (none is fine) */
  lr.deadline = sg_jobs_now() + 1.0 * slow;
  submit_ok(q, &lr, d2);
  st = wait_for(q, d2, 1, 120);
  CHECK(st.state == SG_JOB_FAILED && st.error == SG_JOB_ERR_TIMEOUT && st.started > 0 && st.step < LONG_STEPS &&
            strstr(st.message, "deadline"),
        "running deadline: %s/%s at step %d: %s", sg_job_state_name(st.state), sg_job_error_name(st.error), st.step,
        st.message);
  sg_jobs_stats s;
  sg_jobs_stats_get(q, &s);
  CHECK(s.timed_out == 3 && s.failed == 3 && s.cancelled == 1, "stats: %d timed out", (int)s.timed_out);
  sg_jobs_free(q);
  collector_destroy(&c);
  printf("deadlines: ok\n");
}

/* 404 versus 410: ids never issued or malformed, and ids evicted by count and by age. */
static void test_expiry(void) {
  sg_jobs_params p = sg_jobs_default_params();
  p.keep_finished_count = 1;
  sg_jobs *q = manager(1, p);
  sg_job_request r = request(q, 1);
  char a[SG_JOB_ID_LEN], b[SG_JOB_ID_LEN];
  submit_ok(q, &r, a);
  wait_for(q, a, 1, 120);
  submit_ok(q, &r, b);
  wait_for(q, b, 1, 120);
  sg_job_status st;
  uint8_t *png;
  size_t len;
  sg_job_watch *w;
  collector c;
  collector_init(&c);
  CHECK(sg_jobs_status(q, a, &st) == SG_JOBS_EEXPIRED, "a expired");
  CHECK(sg_jobs_image(q, a, 0, &png, &len) == SG_JOBS_EEXPIRED, "a's image expired");
  CHECK(sg_jobs_cancel(q, a) == SG_JOBS_EEXPIRED, "cancel expired");
  CHECK(sg_jobs_watch(q, a, collect, &c, &w) == SG_JOBS_EEXPIRED && !w && !c.ends, "watch expired");
  CHECK(sg_jobs_status(q, b, &st) == 0 && st.state == SG_JOB_SUCCEEDED, "b kept");
  CHECK(sg_jobs_image(q, b, 0, &png, &len) == 0, "b's image");
  free(png);
  const char *unknown[] = {"0123456789abcdef0123456789abcdef", "", "xyz", "0123456789ABCDEF0123456789ABCDEF",
                           "0123456789abcdef0123456789abcdef0", "0123456789abcdef0123456789abcde", NULL};
  for (int i = 0; i < 7; i++) {
    CHECK(sg_jobs_status(q, unknown[i], &st) == SG_JOBS_ENOTFOUND, "unknown id %d", i);
    CHECK(sg_jobs_cancel(q, unknown[i]) == SG_JOBS_ENOTFOUND, "cancel unknown id %d", i);
    CHECK(sg_jobs_image(q, unknown[i], 0, &png, &len) == SG_JOBS_ENOTFOUND, "image of unknown id %d", i);
  }
  sg_jobs_free(q);

  /* by age; and a watch keeps a record alive past its eviction */
  p = sg_jobs_default_params();
  p.keep_finished_seconds = 0.2;
  q = manager(1, p);
  submit_ok(q, &r, a);
  CHECK(sg_jobs_watch(q, a, collect, &c, &w) == 0, "watch a");
  wait_for(q, a, 1, 120);
  sleep_s(0.6);
  sg_jobs_stats s;
  sg_jobs_stats_get(q, &s);
  CHECK(s.finished_kept == 0, "evicted by age (%d kept)", s.finished_kept);
  CHECK(sg_jobs_status(q, a, &st) == SG_JOBS_EEXPIRED, "a expired by age");
  CHECK(c.ends == 1 && c.end_state == SG_JOB_SUCCEEDED, "watch of an evicted job");
  sg_jobs_unwatch(w);
  sg_jobs_free(q);
  collector_destroy(&c);
  printf("expiry: ok\n");
}

/* One progress event per step and one end event, in order; a watch that ends itself from its callback. */
static void test_events(void) {
  sg_jobs *q = manager(1, sg_jobs_default_params());
  sg_job_request lr = request(q, LONG_STEPS), r = request(q, 5);
  char blocker[SG_JOB_ID_LEN], t[SG_JOB_ID_LEN];
  submit_ok(q, &lr, blocker);
  submit_ok(q, &r, t);
  collector c1, c2;
  collector_init(&c1);
  collector_init(&c2);
  sg_job_watch *w1, *w2;
  CHECK(sg_jobs_watch(q, t, collect, &c1, &w1) == 0, "watch 1");
  CHECK(sg_jobs_watch(q, t, collect, &c2, &w2) == 0, "watch 2");
  pthread_mutex_lock(&c2.mu);
  c2.self = w2;
  c2.unwatch_at = 2;
  pthread_mutex_unlock(&c2.mu);
  CHECK(sg_jobs_cancel(q, blocker) == 0, "cancel blocker");
  CHECK(wait_end(&c1, 120), "no end");
  sg_jobs_unwatch(w1);
  CHECK(c1.progress == 5 && c1.ends == 1 && !c1.out_of_order && !c1.after_end && c1.end_step == 5 &&
            c1.end_state == SG_JOB_SUCCEEDED,
        "events: %d progress, %d end, %d out of order", c1.progress, c1.ends, c1.out_of_order);
  CHECK(c2.progress == 2 && c2.ends == 0, "self-unwatched: %d progress, %d end", c2.progress, c2.ends);
  sg_jobs_free(q);
  collector_destroy(&c1);
  collector_destroy(&c2);
  printf("events: ok\n");
}

/* Many threads submitting, cancelling, polling, reading images and watching at once. */
#define STRESS_THREADS 8
#define STRESS_OPS 20

typedef struct {
  sg_jobs *q;
  unsigned seed;
  char ids[STRESS_OPS][SG_JOB_ID_LEN];
  int n_ids, full, submitted;
  int evicting; /* keep_finished_count is tiny: any id may answer EEXPIRED */
  int32_t callbacks;
} stress_arg;

static void count_event(void *user, const sg_job_event *ev) { __atomic_add_fetch((int32_t *)user, 1, __ATOMIC_RELAXED); }

static void *stress_thread(void *arg) {
  stress_arg *a = arg;
  for (int op = 0; op < STRESS_OPS; op++) {
    int kind = rand_r(&a->seed) % 5;
    const char *any = a->n_ids ? a->ids[rand_r(&a->seed) % a->n_ids] : "00000000000000000000000000000000";
    if (kind == 0 || a->n_ids == 0) {
      sg_job_request r = request(a->q, 1 + rand_r(&a->seed) % 2);
      r.seed = rand_r(&a->seed) % 1000;
      char err[256];
      int rc = sg_jobs_submit(a->q, &r, a->ids[a->n_ids], err, sizeof err);
      if (rc == 0) a->n_ids++, a->submitted++;
      else if (rc == SG_JOBS_EFULL) a->full++, sleep_s(0.02); /* let the workers catch up */
      else CHECK(0, "stress submit: %d %s", rc, err);
    } else if (kind == 1) {
      int rc = sg_jobs_cancel(a->q, any);
      CHECK(rc == 0 || rc == SG_JOBS_EFINISHED || (a->evicting && rc == SG_JOBS_EEXPIRED), "stress cancel: %d", rc);
    } else if (kind == 2) {
      sg_job_status st;
      int rc = sg_jobs_status(a->q, any, &st);
      CHECK(rc == 0 || (a->evicting && rc == SG_JOBS_EEXPIRED), "stress status: %d", rc);
    } else if (kind == 3) {
      uint8_t *png;
      size_t len;
      int rc = sg_jobs_image(a->q, any, 0, &png, &len);
      CHECK(rc == 0 || rc == SG_JOBS_ENOIMAGE || (a->evicting && rc == SG_JOBS_EEXPIRED), "stress image: %d", rc);
      if (rc == 0) CHECK(len > 8 && !memcmp(png, "\x89PNG", 4), "stress PNG");
      free(png);
    } else {
      sg_job_watch *w;
      int rc = sg_jobs_watch(a->q, any, count_event, &a->callbacks, &w);
      CHECK(rc == 0 || (a->evicting && rc == SG_JOBS_EEXPIRED), "stress watch: %d", rc);
      sleep_s(0.001 * (rand_r(&a->seed) % 20));
      sg_jobs_unwatch(w);
    }
  }
  return NULL;
}

/* keep: keep_finished_count; a tiny one evicts records while other threads read them. */
static void test_stress(int32_t keep) {
  sg_jobs_params p = sg_jobs_default_params();
  p.max_queue = 4;
  p.keep_finished_count = keep;
  sg_jobs *q = manager(2, p);
  stress_arg args[STRESS_THREADS];
  pthread_t th[STRESS_THREADS];
  for (int i = 0; i < STRESS_THREADS; i++) {
    memset(&args[i], 0, sizeof args[i]);
    args[i].q = q;
    args[i].seed = 1234u + (unsigned)i + 100u * (unsigned)keep;
    args[i].evicting = keep < 100;
    pthread_create(&th[i], NULL, stress_thread, &args[i]);
  }
  int submitted = 0, full = 0, succeeded = 0, cancelled = 0, expired = 0;
  for (int i = 0; i < STRESS_THREADS; i++) {
    pthread_join(th[i], NULL);
    submitted += args[i].submitted;
    full += args[i].full;
  }
  for (int i = 0; i < STRESS_THREADS; i++)
    for (int k = 0; k < args[i].n_ids; k++) {
      sg_job_status st;
      double end = sg_jobs_now() + 300 * slow;
      int rc;
      while ((rc = sg_jobs_status(q, args[i].ids[k], &st)) == 0 && st.state < SG_JOB_SUCCEEDED && sg_jobs_now() < end)
        sleep_s(0.002);
      if (rc == SG_JOBS_EEXPIRED && keep < 100) { /* finished, then evicted */
        expired++;
        continue;
      }
      CHECK(rc == 0, "stress status: %d", rc);
      succeeded += st.state == SG_JOB_SUCCEEDED;
      cancelled += st.state == SG_JOB_CANCELLED;
      CHECK(st.state == SG_JOB_SUCCEEDED || st.state == SG_JOB_CANCELLED, "stress job %s: %s", args[i].ids[k],
            sg_job_state_name(st.state));
    }
  CHECK(sg_jobs_drain(q, 60 * slow) == 0, "drain after the stress");
  sg_jobs_stats s;
  sg_jobs_stats_get(q, &s);
  CHECK(s.submitted == (uint64_t)submitted && s.rejected_full == (uint64_t)full &&
            s.succeeded + s.failed + s.cancelled == s.submitted && s.queued == 0 && s.running == 0,
        "stress stats: %d submitted, %d+%d+%d finished", (int)s.submitted, (int)s.succeeded, (int)s.failed,
        (int)s.cancelled);
  if (keep < 100) CHECK(s.finished_kept <= keep, "stress: %d kept", s.finished_kept);
  CHECK(s.uncollected >= 0 && s.uncollected <= s.finished_kept, "stress: %d uncollected of %d kept (evictions count)",
        s.uncollected, s.finished_kept);
  check_books(q, "stress");
  printf("stress (keep %d): %d threads x %d ops: %d submitted (%d succeeded, %d cancelled, %d evicted), %d refused "
         "as full\n",
         (int)keep, STRESS_THREADS, STRESS_OPS, submitted, succeeded, cancelled, expired, full);
  sg_jobs_free(q);
}

/* Drain with work in flight (all finish), then a drain that times out (the rest cancelled with SHUTDOWN). */
static void test_drain(void) {
  sg_jobs *q = manager(1, sg_jobs_default_params());
  sg_job_request r = request(q, 2);
  char ids[3][SG_JOB_ID_LEN], x[SG_JOB_ID_LEN];
  for (int i = 0; i < 3; i++) submit_ok(q, &r, ids[i]);
  CHECK(sg_jobs_drain(q, 300 * slow) == 0, "drain in time");
  for (int i = 0; i < 3; i++) CHECK(status_of(q, ids[i]).state == SG_JOB_SUCCEEDED, "drained job %d", i);
  char err[256];
  CHECK(sg_jobs_submit(q, &r, x, err, sizeof err) == SG_JOBS_EDRAINING, "submit while draining");
  sg_jobs_stats s;
  sg_jobs_stats_get(q, &s);
  CHECK(s.draining && s.rejected_draining == 1 && s.succeeded == 3, "drain stats");
  sg_jobs_free(q);

  q = manager(1, sg_jobs_default_params());
  sg_job_request lr = request(q, LONG_STEPS);
  char blocker[SG_JOB_ID_LEN];
  submit_ok(q, &lr, blocker);
  submit_ok(q, &r, ids[0]);
  submit_ok(q, &r, ids[1]);
  wait_for(q, blocker, 0, 120);
  collector c;
  collector_init(&c);
  sg_job_watch *w;
  CHECK(sg_jobs_watch(q, blocker, collect, &c, &w) == 0, "watch");
  CHECK(sg_jobs_drain(q, 0.3) == SG_JOBS_ETIMEDOUT, "drain timeout");
  CHECK(c.ends == 1 && c.end_error == SG_JOB_ERR_SHUTDOWN, "blocker's end delivered before drain returned");
  sg_jobs_unwatch(w);
  sg_job_status st = status_of(q, blocker);
  CHECK(st.state == SG_JOB_CANCELLED && st.error == SG_JOB_ERR_SHUTDOWN && st.step < LONG_STEPS, "blocker: %s/%s",
        sg_job_state_name(st.state), sg_job_error_name(st.error));
  for (int i = 0; i < 2; i++) {
    st = status_of(q, ids[i]);
    CHECK(st.state == SG_JOB_CANCELLED && st.error == SG_JOB_ERR_SHUTDOWN && st.started == 0, "queued %d: %s", i,
          sg_job_state_name(st.state));
  }
  sg_jobs_stats_get(q, &s);
  CHECK(s.shutdown == 3 && s.cancelled == 3 && s.queued == 0 && s.running == 0, "drain timeout stats");
  sg_jobs_free(q);
  collector_destroy(&c);
  printf("drain: ok\n");
}

/* sg_jobs_free with jobs running and queued, and a watch left open. */
static void test_free_busy(void) {
  sg_jobs *q = manager(2, sg_jobs_default_params());
  sg_job_request lr = request(q, LONG_STEPS), r = request(q, 2);
  char id[SG_JOB_ID_LEN];
  submit_ok(q, &lr, id);
  submit_ok(q, &lr, id);
  for (int i = 0; i < 3; i++) submit_ok(q, &r, id);
  collector c;
  collector_init(&c);
  sg_job_watch *w;
  CHECK(sg_jobs_watch(q, id, collect, &c, &w) == 0, "watch");
  sg_jobs_free(q); /* frees w too */
  CHECK(c.ends == 1 && c.end_error == SG_JOB_ERR_SHUTDOWN, "queued job's end at free");
  collector_destroy(&c);
  printf("free: ok\n");
}

static void expect_invalid(sg_jobs *q, const sg_job_request *r, const char *param) {
  char id[SG_JOB_ID_LEN], err[256] = "";
  int rc = sg_jobs_submit(q, r, id, err, sizeof err);
  CHECK(rc == SG_JOBS_EINVAL && !strncmp(err, param, strlen(param)), "%s: rc %d, %s", param, rc, err);
}

static void test_invalid(void) {
  char err[256];
  sg_model *models[2] = {model, NULL};
  CHECK(!sg_jobs_new(NULL, 1, sg_jobs_default_params(), err, sizeof err), "no models");
  CHECK(!sg_jobs_new(models, 0, sg_jobs_default_params(), err, sizeof err) && strstr(err, "workers"), "0 workers");
  CHECK(!sg_jobs_new(models, 2, sg_jobs_default_params(), err, sizeof err), "NULL model");
  sg_jobs_params p = sg_jobs_default_params();
  p.max_queue = -1;
  CHECK(!sg_jobs_new(models, 1, p, err, sizeof err) && strstr(err, "max_queue"), "max_queue -1");
  sg_jobs *q = manager(1, sg_jobs_default_params());
  sg_job_request r = request(q, 2), b;
  b = r, b.prompt = NULL, expect_invalid(q, &b, "prompt");
  b = r, b.n_images = 0, expect_invalid(q, &b, "n:");
  b = r, b.n_images = 65, expect_invalid(q, &b, "n:");
  b = r, b.steps = 0, expect_invalid(q, &b, "steps");
  b = r, b.steps = 1001, expect_invalid(q, &b, "steps");
  b = r, b.steps = 1000, b.sampler = SG_SAMPLER_DDIM; /* as sg_generate: DDIM takes 999 at most */
  expect_invalid(q, &b, "steps: must be between 1 and 999 for ddim");
  b = r, b.cfg = NAN, expect_invalid(q, &b, "cfg");
  b = r, b.beta = -1, expect_invalid(q, &b, "beta");
  b = r, b.stop = 2, expect_invalid(q, &b, "stop");
  b = r, b.stop_step = 3, expect_invalid(q, &b, "stop_step");
  b = r, b.seed = -1, expect_invalid(q, &b, "seed");
  b = r, b.sampler = (sg_sampler_kind)99, expect_invalid(q, &b, "sampler");
  b = r, b.eta = INFINITY, expect_invalid(q, &b, "eta");
  b = r, b.deadline = -1, expect_invalid(q, &b, "deadline");
  const char *bad_keys[] = {"two  spaces", "v", "", "v", " lead", "v", "\x01", "v", "ok", NULL};
  for (int i = 0; i < 5; i++) {
    b = r;
    b.extra_text = bad_keys + 2 * i;
    b.n_extra_text = 1;
    expect_invalid(q, &b, "extra_text");
  }
  b = r, b.n_extra_text = 17, b.extra_text = bad_keys, expect_invalid(q, &b, "extra_text");
  b = r, b.n_extra_text = 1, b.extra_text = NULL, expect_invalid(q, &b, "extra_text");
  char id[SG_JOB_ID_LEN];
  CHECK(sg_jobs_submit(q, NULL, id, err, sizeof err) == SG_JOBS_EINVAL, "NULL request");
  sg_jobs_stats s;
  sg_jobs_stats_get(q, &s);
  CHECK(s.rejected_invalid == 22 && s.submitted == 0, "rejected_invalid %d", (int)s.rejected_invalid);
  CHECK(sg_jobs_watch(q, "00000000000000000000000000000000", NULL, NULL, NULL) == SG_JOBS_EINVAL, "watch args");
  sg_jobs_unwatch(NULL);
  sg_jobs_free(NULL);
  CHECK(!strcmp(sg_job_state_name(SG_JOB_CANCELLED), "cancelled") &&
            !strcmp(sg_job_error_name(SG_JOB_ERR_NOMEM), "out_of_memory") &&
            !strcmp(sg_jobs_strerror(SG_JOBS_EFULL), "queue full"),
        "names");
  sg_jobs_free(q);
  printf("invalid: ok\n");
}

/* ---- batching (max_batch > 1) ---- */

/* The largest n_running seen by batch_watch callbacks, which run on the worker between steps. */
static int32_t most_running;

typedef struct {
  collector c;
  sg_jobs *q;
  int32_t order[4096]; /* the sequence of (job tag) of progress events, shared by every watch of one test */
} batch_log;

static batch_log blog;
static int32_t blog_n;

typedef struct {
  collector c;
  int32_t tag;
} tagged;

static void batch_watch(void *user, const sg_job_event *ev) {
  tagged *t = user;
  pthread_mutex_lock(&blog.q->mu);
  if (blog.q->n_running > most_running) most_running = blog.q->n_running;
  pthread_mutex_unlock(&blog.q->mu);
  if (ev->kind == SG_JOB_EVENT_PROGRESS) {
    int32_t i = __atomic_fetch_add(&blog_n, 1, __ATOMIC_SEQ_CST);
    if (i < 4096) blog.order[i] = t->tag;
  }
  collect(&t->c, ev);
}

/* Decodes job id's image k and returns the largest difference in levels from pixels (n bytes); -1 on failure. */
static int png_diff(sg_jobs *q, const char *id, int32_t k, const uint8_t *pixels, size_t n) {
  uint8_t *png;
  size_t len;
  if (sg_jobs_image(q, id, k, &png, &len)) return -1;
  sg_image im;
  char err[128];
  int rc = sg_image_decode(png, len, sg_image_default_params(), &im, err, sizeof err);
  free(png);
  if (rc || (size_t)im.width * im.height * im.channels != n) return -1;
  int d = 0;
  for (size_t i = 0; i < n; i++) {
    int e = abs((int)im.pixels[i] - (int)pixels[i]);
    if (e > d) d = e;
  }
  sg_image_free(&im);
  return d;
}

/* The request as sg_generate params, for the solo reference. */
static sg_generate_params gen_params(const sg_job_request *r) {
  sg_generate_params p = sg_generate_default_params(model);
  p.prompt = r->prompt;
  p.negative_prompt = r->negative_prompt;
  p.sketch = r->sketch;
  p.beta = r->beta;
  p.stop = r->stop;
  p.stop_step = r->stop_step;
  p.steps = r->steps;
  p.cfg = r->cfg;
  p.seed = r->seed;
  p.sampler = r->sampler;
  p.eta = r->eta;
  p.n_images = r->n_images;
  return p;
}

static float *square_sketch(int nan_pixel) {
  int32_t S = sg_model_get_info(model)->image_size;
  float *s = calloc((size_t)S * S, sizeof *s);
  for (int32_t i = S / 4; i <= 3 * S / 4; i++)
    s[S / 4 * S + i] = s[3 * S / 4 * S + i] = s[i * S + S / 4] = s[i * S + 3 * S / 4] = 1.0f;
  if (nan_pixel) s[S / 4 * S + S / 4] = NAN;
  return s;
}

/* Jobs held behind a solo job start together when it leaves and share every step (their progress events
 * interleave; never more than max_batch run), each at its own sampler, steps, cfg, n and guidance; each gets its
 * own events in order and an image that matches sg_generate of the same request (unguided: within a level;
 * guided: within a few). A job with a NaN in its sketch fails alone. */
static void test_batch_mixed(void) {
  sg_jobs_params p = sg_jobs_default_params();
  p.max_batch = 4;
  sg_jobs *q = manager(1, p);
  blog.q = q;
  blog_n = 0;
  most_running = 0;
  float *sk = square_sketch(0), *bad = square_sketch(1);
  sg_job_request blocker = request(q, LONG_STEPS), r[6];
  blocker.solo = 1;
  const sg_sampler_kind kinds[6] = {SG_SAMPLER_DDIM, SG_SAMPLER_EULER_A, SG_SAMPLER_DPMPP_2M, SG_SAMPLER_DDPM,
                                    SG_SAMPLER_DDIM, SG_SAMPLER_EULER_A};
  for (int k = 0; k < 6; k++) {
    r[k] = request(q, 3 + k);
    r[k].sampler = kinds[k];
    r[k].seed = 100 + k;
    r[k].cfg = k % 2 ? 1.0 : 6.0;
    r[k].n_images = k == 1 ? 2 : 1;
    r[k].sketch = k == 2 || k == 3 ? sk : k == 5 ? bad : NULL;
    r[k].beta = r[k].sketch ? 1.6 : 0;
  }
  char bid[SG_JOB_ID_LEN], id[6][SG_JOB_ID_LEN];
  submit_ok(q, &blocker, bid);
  wait_for(q, bid, 0, 120);
  tagged t[6];
  sg_job_watch *w[6];
  char err[256];
  for (int k = 0; k < 6; k++) {
    collector_init(&t[k].c);
    t[k].tag = k;
    CHECK(sg_jobs_submit_watch(q, &r[k], batch_watch, &t[k], id[k], &w[k], err, sizeof err) == 0, "submit %d: %s", k,
          err);
  }
  CHECK(status_of(q, id[0]).state == SG_JOB_QUEUED, "a solo job lets no other job join it");
  CHECK(sg_jobs_cancel(q, bid) == 0, "cancel the blocker");
  for (int k = 0; k < 6; k++) CHECK(wait_end(&t[k].c, 300), "job %d: no end", k);
  CHECK(most_running <= 4, "%d jobs ran at once, max_batch 4", (int)most_running);
  CHECK(most_running >= 2, "the jobs never ran together (at most %d at once)", (int)most_running);
  /* jobs 0 and 1 start in the same step: their first events alternate, not one job's run then the other's */
  int32_t first0 = -1, last0 = -1, first1 = -1;
  for (int32_t i = 0; i < blog_n && i < 4096; i++) {
    if (blog.order[i] == 0 && first0 < 0) first0 = i;
    if (blog.order[i] == 0) last0 = i;
    if (blog.order[i] == 1 && first1 < 0) first1 = i;
  }
  CHECK(first0 >= 0 && first1 >= 0 && first1 < last0, "progress events of jobs 0 and 1 do not interleave");
  for (int k = 0; k < 6; k++) {
    sg_job_status st = status_of(q, id[k]);
    CHECK(t[k].c.out_of_order == 0 && !t[k].c.after_end, "job %d: events out of order", k);
    if (k == 5) {
      CHECK(st.state == SG_JOB_FAILED && st.error == SG_JOB_ERR_RUNTIME && strstr(st.message, "finite"),
            "the NaN sketch: %s %s", sg_job_state_name(st.state), st.message);
      continue;
    }
    CHECK(st.state == SG_JOB_SUCCEEDED && t[k].c.progress == r[k].steps, "job %d: %s after %d events: %s", k,
          sg_job_state_name(st.state), t[k].c.progress, st.message);
    sg_generate_params gp = gen_params(&r[k]);
    sg_result res;
    CHECK(sg_generate(model, &gp, &res, err, sizeof err) == 0, "solo %d: %s", k, err);
    size_t px = (size_t)res.width * res.height * 3;
    for (int32_t i = 0; i < res.n; i++) {
      int d = png_diff(q, id[k], i, res.pixels + i * px, px);
      int tol = r[k].sketch ? 8 : 1;
      CHECK(d >= 0 && d <= tol, "job %d image %d: %d levels from the job run alone (at most %d)", k, (int)i, d, tol);
    }
    sg_result_free(&res);
  }
  for (int k = 0; k < 6; k++) sg_jobs_unwatch(w[k]), collector_destroy(&t[k].c);
  sg_jobs_free(q);
  free(sk);
  free(bad);
  printf("batch mixed: ok (at most %d at once)\n", (int)most_running);
}

/* A job joins a running batch at a step boundary; cancelling one member or its deadline passing stops it alone at
 * its next step while the others go on; a solo job (batching off) waits for the batch to empty and then runs
 * alone; the queue holds max_queue beyond the batch's free places; drain lets a batch finish, and cancels one that
 * outlasts it at the members' next steps. */
static void test_batch_lifecycle(void) {
  sg_jobs_params p = sg_jobs_default_params();
  p.max_batch = 3;
  p.max_queue = 1;
  sg_jobs *q = manager(1, p);
  blog.q = q;
  most_running = 0;
  sg_job_request lr = request(q, LONG_STEPS), sr = request(q, 4), solo = request(q, 2);
  solo.solo = 1;
  char a[SG_JOB_ID_LEN], b[SG_JOB_ID_LEN], c[SG_JOB_ID_LEN], d[SG_JOB_ID_LEN], e[SG_JOB_ID_LEN], f[SG_JOB_ID_LEN];
  submit_ok(q, &lr, a);
  CHECK(wait_for(q, a, 0, 120).state == SG_JOB_RUNNING, "a runs");
  double end = sg_jobs_now() + 60 * slow;
  while (status_of(q, a).step < 2 && sg_jobs_now() < end) sleep_s(0.002);
  lr.deadline = sg_jobs_now() + 3600;
  submit_ok(q, &lr, b); /* joins a, which is past its second step */
  sg_job_status sb = wait_for(q, b, 0, 120);
  CHECK(sb.state == SG_JOB_RUNNING && status_of(q, a).state == SG_JOB_RUNNING, "b joined the running batch");
  submit_ok(q, &solo, c); /* waits: a solo job needs the worker alone */
  submit_ok(q, &sr, d);   /* waits behind it (FIFO), although the batch has a free place */
  char err[256], x[SG_JOB_ID_LEN];
  CHECK(sg_jobs_submit(q, &sr, x, err, sizeof err) == SG_JOBS_EFULL, "max_queue 1 + 1 free place: the third waits");
  CHECK(status_of(q, c).state == SG_JOB_QUEUED && status_of(q, d).state == SG_JOB_QUEUED, "c and d wait");
  collector ca, cb;
  collector_init(&ca);
  collector_init(&cb);
  sg_job_watch *wa, *wb;
  CHECK(sg_jobs_watch(q, a, collect, &ca, &wa) == 0 && sg_jobs_watch(q, b, collect, &cb, &wb) == 0, "watch a, b");
  CHECK(sg_jobs_cancel(q, a) == 0, "cancel a");
  CHECK(wait_end(&ca, 60), "a: no end");
  sg_job_status st = status_of(q, a);
  CHECK(st.state == SG_JOB_CANCELLED && st.error == SG_JOB_ERR_CANCELLED, "a cancelled: %s", sg_job_state_name(st.state));
  /* b goes on alone: its events continue after a's end */
  pthread_mutex_lock(&cb.mu);
  int32_t at = cb.progress;
  pthread_mutex_unlock(&cb.mu);
  end = sg_jobs_now() + 60 * slow;
  int more = 0;
  while (!more && sg_jobs_now() < end) {
    pthread_mutex_lock(&cb.mu);
    more = cb.progress > at + 1 && !cb.ends;
    pthread_mutex_unlock(&cb.mu);
    sleep_s(0.002);
  }
  CHECK(more && status_of(q, b).state == SG_JOB_RUNNING, "b stopped with a");
  CHECK(status_of(q, c).state == SG_JOB_QUEUED, "the solo job started beside b");
  /* b's deadline: set it to pass now (under the lock, as a deadline seen at its next step) */
  pthread_mutex_lock(&q->mu);
  job *jb;
  sg_jm_lookup_locked(q, b, &jb);
  jb->deadline = sg_jobs_now();
  pthread_mutex_unlock(&q->mu);
  CHECK(wait_end(&cb, 60), "b: no end");
  st = status_of(q, b);
  CHECK(st.state == SG_JOB_FAILED && st.error == SG_JOB_ERR_TIMEOUT && strstr(st.message, "deadline"),
        "b's deadline: %s %s", sg_job_state_name(st.state), st.message);
  st = wait_for(q, c, 1, 120);
  CHECK(st.state == SG_JOB_SUCCEEDED, "solo c: %s", sg_job_state_name(st.state));
  st = wait_for(q, d, 1, 120);
  CHECK(st.state == SG_JOB_SUCCEEDED, "d: %s", sg_job_state_name(st.state));
  /* the solo job's image is sg_generate's, bit for bit */
  sg_generate_params gp = gen_params(&solo);
  sg_result res;
  CHECK(sg_generate(model, &gp, &res, err, sizeof err) == 0, "solo reference: %s", err);
  CHECK(png_diff(q, c, 0, res.pixels, (size_t)res.width * res.height * 3) == 0, "the solo job differs from sg_generate");
  sg_result_free(&res);
  sg_jobs_unwatch(wa);
  sg_jobs_unwatch(wb);
  /* drain: a batch of short jobs finishes; then a batch of long ones is cancelled at the timeout */
  submit_ok(q, &sr, e);
  submit_ok(q, &sr, f);
  CHECK(sg_jobs_drain(q, 120 * slow) == 0, "drain of short jobs");
  CHECK(status_of(q, e).state == SG_JOB_SUCCEEDED && status_of(q, f).state == SG_JOB_SUCCEEDED, "drained jobs ran");
  sg_jobs_free(q);
  q = manager(1, p);
  lr.deadline = 0;
  submit_ok(q, &lr, a);
  submit_ok(q, &lr, b);
  wait_for(q, a, 0, 120);
  wait_for(q, b, 0, 120);
  CHECK(sg_jobs_drain(q, 0.2) == SG_JOBS_ETIMEDOUT, "drain of long jobs times out");
  sg_job_status s1 = status_of(q, a), s2 = status_of(q, b);
  CHECK(s1.state == SG_JOB_CANCELLED && s1.error == SG_JOB_ERR_SHUTDOWN && s2.state == SG_JOB_CANCELLED &&
            s2.error == SG_JOB_ERR_SHUTDOWN,
        "drain cancelled the batch: %s, %s", sg_job_state_name(s1.state), sg_job_state_name(s2.state));
  sg_jobs_stats s;
  sg_jobs_stats_get(q, &s);
  CHECK(s.running == 0 && s.queued == 0 && s.max_batch == 3, "stats after drain");
  sg_jobs_free(q);
  collector_destroy(&ca);
  collector_destroy(&cb);
  char e2[256];
  sg_model *models[1] = {model};
  p.max_batch = 0;
  CHECK(!sg_jobs_new(models, 1, p, e2, sizeof e2) && strstr(e2, "max_batch"), "max_batch 0: %s", e2);
  printf("batch lifecycle: ok\n");
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: test_jobs MODEL_DIR\n");
    return 2;
  }
  const char *env = getenv("SG_TEST_SLOW");
  if (env && atof(env) >= 1) slow = atof(env);
  char err[512];
  model = sg_model_load(argv[1], sg_model_default_params(), err, sizeof err);
  if (!model) {
    fprintf(stderr, "%s\n", err);
    return 1;
  }
  test_invalid();
  test_result();
  test_queue();
  test_deadlines();
  test_expiry();
  test_events();
  test_drain();
  test_collected();
  test_books_evicted_before_end();
  test_books_copy_nomem();
  test_sync_evicted();
  test_submit_watch();
  test_free_busy();
  test_stress(1000);
  test_stress(2);
  test_batch_mixed();
  test_batch_lifecycle();
  sg_model_free(model);
  if (failures) fprintf(stderr, "%d failures\n", failures);
  return failures ? 1 : 0;
}
