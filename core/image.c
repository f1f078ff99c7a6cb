/* Image input and output: PNG (libpng) and JPEG (TurboJPEG) decoding, PNG encoding, sketch maps (see image.h). */
#include "image.h"

#include <errno.h>
#include <limits.h>
#include <png.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <turbojpeg.h>
#include <zlib.h>

#include "errbuf.h"
#include "mem.h"

static const uint8_t png_signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

/* The most libpng may allocate for one chunk: PLTE (768 bytes) and tRNS (256) are the largest it still reads, as
 * every other ancillary chunk is skipped (see png_read_run). */
#define SG_PNG_CHUNK_MALLOC_MAX (64u << 10)

sg_image_params sg_image_default_params(void) {
  sg_image_params p = {.max_pixels = 4096 * 4096};
  return p;
}

sg_image_format sg_image_sniff(const uint8_t *data, size_t len) {
  if (!data) return SG_IMAGE_UNKNOWN;
  if (len >= sizeof png_signature && memcmp(data, png_signature, sizeof png_signature) == 0) return SG_IMAGE_PNG;
  if (len >= 3 && data[0] == 0xff && data[1] == 0xd8 && data[2] == 0xff) return SG_IMAGE_JPEG;
  return SG_IMAGE_UNKNOWN;
}

const char *sg_image_format_name(sg_image_format f) {
  switch (f) {
  case SG_IMAGE_PNG: return "png";
  case SG_IMAGE_JPEG: return "jpeg";
  default: return "unknown";
  }
}

void sg_image_free(sg_image *im) {
  if (!im) return;
  sg_mem_free(im->pixels);
  memset(im, 0, sizeof *im);
}

/* Checks a header's size against the limit before anything is allocated; the bound on bytes keeps
 * width x height x 4 inside size_t whatever max_pixels is. Returns 0 or a negative SG_IMAGE_E* code. */
static int check_size(const char *what, int64_t w, int64_t h, int64_t max_pixels, char *err, size_t errlen) {
  if (w <= 0 || h <= 0) {
    sg_set_err(err, errlen, "corrupt %s: its header gives a size of %lld x %lld", what, (long long)w, (long long)h);
    return SG_IMAGE_ECORRUPT;
  }
  if (w > SG_IMAGE_MAX_SIDE || h > SG_IMAGE_MAX_SIDE) {
    sg_set_err(err, errlen, "image is %lld x %lld: a side over the limit of %d pixels", (long long)w, (long long)h,
               SG_IMAGE_MAX_SIDE);
    return SG_IMAGE_ETOOBIG;
  }
  int64_t n = w * h; /* both below 2^31 */
  if (n > max_pixels || (uint64_t)n > SIZE_MAX / 4) {
    sg_set_err(err, errlen, "image is %lld x %lld = %lld pixels, over the limit of %lld", (long long)w, (long long)h,
               (long long)n, (long long)max_pixels);
    return SG_IMAGE_ETOOBIG;
  }
  return 0;
}

/* ---- PNG decoding ---- */

/* Everything the setjmp function changes lives here, in its caller's frame, so nothing is lost on a longjmp. */
typedef struct {
  const uint8_t *data;
  size_t len, pos;
  int64_t max_pixels;
  png_structp png;
  png_infop info;
  uint8_t *pixels;
  int32_t width, height, channels;
  int code;      /* the SG_IMAGE_E* code once err holds the message */
  int truncated; /* the read function ran out of data */
  int oom;       /* an allocation failed */
  char *err;
  size_t errlen;
} png_reader;

static void png_on_error(png_structp png, png_const_charp msg) {
  png_reader *r = png_get_error_ptr(png);
  if (!r->code) {
    if (r->oom) {
      r->code = SG_IMAGE_ENOMEM;
      sg_set_err(r->err, r->errlen, "out of memory decoding a PNG image");
    } else if (r->truncated) {
      r->code = SG_IMAGE_ECORRUPT;
      sg_set_err(r->err, r->errlen, "truncated PNG (%zu bytes)", r->len);
    } else {
      r->code = SG_IMAGE_ECORRUPT;
      sg_set_err(r->err, r->errlen, "corrupt PNG: %s", msg);
    }
  }
  png_longjmp(png, 1);
}

static void png_on_warning(png_structp png, png_const_charp msg) {
  (void)png;
  (void)msg; /* libpng recovered; its default handler would print */
}

static png_voidp png_on_malloc(png_structp png, png_alloc_size_t size) {
  void *p = sg_mem_alloc(size);
  if (!p) ((png_reader *)png_get_mem_ptr(png))->oom = 1;
  return p;
}

static void png_on_read_free(png_structp png, png_voidp p) {
  (void)png;
  sg_mem_free(p);
}

static void png_on_free(png_structp png, png_voidp p) {
  (void)png;
  free(p);
}

static void png_read_mem(png_structp png, png_bytep buf, size_t n) {
  png_reader *r = png_get_io_ptr(png);
  if (n > r->len - r->pos) {
    r->truncated = 1;
    png_error(png, "truncated");
  }
  memcpy(buf, r->data + r->pos, n);
  r->pos += n;
}

/* Runs libpng on r's data; the only function with a setjmp. Returns 0 with r->pixels filled, or a negative
 * SG_IMAGE_E* code with the message written (r->pixels may then hold memory the caller frees). */
