// Row operations of a forward pass. Every entry point reads its sizes from `p`; buffers are
// bound per dispatch. Activations are f32 rows, one per token of the flattened batch.

struct Params {
    n: u32,      // rows (tokens)
    d: u32,      // row length
    a: u32,      // per kernel, see each entry point
    b: u32,
    c: u32,
    e: u32,
    g: u32,
    h: u32,
    f0: f32,
    f1: f32,
    nh: u32,     // attention: query heads
    window: u32, // attention: sliding window (0: none)
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> X: array<f32>;
@group(0) @binding(2) var<storage, read> Y: array<f32>;
@group(0) @binding(3) var<storage, read_write> O: array<f32>;
@group(0) @binding(4) var<storage, read_write> K: array<u32>;
@group(0) @binding(5) var<storage, read_write> V: array<u32>;
@group(0) @binding(6) var<storage, read> I: array<u32>;

fn flat(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return gid.x + gid.y * nwg.x * 64u;
}

var<workgroup> red: array<f32, 64>;

fn reduce_sum(li: u32, v: f32) -> f32 {
    red[li] = v;
    workgroupBarrier();
    for (var s = 32u; s > 0u; s >>= 1u) {
        if (li < s) {
            red[li] += red[li + s];
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

// O[row] = X[row] · rsqrt(mean(X[row]²) + eps) · Y (the weight); one workgroup per row.
// f0: eps.
@compute @workgroup_size(64)
fn rms_norm(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) li: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.n) {
        return;
    }
    let base = row * p.d;
    var ss = 0.0;
    for (var i = li; i < p.d; i += 64u) {
        let v = X[base + i];
        ss += v * v;
    }
    let total = reduce_sum(li, ss);
    let scale = 1.0 / sqrt(total / f32(p.d) + p.f0);
    for (var i = li; i < p.d; i += 64u) {
        O[base + i] = X[base + i] * scale * Y[i];
    }
}

// Rotary embedding of X in place: rows of `a` heads of `d` (head_dim) values; Y holds per
// row `d/2` (cos, sin) pairs. b: 0 = interleaved pairs (2i, 2i+1), 1 = halves (i, i + d/2).
@compute @workgroup_size(64)
fn rope(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    let half = p.d / 2u;
    if (i >= p.n * p.a * half) {
        return;
    }
    let j = i % half;
    let head = (i / half) % p.a;
    let row = i / (half * p.a);
    let cs = row * half * 2u + 2u * j;
    let c = Y[cs];
    let s = Y[cs + 1u];
    let base = row * p.a * p.d + head * p.d;
    var ia = base + 2u * j;
    var ib = ia + 1u;
    if (p.b == 1u) {
        ia = base + j;
        ib = ia + half;
    }
    let x0 = X[ia];
    let x1 = X[ib];
    X[ia] = x0 * c - x1 * s;
    X[ib] = x0 * s + x1 * c;
}

// X = silu(X) ⊙ Y (a = 0) or gelu_tanh(X) ⊙ Y (a = 1), elementwise over n·d values.
@compute @workgroup_size(64)
fn gated(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if (i >= p.n * p.d) {
        return;
    }
    let x = X[i];
    var act: f32;
    if (p.a == 0u) {
        act = x / (1.0 + exp(-x));
    } else {
        let inner = 0.7978845608028654 * (x + 0.044715 * x * x * x);
        act = 0.5 * x * (1.0 + tanh(inner));
    }
    X[i] = act * Y[i];
}

// X += Y over n·d values.
@compute @workgroup_size(64)
fn add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if (i >= p.n * p.d) {
        return;
    }
    X[i] += Y[i];
}

// O[j] = Y[I[j]] for rows of d values, j < n.
@compute @workgroup_size(64)
fn gather(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if (i >= p.n * p.d) {
        return;
    }
    let j = i / p.d;
    O[i] = Y[I[j] * p.d + i % p.d];
}

// f32 → IEEE half bits, rounded to nearest even (as the CPU cache's `half` conversion).
fn f16_bits(x: f32) -> u32 {
    let b = bitcast<u32>(x);
    let sign = (b >> 16u) & 0x8000u;
    let ef = (b >> 23u) & 0xffu;
    let m = b & 0x7fffffu;
    if (ef == 0xffu) {
        return sign | 0x7c00u | select(0u, 0x200u, m != 0u);
    }
    let e = i32(ef) - 112; // f16 exponent field
    if (e >= 31) {
        return sign | 0x7c00u;
    }
    if (e <= 0) {
        if (e < -10) {
            return sign;
        }
        let mf = m | 0x800000u;
        let shift = u32(14 - e);
        var h = mf >> shift;
        let rem = mf & ((1u << shift) - 1u);
        let halfway = 1u << (shift - 1u);
        if (rem > halfway || (rem == halfway && (h & 1u) == 1u)) {
            h += 1u;
        }
        return sign | h;
    }
    var h = (u32(e) << 10u) | (m >> 13u);
    let rem = m & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u) == 1u)) {
        h += 1u;
    }
    return sign | h;
}

