// adamw_ema.cu: gradient clipping, AdamW and the EMA of the weights in one pass over flat buffers.
//
// It equals tinyddpm/training/fused_update.py's update_arrays (NumPy), which equals optim.py's per-tensor
// clip_grad_norm + AdamW.step + EMA.update (the readable reference). Over flat buffers g, p, m, v, e of n
// elements (every parameter of the model, one after another; the n_decay weight-decayed ones first):
//
//     c   = min(1, max_norm / (||g|| + 1e-6))         ||g||^2 = sum_i g_i^2       global-norm clipping
//     g_i = c g_i
//     p_i = p_i (1 - lr wd)                           only for i < n_decay        decoupled weight decay
//     m_i = b1 m_i + (1 - b1) g_i                                                 first moment
//     v_i = b2 v_i + (1 - b2) g_i^2                                               second moment
//     p_i = p_i - step_size m_i / (sqrt(v_i) / sqrt_bias2 + eps)                  step_size = lr / (1 - b1^t),
//                                                                                 sqrt_bias2 = sqrt(1 - b2^t)
//     e_i = e_i + (1 - d) (p_i - e_i)                                             EMA with decay d
//
// Two kernels, launched one after the other by adamw_ema.py:
//     sum_of_squares_*   NORM_BLOCKS blocks each write one partial sum of g_i^2 (a fixed order: deterministic)
//     adamw_ema_*        each block adds the partials (warp 0, a fixed order), takes c, then updates its elements
// The clip coefficient c is computed on the device from the partial sums, and every per-step scalar (lr, the
// bias corrections of step t, 1 - d) is read from the small device array `hyper`, filled from the host before the
// launch: nothing here needs a value read back to the host, so the step can be captured in a CUDA graph.
//
// The arithmetic of one element is adamw_ema_element() and the clip coefficient clip_coefficient(): both
// __host__ __device__, so a test compiles them for the CPU and checks them against NumPy without a GPU.
// Dimension letters: n elements; the kernels take float (_f32) or double (_f64) buffers, all of one type.

// The per-step scalars, in the order of the device array `hyper` (adamw_ema.py's HYPER names them alike).
enum Hyper {
    H_MAX_NORM = 0,            // clip threshold
    H_WEIGHT_DECAY_FACTOR,     // 1 - lr wd (1 when there is no weight decay)
    H_B1,                      // b1
    H_ONE_MINUS_B1,            // 1 - b1 (rounded once on the host, as NumPy's (1.0 - b1) * g does)
    H_B2,                      // b2
    H_ONE_MINUS_B2,            // 1 - b2
    H_STEP_SIZE,               // lr / (1 - b1^t): folds the bias correction of m in
    H_SQRT_BIAS2,              // sqrt(1 - b2^t): sqrt(v^) = sqrt(v) / sqrt(1 - b2^t)
    H_EPS,                     // eps
    H_EMA_RATE,                // 1 - d
    H_COUNT
};

__host__ __device__ inline float square_root(float x) { return sqrtf(x); }
__host__ __device__ inline double square_root(double x) { return sqrt(x); }

// c = min(1, max_norm / (||g|| + 1e-6)), written so that a NaN norm gives a NaN c (as xp.minimum does):
// `c > 1` is false for NaN, so NaN passes through and makes every gradient NaN, never silently 1.
template <typename T>
__host__ __device__ inline T clip_coefficient(T sum_of_squares, T max_norm) {
    T c = max_norm / (square_root(sum_of_squares) + T(1e-6));
    return c > T(1) ? T(1) : c;
}

