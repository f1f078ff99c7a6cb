/* The parameters of POST /v1/generate from its body (multipart fields or a JSON object), without a server.
 *
 * Basic usage:
 *   sg_request_limits lim = sg_request_default_limits();
 *   lim.image_size = model_info->image_size;         // the sketch map's size
 *   lim.defaults = sg_jobs_default_request(jobs);    // the model's defaults
 *   sg_request *q = sg_request_new(&lim);
 *   if (sg_request_begin(q, content_type_header) == 0)   // "multipart/form-data; boundary=..." or "application/json"
 *     for (each piece of the body as it arrives) sg_request_add_body(q, piece, piece_len);
 *   // or, without a body to parse: fields one by one (sg_request_add_field), or a JSON text (sg_request_add_json)
 *   sg_request_params out;
 *   if (sg_request_parse(q, &out) == 0) ... out.jr is ready for sg_jobs_submit, out.dry_run says what to do
 *   else { const sg_request_error *e = sg_request_get_error(q); ... e->code, e->param, e->message }
 *   sg_request_free(q);                               // frees out's strings and sketch map too
 *
 * A request is one body: either multipart or JSON, never both. The limits are those of sg_http_params (the sketch
 * counts against max_body_bytes, prompts against max_prompt_bytes, every other value against 256 bytes).
 *
 * Errors: sg_request_new returns NULL when out of memory. Every other call returns 0 (SG_REQUEST_OK) or a negative
 * SG_REQUEST_E* code; the first error met is kept (later calls return it again and change nothing) and
 * sg_request_get_error says what it was: a code, the parameter it concerns ("" when none) and a message that
 * starts with that parameter's name ("steps: must be between 1 and 150"). Nothing here prints, exits or keeps
 * global state; one request is used by one thread at a time.
 */
#ifndef SG_REQUEST_H
#define SG_REQUEST_H

#include <stddef.h>
#include <stdint.h>

#include "image.h"
#include "jobs.h"

