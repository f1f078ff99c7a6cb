/* The native API's JSON bodies of jobs: status objects and image lists (jobjson.h). */
#include "jobjson.h"

#include <math.h>
#include <stdio.h>

/* Times and durations to the millisecond (Unix seconds) or microsecond (milliseconds). */
json_t *sg_jobjson_ms(double v) { return json_real(round(v * 1000.0) / 1000.0); }
static json_t *num_or_null(double v, int ok) { return ok ? sg_jobjson_ms(v) : json_null(); }

/* The images of a succeeded job as [{index, seed, url}] (status objects and the end event). */
json_t *sg_jobjson_images(const char *id, int64_t seed, int32_t n) {
  json_t *imgs = json_array();
  for (int32_t i = 0; i < n; i++) {
    char url[128];
    json_t *im = json_object();
    snprintf(url, sizeof url, "/v1/jobs/%s/images/%d", id, (int)i);
    json_object_set_new(im, "index", json_integer(i));
    json_object_set_new(im, "seed", json_integer(seed + i));
    json_object_set_new(im, "url", json_string(url));
    json_array_append_new(imgs, im);
  }
  return imgs;
}

/* Returns the status object of a job (GET /v1/jobs/{id}, events), or NULL when out of memory. */
json_t *sg_jobjson_status(const sg_job_status *st) {
  json_t *o = json_object();
  if (!o) return NULL;
  char url[128];
  json_object_set_new(o, "id", json_string(st->id));
  json_object_set_new(o, "status", json_string(sg_job_state_name(st->state)));
  json_object_set_new(o, "queue_position", st->queue_position >= 0 ? json_integer(st->queue_position) : json_null());
  json_t *pr = json_object();
  json_object_set_new(pr, "step", json_integer(st->step));
  json_object_set_new(pr, "total", json_integer(st->total));
  json_object_set_new(o, "progress", pr);
  json_object_set_new(o, "seed", json_integer(st->seed));
  json_object_set_new(o, "n", json_integer(st->n_images));
  json_object_set_new(o, "created_at", sg_jobjson_ms(st->created));
  json_object_set_new(o, "started_at", num_or_null(st->started, st->started > 0));
  json_object_set_new(o, "finished_at", num_or_null(st->finished, st->finished > 0));
  json_object_set_new(o, "queue_time_ms", sg_jobjson_ms(st->queue_ms));
  json_object_set_new(o, "inference_time_ms", sg_jobjson_ms(st->inference_ms));
  json_object_set_new(o, "worker", st->worker >= 0 ? json_integer(st->worker) : json_null());
  if (st->error != SG_JOB_ERR_NONE) {
    json_t *e = json_object();
    json_object_set_new(e, "code", json_string(sg_job_error_name(st->error)));
    json_object_set_new(e, "message", json_string(st->message));
    json_object_set_new(o, "error", e);
  } else {
    json_object_set_new(o, "error", json_null());
  }
  json_object_set_new(o, "images", sg_jobjson_images(st->id, st->seed, st->n_ready));
  snprintf(url, sizeof url, "/v1/jobs/%s/events", st->id);
  json_object_set_new(o, "events_url", json_string(url));
  if (st->state == SG_JOB_SUCCEEDED) {
    json_t *t = json_object();
    const sg_timings *tm = &st->timings;
    json_object_set_new(t, "text", json_real(round(tm->text * 1e6) / 1e6));
    json_object_set_new(t, "vae_encode", json_real(round(tm->vae_encode * 1e6) / 1e6));
    json_object_set_new(t, "unet", json_real(round(tm->unet * 1e6) / 1e6));
    json_object_set_new(t, "guided_forward", json_real(round(tm->guided_forward * 1e6) / 1e6));
    json_object_set_new(t, "lgp", json_real(round(tm->lgp * 1e6) / 1e6));
    json_object_set_new(t, "backward", json_real(round(tm->backward * 1e6) / 1e6));
    json_object_set_new(t, "sampler", json_real(round(tm->sampler * 1e6) / 1e6));
    json_object_set_new(t, "vae_decode", json_real(round(tm->vae_decode * 1e6) / 1e6));
    json_object_set_new(t, "total", json_real(round(tm->total * 1e6) / 1e6));
    json_object_set_new(o, "timings_s", t);
    json_object_set_new(o, "guided_steps", json_integer(st->guided_steps));
  }
  return o;
}
