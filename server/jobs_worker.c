/* The job manager's threads (see jobs.c): workers stepping batches of generations, and the deadline and eviction
 * timer. */
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "image.h"
#include "jobs_impl.h"

/* ---- workers ---- */

/* Records a step of running j, checks its cancel flag and deadline, sends the progress event. Returns 1 when j
 * should stop. Lock not held. */
static int on_progress(sg_jobs *q, job *j, int32_t step, int32_t total) {
  pthread_mutex_lock(&q->mu);
  j->step = step;
  q->st.steps++;
  if (j->cancel == SG_JOB_ERR_NONE && j->deadline > 0 && sg_jobs_now() >= j->deadline)
    j->cancel = SG_JOB_ERR_TIMEOUT;
  int stop = j->cancel != SG_JOB_ERR_NONE, watched = j->watchers != NULL;
  pthread_mutex_unlock(&q->mu);
  if (watched) {
    sg_job_event ev = {SG_JOB_EVENT_PROGRESS, j->id, SG_JOB_RUNNING, step, total, SG_JOB_ERR_NONE, "", 0, NULL, NULL};
    sg_jm_dispatch(q, j, &ev);
  }
  return stop;
}

static sg_job_error error_of(int rc, const char *msg) {
  switch (rc) {
    case SG_GENERATE_EINVAL:
    case SG_GENERATE_ENOLGP: return SG_JOB_ERR_INVALID;
    case SG_GENERATE_ENOMEM: return SG_JOB_ERR_NOMEM;
    case SG_GENERATE_ECANCEL: return SG_JOB_ERR_CANCELLED;
    default: return strstr(msg, "out of memory") ? SG_JOB_ERR_NOMEM : SG_JOB_ERR_RUNTIME; /* CUDA's OOM */
  }
}

/* Encodes image k of r as PNG with the job's text chunks. Returns 0 or a negative SG_IMAGE_E* code. */
static int encode_png(const job *j, const sg_model *m, const sg_result *r, int32_t k, blob *out, char *err,
                      size_t errlen) {
  char seed[32], beta[32], stop[32], steps[32], cfg[32];
  snprintf(seed, sizeof seed, "%" PRId64, r->seeds ? r->seeds[k] : j->seed + k);
  snprintf(beta, sizeof beta, "%g", j->beta);
  snprintf(stop, sizeof stop, "%g", j->stop);
  snprintf(steps, sizeof steps, "%" PRId32, j->steps);
  snprintf(cfg, sizeof cfg, "%g", j->cfg);
  sg_png_text text[9 + SG_JOBS_MAX_EXTRA_TEXT] = {
      {"prompt", j->prompt},
      {"negative_prompt", j->negative},
      {"seed", seed},
      {"beta", beta},
      {"stop", stop},
      {"steps", steps},
      {"cfg", cfg},
      {"sampler", sg_sampler_kind_name(j->sampler)},
      {"model", j->model_name ? j->model_name : sg_model_get_info(m)->name},
  };
  int32_t n = 9;
  for (int32_t i = 0; i < j->n_extra; i++) text[n++] = (sg_png_text){j->extra[2 * i], j->extra[2 * i + 1]};
  size_t px = (size_t)r->width * r->height * 3;
  return sg_png_encode(r->pixels + (size_t)k * px, r->width, r->height, 3, text, n, &out->data, &out->len, err,
                       errlen);
}

/* The generation parameters of job j. */
static sg_generate_params params_of(const sg_jobs *q, const job *j) {
  sg_generate_params p = q->defaults;
  p.prompt = j->prompt;
  p.negative_prompt = j->negative;
  p.sketch = j->sketch;
  p.beta = j->beta;
  p.stop = j->stop;
  p.stop_step = j->stop_step;
  p.steps = j->steps;
  p.cfg = j->cfg;
  p.seed = j->seed;
  p.sampler = j->sampler;
  p.eta = j->eta;
  p.n_images = j->n_images;
  p.progress = NULL;
  p.cancel = NULL; /* the flag lives under the lock; on_progress reads it */
  return p;
}

/* Ends running j (referenced by the caller) on w: with rc 0 encodes r's images (and frees r), else records the
 * failure err (SG_GENERATE_ECANCEL: the reason set on the job); then finishes it, sends its END and drops the
 * worker's hold on it. Lock not held. */
