/* Image input and output: PNG/JPEG decoding by magic bytes, PNG encoding with text chunks, sketch maps.
 *
 * Basic usage:
 *   sg_image_params p = sg_image_default_params();
 *   sg_image im;
 *   char err[256];
 *   if (sg_image_decode(upload, upload_len, p, &im, err, sizeof err) == 0) {
 *     float *map = malloc(sizeof(float) * 64 * 64);
 *     int inverted;
 *     sg_sketch_map(&im, 64, SG_INVERT_AUTO, map, &inverted, err, sizeof err);  // 1 = stroke
 *     sg_image_free(&im);
 *   }
 *   sg_png_text meta[] = {{"prompt", "a red star"}, {"seed", "42"}};
 *   sg_png_save("out.png", rgb, w, h, 3, meta, 2, err, sizeof err);
 *
 * Decoding picks the format by the data's magic bytes, never by a file name or a client's content type, and
 * checks width x height against params.max_pixels from the header before any pixel buffer is allocated.
 * Truncated or corrupt data is an error (SG_IMAGE_ECORRUPT), never a partly decoded image; a libjpeg warning
 * counts as corrupt (PIL accepts some files libjpeg warns about, such as stray bytes between markers). PNG:
 * palette, gray below 8 bits and 16-bit samples become 8-bit (16-bit keeps the high byte, as PIL does for RGB(A)
 * and gray + alpha; PIL clips 16-bit gray to 255 instead, so such sketches differ from load_sketch's); alpha is
 * kept; a palette's tRNS becomes alpha (RGBA), while tRNS on gray or RGB images is ignored (load_sketch does not
 * composite those either). JPEG: RGB, or gray for grayscale files; CMYK and YCCK are refused
 * (SG_IMAGE_EUNSUPPORTED); EXIF orientation is not applied.
 *
 * Cost of one decode, bounded before allocation (docs/config.md gives the figures measured at the default):
 * a side over SG_IMAGE_MAX_SIDE or width x height over max_pixels is refused from the header (ETOOBIG). PNG: the chunk layout is walked first (critical chunks' CRCs checked), so a chunk that declares more bytes
 * than the data holds is refused at once (ECORRUPT), as is a file with more than SG_IMAGE_PNG_MAX_CHUNKS chunks
 * besides IDAT (ETOOBIG). Every ancillary chunk but tRNS (tEXt, zTXt, iTXt, sPLT, iCCP, eXIf, ...) is skipped
 * unread: nothing is inflated but the image data, and that only up to the last row (image data past it is
 * ignored). Memory: the pixels (at most 4 bytes a pixel) plus two libpng rows of the file's samples (at most 8
 * bytes a pixel of the width each) plus under 1 MiB. JPEG: the scans are counted first (more than
 * SG_IMAGE_JPEG_MAX_SCANS is ETOOBIG); memory is the pixels (3 bytes a pixel) plus, for progressive and
 * multi-scan files, libjpeg's coefficient buffer (2 bytes a sample: 6 a pixel for 4:4:4 color) plus under 2 MiB.
 * Time grows with the pixels, the scans and the data's size.
 *
 * Every function returns 0 (SG_IMAGE_OK) or a negative SG_IMAGE_E* code with a message in err (errlen bytes,
 * may be NULL). Nothing here prints, exits or keeps global state: all calls are thread-safe.
 */
#ifndef SG_IMAGE_H
#define SG_IMAGE_H

#include <stddef.h>
#include <stdint.h>

#include "sketch.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { SG_IMAGE_UNKNOWN = 0, SG_IMAGE_PNG, SG_IMAGE_JPEG } sg_image_format;

/* 8-bit pixels: channels 1 (gray), 2 (gray + alpha), 3 (RGB) or 4 (RGBA), rows top to bottom, interleaved,
 * no padding (height x width x channels bytes). The image owns pixels; free with sg_image_free. */
