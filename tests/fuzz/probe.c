/* Configure-time probe: does clang build and link a libFuzzer target with ASan and UBSan here? */
#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t len) {
  (void)data, (void)len;
  return 0;
}
