/* Request counters and duration histograms under one small lock, rendered with the job manager's stats. */
#include "metrics.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  char method[16];
  char route[64];
  int status;
  uint64_t count;
} series;

typedef struct {
  char method[16];
  char route[64];
  sg_jobs_hist h;
} hist_series;

typedef struct {
  char reason[48];
  uint64_t count;
} reject;

struct sg_metrics {
  pthread_mutex_t mu;
  sg_metrics_params p;
  char prefix[64];
  series *req;
  int32_t n_req;
  hist_series *dur;
  int32_t n_dur;
  reject rej[32];
  int32_t n_rej;
};

sg_metrics_params sg_metrics_default_params(void) {
  sg_metrics_params p = {"sketchguide", 512};
  return p;
}

sg_metrics *sg_metrics_new(sg_metrics_params p) {
  if (p.max_series < 1) p.max_series = 1;
  if (!p.prefix) p.prefix = "sketchguide";
  sg_metrics *m = calloc(1, sizeof *m);
  if (!m) return NULL;
  m->p = p;
  snprintf(m->prefix, sizeof m->prefix, "%s", p.prefix);
  m->p.prefix = m->prefix;
  m->req = calloc((size_t)p.max_series, sizeof *m->req);
  m->dur = calloc((size_t)p.max_series, sizeof *m->dur);
  if (!m->req || !m->dur || pthread_mutex_init(&m->mu, NULL)) {
    free(m->req);
    free(m->dur);
    free(m);
    return NULL;
  }
  return m;
}

void sg_metrics_free(sg_metrics *m) {
  if (!m) return;
  pthread_mutex_destroy(&m->mu);
  free(m->req);
  free(m->dur);
  free(m);
}

static void hist_add(sg_jobs_hist *h, double v) {
  const double *le = sg_jobs_hist_bounds();
  for (int i = 0; i < SG_JOBS_HIST_BUCKETS; i++)
    if (v <= le[i]) h->buckets[i]++;
  h->count++;
  h->sum += v;
}

void sg_metrics_request(sg_metrics *m, const char *method, const char *route, int status, double seconds) {
  if (!m) return;
  if (!method) method = "OTHER";
  if (!route) route = "other";
  if (!(seconds >= 0)) seconds = 0;
  pthread_mutex_lock(&m->mu);
  series *s = NULL;
  for (int32_t i = 0; i < m->n_req && !s; i++)
    if (m->req[i].status == status && !strcmp(m->req[i].method, method) && !strcmp(m->req[i].route, route))
      s = &m->req[i];
  if (!s && m->n_req < m->p.max_series) {
    s = &m->req[m->n_req++];
    snprintf(s->method, sizeof s->method, "%s", method);
    snprintf(s->route, sizeof s->route, "%s", route);
    s->status = status;
  }
  if (s) s->count++;
  hist_series *d = NULL;
  for (int32_t i = 0; i < m->n_dur && !d; i++)
    if (!strcmp(m->dur[i].method, method) && !strcmp(m->dur[i].route, route)) d = &m->dur[i];
  if (!d && m->n_dur < m->p.max_series) {
    d = &m->dur[m->n_dur++];
    snprintf(d->method, sizeof d->method, "%s", method);
    snprintf(d->route, sizeof d->route, "%s", route);
  }
  if (d) hist_add(&d->h, seconds);
  pthread_mutex_unlock(&m->mu);
}

void sg_metrics_reject(sg_metrics *m, const char *reason) {
  if (!m || !reason) return;
  pthread_mutex_lock(&m->mu);
  int32_t i = 0;
  while (i < m->n_rej && strcmp(m->rej[i].reason, reason)) i++;
  if (i == m->n_rej && m->n_rej < (int32_t)(sizeof m->rej / sizeof *m->rej)) {
    snprintf(m->rej[i].reason, sizeof m->rej[i].reason, "%s", reason);
    m->n_rej++;
  }
  if (i < m->n_rej) m->rej[i].count++;
  pthread_mutex_unlock(&m->mu);
}

