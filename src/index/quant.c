/*
 * Scalar int8 quantization of the index's vectors (the codes the graph walk reads when a
 * collection asks for quantization).
 *
 * One range [lo, hi] for all dimensions, as Qdrant's scalar quantization: the quantile q keeps
 * the central q share of a sample of stored values inside the range and clips the rest, so a few
 * outliers do not waste the 256 levels. Codes are unsigned (value = lo + alpha * code): the dot
 * product of two vectors is then an affine function of the integer dot product of their codes and
 * of each row's code sum, which the row keeps, so one integer kernel serves every metric.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hnsw_int.h"

/* Values sampled to place the range: enough for a stable 0.99 quantile whatever the dimension,
 * few enough to sort in a few tens of milliseconds. */
#define SAMPLE_VALUES (1u << 20)

int vd__quant_alloc_chunks(struct vd_index *ix)
{
    struct vd__tabs *t = atomic_load_explicit(&ix->tabs, memory_order_acquire);
    size_t bytes = ((size_t)1 << ix->chunk_shift) * ix->code_size;
    for (uint32_t c = 0; c < ix->nchunks; c++) {
        if (t->code[c])
            continue;
        uint8_t *p = aligned_alloc(64, bytes);
        if (!p)
            return VD_ENOMEM;
        memset(p, 0, bytes);
        t->code[c] = p;
    }
    return 0;
}

/* Writes into row the codes, for the current range, of the dim values v[i] or, when v is NULL,
 * olo + oalpha * c[i] for the codes c already in row (rewritten in place), and the row's header
 * (sum and sum of squares of the codes). */
static void encode_row(const struct vd_index *ix, const float *v, float olo, float oalpha,
                       uint8_t *row)
{
    const float lo = ix->qlo, inv = 1.0f / ix->qalpha;
    uint32_t sum = 0;
    uint64_t sq = 0;
    uint8_t *c = row + 16;
    for (uint32_t i = 0; i < ix->p.dim; i++) {
        float x = ((v ? v[i] : olo + oalpha * (float)c[i]) - lo) * inv;
        uint32_t k = x <= 0.0f ? 0 : x >= 255.0f ? 255 : (uint32_t)(x + 0.5f);
        c[i] = (uint8_t)k;
        sum += k;
        sq += k * k;
    }
    memset(row, 0, 16);
    memcpy(row, &sum, 4);
    memcpy(row + 8, &sq, 8);
}

void vd__quant_encode(const struct vd_index *ix, const float *v, uint8_t *row)
{
    encode_row(ix, v, 0.0f, 0.0f, row);
}

void vd__quant_set_range(struct vd_index *ix, float lo, float alpha)
{
    ix->qlo = lo;
    ix->qalpha = alpha;
    ix->qc0 = (float)ix->p.dim * lo * lo;
    ix->qc1 = lo * ix->qalpha;
    ix->qc2 = ix->qalpha * ix->qalpha;
}

void vd__quant_apply_range(struct vd_index *ix, float lo, float alpha)
{
    float olo = ix->qlo, oalpha = ix->qalpha;
    bool from_codes = !vd__floats(ix);
    vd__quant_set_range(ix, lo, alpha);
    const struct vd__tabs *t = atomic_load_explicit(&ix->tabs, memory_order_acquire);
    uint32_t n = atomic_load_explicit(&ix->nslots, memory_order_relaxed);
    for (uint32_t s = 0; s < n; s++) {
        if (from_codes)
            /* from the values the codes stand for: the old rounding error stays (at most half a
             * step of the old range) */
            encode_row(ix, NULL, olo, oalpha, vd__code(ix, t, s));
        else
            vd__quant_encode(ix, vd__vec(ix, t, s), vd__code(ix, t, s));
    }
    ix->qtrained_n = atomic_load(&ix->live);
    atomic_store_explicit(&ix->qready, true, memory_order_release);
    if (vd__floats_on_disk(ix) && ix->fheld)
        vd__index_drop_floats(ix);
}

static int cmp_float(const void *a, const void *b)
{
    float x = *(const float *)a, y = *(const float *)b;
    return (x > y) - (x < y);
}

