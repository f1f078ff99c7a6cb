/* The native API's JSON bodies of jobs (GET /v1/jobs/{id}, the event stream), from the job manager's snapshots.
 *
 * Basic usage:
 *   sg_job_status st;
 *   sg_jobs_status(jobs, id, &st);
 *   json_t *o = sg_jobjson_status(&st);     // NULL when out of memory; the caller owns it
 *
 * Errors: the builders return NULL when out of memory (a member that could not be made is left out); nothing here
 * prints or keeps state.
 */
#ifndef SG_JOBJSON_H
#define SG_JOBJSON_H

#include <jansson.h>
#include <stdint.h>

#include "jobs.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Returns a time or duration v rounded to the thousandth (milliseconds of Unix seconds, microseconds of
 * milliseconds) as a JSON real. */
json_t *sg_jobjson_ms(double v);

/* Returns the images of a succeeded job as [{index, seed, url}] (image k has seed + k), or NULL. */
json_t *sg_jobjson_images(const char *id, int64_t seed, int32_t n);

/* Returns the status object of a job, or NULL. */
json_t *sg_jobjson_status(const sg_job_status *st);

#ifdef __cplusplus
}
#endif

#endif