// The KV cache of one sequence: [layer][kv_head][capacity][head_dim], f32 bit patterns or
// f16 pairs (two per u32). Params: d = head_dim, a = n_kv_heads, b = capacity, c = layer,
// e = first batch row of the sequence, g = its start position, h = 1 for f16, n = its tokens.
fn cache_base(kvh: u32, pos: u32) -> u32 {
    return ((p.c * p.a + kvh) * p.b + pos) * p.d;
}

// Stores rows e..e+n of X (keys) and Y (values), each a.d wide, at positions g.. .
@compute @workgroup_size(64)
fn store_kv(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    let width = p.a * p.d;
    if (p.h == 1u) {
        // one thread per pair of elements
        if (i >= p.n * width / 2u) {
            return;
        }
        let t = (2u * i) / width;
        let c = (2u * i) % width;
        let src = (p.e + t) * width + c;
        let dst = cache_base(c / p.d, p.g + t) + c % p.d;
        K[dst / 2u] = f16_bits(X[src]) | (f16_bits(X[src + 1u]) << 16u);
        V[dst / 2u] = f16_bits(Y[src]) | (f16_bits(Y[src + 1u]) << 16u);
    } else {
        if (i >= p.n * width) {
            return;
        }
        let t = i / width;
        let c = i % width;
        let src = (p.e + t) * width + c;
        let dst = cache_base(c / p.d, p.g + t) + c % p.d;
        K[dst] = bitcast<u32>(X[src]);
        V[dst] = bitcast<u32>(Y[src]);
    }
}

fn kv_at(buf: u32, idx: u32) -> f32 {
    var w: u32;
    if (p.h == 1u) {
        if (buf == 0u) { w = K[idx / 2u]; } else { w = V[idx / 2u]; }
        let pair = unpack2x16float(w);
        return select(pair.x, pair.y, (idx & 1u) == 1u);
    }
    if (buf == 0u) { w = K[idx]; } else { w = V[idx]; }
    return bitcast<f32>(w);
}

var<workgroup> qs: array<f32, 256>;
var<workgroup> sc: array<f32, 64>;

// Causal attention of the sequence's n new rows (batch rows e..e+n at positions g..) over its
// cache, one workgroup per (row, head); X holds queries (rows of `heads · d`), O the output.
// Params as store_kv, plus f0 = scale, f1 = soft cap (0: none), nh, window.
@compute @workgroup_size(64)
fn attention(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
             @builtin(local_invocation_index) li: u32) {
    let nh = p.nh;
    let window = p.window;
    let item = wid.x + wid.y * nwg.x;
    if (item >= p.n * nh) {
        return;
    }
    let t = item / nh;
    let h = item % nh;
    let kvh = h / (nh / p.a);
    let pos = p.g + t;
    let end = pos + 1u;
    var lo = 0u;
    if (window > 0u && end > window) {
        lo = end - window;
    }
    let qbase = (p.e + t) * nh * p.d + h * p.d;
    for (var i = li; i < p.d; i += 64u) {
        qs[i] = X[qbase + i];
    }
    workgroupBarrier();
    let kb = cache_base(kvh, 0u);
    var m = -3.0e38;
    var l = 0.0;
    var acc = vec4<f32>(0.0); // dims li, li + 64, li + 128, li + 192
    for (var c = lo; c < end; c += 64u) {
        let j = c + li;
        var s = -3.0e38;
        if (j < end) {
            var dotv = 0.0;
            for (var i = 0u; i < p.d; i++) {
                dotv += qs[i] * kv_at(0u, kb + j * p.d + i);
            }
            s = dotv * p.f0;
            if (p.f1 > 0.0) {
                s = p.f1 * tanh(s / p.f1);
            }
        }
        sc[li] = s;
        workgroupBarrier();
        let cn = min(64u, end - c);
        var cm = m;
        for (var jj = 0u; jj < cn; jj++) {
            cm = max(cm, sc[jj]);
        }
        let rescale = exp(m - cm);
        l *= rescale;
        acc *= rescale;
        for (var jj = 0u; jj < cn; jj++) {
            let w = exp(sc[jj] - cm);
            l += w;
            let vb = kb + (c + jj) * p.d;
            for (var r = 0u; r < 4u; r++) {
                let dim = li + 64u * r;
                if (dim < p.d) {
                    acc[r] += w * kv_at(1u, vb + dim);
                }
            }
        }
        m = cm;
        workgroupBarrier();
    }
    let obase = (p.e + t) * nh * p.d + h * p.d;
    for (var r = 0u; r < 4u; r++) {
        let dim = li + 64u * r;
        if (dim < p.d) {
            O[obase + dim] = acc[r] / l;
        }
    }
}

