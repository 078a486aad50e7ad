/* Every driver, in probe order.  The only place that names them all. */
#include "core/format.h"

extern const struct img_format img_format_qcow2;
extern const struct img_format img_format_vmdk;
extern const struct img_format img_format_vdi;
extern const struct img_format img_format_vpc;
extern const struct img_format img_format_raw;

const struct img_format *const img_formats[] = {
    &img_format_qcow2,
    &img_format_vmdk,
    &img_format_vdi,
    &img_format_vpc,
    &img_format_raw,
    NULL,
};
