/* Private to server/store*.c: the table of operations behind sg_store (store.h), one per implementation. */
#ifndef SG_STORE_IMPL_H
#define SG_STORE_IMPL_H

#include "store.h"

typedef struct {
  const char *kind;
  void (*free_)(sg_store *s);
  int (*ready)(sg_store *s);
  int (*model)(sg_store *s, sg_model_info *info, sg_job_request *defaults);
  int (*submit)(sg_store *s, const sg_job_request *req, const sg_store_submit_opts *o, sg_store_watch_fn cb,
                void *user, char id[SG_JOB_ID_LEN], int64_t *seed, sg_store_watcher **w, char *err, size_t errlen);
  int (*status)(sg_store *s, const char *id, sg_job_status *out);
  int (*image)(sg_store *s, const char *id, int32_t i, uint8_t **png, size_t *len);
  int (*cancel)(sg_store *s, const char *id);
  int (*watch)(sg_store *s, const char *id, const char *after, sg_store_watch_fn cb, void *user, sg_store_watcher **w);
  void (*unwatch)(sg_store *s, sg_store_watcher *w);
  int (*event_status)(sg_store *s, const sg_job_event *ev, sg_job_status *out);
  int (*event_image)(sg_store *s, const sg_job_event *ev, int32_t i, uint8_t **png, size_t *len);
  int (*stats)(sg_store *s, sg_jobs_stats *out);
  char *(*metrics_text)(sg_store *s, const char *prefix);
  /* key: a well-formed new key (put) or one to look up (get, which leaves the expiry to the dispatch) */
  int (*file_put)(sg_store *s, const char *key, const char *job_id, int32_t index, double expires);
  int (*file_get)(sg_store *s, const char *key, char job_id[SG_JOB_ID_LEN], int32_t *index, double *expires);
} sg_store_ops;

struct sg_store {
  const sg_store_ops *ops;
};

#endif
