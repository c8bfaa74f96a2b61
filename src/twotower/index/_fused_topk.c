/* Exact top-k by inner product with the top-k fused into the GEMM (x86-64, AVX2 + FMA).
 *
 * The BLAS path (exact.py) writes every score of a [B, block] tile to memory and reads it back into
 * FAISS's per-query heaps, and BLAS itself runs these thin D = 64 products at ~80 % of the core's FMA peak.
 * Here each 6-item x 16-query block of scores lives in 12 AVX registers from its first multiply-add to its
 * compare with the 16 queries' current k-th best score, and reaches memory only when one of them wins
 * (about one block in fifteen over a 1M-row scan, most of them early); the multiply-adds run at ~94 % of
 * the peak.
 *
 * Layout: vectors [N, D] float32 row-major; queries packed in panels of 16, [P, D, 16] float32 (a panel's
 * 16 values for one dimension are contiguous: two AVX loads). Per query a candidate buffer of cap > k
 * scores and int64 rows, its fill and its threshold (the k-th best so far): a score above the threshold is
 * appended; a full buffer is cut back to its k best by a linear-time select, which raises the threshold.
 * Rows whose score equals the threshold do not enter, so ties at the k-th place are settled arbitrarily,
 * as in any exact top-k over float32 scores.
 *
 * Built by setup.py as an optional extension: where it does not compile or the CPU lacks AVX2/FMA,
 * exact.py uses the BLAS path, which gives the same results.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <time.h>

#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define TT_HAVE_KERNEL 1
#include <immintrin.h>
#else
#define TT_HAVE_KERNEL 0
#endif

#define PANEL 16 /* queries per panel: two 8-float AVX registers */
#define ROWS 6   /* items per register block: 6 x 2 accumulators + 2 query + 1 broadcast = 15 registers */

#if TT_HAVE_KERNEL
/* Every function of the kernel is compiled for AVX2 + FMA (and only called once cpu_ok() said yes), so the
 * heap code inlines into the scan: calls from the AVX scan into generic x86-64 heap code made the top-k
 * ~2.5x dearer. */
#define TT_AVX2 __attribute__((target("avx2,fma")))

/* Move the m largest of v[0..n) (with their labels) to v[0..m) and return the smallest of them: the new
 * threshold. Quickselect with a branch-free partition (the compare decides a conditional swap, not a
 * jump: the scores are random against the pivot, so a branch would mispredict half the time). */
TT_AVX2 static float select_top(float *v, int64_t *id, int n, int m) {
    int lo = 0, hi = n; /* invariant: v[0..lo) belong to the m largest; the rest of them lie in v[lo..hi) */
    while (hi - lo > 1 && lo < m) {
        const float a = v[lo], b = v[(lo + hi) / 2], c = v[hi - 1];
        const float piv = a > b ? (b > c ? b : (a > c ? c : a)) : (a > c ? a : (b > c ? c : b)); /* median */
        int gt = lo;                                                                            /* > pivot */
        for (int i = lo; i < hi; i++) {
            const float x = v[i], y = v[gt];
            const int64_t xi = id[i], yi = id[gt];
            const int w = x > piv;
            v[i] = w ? y : x;
            id[i] = w ? yi : xi;
            v[gt] = w ? x : y;
            id[gt] = w ? xi : yi;
            gt += w;
        }
        if (gt > m) { /* more than enough above the pivot: the m-th largest is among them */
            hi = gt;
            continue;
        }
        int ge = gt; /* then the ones equal to the pivot */
        for (int i = gt; i < hi; i++) {
            const float x = v[i], y = v[ge];
            const int64_t xi = id[i], yi = id[ge];
            const int w = x == piv;
            v[i] = w ? y : x;
            id[i] = w ? yi : xi;
            v[ge] = w ? x : y;
            id[ge] = w ? xi : yi;
            ge += w;
        }
        if (ge >= m) return piv; /* v[0..m) = everything above the pivot + copies of it */
        lo = ge;                 /* all of v[0..ge) belong; the rest lie below the pivot */
    }
    float t = v[0];
    for (int i = 1; i < m; i++) t = v[i] < t ? v[i] : t;
    return t;
}

/* Per-query candidate buffer: scores above the query's threshold are appended; a full buffer is cut back
 * to its k best and the threshold rises to the k-th best (cheaper than a heap: one store per candidate and
 * a linear-time select per cap - k of them). */
typedef struct {
    float *v;      /* [cap] scores */
    int64_t *id;   /* [cap] rows */
    int32_t *n;    /* fill */
    float *thr;    /* the k-th best score so far (-inf until the first cut) */
    int k, cap;
} Cands;

