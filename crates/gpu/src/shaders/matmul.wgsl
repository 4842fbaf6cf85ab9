// out[t][r] = Σ_k W[r][k] · x[t][k] (+ bias[r]) for `p.n` tokens and the `p.rows` rows of this
// buffer (rows row0.. of the matrix), the weights dequantized inside the kernel by the type's
// `dq4` (dequant.wgsl). Rows of `x` are `p.k` long, rows of `out` `p.ostride`.

struct Params {
    n: u32,
    rows: u32,
    k: u32,
    rs: u32,
    bias: u32,
    x_off: u32,
    out_off: u32,
    ostride: u32,
    row0: u32,
    pad0: u32,
    pad1: u32,
    pad2: u32,
    pad3: u32,
    pad4: u32,
    pad5: u32,
    pad6: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> W: array<u32>;
@group(0) @binding(2) var<storage, read> X: array<f32>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;
@group(0) @binding(4) var<storage, read> B: array<f32>;
@group(0) @binding(5) var<storage, read> T: array<u32>;

fn xq(t: u32, q: u32) -> vec4<f32> {
    let b = p.x_off + t * p.k + 4u * q;
    var v = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        if (4u * q + i < p.k) {
            v[i] = X[b + i];
        }
    }
    return v;
}

fn bias(r: u32) -> f32 {
    return select(0.0, B[p.row0 + r], p.bias != 0u);
}

// ---- decode: 8 rows per workgroup, 8 threads per row taking whole units (matvec.wgsl) in
// turn, up to 8 tokens per row read; a row's 8 partial sums are reduced by subgroup shuffles
// where the device has subgroups (of at least 8), else through workgroup memory ----

const MV_TOKENS: u32 = 8u;
#ifdef NO_SUBGROUPS
var<workgroup> red: array<f32, 512>;
#endif

@compute @workgroup_size(64)
fn matvec(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
#ifdef SUBGROUPS
          @builtin(subgroup_id) sgid: u32, @builtin(subgroup_size) sgs: u32,
          @builtin(subgroup_invocation_id) sgi: u32,
#endif
          @builtin(local_invocation_index) li: u32) {
#ifdef SUBGROUPS
    // numbered by subgroup, so that a row's 8 threads are 8 neighbours in one subgroup
    let idx = sgid * sgs + sgi;
#endif
#ifdef NO_SUBGROUPS
    let idx = li;
#endif
    let lane = idx % 8u;
    let row = (wid.x + wid.y * nwg.x) * 8u + idx / 8u;
    let t0 = wid.z * MV_TOKENS;
    let nt = min(MV_TOKENS, p.n - t0);
    var acc: array<f32, 8>;
    for (var t = 0u; t < MV_TOKENS; t++) {
        acc[t] = 0.0;
    }
    if (row < p.rows) {
        let nu = mv_units();
        for (var u = lane; u < nu; u += 8u) {
            mv_unit(row, u, t0, nt, &acc);
        }
    }
#ifdef SUBGROUPS
    for (var t = 0u; t < MV_TOKENS; t++) {
        var v = acc[t];
        v += subgroupShuffleXor(v, 4u);
        v += subgroupShuffleXor(v, 2u);
        v += subgroupShuffleXor(v, 1u);
        acc[t] = v;
    }
#endif
#ifdef NO_SUBGROUPS
    for (var t = 0u; t < MV_TOKENS; t++) {
        red[t * 64u + idx] = acc[t];
    }
    workgroupBarrier();
    for (var s = 4u; s > 0u; s >>= 1u) {
        if (lane < s) {
            for (var t = 0u; t < MV_TOKENS; t++) {
                red[t * 64u + idx] += red[t * 64u + idx + s];
            }
        }
        workgroupBarrier();
    }
    for (var t = 0u; t < MV_TOKENS; t++) {
        acc[t] = red[t * 64u + idx];
    }
#endif
    if (row < p.rows && lane == 0u) {
        for (var t = 0u; t < nt; t++) {
            O[p.out_off + (t0 + t) * p.ostride + row] = acc[t] + bias(row);
        }
    }
}

// ---- prefill: 32 rows × 32 tokens per workgroup, 4 × 4 outputs per thread, k in steps of 32;
// the weight tile in f16 where the device has shader-f16 (weights of the types f16 holds) ----

#ifdef HALF_TILES
alias WT = f16;
#endif
#ifdef FLOAT_TILES
alias WT = f32;
#endif
var<workgroup> ws: array<WT, 1056>; // 32 rows × 33
var<workgroup> xs: array<f32, 1056>; // 32 tokens × 33

@compute @workgroup_size(64)
fn matmul(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) li: u32) {
    let r0 = wid.x * 32u;
    let t0 = wid.y * 32u;
    let tr = li % 8u; // this thread's rows: r0 + tr + 8i
    let tt = li / 8u; // its tokens: t0 + tt + 8j
    var acc: array<f32, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = 0.0;
    }
    let nq = (p.k + 3u) / 4u;
    for (var q0 = 0u; q0 < nq; q0 += 8u) {
        // 32 rows × 8 quads of weights, 32 tokens × 8 quads of activations
        for (var i = 0u; i < 4u; i++) {
            let slot = li + 64u * i;
            let r = slot / 8u;
            let q = slot % 8u;
            var w = vec4<f32>(0.0);
            if (r0 + r < p.rows && q0 + q < nq) {
                w = dq4(r0 + r, q0 + q);
            }
            var x = vec4<f32>(0.0);
            if (t0 + r < p.n && q0 + q < nq) {
                x = xq(t0 + r, q0 + q);
            }
            for (var e = 0u; e < 4u; e++) {
                ws[r * 33u + 4u * q + e] = WT(w[e]);
                xs[r * 33u + 4u * q + e] = x[e];
            }
        }
        workgroupBarrier();
        for (var kk = 0u; kk < 32u; kk++) {
            var wr: array<f32, 4>;
            for (var i = 0u; i < 4u; i++) {
                wr[i] = f32(ws[(tr + 8u * i) * 33u + kk]);
            }
            for (var j = 0u; j < 4u; j++) {
                let xv = xs[(tt + 8u * j) * 33u + kk];
                for (var i = 0u; i < 4u; i++) {
                    acc[j * 4u + i] += wr[i] * xv;
                }
            }
        }
        workgroupBarrier();
    }
    for (var j = 0u; j < 4u; j++) {
        let t = t0 + tt + 8u * j;
        for (var i = 0u; i < 4u; i++) {
            let r = r0 + tr + 8u * i;
            if (t < p.n && r < p.rows) {
                O[p.out_off + t * p.ostride + r] = acc[j * 4u + i] + bias(r);
            }
        }
    }
}

// ---- embedding lookup: out[t] = row T[t] of the table, expanded ----

@compute @workgroup_size(64)
fn embed(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = gid.x + gid.y * nwg.x * 64u;
    let nq = (p.k + 3u) / 4u;
    if (i >= p.n * nq) {
        return;
    }
    let t = i / nq;
    let q = i % nq;
    let tok = T[t];
    if (tok < p.row0 || tok >= p.row0 + p.rows) {
        return; // another buffer's rows
    }
    let v = dq4(tok - p.row0, q);
    for (var e = 0u; e < 4u; e++) {
        if (4u * q + e < p.k) {
            O[p.out_off + t * p.k + 4u * q + e] = v[e];
        }
    }
}
