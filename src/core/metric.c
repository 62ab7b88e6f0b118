/* Names of the distance metrics as the REST API and the cluster's metadata spell them. */
#include <string.h>

#include "vectord/core.h"

static const struct {
    const char *name;
    enum vd_metric m;
} metrics[] = {{"Cosine", VD_METRIC_COSINE},
               {"Dot", VD_METRIC_DOT},
               {"Euclid", VD_METRIC_EUCLID},
               {"Manhattan", VD_METRIC_MANHATTAN}};

const char *vd_metric_name(enum vd_metric m)
{
    for (size_t i = 0; i < sizeof metrics / sizeof metrics[0]; i++)
        if (metrics[i].m == m)
            return metrics[i].name;
    return "Unknown";
}

int vd_metric_parse(const char *s, enum vd_metric *out)
{
    for (size_t i = 0; s && i < sizeof metrics / sizeof metrics[0]; i++)
        if (!strcmp(s, metrics[i].name)) {
            *out = metrics[i].m;
            return 0;
        }
    return VD_EINVAL;
}