static void end_job(worker *w, job *j, int rc, char *err, size_t errlen, sg_result *r) {
  sg_jobs *q = w->q;
  sg_job_error e = rc ? error_of(rc, err) : SG_JOB_ERR_NONE;
  blob *images = NULL;
  if (rc == 0) {
    images = calloc((size_t)r->n, sizeof *images);
    if (!images) {
      e = SG_JOB_ERR_NOMEM;
      snprintf(err, errlen, "out of memory");
    }
    for (int32_t k = 0; images && k < r->n && e == SG_JOB_ERR_NONE; k++) {
      char perr[200] = "";
      int prc = encode_png(j, w->m, r, k, &images[k], perr, sizeof perr);
      if (prc) {
        e = prc == SG_IMAGE_ENOMEM ? SG_JOB_ERR_NOMEM : SG_JOB_ERR_RUNTIME;
        snprintf(err, errlen, "PNG encoding: %s", perr);
      }
    }
    if (e != SG_JOB_ERR_NONE && images) {
      for (int32_t k = 0; k < r->n; k++) free(images[k].data);
      free(images);
      images = NULL;
    }
  }
  pthread_mutex_lock(&q->mu);
  sg_job_state state = SG_JOB_FAILED;
  if (e == SG_JOB_ERR_NONE) {
    state = SG_JOB_SUCCEEDED;
    j->images = images;
    j->n_ready = r->n;
    j->timings = r->timings;
    j->guided_steps = r->guided_steps;
    err[0] = 0;
  } else if (e == SG_JOB_ERR_CANCELLED) {
    e = j->cancel != SG_JOB_ERR_NONE ? j->cancel : SG_JOB_ERR_CANCELLED;
    state = e == SG_JOB_ERR_TIMEOUT ? SG_JOB_FAILED : SG_JOB_CANCELLED;
    snprintf(err, errlen, "%s at step %d of %d",
             e == SG_JOB_ERR_TIMEOUT ? "deadline passed" : e == SG_JOB_ERR_SHUTDOWN ? "shut down" : "cancelled",
             (int)j->step, (int)j->steps);
  }
  sg_jm_finish_locked(q, j, state, e, err);
  sg_job_event ev;
  sg_jm_end_event(q, j, &ev);
  pthread_mutex_unlock(&q->mu);
  if (rc == 0) sg_result_free(r);
  sg_jm_dispatch(q, j, &ev);
  sg_jm_log_line(q, state == SG_JOB_SUCCEEDED ? SG_JOBS_LOG_INFO : SG_JOBS_LOG_WARN, "%s: job %s %s in %.3f s%s%s", __func__,
        j->id, sg_job_state_name(state), j->t_finished - j->t_started, ev.message[0] ? ": " : "", ev.message);
  pthread_mutex_lock(&q->mu);
  q->n_running--; /* only now, so that drain returns after the END events went out */
  q->n_solo_running -= j->solo;
  pthread_cond_broadcast(&q->idle_cv);
  sg_jm_unref_locked(q, j);
  pthread_mutex_unlock(&q->mu);
}

/* Takes queued jobs for w's batch (lock held): FIFO, up to max_batch members in all; a solo job (batching off)
 * waits until the batch is empty and then runs alone. Jobs whose deadline passed are ended onto *pending. Returns
 * how many were taken into out. */
static int32_t admit_locked(sg_jobs *q, worker *w, int32_t cap, int32_t n_active, int solo_active, job **out,
                            job **pending) {
  int32_t n = 0;
  double now = sg_jobs_now();
  sg_jm_evict_due_locked(q, now);
  while (q->qhead && !solo_active && n_active + n < cap) {
    job *j = q->qhead;
    if (j->deadline > 0 && now >= j->deadline) { /* the timer has not got to it yet */
      sg_jm_end_queued_locked(q, j, SG_JOB_FAILED, SG_JOB_ERR_TIMEOUT, "deadline passed while queued", pending);
      continue;
    }
    if (j->solo && n_active + n > 0) break; /* it waits at the head, so that the batch empties for it */
    sg_jm_list_remove(&q->qhead, &q->qtail, j);
    q->n_queued--;
    q->n_running++;
    j->state = SG_JOB_RUNNING;
    j->worker = w->index;
    j->t_started = now;
    j->w_started = sg_jm_wall_now();
    j->refs++; /* the worker's, until end_job */
    sg_jm_hist_observe(&q->st.queue_seconds, now - j->t_created);
    out[n++] = j;
    if (j->solo) solo_active = 1, q->n_solo_running++;
  }
  return n;
}

/* A worker: at every step boundary it retires the members that are done, failed or told to stop, admits queued
 * jobs up to max_batch, and advances every member by one step in one batch call (server/jobs.h). */
