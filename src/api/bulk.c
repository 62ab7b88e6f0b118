/* vectord's bulk endpoints: streamed NDJSON import and export. */
#include "api_int.h"

int vd__api_bulk_routes(struct vd_http *h)
{
    (void)h;
    return 0;
}