#ifdef __cplusplus
extern "C" {
#endif

enum {
  SG_REQUEST_OK = 0,
  SG_REQUEST_EBAD = -1,         /* malformed: not a number, not base64, bad JSON, unknown or repeated parameter */
  SG_REQUEST_EINVALID = -2,     /* well-formed but not acceptable: out of range, not UTF-8, an unusable sketch */
  SG_REQUEST_ETOOLARGE = -3,    /* the sketch is over max_body_bytes */
  SG_REQUEST_EUNSUPPORTED = -4, /* the sketch is not a PNG or JPEG image (by its content) */
  SG_REQUEST_ENOMEM = -5,
};

#define SG_REQUEST_MAX_NAMES 16

/* A name that another API gives a part or member of the body (the OpenAI routes, openai.h): read as the parameter
 * `as` ("image" as "sketch"), or, when as is NULL, kept as a value of its own (at most 256 bytes, given once) that
 * sg_request_extra returns. */
typedef struct {
  const char *name;
  const char *as;
} sg_request_name;

typedef struct {
  int64_t max_body_bytes;     /* 16 MiB: the most bytes of the sketch */
  int64_t max_image_pixels;   /* 4096 x 4096: checked from the image's header before decoding */
  int32_t max_steps;          /* 150 */
  int32_t max_images;         /* 4 (at most SG_JOBS_MAX_IMAGES) */
  int32_t max_prompt_bytes;   /* 2000, prompt and negative prompt each */
  int64_t default_timeout_ms; /* 300000 */
  int64_t max_timeout_ms;     /* 3600000 */
  int32_t image_size;         /* 64: the sketch map's width and height (the model's image size) */
  int has_lgp;                /* 1: the model can follow a sketch (beta > 0 is refused otherwise, as sg_jobs does) */
  sg_job_request defaults;    /* steps, beta, stop, stop_step, cfg, sampler, eta of a request that omits them */
  const sg_request_name *names; /* NULL: the parameters' own names only; else looked up before them (the array must
                                   outlive the request) */
  int32_t n_names;            /* 0 .. SG_REQUEST_MAX_NAMES */
  int sketch_optional;        /* 0: a request without a sketch is refused; 1: it runs unguided (beta > 0 refused) */
} sg_request_limits;

/* The outcome of sg_request_parse. Its strings and sketch map belong to the request (valid until sg_request_free). */
typedef struct {
  sg_job_request jr;          /* prompt, negative_prompt, sketch (the map), numbers, seed (resolved when random) */
  int seed_random;            /* 1 when the client gave no seed (or -1) and one was drawn */
  int64_t timeout_ms;         /* the request's deadline from now */
  int dry_run;                /* 1: describe the request (sg_request_describe) instead of running it */
  sg_image_format format;     /* the sketch's format, width and height as sent, and whether it was inverted */
  int32_t width, height;
  int inverted;
  int32_t filled_regions;     /* the sketch's filled regions replaced by their outlines (as the `filled` mode says) */
  int32_t map_size;           /* limits.image_size */
} sg_request_params;

typedef struct {
  int code;                   /* SG_REQUEST_E* */
  char param[32];             /* the parameter's name, "" when the error is not about one */
  char message[256];
} sg_request_error;

typedef struct sg_request sg_request;

/* Returns the defaults above, with sg_job_request defaults of 50 steps, beta 1.6, stop 0.5, cfg 7.5, ddim. */
sg_request_limits sg_request_default_limits(void);

/* Returns a new empty request that keeps a copy of *lim, or NULL when out of memory (or lim is NULL, or has more
 * than SG_REQUEST_MAX_NAMES names). */
sg_request *sg_request_new(const sg_request_limits *lim);

/* Frees q and everything it handed out. NULL is ignored. */
void sg_request_free(sg_request *q);

/* Chooses the body's parser from its Content-Type (NULL = none): the media type must be exactly application/json
 * or multipart/form-data (any case, parameters allowed after ';'; "application/jsonx" is neither), and multipart
 * needs a boundary parameter of 1 to 70 characters. Returns 0, SG_REQUEST_EUNSUPPORTED for another media type, or
 * SG_REQUEST_EBAD for a multipart type without a usable boundary. */
int sg_request_begin(sg_request *q, const char *content_type);

/* Feeds the next n bytes of the body (after sg_request_begin) to its parser: multipart/form-data is parsed as it
 * arrives (RFC 7578: a part per parameter, each given once, named by its Content-Disposition; the preamble and
 * epilogue are ignored), JSON is kept for sg_request_parse. Returns 0 or a negative code. */
int sg_request_add_body(sg_request *q, const void *data, size_t n);

/* Adds a piece of the multipart part called name: off is the number of bytes of this part before data (0 for a
 * part's first piece: every piece at offset 0 starts a new part). An unknown name, a parameter given twice
 * (even after an empty first part), a piece out of order, or a value over its limit is an error. Returns 0
 * or a negative code. */
int sg_request_add_field(sg_request *q, const char *name, uint64_t off, const void *data, size_t n);

/* Appends n bytes of a JSON body (parsed by sg_request_parse). Returns 0 or a negative code. */
int sg_request_add_json(sg_request *q, const void *data, size_t n);

/* Records an error found outside (a malformed multipart body, a body over its limit) unless one is recorded
 * already; param may be NULL. Returns the recorded error's code. */
int sg_request_fail(sg_request *q, int code, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Checks every parameter and decodes and maps the sketch into *out. Call it once, after the whole body. Returns 0,
 * or a negative code with the error recorded. */
int sg_request_parse(sg_request *q, sg_request_params *out);

/* Returns the value of the part or member kept under the name `name` of limits.names (one whose `as` is NULL) as
 * NUL-terminated text (valid until sg_request_free) with its length in *len (NULL allowed), or NULL when the body
 * had none. */
const char *sg_request_extra(const sg_request *q, const char *name, size_t *len);

/* Returns the first error recorded, or NULL when there is none. */
const sg_request_error *sg_request_get_error(const sg_request *q);

/* Copies a client-given name (a parameter, a path, a header value) into out (cap >= 5 bytes) for a message:
 * printable ASCII but '"' kept, anything else '?', cut with "..." when it does not fit. Returns out. */
const char *sg_request_safe_name(const char *s, char *out, size_t cap);

/* Returns the dry-run answer {"valid": true, "params": {...}, "sketch": {...}} of a parsed request as compact JSON
 * in a buffer the caller frees, or NULL when out of memory. */
char *sg_request_describe(const sg_request_params *p);

/* Returns 1 when the n bytes at name are the name of a request parameter ("steps"), else 0. */
int sg_request_is_param(const char *name, size_t n);

#ifdef __cplusplus
}
#endif

#endif
