// GroupNorm then SiLU as one kernel each way: y = silu(groupnorm(x, gamma, beta, G)).
//
// The NumPy function it equals: tinyddpm.ops.groupnorm_silu.groupnorm_silu_forward / groupnorm_silu_backward
// (ops/groupnorm_silu.py), itself tested against ops/groupnorm.py + ops/silu.py. The launcher is
// kernels/groupnorm_silu.py; tests/test_groupnorm_silu.py compiles this file with nvcc and runs its
// __host__ __device__ arithmetic on the host against the NumPy twin.
//
// Legend: N batch, C channels, G groups, Cg = C/G channels per group, S spatial positions (H*W),
// M = Cg*S entries per group; T the float type (float for the _f32 kernels, double for _f64).
// x, y, dy, dx are (N, C, S) contiguous, so the M entries of group (n, g) are the contiguous run that starts at
// (n*G + g)*M, and entry i of the run belongs to channel c = g*Cg + i/S.
//
// Forward, one thread block per (n, g):
//     mu, var  = mean and biased variance of the group's M entries
//     rstd     = 1 / sqrt(var + eps)
//     z        = (x - mu) a + beta[c]          with a = rstd gamma[c]
//     s        = sigmoid(z) = (1 + tanh(z/2)) / 2
//     y        = z s
// and mean[n, g], rstd[n, g] are saved: nothing activation-sized besides y is written.
//
// Statistics: Welford, in T, and why. Each thread runs Welford's update over its entries (i = tid, tid + blockDim,
// ...) as they stream from global memory through registers, then the threads' (count, mean, M2) are merged by
// Chan's pairwise formula, down a warp by shuffles and across the warps through shared memory. That is one pass
// over the data, and M2 is a sum of squared deviations from a running mean, so it never subtracts two large
// numbers the way sum(x^2)/M - mu^2 does when |mu| >> std (every digit lost in float32 at mu = 1e4, std = 1).
// Two passes over a copy of the group in shared memory would be as accurate but limit the group to the shared
// memory of a block: 48 KB, 12K floats, and the gpu preset's up path has groups of 16 channels x 28 x 28 = 12.5K
// entries (the 64x64 preset's 32K). The output pass reads x a second time, from L2 mostly (a group is at most a
// few hundred KB, L2 is 50 MB on an H100).
//
// Backward, the same block per (n, g); z and s are recomputed from x, mu and rstd (the cache keeps no z):
//     dz       = dy s (1 + z (1 - s))                                      SiLU's derivative
//     P[n, c]  = sum_s dz          Q[n, c] = sum_s dz xhat                 xhat = (x - mu) rstd
//     B        = -rstd^2 (1/M) sum_{c in g} gamma[c] Q[n, c]
//     D        = -(1/M) sum_{c in g} A[c] P[n, c]                          A[c] = rstd gamma[c]
//     dx       = dz A[c] + (x - mu) B + D                                  groupnorm's closed form
// P and Q are written as per-(n, c) partials (dbeta_part, dgamma_part, (N, C)); the launcher sums them over n with
// one reduction. Each partial has one writer, so the sum is taken in a fixed order and repeats bit for bit, which
// atomicAdd into a (C,) array would not (float addition in the order the blocks finish).
// The block takes one channel at a time (a block-wide sum per channel, Cg of them), then a last pass writes dx.
// Both passes recompute dz (one tanh each): cheaper on a GPU than writing dz out and reading it back. Q is summed
// from x - mu, which costs nothing in registers; the NumPy twin takes sum dz x - mu P instead, to save a pass.
//
// Per-element arithmetic lives in the __host__ __device__ functions below, so that the tests can compile it for
// the host and compose it into a whole forward and backward; the kernels add only indexing and reductions.

// ----------------------------------------------------------------------------------------------------------------
// The arithmetic (host and device)

__host__ __device__ inline float tanh_of(float v) { return tanhf(v); }
__host__ __device__ inline double tanh_of(double v) { return tanh(v); }
__host__ __device__ inline float sqrt_of(float v) { return sqrtf(v); }
__host__ __device__ inline double sqrt_of(double v) { return sqrt(v); }

// Running statistics of a set of numbers: how many, their mean, and M2 = sum of (x - mean)^2.
template <typename T> struct Welford {
    T n, mean, m2;
};

// One more number x: the mean moves by (x - mean)/n, and M2 grows by (x - old mean)(x - new mean).
template <typename T> __host__ __device__ inline Welford<T> welford_push(Welford<T> w, T x) {
    w.n += T(1);
    const T d = x - w.mean;
    w.mean += d / w.n;
    w.m2 += d * (x - w.mean);
    return w;
}