// One element of the fused update: g is the raw gradient, c the clip coefficient, h the per-step scalars.
template <typename T>
__host__ __device__ inline void adamw_ema_element(T& p, T& m, T& v, T& e, T g, T c, bool decays, const T* h) {
    g = g * c;                                                    // g <- c g
    if (decays) p = p * h[H_WEIGHT_DECAY_FACTOR];                 // p <- p (1 - lr wd)
    m = h[H_B1] * m + h[H_ONE_MINUS_B1] * g;                      // m <- b1 m + (1 - b1) g
    v = h[H_B2] * v + h[H_ONE_MINUS_B2] * (g * g);                // v <- b2 v + (1 - b2) g^2
    T denom = square_root(v) / h[H_SQRT_BIAS2] + h[H_EPS];        // sqrt(v^) + eps
    p = p - h[H_STEP_SIZE] * (m / denom);                         // p <- p - lr m^ / (sqrt(v^) + eps)
    e = e + h[H_EMA_RATE] * (p - e);                              // e <- d e + (1 - d) p, as a step towards p
}

// The sum of `value` over the 32 lanes of a warp, in the same order every time (a tree of shuffles).
template <typename T>
__device__ inline T warp_sum(T value) {
    for (int offset = 16; offset > 0; offset /= 2) value += __shfl_down_sync(0xffffffffu, value, offset);
    return value;  // complete in lane 0
}

// partials[blockIdx.x] = sum of g_i^2 over the elements this block visits (a grid-stride loop).
// blockDim.x is a multiple of 32, at most 1024. No atomics: the partials are added later in a fixed order,
// so ||g|| (and the whole step) repeats bit for bit.
template <typename T>
__device__ void sum_of_squares(const T* g, long long n, T* partials) {
    __shared__ T warp_totals[32];
    T s = T(0);
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        s += g[i] * g[i];
    s = warp_sum(s);
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) warp_totals[warp] = s;
    __syncthreads();
    if (warp == 0) {                                              // warp 0 adds the block's warp totals
        s = lane < blockDim.x / 32 ? warp_totals[lane] : T(0);
        s = warp_sum(s);
        if (lane == 0) partials[blockIdx.x] = s;
    }
}

// The fused update of elements blockIdx.x * blockDim.x + threadIdx.x, stepping by the grid (grid-stride loop).
// First warp 0 of every block adds the num_partials partial sums into ||g||^2 (every block in the same order, so
// all agree on c) and block 0 writes ||g|| to norm[0] for the caller's logs.
template <typename T>
__device__ void adamw_ema(T* p, T* m, T* v, T* e, const T* g, const T* partials, int num_partials,
                          const T* hyper, T* norm, long long n, long long n_decay) {
    __shared__ T c_shared;
    __shared__ T h[H_COUNT];
    if (threadIdx.x < H_COUNT) h[threadIdx.x] = hyper[threadIdx.x];
    if (threadIdx.x < 32) {
        T s = T(0);
        for (int k = threadIdx.x; k < num_partials; k += 32) s += partials[k];
        s = warp_sum(s);
        if (threadIdx.x == 0) {
            c_shared = clip_coefficient(s, hyper[H_MAX_NORM]);
            if (blockIdx.x == 0) norm[0] = square_root(s);
        }
    }
    __syncthreads();
    const T c = c_shared;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        adamw_ema_element(p[i], m[i], v[i], e[i], g[i], c, i < n_decay, h);
}

extern "C" __global__ void sum_of_squares_f32(const float* g, long long n, float* partials) {
    sum_of_squares(g, n, partials);
}
extern "C" __global__ void sum_of_squares_f64(const double* g, long long n, double* partials) {
    sum_of_squares(g, n, partials);
}
extern "C" __global__ void adamw_ema_f32(float* p, float* m, float* v, float* e, const float* g, const float* partials,
                                         int num_partials, const float* hyper, float* norm, long long n,
                                         long long n_decay) {
    adamw_ema(p, m, v, e, g, partials, num_partials, hyper, norm, n, n_decay);
}
extern "C" __global__ void adamw_ema_f64(double* p, double* m, double* v, double* e, const double* g,
                                         const double* partials, int num_partials, const double* hyper, double* norm,
                                         long long n, long long n_decay) {
    adamw_ema(p, m, v, e, g, partials, num_partials, hyper, norm, n, n_decay);
}
