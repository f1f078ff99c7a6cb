/* The LGP trainer's data sets (lgp_train.h): (image, edge map, caption) pairs added one by one or loaded from a
 * directory of NAME.png|.jpg + NAME.txt [+ NAME.edges.png], as tools/train_lgp.py reads them. */
#include "lgp_train.h"

#include "edges.h"
#include "errbuf.h"
#include "image.h"
#include "mem.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

/* ---------------------------------------------------------------- data */

struct sg_lgp_data {
  int32_t size, n, cap;
  uint8_t *images; /* n x size x size x 3 */
  uint8_t *edges;  /* n x size x size, 255/0 */
  char **captions;
};

sg_lgp_data *sg_lgp_data_new(int32_t image_size, char *err, size_t errlen) {
  if (image_size < 8 || image_size > 4096) {
    sg_set_err(err, errlen, "image size %d is out of range (8 to 4096)", (int)image_size);
    return NULL;
  }
  sg_lgp_data *d = calloc(1, sizeof *d);
  if (!d) sg_set_err(err, errlen, "out of memory");
  else d->size = image_size;
  return d;
}

void sg_lgp_data_free(sg_lgp_data *d) {
  if (!d) return;
  for (int32_t i = 0; i < d->n; i++) free(d->captions[i]);
  free(d->captions), free(d->images), free(d->edges);
  free(d);
}

int32_t sg_lgp_data_count(const sg_lgp_data *d) { return d ? d->n : 0; }
int32_t sg_lgp_data_image_size(const sg_lgp_data *d) { return d ? d->size : 0; }

const uint8_t *sg_lgp_data_image(const sg_lgp_data *d, int32_t i) {
  return d && i >= 0 && i < d->n ? d->images + (size_t)i * d->size * d->size * 3 : NULL;
}

const uint8_t *sg_lgp_data_edges(const sg_lgp_data *d, int32_t i) {
  return d && i >= 0 && i < d->n ? d->edges + (size_t)i * d->size * d->size : NULL;
}

const char *sg_lgp_data_caption(const sg_lgp_data *d, int32_t i) {
  return d && i >= 0 && i < d->n ? d->captions[i] : NULL;
}

int sg_lgp_data_add(sg_lgp_data *d, const uint8_t *rgb, int32_t width, int32_t height, const uint8_t *edges,
                    const char *caption, char *err, size_t errlen) {
  if (!d || !rgb || !caption) {
    sg_set_err(err, errlen, "missing data set, image or caption");
    return SG_LGP_EINVAL;
  }
  if (width != d->size || height != d->size) {
    sg_set_err(err, errlen, "image is %dx%d, the data set's size is %dx%d", (int)width, (int)height, (int)d->size,
               (int)d->size);
    return SG_LGP_EDATA;
  }
  if (d->n == INT32_MAX) {
    sg_set_err(err, errlen, "too many pairs");
    return SG_LGP_EDATA;
  }
  size_t px = (size_t)d->size * d->size;
  if (d->n == d->cap) {
    int32_t cap = d->cap ? (d->cap > INT32_MAX / 2 ? INT32_MAX : d->cap * 2) : 16;
    uint8_t *im = realloc(d->images, (size_t)cap * px * 3);
    if (im) d->images = im;
    uint8_t *ed = im ? realloc(d->edges, (size_t)cap * px) : NULL;
    if (ed) d->edges = ed;
    char **cp = ed ? realloc(d->captions, (size_t)cap * sizeof *cp) : NULL;
    if (!cp) {
      sg_set_err(err, errlen, "out of memory");
      return SG_LGP_ENOMEM;
    }
    d->captions = cp;
    d->cap = cap;
  }
  char *c = strdup(caption);
  if (!c) {
    sg_set_err(err, errlen, "out of memory");
    return SG_LGP_ENOMEM;
  }
  uint8_t *e = d->edges + (size_t)d->n * px;
  if (edges) {
    for (size_t i = 0; i < px; i++) e[i] = edges[i] > 127 ? 255 : 0;
  } else {
    int rc = sg_edges_detect(rgb, width, height, 3, SG_EDGES_LOW, SG_EDGES_HIGH, e, err, errlen);
    if (rc) {
      free(c);
      return rc == SG_EDGES_ENOMEM ? SG_LGP_ENOMEM : SG_LGP_EDATA;
    }
  }
  memcpy(d->images + (size_t)d->n * px * 3, rgb, px * 3);
  d->captions[d->n++] = c;
  return SG_LGP_OK;
}

static int file_exists(const char *path) {
  struct stat st;
  return stat(path, &st) == 0;
}

/* ---------------------------------------------------------------- directory loader */

static int cmp_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static int ends_with_ci(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && !strcasecmp(s + n - k, suffix);
}

/* The whole file at path as a NUL-terminated string with surrounding whitespace stripped (str.strip()), or NULL. */
static char *read_caption(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  size_t cap = 256, len = 0, got;
  char *s = malloc(cap);
  while (s && (got = fread(s + len, 1, cap - len - 1, f)) > 0) {
    len += got;
    if (len + 1 == cap) {
      char *t = cap < ((size_t)1 << 24) ? realloc(s, cap * 2) : NULL;
      if (!t) free(s);
      s = t, cap *= 2;
    }
  }
  int bad = ferror(f);
  fclose(f);
  if (!s || bad) {
    free(s);
    return NULL;
  }
  s[len] = 0;
  size_t a = 0;
  while (a < len && (isspace((unsigned char)s[a]) || (s[a] >= 0x1c && s[a] <= 0x1f))) a++;
  while (len > a && (isspace((unsigned char)s[len - 1]) || (s[len - 1] >= 0x1c && s[len - 1] <= 0x1f))) len--;
  memmove(s, s + a, len - a);
  s[len - a] = 0;
  return s;
}