void *sg_jm_worker_main(void *arg) {
  worker *w = arg;
  sg_jobs *q = w->q;
  int32_t cap = q->p.max_batch;
  job **jobs = calloc((size_t)cap, sizeof *jobs), **fresh = calloc((size_t)cap, sizeof *fresh);
  sg_generation **gens = calloc((size_t)cap, sizeof *gens);
  int *rcs = calloc((size_t)cap, sizeof *rcs);
  char(*errs)[256] = calloc((size_t)cap, sizeof *errs);
  job *jobs1[1], *fresh1[1];
  sg_generation *gens1[1];
  int rcs1[1];
  char errs1[1][256];
  if (!jobs || !fresh || !gens || !rcs || !errs) { /* out of memory: batches of one */
    free(jobs), free(fresh), free(gens), free(rcs), free(errs);
    jobs = jobs1, fresh = fresh1, gens = gens1, rcs = rcs1, errs = errs1, cap = 1;
    sg_jm_log_line(q, SG_JOBS_LOG_WARN, "%s: worker %d: out of memory for a batch of %d; running one job at a time",
             __func__, (int)w->index, (int)q->p.max_batch);
  }
  int32_t n = 0;
  pthread_mutex_lock(&q->mu);
  for (;;) {
    while (!q->stopping && !q->qhead && n == 0) pthread_cond_wait(&q->work_cv, &q->mu);
    if (q->stopping && n == 0) break; /* sg_jobs_free emptied the queue */
    job *pending = NULL;
    int solo_active = n > 0 && jobs[0]->solo;
    int32_t nf = admit_locked(q, w, cap, n, solo_active, fresh, &pending);
    pthread_mutex_unlock(&q->mu);
    sg_jm_send_ends(q, pending);
    for (int32_t k = 0; k < nf; k++) {
      job *j = fresh[k];
      sg_jm_log_line(q, SG_JOBS_LOG_DEBUG, "%s: job %s on worker %d (%d steps, %d images, batch of %d)", __func__, j->id,
               (int)w->index, (int)j->steps, (int)j->n_images, (int)(n + 1));
      sg_generate_params p = params_of(q, j);
      char err[256] = "";
      sg_generation *g = NULL;
      int rc = sg_generation_start(w->m, &p, &g, err, sizeof err);
      if (rc) {
        end_job(w, j, rc, err, sizeof err, NULL);
        continue;
      }
      jobs[n] = j;
      gens[n++] = g;
    }
    if (n > 0) {
      sg_generation_step_batch(gens, n, rcs, errs[0], sizeof errs[0]);
      int32_t kept = 0;
      for (int32_t k = 0; k < n; k++) {
        job *j = jobs[k];
        sg_generation *g = gens[k];
        int rc = rcs[k];
        char *err = errs[k];
        sg_result r;
        if (rc == 0 && on_progress(q, j, sg_generation_step_index(g), sg_generation_steps(g))) {
          rc = SG_GENERATE_ECANCEL;
          snprintf(err, sizeof errs[k], "cancelled");
        }
        if (rc == 0 && !sg_generation_done(g)) {
          jobs[kept] = j;
          gens[kept++] = g;
          continue;
        }
        if (rc == 0) rc = sg_generation_finish(g, &r, err, sizeof errs[k]);
        sg_generation_free(g);
        end_job(w, j, rc, err, sizeof errs[k], &r);
      }
      n = kept;
    }
    pthread_mutex_lock(&q->mu);
  }
  pthread_mutex_unlock(&q->mu);
  if (jobs != jobs1) free(jobs), free(fresh), free(gens), free(rcs), free(errs);
  return NULL;
}

/* Fails queued jobs whose deadline passed and evicts old finished jobs, sleeping until the next such time. */
void *sg_jm_timer_main(void *arg) {
  sg_jobs *q = arg;
  pthread_mutex_lock(&q->mu);
  while (!q->stopping) {
    double now = sg_jobs_now(), wake = INFINITY;
    job *pending = NULL;
    for (job *j = q->qhead, *next; j; j = next) {
      next = j->next;
      if (j->deadline > 0 && now >= j->deadline)
        sg_jm_end_queued_locked(q, j, SG_JOB_FAILED, SG_JOB_ERR_TIMEOUT, "deadline passed while queued", &pending);
      else if (j->deadline > 0 && j->deadline < wake)
        wake = j->deadline;
    }
    sg_jm_evict_due_locked(q, now);
    if (pending) {
      pthread_mutex_unlock(&q->mu);
      sg_jm_send_ends(q, pending);
      pthread_mutex_lock(&q->mu);
      continue;
    }
    if (q->fhead && q->fhead->t_finished + q->p.keep_finished_seconds < wake)
      wake = q->fhead->t_finished + q->p.keep_finished_seconds;
    if (wake == INFINITY) {
      pthread_cond_wait(&q->timer_cv, &q->mu);
    } else {
      struct timespec ts = sg_jm_to_timespec(wake);
      pthread_cond_timedwait(&q->timer_cv, &q->mu, &ts);
    }
  }
  pthread_mutex_unlock(&q->mu);
  return NULL;
}