typedef struct {
  int32_t width, height, channels;
  uint8_t *pixels;
} sg_image;

typedef struct {
  int64_t max_pixels; /* default 16777216 (4096^2); width x height above it is refused from the header, before
                         any pixel buffer is allocated */
} sg_image_params;

/* An image with a side longer than this is refused (SG_IMAGE_ETOOBIG) from its header, whatever max_pixels allows:
 * libpng's row buffers grow with the width (a 2^24 x 1 16-bit RGBA image cost 320 MiB and seconds), and no sketch
 * is a strip. */
#define SG_IMAGE_MAX_SIDE 16384
/* A PNG with more chunks than this besides IDAT is refused (SG_IMAGE_ETOOBIG) before libpng reads it. */
#define SG_IMAGE_PNG_MAX_CHUNKS 1000
/* A JPEG with more scans than this is refused (SG_IMAGE_ETOOBIG) before decoding: libjpeg visits every block of
 * the image in each progressive scan, and encoders write at most a few dozen (libjpeg's progressive mode 10). */
#define SG_IMAGE_JPEG_MAX_SCANS 100

enum {
  SG_IMAGE_OK = 0,
  SG_IMAGE_EINVAL = -1,       /* a bad argument */
  SG_IMAGE_EUNSUPPORTED = -2, /* not PNG/JPEG by magic bytes, or an unsupported variant (CMYK JPEG) */
  SG_IMAGE_ETOOBIG = -3,      /* width x height over max_pixels, a side over SG_IMAGE_MAX_SIDE, or over
                                 SG_IMAGE_PNG_MAX_CHUNKS or _JPEG_MAX_SCANS */
  SG_IMAGE_ECORRUPT = -4,     /* truncated or corrupt */
  SG_IMAGE_ENOMEM = -5,       /* out of memory */
  SG_IMAGE_EIO = -6,          /* file read/write */
};

/* Returns the defaults: max_pixels 4096 x 4096. */
sg_image_params sg_image_default_params(void);

/* Returns the format of len bytes of data by their magic bytes only (PNG: the 8-byte signature; JPEG: FF D8 FF),
 * or SG_IMAGE_UNKNOWN (also for NULL or too short data). */
sg_image_format sg_image_sniff(const uint8_t *data, size_t len);

/* Returns "png", "jpeg" or "unknown" (a static string). */
const char *sg_image_format_name(sg_image_format f);

/* Decodes len bytes of PNG or JPEG data (not retained) into *out, which the caller frees with sg_image_free.
 * Returns 0, or a negative SG_IMAGE_E* code with *out zeroed: EUNSUPPORTED for other data (also empty data),
 * ETOOBIG over p.max_pixels (or over SG_IMAGE_PNG_MAX_CHUNKS or SG_IMAGE_JPEG_MAX_SCANS), ECORRUPT for truncated
 * or corrupt data (also a PNG chunk longer than the data left), ENOMEM. */
int sg_image_decode(const uint8_t *data, size_t len, sg_image_params p, sg_image *out, char *err, size_t errlen);

/* Reads the file at path and decodes it as sg_image_decode does. Returns 0 or a negative SG_IMAGE_E* code
 * (EIO when the file cannot be read). */
int sg_image_load(const char *path, sg_image_params p, sg_image *out, char *err, size_t errlen);

/* Frees the pixels and zeroes the struct; NULL is ignored. */
void sg_image_free(sg_image *im);

/* Converts in (any channel count) to 8-bit RGB in *out (a new image the caller frees with sg_image_free): gray
 * is replicated, alpha is composited onto opaque white with PIL's Image.alpha_composite arithmetic. Returns 0
 * or a negative SG_IMAGE_E* code. */
int sg_image_to_rgb(const sg_image *in, sg_image *out, char *err, size_t errlen);

