/* The OpenAI images API over the native generation: names, checks, answer and error bodies, result URLs (openai.h). */
#include "openai.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base64.h"

/* The fields of OpenAI's bodies that are not native parameters: kept aside (as NULL) for sg_openai_check. */
#define KEPT {"size", NULL}, {"response_format", NULL}, {"model", NULL}, {"user", NULL}, {"quality", NULL}, \
             {"output_format", NULL}, {"dry_run", NULL}

static const sg_request_name EDIT_NAMES[] = {{"image", "sketch"}, {"image[]", "sketch"}, KEPT};
static const sg_request_name GENERATION_NAMES[] = {KEPT};

void sg_openai_limits(sg_openai_route route, sg_request_limits *lim) {
  if (route == SG_OPENAI_EDITS) {
    lim->names = EDIT_NAMES;
    lim->n_names = (int32_t)(sizeof EDIT_NAMES / sizeof *EDIT_NAMES);
  } else {
    lim->names = GENERATION_NAMES;
    lim->n_names = (int32_t)(sizeof GENERATION_NAMES / sizeof *GENERATION_NAMES);
    lim->sketch_optional = 1;
  }
}

static int fail(sg_request_error *e, int code, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(sg_request_error *e, int code, const char *param, const char *fmt, ...) {
  e->code = code;
  snprintf(e->param, sizeof e->param, "%s", param);
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(e->message, sizeof e->message, fmt, ap);
  va_end(ap);
  return code;
}

/* The kept field name as text, or NULL when absent; *bad set when it holds a NUL. */
static const char *kept(const sg_request *q, const char *name, int *bad) {
  size_t n = 0;
  const char *v = sg_request_extra(q, name, &n);
  *bad = v && strlen(v) != n;
  return v;
}

/* Parses "WIDTHxHEIGHT" (decimal digits, no sign or blanks, at most 5 each). Returns 1 when well-formed. */
static int size_parse(const char *s, int32_t *w, int32_t *h) {
  int32_t *out[2] = {w, h};
  for (int k = 0; k < 2; k++) {
    size_t n = strspn(s, "0123456789");
    if (n == 0 || n > 5) return 0;
    *out[k] = (int32_t)strtol(s, NULL, 10);
    s += n;
    if (k == 0 && *s++ != 'x') return 0;
  }
  return *s == 0;
}

int sg_openai_check(const sg_request *q, const char *model_name, int32_t image_size, sg_openai_options *out,
                    sg_request_error *err) {
  memset(out, 0, sizeof *out);
  memset(err, 0, sizeof *err);
  char shown[64];
  int bad;
  const char *v;
  if ((v = kept(q, "dry_run", &bad)))
    return fail(err, SG_OPENAI_EBAD, "dry_run", "dry_run: not available on the OpenAI routes (POST /v1/generate has it)");
  if ((v = kept(q, "model", &bad)) && *v && (bad || strcmp(v, model_name)))
    return fail(err, SG_OPENAI_ENOTFOUND, "model", "model: '%s' is not served here; this service runs '%s'",
                sg_request_safe_name(v, shown, sizeof shown), model_name);
  if ((v = kept(q, "size", &bad)) && *v && strcmp(v, "auto")) {
    int32_t w = 0, h = 0;
    if (bad || !size_parse(v, &w, &h))
      return fail(err, SG_OPENAI_EBAD, "size", "size: '%s' is not WIDTHxHEIGHT; this model makes %dx%d (or auto)",
                  sg_request_safe_name(v, shown, sizeof shown), (int)image_size, (int)image_size);
    if (w != image_size || h != image_size)
      return fail(err, SG_OPENAI_EINVALID, "size", "size: this model cannot make %dx%d; it makes %dx%d (or auto)",
                  (int)w, (int)h, (int)image_size, (int)image_size);
  }
  if ((v = kept(q, "response_format", &bad))) {
    if (!strcmp(v, "url")) out->format = SG_OPENAI_URL;
    else if (strcmp(v, "b64_json") || bad)
      return fail(err, SG_OPENAI_EINVALID, "response_format", "response_format: '%s' is not b64_json or url",
                  sg_request_safe_name(v, shown, sizeof shown));
  }
  if ((v = kept(q, "output_format", &bad)) && (bad || strcmp(v, "png")))
    return fail(err, SG_OPENAI_EINVALID, "output_format", "output_format: '%s' is not png (the only format made here)",
                sg_request_safe_name(v, shown, sizeof shown));
  return 0;
}

json_t *sg_openai_answer(const sg_openai_answer_params *p, uint8_t *const *png, const size_t *len, int32_t n) {
  json_t *o = json_object(), *data = json_array();
  if (!o || !data) {
    json_decref(o);
    json_decref(data);
    return NULL;
  }
  char size[32];
  snprintf(size, sizeof size, "%dx%d", (int)p->image_size, (int)p->image_size);
  int oom = json_object_set_new(o, "created", json_integer(p->created)) || json_object_set_new(o, "data", data) ||
            json_object_set_new(o, "size", json_string(size)) ||
            json_object_set_new(o, "output_format", json_string("png"));
  for (int32_t i = 0; i < n && !oom; i++) {
    char *text = NULL;
    if (p->format == SG_OPENAI_B64_JSON) {
      text = sg_base64_encode(png[i], len[i]);
    } else {
      size_t cap = strlen(p->base_url) + strlen(p->keys[i]) + 32;
      if ((text = malloc(cap))) snprintf(text, cap, "%s/v1/images/files/%s", p->base_url, p->keys[i]);
    }
    json_t *im = text ? json_pack("{s:s}", p->format == SG_OPENAI_URL ? "url" : "b64_json", text) : NULL;
    oom = !im || json_array_append_new(data, im); /* append_new drops im when it fails */
    free(text);
  }
  if (oom) {
    json_decref(o);
    return NULL;
  }
  return o;
}

/* OpenAI's error.type for an HTTP status. */
static const char *error_type(int status) {
  switch (status) {
  case 401: return "authentication_error";
  case 429: return "rate_limit_error";
  case 503: return "service_unavailable_error";
  default: return status >= 500 ? "server_error" : "invalid_request_error";
  }
}

json_t *sg_openai_error_body(sg_openai_route route, int status, const char *code, const char *param,
                             const char *message) {
  char msg[512];
  snprintf(msg, sizeof msg, "%s", message ? message : "");
  if (route == SG_OPENAI_EDITS && param && !strcmp(param, "sketch")) { /* the client's name for it */
    param = "image";
    if (!strncmp(msg, "sketch", 6)) {
      memmove(msg + 5, msg + 6, strlen(msg + 6) + 1);
      memcpy(msg, "image", 5);
    }
  }
  if (status == 401) code = "invalid_api_key";
  if (status == 404 && param && !strcmp(param, "model")) code = "model_not_found";
  return json_pack("{s:{s:s,s:s,s:o,s:o}}", "error", "message", msg, "type", error_type(status), "param",
                   param && *param ? json_string(param) : json_null(), "code", code ? json_string(code) : json_null());
}

const char *sg_openai_base_url(const char *host, const char *forwarded_proto, char *out, size_t cap) {
  if (cap) out[0] = 0;
  if (!host || !*host || strlen(host) > 255 ||
      strspn(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:[]") != strlen(host))
    return out;
  int https = forwarded_proto && !strcmp(forwarded_proto, "https");
  int n = snprintf(out, cap, "%s://%s", https ? "https" : "http", host);
  if (n < 0 || (size_t)n >= cap) out[0] = 0;
  return out;
}