/* Loads path as 8-bit pixels with `channels` 3 (PIL's convert("RGB"): alpha dropped, gray replicated) or 1 (PIL's
 * convert("L")), resized to size x size when it is not that size. Returns 0 or a negative SG_LGP_E* code. */
static int load_as(const char *path, int channels, int32_t size, sg_image *out, char *err, size_t errlen) {
  sg_image im, conv = {0, 0, 0, NULL};
  char msg[256];
  int rc = sg_image_load(path, sg_image_default_params(), &im, msg, sizeof msg);
  if (rc) {
    sg_set_err(err, errlen, "%s: %s", path, msg);
    return rc == SG_IMAGE_EIO ? SG_LGP_EIO : rc == SG_IMAGE_ENOMEM ? SG_LGP_ENOMEM : SG_LGP_EDATA;
  }
  size_t px = (size_t)im.width * im.height;
  conv.width = im.width, conv.height = im.height, conv.channels = channels;
  conv.pixels = sg_mem_alloc(px * (size_t)channels);
  if (!conv.pixels) {
    sg_image_free(&im);
    sg_set_err(err, errlen, "out of memory");
    return SG_LGP_ENOMEM;
  }
  for (size_t i = 0; i < px; i++) {
    const uint8_t *s = im.pixels + i * (size_t)im.channels;
    uint8_t *d = conv.pixels + i * (size_t)channels;
    int color = im.channels >= 3;
    if (channels == 3) {
      d[0] = s[0], d[1] = color ? s[1] : s[0], d[2] = color ? s[2] : s[0];
    } else {
      d[0] = color ? (uint8_t)((s[0] * 19595u + s[1] * 38470u + s[2] * 7471u + 0x8000u) >> 16) : s[0];
    }
  }
  sg_image_free(&im);
  if (conv.width == size && conv.height == size) {
    *out = conv;
    return 0;
  }
  rc = sg_image_resize(&conv, size, size, out, msg, sizeof msg);
  sg_image_free(&conv);
  if (rc) {
    sg_set_err(err, errlen, "%s: %s", path, msg);
    return rc == SG_IMAGE_ENOMEM ? SG_LGP_ENOMEM : SG_LGP_EDATA;
  }
  return 0;
}

sg_lgp_data *sg_lgp_data_load_dir(const char *dir, int32_t image_size, char *err, size_t errlen) {
  if (!dir) {
    sg_set_err(err, errlen, "no data directory");
    return NULL;
  }
  sg_lgp_data *d = sg_lgp_data_new(image_size, err, errlen);
  if (!d) return NULL;
  DIR *dh = opendir(dir);
  if (!dh) {
    sg_set_err(err, errlen, "%s: %s", dir, strerror(errno));
    sg_lgp_data_free(d);
    return NULL;
  }
  char **names = NULL;
  size_t n = 0, cap = 0;
  struct dirent *de;
  int rc = 0;
  while (!rc && (de = readdir(dh))) {
    if (de->d_name[0] == '.') continue; /* glob's "*" skips hidden files */
    if (n == cap) {
      char **t = realloc(names, (cap = cap ? cap * 2 : 64) * sizeof *t);
      if (!t) rc = SG_LGP_ENOMEM;
      else names = t;
    }
    if (!rc && !(names[n++] = strdup(de->d_name))) n--, rc = SG_LGP_ENOMEM;
  }
  closedir(dh);
  if (!rc) qsort(names, n, sizeof *names, cmp_names);
  else sg_set_err(err, errlen, "out of memory");
  char path[4200], stem[4096];
  for (size_t i = 0; !rc && i < n; i++) {
    const char *name = names[i], *dot = strrchr(name, '.');
    if (!dot || dot == name || !(ends_with_ci(name, ".png") || ends_with_ci(name, ".jpg") || ends_with_ci(name, ".jpeg")))
      continue;
    if (snprintf(stem, sizeof stem, "%s/%.*s", dir, (int)(dot - name), name) >= (int)sizeof stem) {
      sg_set_err(err, errlen, "%s/%s: path too long", dir, name);
      rc = SG_LGP_EINVAL;
      break;
    }
    if (strlen(stem) >= 6 && !strcmp(stem + strlen(stem) - 6, ".edges")) continue;
    snprintf(path, sizeof path, "%s.txt", stem);
    if (!file_exists(path)) continue;
    char *caption = read_caption(path);
    if (!caption) {
      sg_set_err(err, errlen, "%s: %s", path, strerror(errno ? errno : EIO));
      rc = SG_LGP_EIO;
      break;
    }
    sg_image rgb = {0, 0, 0, NULL}, ed = {0, 0, 0, NULL};
    snprintf(path, sizeof path, "%s/%s", dir, name);
    rc = load_as(path, 3, image_size, &rgb, err, errlen);
    snprintf(path, sizeof path, "%s.edges.png", stem);
    if (!rc && file_exists(path)) rc = load_as(path, 1, image_size, &ed, err, errlen);
    if (!rc) rc = sg_lgp_data_add(d, rgb.pixels, rgb.width, rgb.height, ed.pixels, caption, err, errlen);
    sg_image_free(&rgb), sg_image_free(&ed);
    free(caption);
  }
  for (size_t i = 0; i < n; i++) free(names[i]);
  free(names);
  if (!rc && d->n == 0) sg_set_err(err, errlen, "%s holds no (image, caption) pairs (NAME.png|.jpg + NAME.txt)", dir);
  if (rc || d->n == 0) {
    sg_lgp_data_free(d);
    return NULL;
  }
  return d;
}