static int png_read_run(png_reader *r) {
  if (setjmp(png_jmpbuf(r->png))) return r->code ? r->code : SG_IMAGE_ECORRUPT;
  png_set_read_fn(r->png, r, png_read_mem);
  /* libpng's own limit is 10^6 per side; max_pixels decides instead */
  png_set_user_limits(r->png, 0x7fffffff, 0x7fffffff);
  /* Every chunk but IHDR, PLTE, tRNS, IDAT and IEND is skipped unread in 1 KiB pieces (its CRC still checked):
   * no text, sPLT, iCCP or eXIf buffer is allocated and nothing is inflated but the image data. libpng 1.6 would
   * otherwise allocate and zero a chunk's declared length before reading it, its limits being mere warnings. */
  png_set_keep_unknown_chunks(r->png, PNG_HANDLE_CHUNK_NEVER, NULL, -1);
  png_set_chunk_malloc_max(r->png, SG_PNG_CHUNK_MALLOC_MAX);
  png_set_chunk_cache_max(r->png, 1);
  png_read_info(r->png, r->info);
  png_uint_32 w = png_get_image_width(r->png, r->info), h = png_get_image_height(r->png, r->info);
  int depth = png_get_bit_depth(r->png, r->info), type = png_get_color_type(r->png, r->info);
  if ((r->code = check_size("PNG", w, h, r->max_pixels, r->err, r->errlen)) != 0) return r->code;
  if (type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(r->png); /* with tRNS: RGBA */
  if (type == PNG_COLOR_TYPE_GRAY && depth < 8) png_set_expand_gray_1_2_4_to_8(r->png);
  if (depth == 16) png_set_strip_16(r->png);
  int passes = png_set_interlace_handling(r->png);
  png_read_update_info(r->png, r->info);
  int ch = png_get_channels(r->png, r->info);
  size_t rowbytes = png_get_rowbytes(r->png, r->info);
  if (ch < 1 || ch > 4 || png_get_bit_depth(r->png, r->info) != 8 || rowbytes / (size_t)ch != w ||
      rowbytes % (size_t)ch) {
    r->code = SG_IMAGE_EUNSUPPORTED;
    sg_set_err(r->err, r->errlen, "unsupported PNG layout (%d channels, %zu bytes a row)", ch, rowbytes);
    return r->code;
  }
  r->width = (int32_t)w;
  r->height = (int32_t)h;
  r->channels = ch;
  r->pixels = sg_mem_alloc(rowbytes * h);
  if (!r->pixels) {
    r->code = SG_IMAGE_ENOMEM;
    sg_set_err(r->err, r->errlen, "out of memory for a %u x %u image", (unsigned)w, (unsigned)h);
    return r->code;
  }
  /* png_read_image's loop without its array of row pointers (8 bytes a row: 128 MiB for a 1 x 2^24 image) */
  for (int pass = 0; pass < passes; pass++)
    for (png_uint_32 y = 0; y < h; y++) png_read_row(r->png, r->pixels + (size_t)y * rowbytes, NULL);
  png_read_end(r->png, NULL); /* through IEND, so truncation anywhere is seen */
  return 0;
}

static uint32_t be32(const uint8_t *b) {
  return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

/* Walks the chunk layout (length, type, data, CRC) from the signature to IEND before libpng runs, so that a
 * chunk declaring more bytes than the data holds is refused before libpng allocates for it, and a file of
 * countless small chunks before libpng parses them. It also checks what libpng would only check past the last
 * row: chunk types are letters and critical chunks' CRCs match (libpng discards ancillary chunks with a bad CRC,
 * and so does this). Chunk order and contents are left to libpng. Returns 0 or a negative SG_IMAGE_E* code. */
static int png_scan_chunks(const uint8_t *data, size_t len, char *err, size_t errlen) {
  size_t pos = sizeof png_signature, chunks = 0;
  while (len - pos >= 8) {
    uint32_t n = be32(data + pos);
    char type[5];
    int letters = 1;
    for (int i = 0; i < 4; i++) {
      uint8_t c = data[pos + 4 + i];
      int letter = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z');
      type[i] = (char)(letter ? c : '?');
      letters &= letter;
    }
    type[4] = 0;
    if (!letters) {
      sg_set_err(err, errlen, "corrupt PNG: the chunk at byte %zu has an invalid type", pos);
      return SG_IMAGE_ECORRUPT;
    }
    if (n > 0x7fffffff) {
      sg_set_err(err, errlen, "corrupt PNG: the %s chunk at byte %zu declares %lu bytes, over 2^31 - 1", type, pos,
                 (unsigned long)n);
      return SG_IMAGE_ECORRUPT;
    }
    if (n > len - pos - 8 || len - pos - 8 - n < 4) {
      sg_set_err(err, errlen, "truncated PNG (%zu bytes): the %s chunk at byte %zu declares %lu bytes, %zu remain",
                 len, type, pos, (unsigned long)n, len - pos - 8);
      return SG_IMAGE_ECORRUPT;
    }
    if (type[0] >= 'A' && type[0] <= 'Z' &&
        crc32(crc32(0L, Z_NULL, 0), data + pos + 4, 4 + n) != be32(data + pos + 8 + n)) {
      sg_set_err(err, errlen, "corrupt PNG: the %s chunk at byte %zu has a bad CRC", type, pos);
      return SG_IMAGE_ECORRUPT;
    }
    if (!memcmp(data + pos + 4, "IEND", 4)) return 0;
    if (memcmp(data + pos + 4, "IDAT", 4) != 0 && ++chunks > SG_IMAGE_PNG_MAX_CHUNKS) {
      sg_set_err(err, errlen, "PNG has more than %d chunks besides its image data, the limit", SG_IMAGE_PNG_MAX_CHUNKS);
      return SG_IMAGE_ETOOBIG;
    }
    pos += 12 + (size_t)n;
  }
  sg_set_err(err, errlen, "truncated PNG (%zu bytes): no IEND chunk", len);
  return SG_IMAGE_ECORRUPT;
}

/* Inflates the IDAT stream once with its output discarded, and refuses it (ECORRUPT) when it holds more than the
 * bytes its IHDR implies (filter bytes and rows of every pass) plus 64 KiB: libpng, once it has the last row,
 * inflates whatever follows in 1 KiB steps to warn of extra data, and 16 MiB of deflated zeros are 16 GiB of it.
 * An unknown layout or a broken stream is left to libpng to report. Returns 0 or SG_IMAGE_ECORRUPT. */
static int png_check_idat_size(const uint8_t *data, size_t len, char *err, size_t errlen) {
  static const int samples[7] = {1, 0, 3, 1, 2, 0, 4};
  static const uint8_t adam7[7][4] = {{0, 0, 8, 8}, {4, 0, 8, 8}, {0, 4, 4, 8}, {2, 0, 4, 4},
                                      {0, 2, 2, 4}, {1, 0, 2, 2}, {0, 1, 1, 2}};
  uint64_t w = be32(data + 16), h = be32(data + 20);
  int depth = data[24], type = data[25], interlace = data[28];
  if (type > 6 || !samples[type] || depth < 1 || depth > 16 || interlace > 1) return 0;
  uint64_t bits = (uint64_t)samples[type] * (uint64_t)depth, want = 0;
  for (int p = 0; p < (interlace ? 7 : 1); p++) {
    const uint8_t *a = interlace ? adam7[p] : (const uint8_t[4]){0, 0, 1, 1};
    uint64_t cols = w > a[0] ? (w - a[0] + a[2] - 1) / a[2] : 0, rows = h > a[1] ? (h - a[1] + a[3] - 1) / a[3] : 0;
    if (cols && rows) want += rows * (1 + (cols * bits + 7) / 8);
  }
  z_stream z;
  memset(&z, 0, sizeof z);
  if (inflateInit(&z) != Z_OK) return 0; /* libpng will meet the same shortage */
  uint8_t out[16384];
  const uint64_t slack = 65536;
  uint64_t got = 0;
  int ret = Z_OK;
  for (size_t pos = sizeof png_signature; ret == Z_OK && len - pos >= 12;) {
    uint32_t n = be32(data + pos);
    if (!memcmp(data + pos + 4, "IEND", 4)) break;
    if (!memcmp(data + pos + 4, "IDAT", 4)) {
      z.next_in = (Bytef *)(uintptr_t)(data + pos + 8);
      z.avail_in = n;
      while (ret == Z_OK && (z.avail_in > 0 || z.avail_out == 0)) {
        z.next_out = out;
        z.avail_out = sizeof out;
        ret = inflate(&z, Z_NO_FLUSH);
        got += sizeof out - z.avail_out;
        if (got > want + slack) break;
        if (ret == Z_BUF_ERROR) ret = Z_OK; /* wants the next chunk */
        if (z.avail_in == 0 && z.avail_out != 0) break;
      }
    }
    if (got > want + slack) break;
    pos += 12 + (size_t)n; /* png_scan_chunks has checked every length */
  }
  inflateEnd(&z);
  if (got > want + slack) {
    sg_set_err(err, errlen, "corrupt PNG: its image data inflates to over %llu bytes, where a %llu x %llu image "
               "needs %llu", (unsigned long long)got, (unsigned long long)w, (unsigned long long)h,
               (unsigned long long)want);
    return SG_IMAGE_ECORRUPT;
  }
  return 0;
}

static int decode_png(const uint8_t *data, size_t len, sg_image_params p, sg_image *out, char *err, size_t errlen) {
  /* The size is refused from the IHDR bytes alone, even when nothing valid follows them; libpng checks the
   * chunk itself below. */
  if (len >= 24 && memcmp(data + 12, "IHDR", 4) == 0) {
    uint32_t w = be32(data + 16), h = be32(data + 20);
    if (w > 0 && h > 0 && w <= 0x7fffffff && h <= 0x7fffffff) {
      int rc = check_size("PNG", w, h, p.max_pixels, err, errlen);
      if (rc) return rc;
    }
  }
  int rc = png_scan_chunks(data, len, err, errlen);
  if (!rc && len >= 33 && memcmp(data + 12, "IHDR", 4) == 0) rc = png_check_idat_size(data, len, err, errlen);
  if (rc) return rc;
  png_reader r;
  memset(&r, 0, sizeof r);
  r.data = data;
  r.len = len;
  r.max_pixels = p.max_pixels;
  r.err = err;
  r.errlen = errlen;
  r.png = png_create_read_struct_2(PNG_LIBPNG_VER_STRING, &r, png_on_error, png_on_warning, &r, png_on_malloc,
                                   png_on_read_free);
  if (r.png) r.info = png_create_info_struct(r.png);
  if (!r.png || !r.info) {
    png_destroy_read_struct(r.png ? &r.png : NULL, NULL, NULL);
    sg_set_err(err, errlen, "out of memory starting the PNG decoder");
    return SG_IMAGE_ENOMEM;
  }
  rc = png_read_run(&r);
  png_destroy_read_struct(&r.png, &r.info, NULL);
  if (rc) {
    sg_mem_free(r.pixels);
    return rc;
  }
  out->width = r.width;
  out->height = r.height;
  out->channels = r.channels;
  out->pixels = r.pixels;
  return 0;
}

/* ---- JPEG decoding ---- */

/* Counts the scans (SOS markers) of a JPEG by walking its markers and skipping each scan's entropy-coded data,
 * as libjpeg reads them, so that a progressive file of countless cheap scans (each one makes libjpeg visit every
 * block of the image) is refused before decoding. Stops quietly where the structure breaks: libjpeg then reports
 * it. Returns 0, or SG_IMAGE_ETOOBIG past SG_IMAGE_JPEG_MAX_SCANS scans. */
static int jpeg_check_scans(const uint8_t *d, size_t len, char *err, size_t errlen) {
  size_t pos = 2, scans = 0;
  while (pos + 4 <= len && d[pos] == 0xff) {
    while (pos + 4 <= len && d[pos + 1] == 0xff) pos++; /* fill bytes */
    uint8_t m = d[pos + 1];
    if (m == 0xd9 || m == 0x00 || pos + 4 > len) break;
    if ((m >= 0xd0 && m <= 0xd7) || m == 0x01) { /* RSTn, TEM: no length */
      pos += 2;
      continue;
    }
    size_t seg = (size_t)d[pos + 2] << 8 | d[pos + 3];
    if (seg < 2 || seg > len - pos - 2) break;
    pos += 2 + seg;
    if (m != 0xda) continue;
    if (++scans > SG_IMAGE_JPEG_MAX_SCANS) {
      sg_set_err(err, errlen, "JPEG has more than %d scans, the limit", SG_IMAGE_JPEG_MAX_SCANS);
      return SG_IMAGE_ETOOBIG;
    }
    /* entropy-coded data runs to the next marker other than a stuffed zero or RSTn */
    for (;;) {
      const uint8_t *ff = pos < len ? memchr(d + pos, 0xff, len - pos) : NULL;
      if (!ff || (size_t)(ff - d) + 1 >= len) return 0;
      pos = (size_t)(ff - d);
      uint8_t next = d[pos + 1];
      if (next != 0x00 && !(next >= 0xd0 && next <= 0xd7)) break; /* a marker, perhaps after fill bytes */
      pos += 2;
    }
  }
  return 0;
}

static int decode_jpeg(const uint8_t *data, size_t len, sg_image_params p, sg_image *out, char *err,
                       size_t errlen) {
#if SIZE_MAX > ULONG_MAX
  if (len > ULONG_MAX) {
    sg_set_err(err, errlen, "JPEG data too large");
    return SG_IMAGE_ETOOBIG;
  }
#endif
  tjhandle tj = tjInitDecompress();
  if (!tj) {
    sg_set_err(err, errlen, "cannot start the JPEG decoder: %s", tjGetErrorStr2(NULL));
    return SG_IMAGE_ENOMEM;
  }
  int w = 0, h = 0, subsamp = 0, colorspace = 0, rc = 0;
  uint8_t *pixels = NULL;
  if (tjDecompressHeader3(tj, data, (unsigned long)len, &w, &h, &subsamp, &colorspace) != 0) {
    const char *msg = tjGetErrorStr2(tj);
    if (strstr(msg, "subsampling")) {
      sg_set_err(err, errlen, "unsupported JPEG: %s", msg);
      rc = SG_IMAGE_EUNSUPPORTED;
    } else {
      sg_set_err(err, errlen, "corrupt JPEG: %s", msg);
      rc = SG_IMAGE_ECORRUPT;
    }
    goto done;
  }
  if (colorspace == TJCS_CMYK || colorspace == TJCS_YCCK) {
    sg_set_err(err, errlen, "CMYK JPEG images are not supported");
    rc = SG_IMAGE_EUNSUPPORTED;
    goto done;
  }
  if ((rc = check_size("JPEG", w, h, p.max_pixels, err, errlen)) != 0) goto done;
  if ((rc = jpeg_check_scans(data, len, err, errlen)) != 0) goto done;
  int ch = colorspace == TJCS_GRAY ? 1 : 3;
  pixels = sg_mem_alloc((size_t)w * (size_t)h * (size_t)ch);
  if (!pixels) {
    sg_set_err(err, errlen, "out of memory for a %d x %d image", w, h);
    rc = SG_IMAGE_ENOMEM;
    goto done;
  }
  /* A warning (such as premature end of data) leaves part of the image grey: stop and call it corrupt. libjpeg's
   * own scan limit (500) backs up jpeg_check_scans. */
  if (tjDecompress2(tj, data, (unsigned long)len, pixels, w, 0, h, ch == 1 ? TJPF_GRAY : TJPF_RGB,
                    TJFLAG_ACCURATEDCT | TJFLAG_STOPONWARNING | TJFLAG_LIMITSCANS) != 0) {
    const char *msg = tjGetErrorStr2(tj);
    if (strstr(msg, "Premature end"))
      sg_set_err(err, errlen, "truncated JPEG (%zu bytes)", len);
    else
      sg_set_err(err, errlen, "corrupt JPEG: %s", msg);
    rc = SG_IMAGE_ECORRUPT;
    goto done;
  }
  out->width = w;
  out->height = h;
  out->channels = ch;
  out->pixels = pixels;
  pixels = NULL;
done:
  sg_mem_free(pixels);
  tjDestroy(tj);
  return rc;
}

int sg_image_decode(const uint8_t *data, size_t len, sg_image_params p, sg_image *out, char *err, size_t errlen) {
  if (!out || (!data && len) || p.max_pixels <= 0) {
    sg_set_err(err, errlen, "sg_image_decode: NULL output or data, or max_pixels not positive");
    return SG_IMAGE_EINVAL;
  }
  memset(out, 0, sizeof *out);
  switch (sg_image_sniff(data, len)) {
  case SG_IMAGE_PNG: return decode_png(data, len, p, out, err, errlen);
  case SG_IMAGE_JPEG: return decode_jpeg(data, len, p, out, err, errlen);
  default:
    sg_set_err(err, errlen, len ? "not a PNG or JPEG image" : "empty image data");
    return SG_IMAGE_EUNSUPPORTED;
  }
}

int sg_image_load(const char *path, sg_image_params p, sg_image *out, char *err, size_t errlen) {
  if (!path || !out) {
    sg_set_err(err, errlen, "sg_image_load: NULL path or output");
    return SG_IMAGE_EINVAL;
  }
  memset(out, 0, sizeof *out);
  FILE *f = fopen(path, "rb");
  if (!f) {
    sg_set_err(err, errlen, "cannot open %s: %s", path, strerror(errno));
    return SG_IMAGE_EIO;
  }
  size_t len = 0, cap = 1 << 16;
  uint8_t *buf = malloc(cap);
  int rc = 0;
  while (buf) {
    len += fread(buf + len, 1, cap - len, f);
    if (len < cap) break;
    uint8_t *bigger = cap <= SIZE_MAX / 2 ? realloc(buf, cap * 2) : NULL;
    if (!bigger) {
      free(buf);
      buf = NULL;
      break;
    }
    buf = bigger;
    cap *= 2;
  }
  if (!buf) {
    sg_set_err(err, errlen, "out of memory reading %s", path);
    rc = SG_IMAGE_ENOMEM;
  } else if (ferror(f)) {
    sg_set_err(err, errlen, "cannot read %s: %s", path, strerror(errno));
    rc = SG_IMAGE_EIO;
  }
  fclose(f);
  if (rc == 0) {
    rc = sg_image_decode(buf, len, p, out, err, errlen);
    if (rc && err && errlen) {
      char msg[256];
      snprintf(msg, sizeof msg, "%s", err);
      sg_set_err(err, errlen, "%s: %s", path, msg);
    }
  }
  free(buf);
  return rc;
}

/* ---- pixel conversions ---- */

static int check_image(const sg_image *im, const char *fn, char *err, size_t errlen) {
  if (!im || !im->pixels || im->width <= 0 || im->height <= 0 || im->channels < 1 || im->channels > 4 ||
      (uint64_t)im->width * (uint64_t)im->height > SIZE_MAX / 4) {
    sg_set_err(err, errlen, "%s: not a valid image (NULL, empty, or channels outside 1..4)", fn);
    return SG_IMAGE_EINVAL;
  }
  return 0;
}

/* One channel value v with alpha a over opaque white, as PIL's Image.alpha_composite computes it: fixed point
 * with 7 fractional bits and rounded divisions by 255. With an opaque destination its weights reduce to a * 128
 * for the source and (255 - a) * 128 for the white. */
static uint8_t over_white(uint32_t v, uint32_t a) {
  if (a == 0) return 255;
  uint32_t t = v * a * 128 + 255 * (255 - a) * 128 + (0x80 << 7);
  return (uint8_t)((((t >> 8) + t) >> 8) >> 7);
}

/* PIL's "L" of an RGB pixel (ITU-R 601-2 luma in 16-bit fixed point). */
static uint8_t luma(uint32_t r, uint32_t g, uint32_t b) {
  return (uint8_t)((r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16);
}

/* The gray value load_sketch sees for one pixel: alpha flattened onto white, then "L". */
static uint8_t sketch_gray(const uint8_t *px, int ch) {
  switch (ch) {
  case 1: return px[0];
  case 2: return over_white(px[0], px[1]); /* L of (c, c, c) is c */
  case 3: return luma(px[0], px[1], px[2]);
  default: return luma(over_white(px[0], px[3]), over_white(px[1], px[3]), over_white(px[2], px[3]));
  }
}

int sg_image_to_rgb(const sg_image *in, sg_image *out, char *err, size_t errlen) {
  if (!out) {
    sg_set_err(err, errlen, "sg_image_to_rgb: NULL output");
    return SG_IMAGE_EINVAL;
  }
  memset(out, 0, sizeof *out);
  int rc = check_image(in, "sg_image_to_rgb", err, errlen);
  if (rc) return rc;
  size_t n = (size_t)in->width * (size_t)in->height;
  uint8_t *px = sg_mem_alloc(n * 3);
  if (!px) {
    sg_set_err(err, errlen, "out of memory for a %d x %d image", in->width, in->height);
    return SG_IMAGE_ENOMEM;
  }
  const uint8_t *s = in->pixels;
  for (size_t i = 0; i < n; i++, s += in->channels) {
    uint8_t *d = px + i * 3;
    switch (in->channels) {
    case 1: d[0] = d[1] = d[2] = s[0]; break;
    case 2: d[0] = d[1] = d[2] = over_white(s[0], s[1]); break;
    case 3: memcpy(d, s, 3); break;
    default:
      for (int c = 0; c < 3; c++) d[c] = over_white(s[c], s[3]);
    }
  }
  out->width = in->width;
  out->height = in->height;
  out->channels = 3;
  out->pixels = px;
  return 0;
}

/* ---- bilinear resampling as torch computes it ---- */

/* One output coordinate's two input neighbours and their weights. */
typedef struct {
  int32_t i0, i1;
  float l0, l1;
} lin_tap;

/* Fills n_out taps for resizing n_in to n_out, as torch's CPU bilinear (align_corners false) does: the scale is
 * a float (in / out), the source index (dst + 0.5) * scale - 0.5, clamped at 0, is computed in double (its
 * accumulate type), and the weights are rounded to float. Equal sizes copy. */
static void linear_taps(int32_t n_in, int32_t n_out, lin_tap *t) {
  if (n_in == n_out) {
    for (int32_t d = 0; d < n_out; d++) t[d] = (lin_tap){d, d, 1.0f, 0.0f};
    return;
  }
  float scale = (float)n_in / (float)n_out;
  for (int32_t d = 0; d < n_out; d++) {
    double real = (double)scale * ((double)d + 0.5) - 0.5;
    if (real < 0) real = 0;
    int32_t i0 = (int32_t)real;
    if (i0 > n_in - 1) i0 = n_in - 1;
    t[d].i0 = i0;
    t[d].i1 = i0 + (i0 < n_in - 1 ? 1 : 0);
    t[d].l1 = (float)(real - i0);
    t[d].l0 = 1.0f - t[d].l1;
  }
}

/* One output value from four neighbours, as torch's channels-last kernel (which a one-channel tensor takes)
 * computes it for float: weight products rounded to float, then summed at double precision. The products of two
 * floats are exact in double, so the result does not depend on fused multiply-adds. */
static float lin_mix(const lin_tap *ty, const lin_tap *tx, float v00, float v01, float v10, float v11) {
  float w00 = ty->l0 * tx->l0, w01 = ty->l0 * tx->l1, w10 = ty->l1 * tx->l0, w11 = ty->l1 * tx->l1;
  return (float)((double)w00 * v00 + (double)w01 * v01 + (double)w10 * v10 + (double)w11 * v11);
}

/* Allocates both tap tables (freed with one free of *tx). Returns 0 or SG_IMAGE_ENOMEM. */
static int make_taps(int32_t in_w, int32_t in_h, int32_t w, int32_t h, lin_tap **tx, lin_tap **ty) {
  *tx = malloc(sizeof **tx * ((size_t)w + (size_t)h));
  if (!*tx) return SG_IMAGE_ENOMEM;
  *ty = *tx + w;
  linear_taps(in_w, w, *tx);
  linear_taps(in_h, h, *ty);
  return 0;
}

int sg_image_resize(const sg_image *in, int32_t w, int32_t h, sg_image *out, char *err, size_t errlen) {
  if (!out) {
    sg_set_err(err, errlen, "sg_image_resize: NULL output");
    return SG_IMAGE_EINVAL;
  }
  memset(out, 0, sizeof *out);
  int rc = check_image(in, "sg_image_resize", err, errlen);
  if (rc) return rc;
  if (w <= 0 || h <= 0 || (uint64_t)w * (uint64_t)h > SIZE_MAX / 4) {
    sg_set_err(err, errlen, "sg_image_resize: bad target size %d x %d", w, h);
    return SG_IMAGE_EINVAL;
  }
  int ch = in->channels;
  lin_tap *tx, *ty;
  uint8_t *px = sg_mem_alloc((size_t)w * (size_t)h * (size_t)ch);
  if (!px || make_taps(in->width, in->height, w, h, &tx, &ty)) {
    sg_mem_free(px);
    sg_set_err(err, errlen, "out of memory for a %d x %d image", w, h);
    return SG_IMAGE_ENOMEM;
  }
  size_t stride = (size_t)in->width * (size_t)ch;
  for (int32_t y = 0; y < h; y++) {
    const uint8_t *r0 = in->pixels + (size_t)ty[y].i0 * stride, *r1 = in->pixels + (size_t)ty[y].i1 * stride;
    for (int32_t x = 0; x < w; x++) {
      size_t a = (size_t)tx[x].i0 * (size_t)ch, b = (size_t)tx[x].i1 * (size_t)ch;
      uint8_t *d = px + ((size_t)y * (size_t)w + (size_t)x) * (size_t)ch;
      for (int c = 0; c < ch; c++) {
        float v = lin_mix(&ty[y], &tx[x], r0[a + c], r0[b + c], r1[a + c], r1[b + c]);
        d[c] = v <= 0 ? 0 : v >= 255 ? 255 : (uint8_t)(v + 0.5f);
      }
    }
  }
  free(tx);
  out->width = w;
  out->height = h;
  out->channels = ch;
  out->pixels = px;
  return 0;
}

/* ---- sketch maps ---- */

int sg_invert_parse(const char *s) {
  static const struct {
    const char *name;
    sg_invert v;
  } names[] = {{"auto", SG_INVERT_AUTO}, {"true", SG_INVERT_TRUE}, {"1", SG_INVERT_TRUE},
               {"yes", SG_INVERT_TRUE},  {"false", SG_INVERT_FALSE}, {"0", SG_INVERT_FALSE},
               {"no", SG_INVERT_FALSE}};
  if (!s) return -1;
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    const char *a = s, *b = names[i].name;
    while (*a && *b && (*a | 0x20) == *b) a++, b++;
    if (!*a && !*b) return (int)names[i].v;
  }
  return -1;
}

/* numpy's pairwise summation of float32 (eight running sums over blocks of up to 128 values, halves above). */
static float pairwise_sum(const float *a, size_t n) {
  if (n < 8) {
    float s = 0.0f;
    for (size_t i = 0; i < n; i++) s += a[i];
    return s;
  }
  if (n <= 128) {
    float r[8];
    memcpy(r, a, sizeof r);
    size_t i;
    for (i = 8; i < n - n % 8; i += 8)
      for (int j = 0; j < 8; j++) r[j] += a[i + j];
    float s = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
    for (; i < n; i++) s += a[i];
    return s;
  }
  size_t n2 = n / 2;
  n2 -= n2 % 8;
  return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
}

/* ndarray.mean() of a contiguous float32 array, bit for bit: the reduction runs over chunks of numpy's
 * 8192-element buffer, each summed pairwise into a float32 total, which is then divided by the count. This
 * decides load_sketch's automatic inversion, so an image whose mean is within rounding of 0.5 goes the same
 * way here as there. */
static float numpy_mean(const float *a, size_t n) {
  float acc = 0.0f;
  for (size_t i = 0; i < n; i += 8192) acc += pairwise_sum(a + i, n - i < 8192 ? n - i : 8192);
  return (float)((double)acc / (double)n);
}

int sg_sketch_map(const sg_image *in, int32_t size, sg_invert inv, float *out, int *inverted, char *err,
                  size_t errlen) {
  return sg_sketch_map_filled(in, size, inv, SG_FILLED_AUTO, out, inverted, NULL, err, errlen);
}

int sg_sketch_map_filled(const sg_image *in, int32_t size, sg_invert inv, sg_filled filled, float *out, int *inverted,
                         int32_t *converted, char *err, size_t errlen) {
  int rc = check_image(in, "sg_sketch_map", err, errlen);
  if (rc) return rc;
  if (size <= 0 || !out || (inv != SG_INVERT_AUTO && inv != SG_INVERT_TRUE && inv != SG_INVERT_FALSE) ||
      (filled != SG_FILLED_AUTO && filled != SG_FILLED_TRUE && filled != SG_FILLED_FALSE)) {
    sg_set_err(err, errlen, "sg_sketch_map: bad size %d, NULL output or unknown invert or filled mode %d, %d", size,
               (int)inv, (int)filled);
    return SG_IMAGE_EINVAL;
  }
  int32_t w = in->width, h = in->height, ch = in->channels;
  size_t n = (size_t)w * (size_t)h, m = (size_t)size * (size_t)size;
  float *g = sg_mem_alloc(n * sizeof *g);
  uint8_t *map = malloc(m), *full = NULL; /* full: w x h bytes, from sg_mem (given back when freed) */
  if (!g || !map) {
    sg_mem_free(g), free(map);
    sg_set_err(err, errlen, "out of memory for a %d x %d sketch", w, h);
    return SG_IMAGE_ENOMEM;
  }
  for (size_t i = 0; i < n; i++) g[i] = (float)sketch_gray(in->pixels + i * (size_t)ch, ch) / 255.0f;
  int inv_now = inv == SG_INVERT_TRUE || (inv == SG_INVERT_AUTO && numpy_mean(g, n) > 0.5f);
  if (inv_now)
    for (size_t i = 0; i < n; i++) g[i] = 1.0f - g[i];
  if (w >= size && h >= size && (w != size || h != size)) {
    /* larger: thresholded at its own resolution, so that a stroke thinner than the scale still draws a line */
    if (!(full = sg_mem_alloc(n))) goto nomem;
    for (size_t i = 0; i < n; i++) full[i] = g[i] > 0.5f;
    sg_mem_free(g), g = NULL;
    if (sg_sketch_despeckle(full, w, h) || sg_sketch_box_any(full, w, h, size, map)) goto nomem;
  } else if (w == size && h == size) {
    for (size_t i = 0; i < n; i++) map[i] = g[i] > 0.5f;
  } else {
    lin_tap *tx, *ty;
    if (make_taps(w, h, size, size, &tx, &ty)) goto nomem;
    for (int32_t y = 0; y < size; y++) {
      const float *r0 = g + (size_t)ty[y].i0 * (size_t)w, *r1 = g + (size_t)ty[y].i1 * (size_t)w;
      for (int32_t x = 0; x < size; x++) {
        int32_t a = tx[x].i0, b = tx[x].i1;
        float v = lin_mix(&ty[y], &tx[x], r0[a], r0[b], r1[a], r1[b]);
        map[(size_t)y * (size_t)size + (size_t)x] = v > 0.5f;
      }
    }
    free(tx);
  }
  if ((full == NULL && sg_sketch_despeckle(map, size, size)) ||
      sg_sketch_filled_to_outline(map, size, size, filled, converted) ||
      (filled != SG_FILLED_FALSE && sg_sketch_thin_wide(map, size, size))) /* false: the strokes as drawn */
    goto nomem;
  for (size_t i = 0; i < m; i++) out[i] = map[i] ? 1.0f : 0.0f;
  sg_mem_free(g), free(map), sg_mem_free(full);
  if (inverted) *inverted = inv_now;
  return 0;
nomem:
  sg_mem_free(g), free(map), sg_mem_free(full);
  sg_set_err(err, errlen, "out of memory preparing a %d x %d sketch map", size, size);
  return SG_IMAGE_ENOMEM;
}

/* ---- PNG encoding ---- */

typedef struct {
  png_structp png;
  png_infop info;
  uint8_t *buf; /* the encoded file so far */
  size_t len, cap;
  int oom;
  char *err;
  size_t errlen;
} png_writer;

static void png_on_write_error(png_structp png, png_const_charp msg) {
  png_writer *w = png_get_error_ptr(png);
  if (w->oom)
    sg_set_err(w->err, w->errlen, "out of memory encoding a PNG image");
  else
    sg_set_err(w->err, w->errlen, "cannot encode PNG: %s", msg);
  png_longjmp(png, 1);
}

static png_voidp png_on_write_malloc(png_structp png, png_alloc_size_t size) {
  void *p = malloc(size);
  if (!p) ((png_writer *)png_get_mem_ptr(png))->oom = 1;
  return p;
}

static void png_write_mem(png_structp png, png_bytep data, size_t n) {
  png_writer *w = png_get_io_ptr(png);
  if (n > w->cap - w->len) {
    size_t cap = w->cap ? w->cap : 4096;
    while (cap - w->len < n && cap <= SIZE_MAX / 2) cap *= 2;
    uint8_t *bigger = cap - w->len >= n ? realloc(w->buf, cap) : NULL;
    if (!bigger) {
      w->oom = 1;
      png_error(png, "out of memory");
    }
    w->buf = bigger;
    w->cap = cap;
  }
  memcpy(w->buf + w->len, data, n);
  w->len += n;
}

static void png_flush_mem(png_structp png) { (void)png; }

/* Runs libpng's writer over already validated arguments; the only function here with a setjmp. chunks holds
 * n_text prepared entries. Returns 0, or a negative SG_IMAGE_E* code with the message written. */
static int png_write_run(png_writer *w, const uint8_t *pixels, int32_t width, int32_t height, int32_t channels,
                         png_text *chunks, int32_t n_text) {
  static const int types[] = {PNG_COLOR_TYPE_GRAY, PNG_COLOR_TYPE_GRAY_ALPHA, PNG_COLOR_TYPE_RGB,
                              PNG_COLOR_TYPE_RGB_ALPHA};
  if (setjmp(png_jmpbuf(w->png))) return w->oom ? SG_IMAGE_ENOMEM : SG_IMAGE_EINVAL;
  png_set_write_fn(w->png, w, png_write_mem, png_flush_mem);
  png_set_user_limits(w->png, 0x7fffffff, 0x7fffffff);
  png_set_IHDR(w->png, w->info, (png_uint_32)width, (png_uint_32)height, 8, types[channels - 1],
               PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  if (n_text > 0) png_set_text(w->png, w->info, chunks, n_text);
  png_write_info(w->png, w->info);
  size_t stride = (size_t)width * (size_t)channels;
  for (int32_t y = 0; y < height; y++) png_write_row(w->png, pixels + (size_t)y * stride);
  png_write_end(w->png, NULL);
  return 0;
}

/* A keyword as PNG allows it: 1 to 79 printable Latin-1 characters without leading, trailing or double spaces
 * (restricted here to ASCII so that it reads the same as UTF-8). */
static int valid_keyword(const char *k) {
  size_t n = 0;
  for (; k[n]; n++) {
    unsigned char c = (unsigned char)k[n];
    if (c < 0x20 || c > 0x7e || (c == ' ' && (n == 0 || k[n - 1] == ' '))) return 0;
  }
  return n >= 1 && n <= 79 && k[n - 1] != ' ';
}

int sg_png_encode(const uint8_t *pixels, int32_t width, int32_t height, int32_t channels, const sg_png_text *text,
                  int32_t n_text, uint8_t **out, size_t *out_len, char *err, size_t errlen) {
  if (!out || !out_len || !pixels || width <= 0 || height <= 0 || channels < 1 || channels > 4 || n_text < 0 ||
      (n_text > 0 && !text) || (uint64_t)width * (uint64_t)height > SIZE_MAX / 4) {
    sg_set_err(err, errlen, "sg_png_encode: bad arguments (%d x %d, %d channels, %d text chunks)", width, height,
               channels, n_text);
    return SG_IMAGE_EINVAL;
  }
  *out = NULL;
  *out_len = 0;
  for (int32_t i = 0; i < n_text; i++) {
    if (!text[i].key || !text[i].value || !valid_keyword(text[i].key)) {
      sg_set_err(err, errlen, "PNG text %d: the key must be 1 to 79 printable ASCII characters and the value set", i);
      return SG_IMAGE_EINVAL;
    }
  }
  png_text *chunks = n_text > 0 ? calloc((size_t)n_text, sizeof *chunks) : NULL;
  if (n_text > 0 && !chunks) {
    sg_set_err(err, errlen, "out of memory encoding a PNG image");
    return SG_IMAGE_ENOMEM;
  }
  for (int32_t i = 0; i < n_text; i++) {
    int ascii = 1;
    for (const unsigned char *c = (const unsigned char *)text[i].value; *c; c++) ascii &= *c < 0x80;
    /* tEXt is Latin-1: UTF-8 beyond ASCII needs iTXt to read back as the same characters */
    chunks[i].compression = ascii ? PNG_TEXT_COMPRESSION_NONE : PNG_ITXT_COMPRESSION_NONE;
    chunks[i].key = (png_charp)(uintptr_t)text[i].key; /* libpng copies them */
    chunks[i].text = (png_charp)(uintptr_t)text[i].value;
    chunks[i].text_length = strlen(text[i].value);
  }
  png_writer w;
  memset(&w, 0, sizeof w);
  w.err = err;
  w.errlen = errlen;
  w.png = png_create_write_struct_2(PNG_LIBPNG_VER_STRING, &w, png_on_write_error, png_on_warning, &w,
                                    png_on_write_malloc, png_on_free);
  if (w.png) w.info = png_create_info_struct(w.png);
  int rc;
  if (!w.png || !w.info) {
    sg_set_err(err, errlen, "out of memory starting the PNG encoder");
    rc = SG_IMAGE_ENOMEM;
  } else {
    rc = png_write_run(&w, pixels, width, height, channels, chunks, n_text);
  }
  png_destroy_write_struct(w.png ? &w.png : NULL, w.info ? &w.info : NULL);
  free(chunks);
  if (rc) {
    free(w.buf);
    return rc;
  }
  *out = w.buf;
  *out_len = w.len;
  return 0;
}

int sg_png_save(const char *path, const uint8_t *pixels, int32_t w, int32_t h, int32_t channels,
                const sg_png_text *text, int32_t n_text, char *err, size_t errlen) {
  if (!path) {
    sg_set_err(err, errlen, "sg_png_save: NULL path");
    return SG_IMAGE_EINVAL;
  }
  uint8_t *buf;
  size_t len;
  int rc = sg_png_encode(pixels, w, h, channels, text, n_text, &buf, &len, err, errlen);
  if (rc) return rc;
  FILE *f = fopen(path, "wb");
  if (!f) {
    sg_set_err(err, errlen, "cannot create %s: %s", path, strerror(errno));
    free(buf);
    return SG_IMAGE_EIO;
  }
  size_t put = fwrite(buf, 1, len, f);
  int write_errno = errno;
  int closed = fclose(f);
  free(buf);
  if (put != len || closed != 0) {
    sg_set_err(err, errlen, "cannot write %s: %s", path, strerror(put != len ? write_errno : errno));
    remove(path);
    return SG_IMAGE_EIO;
  }
  return 0;
}