// Two disjoint sets as one (Chan, Golub and LeVeque): with d = mean_b - mean_a and n = n_a + n_b,
//     mean = mean_a + d n_b / n,   M2 = M2_a + M2_b + d^2 n_a n_b / n.   An empty side (n = 0) changes nothing.
template <typename T> __host__ __device__ inline Welford<T> welford_merge(Welford<T> a, Welford<T> b) {
    const T n = a.n + b.n;
    if (b.n == T(0)) return a;
    if (a.n == T(0)) return b;
    const T d = b.mean - a.mean;
    const T fb = b.n / n;
    Welford<T> r;
    r.n = n;
    r.mean = a.mean + d * fb;
    r.m2 = a.m2 + b.m2 + d * d * a.n * fb;
    return r;
}

// rstd = 1 / sqrt(var + eps) with var = M2 / M, biased as torch.nn.functional.group_norm.
template <typename T> __host__ __device__ inline T group_rstd(Welford<T> w, T eps) {
    return T(1) / sqrt_of(w.m2 / w.n + eps);
}

// sigmoid(z) = (1 + tanh(z/2)) / 2: never overflows (exp(-z) does for z < -88 in float), as ops/silu.py.
template <typename T> __host__ __device__ inline T sigmoid_of(T z) {
    return T(0.5) * (T(1) + tanh_of(T(0.5) * z));
}

// The forward map of one entry: y = silu(z), z = (x - mu) a + beta, a = rstd gamma[c].
template <typename T> __host__ __device__ inline T groupnorm_silu_map(T x, T mu, T a, T beta) {
    const T z = (x - mu) * a + beta;
    return z * sigmoid_of(z);
}

// SiLU's backward at the recomputed z: in the forward pass this was y = z s, s = sigmoid(z), so now we have
//     dz = dy s (1 + z (1 - s)).
template <typename T> __host__ __device__ inline T silu_grad_at(T dy, T x, T mu, T a, T beta) {
    const T z = (x - mu) * a + beta;
    const T s = sigmoid_of(z);
    return dy * s * (T(1) + z * (T(1) - s));
}

// Per-group coefficients of dx from the group's sums sum_c A[c] P[n, c] and sum_c gamma[c] Q[n, c]:
//     B = -rstd^2 (1/M) sum gamma Q,   D = -(1/M) sum A P
// (D from the products A P, the same as dz A: a one-entry group's dx, where y does not depend on x, is exactly 0).
template <typename T> __host__ __device__ inline void groupnorm_dx_coefficients(T sum_ap, T sum_gq, T rstd, T M,
                                                                               T* B, T* D) {
    *B = -rstd * rstd * sum_gq / M;
    *D = -sum_ap / M;
}

// The backward map of one entry: in the forward pass this was z = (x - mu) rstd gamma + beta with mu and rstd
// taken over the group, so now we have dx = dz A + (x - mu) B + D.
template <typename T> __host__ __device__ inline T groupnorm_dx_map(T dz, T x, T mu, T A, T B, T D) {
    return dz * A + (x - mu) * B + D;
}

// ----------------------------------------------------------------------------------------------------------------
// Reductions across a thread block (device only). blockDim.x is a multiple of 32, at most 1024 (the launcher's
// choice): every warp is whole, so the shuffles may name all 32 lanes. Results are valid in thread 0.

#define FULL_MASK 0xffffffffu

template <typename T> __device__ inline Welford<T> welford_warp(Welford<T> w) {
    for (int offset = 16; offset > 0; offset /= 2) {  // lane i takes lane i + offset: a fixed tree
        Welford<T> o;
        o.n = __shfl_down_sync(FULL_MASK, w.n, offset);
        o.mean = __shfl_down_sync(FULL_MASK, w.mean, offset);
        o.m2 = __shfl_down_sync(FULL_MASK, w.m2, offset);
        w = welford_merge(w, o);
    }
    return w;
}

template <typename T> __device__ inline Welford<T> welford_block(Welford<T> w, Welford<T>* shared /* [32] */) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    w = welford_warp(w);
    if (lane == 0) shared[warp] = w;
    __syncthreads();
    if (warp == 0) {
        Welford<T> empty = {T(0), T(0), T(0)};
        w = welford_warp(lane < warps ? shared[lane] : empty);
    }
    __syncthreads();  // shared may be reused after this
    return w;
}

template <typename T> __device__ inline T sum_warp(T v) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(FULL_MASK, v, offset);
    return v;
}

// Two sums at once (P and Q of one channel); shared holds 64 T.
template <typename T> __device__ inline void sum2_block(T* p, T* q, T* shared /* [64] */) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
    T a = sum_warp(*p), b = sum_warp(*q);
    if (lane == 0) {
        shared[warp] = a;
        shared[32 + warp] = b;
    }
    __syncthreads();
    if (warp == 0) {
        a = sum_warp(lane < warps ? shared[lane] : T(0));
        b = sum_warp(lane < warps ? shared[32 + lane] : T(0));
    }
    __syncthreads();
    *p = a;
    *q = b;
}

// ----------------------------------------------------------------------------------------------------------------
// The kernels: grid (N*G,), block (a multiple of 32,), no dynamic shared memory.