TT_AVX2 static inline void offer(Cands c, const uint8_t *dead, float s, int64_t row) {
    /* branch-free: the candidate is always written to the next free slot and kept only if it wins */
    const int32_t n = *c.n;
    c.v[n] = s;
    c.id[n] = row;
    const int win = (s > *c.thr) & !(dead && dead[row]);
    *c.n = n + win;
    if (n + win == c.cap) {
        *c.thr = select_top(c.v, c.id, c.cap, c.k);
        *c.n = c.k;
    }
}

TT_AVX2 static inline Cands cands_of(float *bv, int64_t *bi, int32_t *cnt, float *thr, int k, int cap, int j) {
    Cands c = {bv + (int64_t)j * cap, bi + (int64_t)j * cap, cnt + j, thr + j, k, cap};
    return c;
}

/* Rows [lo, hi) with no full register block left: plain dot products against every query of the panel. */
TT_AVX2 static void scan_rows_scalar(const float *vec, int64_t d, int64_t lo, int64_t hi, const float *q, float *bv,
                                     int64_t *bi, int32_t *cnt, float *thr, int k, int cap, const uint8_t *dead) {
    for (int64_t i = lo; i < hi; i++) {
        const float *a = vec + i * d;
        for (int j = 0; j < PANEL; j++) {
            float s = 0.0f;
            for (int64_t t = 0; t < d; t++) s += a[t] * q[t * PANEL + j];
            offer(cands_of(bv, bi, cnt, thr, k, cap, j), dead, s, i);
        }
    }
}

/* Rows [lo, hi) of vec [., d] against one panel q [d, 16]; bv/bi [16, cap], cnt/thr [16]: its queries'
 * candidate buffers. */
TT_AVX2 static void scan_panel(const float *vec, int64_t d, const float *q, float *bv, int64_t *bi, int32_t *cnt,
                               float *thr, int k, int cap, const uint8_t *dead, int64_t lo, int64_t hi) {
    int64_t i = lo;
    for (; i + ROWS <= hi; i += ROWS) {
        const float *a = vec + i * d;
        __m256 c00 = _mm256_setzero_ps(), c01 = c00, c10 = c00, c11 = c00, c20 = c00, c21 = c00;
        __m256 c30 = c00, c31 = c00, c40 = c00, c41 = c00, c50 = c00, c51 = c00;
        for (int64_t t = 0; t < d; t++) {
            const __m256 b0 = _mm256_loadu_ps(q + t * PANEL), b1 = _mm256_loadu_ps(q + t * PANEL + 8);
            __m256 x = _mm256_broadcast_ss(a + t);
            c00 = _mm256_fmadd_ps(x, b0, c00);
            c01 = _mm256_fmadd_ps(x, b1, c01);
            x = _mm256_broadcast_ss(a + d + t);
            c10 = _mm256_fmadd_ps(x, b0, c10);
            c11 = _mm256_fmadd_ps(x, b1, c11);
            x = _mm256_broadcast_ss(a + 2 * d + t);
            c20 = _mm256_fmadd_ps(x, b0, c20);
            c21 = _mm256_fmadd_ps(x, b1, c21);
            x = _mm256_broadcast_ss(a + 3 * d + t);
            c30 = _mm256_fmadd_ps(x, b0, c30);
            c31 = _mm256_fmadd_ps(x, b1, c31);
            x = _mm256_broadcast_ss(a + 4 * d + t);
            c40 = _mm256_fmadd_ps(x, b0, c40);
            c41 = _mm256_fmadd_ps(x, b1, c41);
            x = _mm256_broadcast_ss(a + 5 * d + t);
            c50 = _mm256_fmadd_ps(x, b0, c50);
            c51 = _mm256_fmadd_ps(x, b1, c51);
        }
        /* the best of the 6 rows for each query, against that query's k-th best so far */
        const __m256 m0 = _mm256_max_ps(_mm256_max_ps(_mm256_max_ps(c00, c10), _mm256_max_ps(c20, c30)),
                                        _mm256_max_ps(c40, c50));
        const __m256 m1 = _mm256_max_ps(_mm256_max_ps(_mm256_max_ps(c01, c11), _mm256_max_ps(c21, c31)),
                                        _mm256_max_ps(c41, c51));
        unsigned mask = (unsigned)_mm256_movemask_ps(_mm256_cmp_ps(m0, _mm256_loadu_ps(thr), _CMP_GT_OQ)) |
                        ((unsigned)_mm256_movemask_ps(_mm256_cmp_ps(m1, _mm256_loadu_ps(thr + 8), _CMP_GT_OQ)) << 8);
        if (mask) { /* rare once the thresholds settle: spill the block and offer the winners' rows */
            float sc[ROWS][PANEL];
            _mm256_storeu_ps(sc[0], c00);
            _mm256_storeu_ps(sc[0] + 8, c01);
            _mm256_storeu_ps(sc[1], c10);
            _mm256_storeu_ps(sc[1] + 8, c11);
            _mm256_storeu_ps(sc[2], c20);
            _mm256_storeu_ps(sc[2] + 8, c21);
            _mm256_storeu_ps(sc[3], c30);
            _mm256_storeu_ps(sc[3] + 8, c31);
            _mm256_storeu_ps(sc[4], c40);
            _mm256_storeu_ps(sc[4] + 8, c41);
            _mm256_storeu_ps(sc[5], c50);
            _mm256_storeu_ps(sc[5] + 8, c51);
            while (mask) {
                const int j = __builtin_ctz(mask);
                mask &= mask - 1;
                const Cands c = cands_of(bv, bi, cnt, thr, k, cap, j);
                for (int r = 0; r < ROWS; r++) offer(c, dead, sc[r][j], i + r);
            }
        }
    }
    scan_rows_scalar(vec, d, i, hi, q, bv, bi, cnt, thr, k, cap, dead);
}

