/* The sketch pad's files (server/web/), embedded in the binary at build time by server/embed_web.py. */
#ifndef SG_WEB_ASSETS_H
#define SG_WEB_ASSETS_H

#include <stddef.h>

typedef struct {
  const char *name;         /* the file's name in server/web/, e.g. "app.js" */
  const char *content_type; /* from its extension, e.g. "text/javascript; charset=utf-8" */
  const unsigned char *data;
  size_t len;
  const char *etag;         /* a strong entity tag of the content, quoted: "\"3f2a...\"" */
} sg_web_asset;

/* The embedded files, sorted by name. */
extern const sg_web_asset SG_WEB_ASSETS[];
extern const size_t SG_WEB_N_ASSETS;

#endif