/* Resizes in (any channel count) to w x h into *out (a new image the caller frees with sg_image_free):
 * bilinear with align_corners=false semantics and torch's weights (F.interpolate(mode="bilinear"), no antialias),
 * each channel on its own (alpha is not premultiplied), rounded to the nearest 8-bit value. Returns 0 or a
 * negative SG_IMAGE_E* code. */
int sg_image_resize(const sg_image *in, int32_t w, int32_t h, sg_image *out, char *err, size_t errlen);

typedef enum { SG_INVERT_AUTO = 0, SG_INVERT_TRUE, SG_INVERT_FALSE } sg_invert;

/* Returns the sg_invert for "auto", "true"/"1"/"yes" or "false"/"0"/"no" (any case), or -1 (also for NULL). */
int sg_invert_parse(const char *s);

/* Turns a sketch into a binary map exactly as tools/sample.py load_sketch does: alpha composited onto white,
 * grayscale (PIL "L": (R*19595 + G*38470 + B*7471 + 0x8000) >> 16), /255 as float32, inverted (1 - g) when inv
 * is SG_INVERT_TRUE or (SG_INVERT_AUTO and numpy's float32 mean > 0.5), resized to size x size with torch's
 * then, when the sketch is at least size on both sides (and not size x size), thresholded (> 0.5) at its own
 * resolution, cleared of specks (sg_sketch_despeckle) and downscaled keeping every stroke (sg_sketch_box_any);
 * otherwise resized to size x size with torch's bilinear arithmetic (align_corners false; as torch 1.13's CPU
 * kernel: a float scale in / out, the source index (dst + 0.5) * scale - 0.5 in double, float weights and weight
 * products, the four terms summed in double) unless already that size, thresholded (> 0.5) and cleared of specks;
 * last, filled regions become their outlines (sg_sketch_filled_to_outline, SG_FILLED_AUTO) and wide strokes their
 * skeletons (sg_sketch_thin_wide). Values 1.0f or 0.0f.
 * out (caller-provided, size x size floats, row-major) receives the map; *inverted (may be NULL) says whether it
 * inverted. Returns 0 or a negative SG_IMAGE_E* code. */
int sg_sketch_map(const sg_image *in, int32_t size, sg_invert inv, float *out, int *inverted, char *err,
                  size_t errlen);
/* sg_sketch_map with filled regions as `filled` says (sg_sketch_map: SG_FILLED_AUTO; SG_FILLED_FALSE keeps the
 * strokes as drawn: no outlines, no thinning). *converted (may be NULL)
 * gets the number of filled regions replaced by their outlines. Returns 0 or a negative SG_IMAGE_E* code. */
int sg_sketch_map_filled(const sg_image *in, int32_t size, sg_invert inv, sg_filled filled, float *out, int *inverted,
                         int32_t *converted, char *err, size_t errlen);

/* A PNG text chunk: key of 1 to 79 printable ASCII characters (no leading, trailing or double spaces); value any
 * NUL-terminated UTF-8. Both are borrowed for the call. */
typedef struct {
  const char *key, *value;
} sg_png_text;

/* Encodes h x w 8-bit pixels (channels 1..4, as in sg_image) as PNG with n_text text chunks before the image
 * data: tEXt, or iTXt (UTF-8) when a value has bytes >= 0x80. On success *out is a malloc'ed buffer of *out_len
 * bytes that the caller frees. Returns 0 or a negative SG_IMAGE_E* code (EINVAL for a bad size or key). */
int sg_png_encode(const uint8_t *pixels, int32_t w, int32_t h, int32_t channels, const sg_png_text *text,
                  int32_t n_text, uint8_t **out, size_t *out_len, char *err, size_t errlen);

/* Encodes as sg_png_encode and writes the file at path (replaced if it exists; removed again when writing
 * fails). Returns 0 or a negative SG_IMAGE_E* code (EIO for a write failure). */
int sg_png_save(const char *path, const uint8_t *pixels, int32_t w, int32_t h, int32_t channels,
                const sg_png_text *text, int32_t n_text, char *err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
