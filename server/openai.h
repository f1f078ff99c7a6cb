/* The OpenAI images API's shapes over the native generation: the body's names, checks of its own fields, the answer
 * and error bodies, and result URLs. No HTTP here: http*.c route, parse and answer with these.
 *
 * Basic usage (what http_handlers.c does for POST /v1/images/edits and /v1/images/generations):
 *   sg_request_limits lim = ...;                      // the service's limits, as for POST /v1/generate
 *   sg_openai_limits(SG_OPENAI_EDITS, &lim);          // "image" read as the sketch; size, model, ... kept aside
 *   sg_request *q = sg_request_new(&lim);  ... the body ...  sg_request_parse(q, &params);
 *   sg_openai_options o;
 *   sg_request_error e;
 *   if (sg_openai_check(q, model_name, image_size, &o, &e)) ... answer e (sg_openai_error_body) ...
 *   ... run params.jr as POST /v1/generate does; for url results register each image's key in the job store
 *   (sg_store_file_put, store.h: GET /v1/images/files/{key} from any replica until it expires), then:
 *   sg_openai_answer_params ap = {o.format, time(NULL), image_size, base_url, keys};
 *   json_t *answer = sg_openai_answer(&ap, pngs, lens, n);   // base64 texts or URLs, per o.format
 *
 * Errors: sg_openai_check returns 0 or a negative SG_OPENAI_E* code (with a message in the sg_request_error); the
 * JSON builders return NULL when out of memory. Nothing here prints, exits or aborts.
 */
#ifndef SG_OPENAI_H
#define SG_OPENAI_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "jobs.h"
#include "request.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
  SG_OPENAI_OK = 0,
  SG_OPENAI_EBAD = -1,      /* malformed (400) */
  SG_OPENAI_EINVALID = -2,  /* well-formed but not acceptable: a size or format this service cannot make (422) */
  SG_OPENAI_ENOTFOUND = -3, /* another model (404) */
  SG_OPENAI_ENOMEM = -5,
};

typedef enum { SG_OPENAI_GENERATIONS = 0, SG_OPENAI_EDITS } sg_openai_route;
typedef enum { SG_OPENAI_B64_JSON = 0, SG_OPENAI_URL } sg_openai_format;

typedef struct {
  sg_openai_format format; /* response_format; b64_json when absent */
} sg_openai_options;

/* Sets the names of the route's body in *lim (static tables): for edits "image" (or "image[]", as the SDKs name
 * an array of one) is the sketch; size, response_format, model, user, quality, output_format are kept for
 * sg_openai_check; the native parameters (steps, beta, seed, ...) keep their names; generations make the sketch
 * optional (its JSON may still carry one as "sketch", base64 or a data URL). */
void sg_openai_limits(sg_openai_route route, sg_request_limits *lim);

/* Checks the OpenAI fields of a parsed request q: model absent, "" or model_name (else ENOTFOUND); size absent,
 * "auto" or image_size x image_size (else EINVALID, naming the size it makes; EBAD when not WIDTHxHEIGHT);
 * response_format b64_json or url; output_format png; no dry_run (EBAD). Returns 0 with *out filled, or a code
 * with *err filled (its code the SG_OPENAI_E* one, param and message). */
int sg_openai_check(const sg_request *q, const char *model_name, int32_t image_size, sg_openai_options *out,
                    sg_request_error *err);

/* What an answer needs besides its images. */
typedef struct {
  sg_openai_format format;
  int64_t created;          /* Unix seconds */
  int32_t image_size;
  const char *base_url;     /* url results: sg_openai_base_url's ("" for paths) */
  const char *const *keys;  /* url results: image i's file key (sg_store_file_put), n of them */
} sg_openai_answer_params;

/* Returns the answer {"created", "data": [{"b64_json": base64 of png[i]} or {"url": base_url/v1/images/files/keys[i]}],
 * "size", "output_format"} of n images, or NULL when out of memory. The caller owns it. */
json_t *sg_openai_answer(const sg_openai_answer_params *p, uint8_t *const *png, const size_t *len, int32_t n);

/* Returns the error body {"error": {"message", "type", "param", "code"}} of an answer with HTTP status, the native
 * code ("invalid_parameter", ...; "model_not_found" and "invalid_api_key" for those cases) and message; param NULL
 * or "" is null. On the edits route the sketch is called "image", as the client named it. NULL when out of memory. */
json_t *sg_openai_error_body(sg_openai_route route, int status, const char *code, const char *param,
                             const char *message);

/* Writes the base of result URLs, "http://host" ("https://" when forwarded_proto is "https"), into out; host is the
 * request's Host header (NULL or anything but a host name, IPv4/IPv6 literal and port: out is "", and the URLs are
 * paths). Returns out. */
const char *sg_openai_base_url(const char *host, const char *forwarded_proto, char *out, size_t cap);

#ifdef __cplusplus
}
#endif

#endif
