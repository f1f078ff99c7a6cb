/* The service's counters and histograms (requests by route and status, rejections) and their Prometheus text.
 *
 * Basic usage:
 *   sg_metrics *m = sg_metrics_new(sg_metrics_default_params());
 *   sg_metrics_request(m, "POST", "/v1/generate", 200, 0.8);      // once per answered request
 *   sg_metrics_reject(m, "too_large");                            // a request refused before it became a job
 *   sg_jobs_stats js;  sg_jobs_stats_get(q, &js);
 *   sg_metrics_state st = {.ready = 1, .jobs = &js};
 *   char *text = sg_metrics_render(m, &st);                       // Prometheus text format 0.0.4
 *   ... free(text);
 *   sg_metrics_free(m);
 *
 * Labels are bounded by the caller (route templates, not paths); past max_series distinct label sets further ones
 * are counted under route "other". Every call is thread-safe; nothing here prints, exits or aborts. Constructors
 * return NULL when out of memory; sg_metrics_render returns NULL when out of memory.
 */
#ifndef SG_METRICS_H
#define SG_METRICS_H

#include <stdint.h>

#include "jobs.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sg_metrics sg_metrics;

typedef struct {
  const char *prefix;  /* metric name prefix; "sketchguide" */
  int32_t max_series;  /* distinct (method, route, status) sets kept; 512 */
} sg_metrics_params;

/* What the renderer reports besides the counters kept here. */
typedef struct {
  int ready;                  /* the model is loaded and warm */
  int draining;               /* shutting down */
  int32_t connections;        /* open HTTP connections; -1 = unknown */
  const sg_jobs_stats *jobs;  /* NULL before the job manager exists */
} sg_metrics_state;

/* Returns the defaults: prefix "sketchguide", max_series 512. */
sg_metrics_params sg_metrics_default_params(void);

/* Returns a new, empty set of metrics, or NULL when out of memory. */
sg_metrics *sg_metrics_new(sg_metrics_params p);

/* Frees m; NULL is ignored. */
void sg_metrics_free(sg_metrics *m);

/* Counts one answered request (method and route are copied; route is a template such as "/v1/jobs/{id}") and
 * observes its duration in seconds. */
void sg_metrics_request(sg_metrics *m, const char *method, const char *route, int status, double seconds);

/* Counts one request refused before it became a job, by reason ("too_large", "unauthorized", ...). */
void sg_metrics_reject(sg_metrics *m, const char *reason);

/* Returns the Prometheus text of every metric in a new NUL-terminated buffer the caller frees, or NULL. */
char *sg_metrics_render(sg_metrics *m, const sg_metrics_state *st);

#ifdef __cplusplus
}
#endif

#endif