/* ---- rendering ---- */

typedef struct {
  char *s;
  size_t len, cap;
  int failed;
} text;

static void put(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(text *t, const char *fmt, ...) {
  if (t->failed) return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(t->s + t->len, t->cap - t->len, fmt, ap);
    va_end(ap);
    if (n < 0) {
      t->failed = 1;
      return;
    }
    if ((size_t)n < t->cap - t->len) {
      t->len += (size_t)n;
      return;
    }
    size_t cap = t->cap * 2 + (size_t)n + 1;
    char *s = realloc(t->s, cap);
    if (!s) {
      t->failed = 1;
      return;
    }
    t->s = s;
    t->cap = cap;
  }
}

static void head(text *t, const char *prefix, const char *name, const char *type, const char *help) {
  put(t, "# HELP %s_%s %s\n# TYPE %s_%s %s\n", prefix, name, help, prefix, name, type);
}

/* Writes one histogram's series; labels is "" or `a="b",` (with the trailing comma). */
static void hist_lines(text *t, const char *prefix, const char *name, const char *labels, const sg_jobs_hist *h) {
  const double *le = sg_jobs_hist_bounds();
  for (int i = 0; i < SG_JOBS_HIST_BUCKETS; i++)
    put(t, "%s_%s_bucket{%sle=\"%g\"} %llu\n", prefix, name, labels, le[i], (unsigned long long)h->buckets[i]);
  put(t, "%s_%s_bucket{%sle=\"+Inf\"} %llu\n", prefix, name, labels, (unsigned long long)h->count);
  size_t n = strlen(labels);
  char bare[256];
  snprintf(bare, sizeof bare, "%.*s", n ? (int)n - 1 : 0, labels); /* without the trailing comma */
  put(t, "%s_%s_sum%s%s%s %.9g\n", prefix, name, n ? "{" : "", bare, n ? "}" : "", h->sum);
  put(t, "%s_%s_count%s%s%s %llu\n", prefix, name, n ? "{" : "", bare, n ? "}" : "", (unsigned long long)h->count);
}