/* Multiply-adds per second with no memory traffic: 12 independent chains, enough to fill both FMA pipes. */
TT_AVX2 static double fma_flops(int64_t iters) {
    __m256 acc[12];
    const __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
    for (int i = 0; i < 12; i++) acc[i] = _mm256_set1_ps((float)i);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (int64_t n = 0; n < iters; n++) {
        acc[0] = _mm256_fmadd_ps(acc[0], b, c);
        acc[1] = _mm256_fmadd_ps(acc[1], b, c);
        acc[2] = _mm256_fmadd_ps(acc[2], b, c);
        acc[3] = _mm256_fmadd_ps(acc[3], b, c);
        acc[4] = _mm256_fmadd_ps(acc[4], b, c);
        acc[5] = _mm256_fmadd_ps(acc[5], b, c);
        acc[6] = _mm256_fmadd_ps(acc[6], b, c);
        acc[7] = _mm256_fmadd_ps(acc[7], b, c);
        acc[8] = _mm256_fmadd_ps(acc[8], b, c);
        acc[9] = _mm256_fmadd_ps(acc[9], b, c);
        acc[10] = _mm256_fmadd_ps(acc[10], b, c);
        acc[11] = _mm256_fmadd_ps(acc[11], b, c);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    volatile float sink = 0.0f;
    for (int i = 0; i < 12; i++) sink += _mm256_cvtss_f32(acc[i]);
    (void)sink;
    const double s = (double)(t1.tv_sec - t0.tv_sec) + 1e-9 * (double)(t1.tv_nsec - t0.tv_nsec);
    return (double)iters * 12 * 16 / s;
}

static int cpu_ok(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
#else
static int cpu_ok(void) { return 0; }
#endif

static int check(Py_buffer *b, Py_ssize_t want, const char *name) {
    if (b->len != want) {
        PyErr_Format(PyExc_ValueError, "_fused_topk.scan: %s holds %zd bytes, expected %zd", name, b->len, want);
        return 0;
    }
    return 1;
}

PyDoc_STRVAR(scan_doc,
             "scan(vectors, n, d, panels, p_lo, p_hi, k, values, labels, counts, thresholds, dead=None)\n\n"
             "Offer every row of vectors [n, d] to the candidate buffers of the queries in panels [p_lo, p_hi) "
             "of panels [P, d, 16]: values float32 / labels int64 [P * 16, cap] (cap > k), counts int32 and "
             "thresholds float32 [P * 16] (start at 0 and -inf), all updated in place. Afterwards a query's "
             "first counts[j] candidates hold its top k (unordered). dead: uint8 [n] or None. Releases the "
             "GIL: threads may scan disjoint panel ranges at once.");

static PyObject *scan(PyObject *self, PyObject *args) {
    (void)self;
    Py_buffer vec, pan, bv, bi, cnt, thr, dead = {0};
    Py_ssize_t n, d, p_lo, p_hi;
    int k;
    PyObject *dead_obj = Py_None;
    if (!PyArg_ParseTuple(args, "y*nny*nniw*w*w*w*|O", &vec, &n, &d, &pan, &p_lo, &p_hi, &k, &bv, &bi, &cnt, &thr,
                          &dead_obj))
        return NULL;
    PyObject *ret = NULL;
    const int have_dead = dead_obj != Py_None;
    if (have_dead && PyObject_GetBuffer(dead_obj, &dead, PyBUF_SIMPLE) < 0) goto release;
    const Py_ssize_t panels = d > 0 ? pan.len / (Py_ssize_t)(d * PANEL * sizeof(float)) : 0;
    const Py_ssize_t slots = panels * PANEL, cap = slots > 0 ? bv.len / (slots * (Py_ssize_t)sizeof(float)) : 0;
    if (n < 0 || d <= 0 || k <= 0 || cap <= k || cap > INT32_MAX || p_lo < 0 || p_hi > panels || p_lo > p_hi) {
        PyErr_SetString(PyExc_ValueError, "_fused_topk.scan: bad n, d, k, buffer capacity or panel range");
        goto release;
    }
    if (!check(&vec, n * d * (Py_ssize_t)sizeof(float), "vectors") ||
        !check(&pan, panels * d * PANEL * (Py_ssize_t)sizeof(float), "panels") ||
        !check(&bv, slots * cap * (Py_ssize_t)sizeof(float), "values") ||
        !check(&bi, slots * cap * (Py_ssize_t)sizeof(int64_t), "labels") ||
        !check(&cnt, slots * (Py_ssize_t)sizeof(int32_t), "counts") ||
        !check(&thr, slots * (Py_ssize_t)sizeof(float), "thresholds") || (have_dead && !check(&dead, n, "dead")))
        goto release;
    for (Py_ssize_t j = p_lo * PANEL; j < p_hi * PANEL; j++) { /* only this call's: others may be filling theirs */
        const int32_t c = ((const int32_t *)cnt.buf)[j];
        if (c < 0 || c >= cap) {
            PyErr_SetString(PyExc_ValueError, "_fused_topk.scan: a count is outside [0, cap)");
            goto release;
        }
    }
    if (!cpu_ok()) {
        PyErr_SetString(PyExc_RuntimeError, "_fused_topk.scan: this CPU lacks AVX2/FMA");
        goto release;
    }
#if TT_HAVE_KERNEL
    {
        const float *v = (const float *)vec.buf, *q = (const float *)pan.buf;
        float *vals = (float *)bv.buf, *th = (float *)thr.buf;
        int64_t *ids = (int64_t *)bi.buf;
        int32_t *counts = (int32_t *)cnt.buf;
        const uint8_t *dd = have_dead ? (const uint8_t *)dead.buf : NULL;
        /* rows per chunk: ~16 KiB of vectors stays in L1 while every panel of the range passes over it */
        int64_t chunk = (16384 / (int64_t)(d * sizeof(float))) / ROWS * ROWS;
        if (chunk < ROWS) chunk = ROWS;
        Py_BEGIN_ALLOW_THREADS;
        for (int64_t lo = 0; lo < n; lo += chunk) {
            const int64_t hi_row = lo + chunk < n ? lo + chunk : n;
            for (Py_ssize_t p = p_lo; p < p_hi; p++) {
                const Py_ssize_t j0 = p * PANEL;
                scan_panel(v, d, q + p * d * PANEL, vals + j0 * cap, ids + j0 * cap, counts + j0, th + j0, k,
                           (int)cap, dd, lo, hi_row);
            }
        }
        Py_END_ALLOW_THREADS;
    }
#endif
    Py_INCREF(Py_None);
    ret = Py_None;
release:
    if (have_dead && dead.obj) PyBuffer_Release(&dead);
    PyBuffer_Release(&vec);
    PyBuffer_Release(&pan);
    PyBuffer_Release(&bv);
    PyBuffer_Release(&bi);
    PyBuffer_Release(&cnt);
    PyBuffer_Release(&thr);
    return ret;
}

static PyObject *available(PyObject *self, PyObject *unused) {
    (void)self;
    (void)unused;
    return PyBool_FromLong(cpu_ok());
}

static PyObject *fma_peak(PyObject *self, PyObject *arg) {
    (void)self;
    const long long iters = PyLong_AsLongLong(arg);
    if (iters < 0 && PyErr_Occurred()) return NULL;
    if (!cpu_ok()) {
        PyErr_SetString(PyExc_RuntimeError, "_fused_topk.fma_peak: this CPU lacks AVX2/FMA");
        return NULL;
    }
    double f = 0.0;
#if TT_HAVE_KERNEL
    Py_BEGIN_ALLOW_THREADS;
    f = fma_flops(iters);
    Py_END_ALLOW_THREADS;
#endif
    return PyFloat_FromDouble(f);
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_VARARGS, scan_doc},
    {"fma_peak", fma_peak, METH_O,
     "fma_peak(iters) -> float32 FLOP/s of one thread running 12 * iters AVX2 multiply-adds from registers."},
    {"available", available, METH_NOARGS, "True where this CPU runs the kernel (x86-64 with AVX2 and FMA)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fused_topk", "Exact top-k fused into the GEMM.", -1, methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__fused_topk(void) { return PyModule_Create(&module); }