int vd__quant_train(struct vd_index *ix)
{
    if (atomic_flag_test_and_set(&ix->qtraining))
        return VD_EBUSY;
    int rc = 0;
    uint32_t dim = ix->p.dim;
    uint32_t want = SAMPLE_VALUES / dim ? SAMPLE_VALUES / dim : 1;
    float *sample = NULL;
    size_t nv = 0;
    struct vd_pid *ids = NULL;
    size_t nids = 0;
    /* The sample is copied under mu alone (vectors are written under mu), so searches go on
     * while it is sorted; only the encoding pass below holds the gate. Without floats in memory
     * the sampled points' ids are copied instead and their floats read from the source with no
     * lock held. */
    pthread_mutex_lock(&ix->mu);
    uint32_t n = atomic_load(&ix->nslots);
    uint32_t step = n / want > 1 ? n / want : 1;
    bool in_ram = vd__floats(ix);
    sample = malloc(((size_t)n / step + 1) * dim * sizeof(float));
    ids = in_ram ? NULL : malloc(((size_t)n / step + 1) * sizeof(*ids));
    if (!sample || (!in_ram && !ids)) {
        pthread_mutex_unlock(&ix->mu);
        rc = VD_ENOMEM;
        goto out_free;
    }
    const struct vd__tabs *t = atomic_load_explicit(&ix->tabs, memory_order_acquire);
    for (uint32_t s = 0; s < n; s += step) {
        uint8_t st = atomic_load(vd__state(ix, vd__blk(ix, t, s)));
        if (st != ST_PENDING && st != ST_LINKING && st != ST_LIVE)
            continue;
        if (!in_ram) {
            ids[nids++] = vd__meta(ix, t, s)->id;
            continue;
        }
        memcpy(sample + nv, vd__vec(ix, t, s), (size_t)dim * sizeof(float));
        nv += dim;
    }
    pthread_mutex_unlock(&ix->mu);
    if (nids) {
        void *rd;
        if ((rc = ix->p.src.begin(ix->p.src.ctx, &rd)) != 0)
            goto out_free;
        for (size_t i = 0; i < nids; i++) {
            const float *v;
            if (ix->p.src.get(ix->p.src.ctx, rd, &ids[i], &v) != 0)
                continue; /* deleted since: one sample fewer */
            memcpy(sample + nv, v, (size_t)dim * sizeof(float));
            nv += dim;
        }
        ix->p.src.end(ix->p.src.ctx, rd);
    }
    if (nv == 0)
        goto out_free;
    qsort(sample, nv, sizeof(float), cmp_float);
    pthread_rwlock_wrlock(&ix->gate);
    pthread_mutex_lock(&ix->mu);
    /* the quantile is read here, so a change that raced with this training still applies */
    float q = vd__quant_quantile(&ix->q);
    size_t ilo = (size_t)floor((1.0 - (double)q) / 2.0 * (double)(nv - 1));
    size_t ihi = (size_t)ceil((1.0 + (double)q) / 2.0 * (double)(nv - 1));
    if (ihi > nv - 1)
        ihi = nv - 1;
    float lo = sample[ilo], alpha = (sample[ihi] - lo) / 255.0f;
    if (!(alpha > 0.0f))
        alpha = 1e-6f; /* every sampled value equal: any positive step encodes them exactly */
    /* Without floats in memory a new range is applied by re-encoding the codes, which adds the
     * new rounding to the old: a range within one old step of the current one (data whose
     * spread has not changed) is kept as it is. */
    bool keep = !vd__floats(ix) && atomic_load(&ix->qready) && q == ix->qtrained_q &&
                fabsf(lo - ix->qlo) <= ix->qalpha &&
                fabsf((lo + 255.0f * alpha) - (ix->qlo + 255.0f * ix->qalpha)) <= ix->qalpha;
    if (keep) {
        ix->qtrained_n = atomic_load(&ix->live);
    } else if (ix->q.enabled && (rc = vd__quant_alloc_chunks(ix)) == 0) {
        vd__quant_apply_range(ix, lo, alpha);
        ix->qtrained_q = q;
    }
    pthread_mutex_unlock(&ix->mu);
    pthread_rwlock_unlock(&ix->gate);
out_free:
    free(ids);
    free(sample);
    atomic_flag_clear(&ix->qtraining);
    return rc;
}

/* Frees every code chunk and stops code searches (gate exclusive and mu held). */
static void drop_codes(struct vd_index *ix)
{
    atomic_store(&ix->qready, false);
    struct vd__tabs *t = atomic_load(&ix->tabs);
    for (uint32_t c = 0; c < ix->nchunks; c++) {
        free(t->code[c]);
        t->code[c] = NULL;
    }
    /* older tables hold copies of the pointers freed above; nothing reads them (a search loads
     * the current table under the gate), but they must not be freed twice either */
    for (struct vd__tabs *o = t->prev; o; o = o->prev)
        memset(o->code, 0, o->cap * sizeof(*o->code));
    ix->qtrained_n = 0;
}

int vd_index_set_quant(struct vd_index *ix, const struct vd_index_quant *q)
{
    if (q->enabled && q->quantile != 0.0f && !(q->quantile >= 0.5f && q->quantile <= 1.0f))
        return VD_ERANGE;
    int rc = 0;
    /* a lean index without its floats reads them back first when the new config walks or
     * keeps floats (nothing else could score its points once the codes go) */
    bool want_floats = !q->enabled || q->always_ram;
    for (;;) {
        if (want_floats && (rc = vd__index_restore_floats(ix)) != 0)
            return rc;
        pthread_rwlock_wrlock(&ix->gate);
        pthread_mutex_lock(&ix->mu);
        if (!want_floats || vd__floats(ix))
            break;
        /* a training dropped them again in between (under the old config): once more */
        pthread_mutex_unlock(&ix->mu);
        pthread_rwlock_unlock(&ix->gate);
    }
    bool retrain = q->enabled && (!ix->q.enabled || q->quantile != ix->q.quantile);
    /* without floats the codes stay until the retraining re-encodes them */
    if (!q->enabled || (retrain && vd__floats(ix)))
        drop_codes(ix);
    ix->q = *q;
    if (vd__floats_on_disk(ix) && ix->fheld && atomic_load(&ix->qready))
        vd__index_drop_floats(ix); /* trained already: the floats can go at once */
    if (q->enabled && (rc = vd__quant_alloc_chunks(ix)) != 0) {
        drop_codes(ix);
        ix->q.enabled = false;
    }
    size_t live = atomic_load(&ix->live);
    pthread_mutex_unlock(&ix->mu);
    pthread_rwlock_unlock(&ix->gate);
    if (rc == 0 && retrain && live >= VD_INDEX_QUANT_TRAIN_MIN) {
        /* a training already running reads the new quantile when it takes the gate */
        rc = vd__quant_train(ix);
        if (rc == VD_EBUSY)
            rc = 0;
    }
    return rc;
}

bool vd_index_quant_ready(const struct vd_index *ix)
{
    return atomic_load_explicit(&((struct vd_index *)ix)->qready, memory_order_acquire);
}