char *sg_metrics_render(sg_metrics *m, const sg_metrics_state *st) {
  if (!m || !st) return NULL;
  text t = {malloc(8192), 0, 8192, 0};
  if (!t.s) return NULL;
  t.s[0] = 0;
  const char *P = m->prefix;
  pthread_mutex_lock(&m->mu);
  head(&t, P, "http_requests_total", "counter", "HTTP requests answered, by method, route and status code.");
  for (int32_t i = 0; i < m->n_req; i++)
    put(&t, "%s_http_requests_total{method=\"%s\",route=\"%s\",code=\"%d\"} %llu\n", P, m->req[i].method,
        m->req[i].route, m->req[i].status, (unsigned long long)m->req[i].count);
  head(&t, P, "http_request_duration_seconds", "histogram",
       "Time from a request's first byte to its last response byte, by method and route.");
  for (int32_t i = 0; i < m->n_dur; i++) {
    char labels[128];
    snprintf(labels, sizeof labels, "method=\"%s\",route=\"%s\",", m->dur[i].method, m->dur[i].route);
    hist_lines(&t, P, "http_request_duration_seconds", labels, &m->dur[i].h);
  }
  const sg_jobs_stats *js = st->jobs;
  head(&t, P, "requests_rejected_total", "counter",
       "Generation requests refused, by reason (queue_full, draining and invalid come from the job manager).");
  uint64_t from_jobs[3] = {js ? js->rejected_full : 0, js ? js->rejected_draining : 0,
                           js ? js->rejected_invalid : 0};
  const char *job_reasons[3] = {"queue_full", "draining", "invalid"};
  for (int k = 0; k < 3; k++) {
    uint64_t n = from_jobs[k];
    for (int32_t i = 0; i < m->n_rej; i++)
      if (!strcmp(m->rej[i].reason, job_reasons[k])) n += m->rej[i].count;
    put(&t, "%s_requests_rejected_total{reason=\"%s\"} %llu\n", P, job_reasons[k], (unsigned long long)n);
  }
  for (int32_t i = 0; i < m->n_rej; i++) {
    int dup = 0;
    for (int k = 0; k < 3; k++) dup |= !strcmp(m->rej[i].reason, job_reasons[k]);
    if (!dup)
      put(&t, "%s_requests_rejected_total{reason=\"%s\"} %llu\n", P, m->rej[i].reason,
          (unsigned long long)m->rej[i].count);
  }
  pthread_mutex_unlock(&m->mu);

  head(&t, P, "ready", "gauge", "1 when the model is loaded and warm and the service is not draining.");
  put(&t, "%s_ready %d\n", P, st->ready && !st->draining);
  head(&t, P, "draining", "gauge", "1 after SIGTERM or SIGINT, while work finishes.");
  put(&t, "%s_draining %d\n", P, st->draining ? 1 : 0);
  if (st->connections >= 0) {
    head(&t, P, "http_connections", "gauge", "Open HTTP connections.");
    put(&t, "%s_http_connections %d\n", P, (int)st->connections);
  }
  sg_jobs_stats zero;
  memset(&zero, 0, sizeof zero);
  if (!js) js = &zero;
  head(&t, P, "queue_depth", "gauge", "Jobs waiting for a worker.");
  put(&t, "%s_queue_depth %d\n", P, (int)js->queued);
  head(&t, P, "jobs_running", "gauge", "Jobs being generated now.");
  put(&t, "%s_jobs_running %d\n", P, (int)js->running);
  head(&t, P, "workers", "gauge", "Inference workers (one per device entry).");
  put(&t, "%s_workers %d\n", P, (int)js->workers);
  head(&t, P, "jobs_kept", "gauge", "Finished jobs held for status and image queries.");
  put(&t, "%s_jobs_kept %d\n", P, (int)js->finished_kept);
  head(&t, P, "jobs_submitted_total", "counter", "Jobs accepted into the queue.");
  put(&t, "%s_jobs_submitted_total %llu\n", P, (unsigned long long)js->submitted);
  head(&t, P, "jobs_finished_total", "counter",
       "Jobs finished, by final state (timed_out and shutdown are subsets of failed and cancelled).");
  put(&t, "%s_jobs_finished_total{state=\"succeeded\"} %llu\n", P, (unsigned long long)js->succeeded);
  put(&t, "%s_jobs_finished_total{state=\"failed\"} %llu\n", P, (unsigned long long)js->failed);
  put(&t, "%s_jobs_finished_total{state=\"cancelled\"} %llu\n", P, (unsigned long long)js->cancelled);
  head(&t, P, "jobs_timed_out_total", "counter", "Failed jobs whose deadline passed.");
  put(&t, "%s_jobs_timed_out_total %llu\n", P, (unsigned long long)js->timed_out);
  head(&t, P, "jobs_shutdown_total", "counter", "Jobs cancelled by a shutdown.");
  put(&t, "%s_jobs_shutdown_total %llu\n", P, (unsigned long long)js->shutdown);
  head(&t, P, "images_generated_total", "counter", "Images generated by succeeded jobs.");
  put(&t, "%s_images_generated_total %llu\n", P, (unsigned long long)js->images);
  head(&t, P, "steps_total", "counter", "Sampler steps run (one per job step, whatever its image count).");
  put(&t, "%s_steps_total %llu\n", P, (unsigned long long)js->steps);
  head(&t, P, "job_queue_seconds", "histogram", "Time from submission to the start of generation.");
  hist_lines(&t, P, "job_queue_seconds", "", &js->queue_seconds);
  head(&t, P, "job_inference_seconds", "histogram", "Time from the start of generation to the job's end.");
  hist_lines(&t, P, "job_inference_seconds", "", &js->inference_seconds);
  if (t.failed) {
    free(t.s);
    return NULL;
  }
  return t.s;
}