// X[row] = X[row] · rsqrt(mean(X[row]²) + eps) · Y in place, rows of d (a q/k norm: per head,
// d = head_dim, or over the whole projection); one workgroup per row. f0: eps.
@compute @workgroup_size(64)
fn rms_norm_inplace(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                    @builtin(local_invocation_index) li: u32) {
    let row = wid.x + wid.y * nwg.x;
    if (row >= p.n) {
        return;
    }
    let base = row * p.d;
    var ss = 0.0;
    for (var i = li; i < p.d; i += 64u) {
        let v = X[base + i];
        ss += v * v;
    }
    let total = reduce_sum(li, ss);
    let scale = 1.0 / sqrt(total / f32(p.d) + p.f0);
    for (var i = li; i < p.d; i += 64u) {
        X[base + i] = X[base + i] * scale * Y[i];
    }
}

// X *= f0 over n·d values (Gemma's embedding scale).
@compute @workgroup_size(64)
fn scale(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if (i >= p.n * p.d) {
        return;
    }
    X[i] *= p.f0;
}

// X = gelu(X) ⊙ Y as ggml computes it on the CPU: X rounded to f16 and looked up in I, the
// table of f16(gelu_tanh(x)) for every f16 bit pattern (two per word); at or beyond ±10 the
// limits 0 (not multiplied) and X.
@compute @workgroup_size(64)
fn gelu_ggml(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if (i >= p.n * p.d) {
        return;
    }
    let x = X[i];
    if (x <= -10.0) {
        X[i] = 0.0;
        return;
    }
    var act = x;
    if (x < 10.0) {
        let h = f16_bits(x);
        let w = I[h >> 1u];
        let pair = unpack2x16float(w);
        act = select(pair.x, pair.y, (h & 1u) == 1u);
    }
    X[i] = act * Y[i];
}

// Mixture-of-experts routing, one thread per token: Y holds the router's n rows of d = n_experts
// logits; O receives per token and expert the weight of that expert's output: the softmax
// probability for the a = n_used most probable experts (ties to the lower index, as torch.topk),
// divided by their sum when b = 1, and 0 for the others. At most 256 experts.
@compute @workgroup_size(64)
fn moe_route(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let t = flat(gid, nwg);
    if (t >= p.n) {
        return;
    }
    let ne = p.d;
    let base = t * ne;
    var mx = -3.0e38;
    for (var e = 0u; e < ne; e++) {
        mx = max(mx, Y[base + e]);
    }
    var sum = 0.0;
    for (var e = 0u; e < ne; e++) {
        let v = exp(Y[base + e] - mx);
        O[base + e] = v;
        sum += v;
    }
    let inv = 1.0 / sum;
    for (var e = 0u; e < ne; e++) {
        O[base + e] *= inv;
    }
    var chosen: array<u32, 8>;
    for (var w = 0u; w < 8u; w++) {
        chosen[w] = 0u;
    }
    var picked_sum = 0.0;
    for (var k = 0u; k < p.a; k++) {
        var best = ne;
        var bv = -1.0;
        for (var e = 0u; e < ne; e++) {
            let taken = (chosen[e / 32u] >> (e % 32u)) & 1u;
            if (taken == 0u && O[base + e] > bv) {
                best = e;
                bv = O[base + e];
            }
        }
        if (best < ne) {
            chosen[best / 32u] |= 1u << (best % 32u);
            picked_sum += bv;
        }
    }
    for (var e = 0u; e < ne; e++) {
        let taken = (chosen[e / 32u] >> (e % 32u)) & 1u;
        var w = 0.0;
        if (taken == 1u) {
            w = O[base + e];
            if (p.b == 1u) {
                w = w / picked_sum;
            }
        }
        O[base + e] = w;
    }
}

// One expert's part of the mixture: X[t] (+)= w[t] · Y[t] for the tokens routed to expert b
// (w: I holds the routing weights, n rows of a = n_experts, as f32 bits); c = 1: the first
// expert, which sets X (to 0 for tokens it does not serve) instead of adding. Rows of d.
@compute @workgroup_size(64)
fn moe_acc(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let i = flat(gid, nwg);
    if (i >= p.n * p.d) {
        return;
    }
    let t = i / p.d;
    let w = bitcast<f32>(I[t * p.a + p.b]);
    var prev = X[i];
    if (p.c == 1u) {
        prev = 0.0;
    }
    X[i] = select(prev, prev + w * Y[i], w != 0.0);
}