template <typename T>
__device__ void groupnorm_silu_forward(const T* x, const T* gamma, const T* beta, T* y, T* mean, T* rstd,
                                       int C, int S, int G, T eps) {
    const int Cg = C / G, M = Cg * S;
    const long long group = blockIdx.x;  // n*G + g
    const int g = (int)(group % G);
    const T* xg = x + group * M;
    T* yg = y + group * M;
    __shared__ Welford<T> partial[32];
    __shared__ T stats[2];

    // mu and rstd of the group: Welford per thread, merged across the block
    Welford<T> w = {T(0), T(0), T(0)};
    for (int i = threadIdx.x; i < M; i += blockDim.x) w = welford_push(w, xg[i]);
    w = welford_block(w, partial);
    if (threadIdx.x == 0) {
        stats[0] = w.mean;
        stats[1] = group_rstd(w, eps);
        mean[group] = stats[0];
        rstd[group] = stats[1];
    }
    __syncthreads();
    const T mu = stats[0], r = stats[1];

    // y = silu((x - mu) rstd gamma + beta), entry by entry
    for (int i = threadIdx.x; i < M; i += blockDim.x) {
        const int c = g * Cg + i / S;
        yg[i] = groupnorm_silu_map(xg[i], mu, r * gamma[c], beta[c]);
    }
}

template <typename T>
__device__ void groupnorm_silu_backward(const T* dy, const T* x, const T* gamma, const T* beta, const T* mean,
                                        const T* rstd, T* dx, T* dgamma_part, T* dbeta_part, int C, int S, int G) {
    const int Cg = C / G, M = Cg * S;
    const long long group = blockIdx.x;  // n*G + g
    const long long n = group / G;
    const int g = (int)(group % G);
    const T* xg = x + group * M;
    const T* dyg = dy + group * M;
    T* dxg = dx + group * M;
    const T mu = mean[group], r = rstd[group];
    __shared__ T partial[64];
    __shared__ T coefficient[2];

    // P and Q channel by channel: each is dbeta's and dgamma's partial for (n, c), and feeds the group's two sums
    T sum_ap = T(0), sum_gq = T(0);  // meaningful in thread 0
    for (int j = 0; j < Cg; ++j) {
        const int c = g * Cg + j;
        const T a = r * gamma[c];
        T p = T(0), q = T(0);
        for (int s = threadIdx.x; s < S; s += blockDim.x) {
            const int i = j * S + s;
            const T dz = silu_grad_at(dyg[i], xg[i], mu, a, beta[c]);
            p += dz;
            q += dz * ((xg[i] - mu) * r);
        }
        sum2_block(&p, &q, partial);
        if (threadIdx.x == 0) {
            dbeta_part[n * C + c] = p;
            dgamma_part[n * C + c] = q;
            sum_ap += a * p;
            sum_gq += gamma[c] * q;
        }
    }
    if (threadIdx.x == 0) groupnorm_dx_coefficients(sum_ap, sum_gq, r, T(M), &coefficient[0], &coefficient[1]);
    __syncthreads();
    const T B = coefficient[0], D = coefficient[1];

    // dx = dz A + (x - mu) B + D, dz recomputed
    for (int i = threadIdx.x; i < M; i += blockDim.x) {
        const int c = g * Cg + i / S;
        const T a = r * gamma[c];
        const T dz = silu_grad_at(dyg[i], xg[i], mu, a, beta[c]);
        dxg[i] = groupnorm_dx_map(dz, xg[i], mu, a, B, D);
    }
}

extern "C" __global__ void groupnorm_silu_forward_f32(const float* x, const float* gamma, const float* beta,
                                                      float* y, float* mean, float* rstd, int C, int S, int G,
                                                      float eps) {
    groupnorm_silu_forward<float>(x, gamma, beta, y, mean, rstd, C, S, G, eps);
}

extern "C" __global__ void groupnorm_silu_forward_f64(const double* x, const double* gamma, const double* beta,
                                                      double* y, double* mean, double* rstd, int C, int S, int G,
                                                      double eps) {
    groupnorm_silu_forward<double>(x, gamma, beta, y, mean, rstd, C, S, G, eps);
}

extern "C" __global__ void groupnorm_silu_backward_f32(const float* dy, const float* x, const float* gamma,
                                                       const float* beta, const float* mean, const float* rstd,
                                                       float* dx, float* dgamma_part, float* dbeta_part, int C,
                                                       int S, int G) {
    groupnorm_silu_backward<float>(dy, x, gamma, beta, mean, rstd, dx, dgamma_part, dbeta_part, C, S, G);
}

extern "C" __global__ void groupnorm_silu_backward_f64(const double* dy, const double* x, const double* gamma,
                                                       const double* beta, const double* mean, const double* rstd,
                                                       double* dx, double* dgamma_part, double* dbeta_part, int C,
                                                       int S, int G) {
    groupnorm_silu_backward<double>(dy, x, gamma, beta, mean, rstd, dx, dgamma_part, dbeta_part, C, S, G);
}
