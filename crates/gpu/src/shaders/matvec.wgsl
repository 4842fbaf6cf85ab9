// The decode kernel's readers: `mv_unit(row, u, t0, nt, acc)` adds to `acc[t]` (tokens
// t0..t0+nt) the products of unit `u` of `row` with the activations, where a unit is a run of
// a block over which the scales do not change (a whole Q8_0/Q4_0/Q4_1/Q5_0/Q5_1 block; two
// 32-element sub-blocks of a Q4_K/Q5_K block; 64 elements of a Q6_K block sharing four scales;
// one quad of a float row). Each unit reads its scales once and multiplies them into the sum
// of its integer-valued products, instead of dequantizing every quad on its own (`dq4`).
// `mv_units()` is the number of units in a row.

// Elements e..e+3 of token t's activations (the block types' rows are whole blocks).
fn xv(t: u32, e: u32) -> vec4<f32> {
    let b = p.x_off + t * p.k + e;
    return vec4<f32>(X[b], X[b + 1u], X[b + 2u], X[b + 3u]);
}

fn hsum(v: vec4<f32>) -> f32 {
    return v.x + v.y + v.z + v.w;
}

#ifdef FLOAT
fn mv_units() -> u32 {
    return (p.k + 3u) / 4u;
}

fn mv_unit(row: u32, u: u32, t0: u32, nt: u32, acc: ptr<function, array<f32, 8>>) {
    let w = dq4(row, u);
    for (var t = 0u; t < nt; t++) {
        (*acc)[t] += dot(w, xq(t0 + t, u));
    }
}
#endif

#ifdef Q8_0
fn mv_units() -> u32 {
    return p.k / 32u;
}

fn mv_unit(row: u32, u: u32, t0: u32, nt: u32, acc: ptr<function, array<f32, 8>>) {
    let bo = row * p.rs + u * 36u;
    let d = wf16(bo + 2u);
    var q: array<vec4<f32>, 8>;
    for (var i = 0u; i < 8u; i++) {
        q[i] = sbytes4(wword(bo + 4u + 4u * i));
    }
    for (var t = 0u; t < nt; t++) {
        var s = 0.0;
        for (var i = 0u; i < 8u; i++) {
            s += dot(q[i], xv(t0 + t, 32u * u + 4u * i));
        }
        (*acc)[t] += d * s;
    }
}
#endif

#ifdef Q4_0
fn mv_units() -> u32 {
    return p.k / 32u;
}

fn mv_unit(row: u32, u: u32, t0: u32, nt: u32, acc: ptr<function, array<f32, 8>>) {
    let bo = row * p.rs + u * 20u;
    let d = wf16(bo + 2u);
    var lo: array<vec4<f32>, 4>;
    var hi: array<vec4<f32>, 4>;
    for (var i = 0u; i < 4u; i++) {
        let w = wword(bo + 4u + 4u * i);
        lo[i] = nib4(w, 0u) - 8.0;
        hi[i] = nib4(w, 4u) - 8.0;
    }
    for (var t = 0u; t < nt; t++) {
        var s = 0.0;
        for (var i = 0u; i < 4u; i++) {
            s += dot(lo[i], xv(t0 + t, 32u * u + 4u * i));
            s += dot(hi[i], xv(t0 + t, 32u * u + 16u + 4u * i));
        }
        (*acc)[t] += d * s;
    }
}
#endif

#ifdef Q4_1
fn mv_units() -> u32 {
    return p.k / 32u;
}

fn mv_unit(row: u32, u: u32, t0: u32, nt: u32, acc: ptr<function, array<f32, 8>>) {
    let bo = row * p.rs + u * 20u;
    let dm = unpack2x16float(wword(bo));
    var lo: array<vec4<f32>, 4>;
    var hi: array<vec4<f32>, 4>;
    for (var i = 0u; i < 4u; i++) {
        let w = wword(bo + 4u + 4u * i);
        lo[i] = nib4(w, 0u);
        hi[i] = nib4(w, 4u);
    }
    for (var t = 0u; t < nt; t++) {
        var s = 0.0;
        var sx = 0.0;
        for (var i = 0u; i < 4u; i++) {
            let a = xv(t0 + t, 32u * u + 4u * i);
            let b = xv(t0 + t, 32u * u + 16u + 4u * i);
            s += dot(lo[i], a) + dot(hi[i], b);
            sx += hsum(a + b);
        }
        (*acc)[t] += dm.x * s + dm.y * sx;
    }
}
#endif

#ifdef Q5_0
fn mv_units() -> u32 {
    return p.k / 32u;
}

fn mv_unit(row: u32, u: u32, t0: u32, nt: u32, acc: ptr<function, array<f32, 8>>) {
    let bo = row * p.rs + u * 24u;
    let d = wf16(bo + 2u);
    let qh = vec4<u32>(wword(bo + 4u));
    var lo: array<vec4<f32>, 4>;
    var hi: array<vec4<f32>, 4>;
    for (var i = 0u; i < 4u; i++) {
        let w = wword(bo + 8u + 4u * i);
        let e = 4u * i + vec4<u32>(0u, 1u, 2u, 3u);
        lo[i] = nib4(w, 0u) + 16.0 * vec4<f32>((qh >> e) & vec4<u32>(1u)) - 16.0;
        hi[i] = nib4(w, 4u) + 16.0 * vec4<f32>((qh >> (e + 16u)) & vec4<u32>(1u)) - 16.0;
    }
    for (var t = 0u; t < nt; t++) {
        var s = 0.0;
        for (var i = 0u; i < 4u; i++) {
            s += dot(lo[i], xv(t0 + t, 32u * u + 4u * i));
            s += dot(hi[i], xv(t0 + t, 32u * u + 16u + 4u * i));
        }
        (*acc)[t] += d * s;
    }
}
#endif

#ifdef Q5_1
fn mv_units() -> u32 {
    return p.k / 32u;
}

fn mv_unit(row: u32, u: u32, t0: u32, nt: u32, acc: ptr<function, array<f32, 8>>) {
    let bo = row * p.rs + u * 24u;
    let dm = unpack2x16float(wword(bo));
    let qh = vec4<u32>(wword(bo + 4u));
    var lo: array<vec4<f32>, 4>;
    var hi: array<vec4<f32>, 4>;
    for (var i = 0u; i < 4u; i++) {
        let w = wword(bo + 8u + 4u * i);
        let e = 4u * i + vec4<u32>(0u, 1u, 2u, 3u);
        lo[i] = nib4(w, 0u) + 16.0 * vec4<f32>((qh >> e) & vec4<u32>(1u));
        hi[i] = nib4(w, 4u) + 16.0 * vec4<f32>((qh >> (e + 16u)) & vec4<u32>(1u));
    }
    for (var t = 0u; t < nt; t++) {
        var s = 0.0;
        var sx = 0.0;
        for (var i = 0u; i < 4u; i++) {
            let a = xv(t0 + t, 32u * u + 4u * i);
            let b = xv(t0 + t, 32u * u + 16u + 4u * i);
            s += dot(lo[i], a) + dot(hi[i], b);
            sx += hsum(a + b);
        }
        (*acc)[t] += dm.x * s + dm.y * sx;
    }
}
#endif

#ifdef Q4_K
// Unit u: block u / 4, sub-blocks 2j and 2j + 1 (j = u % 4), the low and high nibbles of the
// same 32 bytes.
fn mv_units() -> u32 {
    return p.k / 64u;
}

fn mv_unit(row: u32, u: u32, t0: u32, nt: u32, acc: ptr<function, array<f32, 8>>) {
    let j = u % 4u;
    let bo = row * p.rs + (u / 4u) * 144u;
    let dm = unpack2x16float(wword(bo));
    let s0 = kscale_min(bo, 2u * j);
    let s1 = kscale_min(bo, 2u * j + 1u);
    var lo: array<vec4<f32>, 8>;
    var hi: array<vec4<f32>, 8>;
    for (var i = 0u; i < 8u; i++) {
        let w = wword(bo + 16u + 32u * j + 4u * i);
        lo[i] = nib4(w, 0u);
        hi[i] = nib4(w, 4u);
    }
    let e0 = 64u * u;
    for (var t = 0u; t < nt; t++) {
        var a = vec2<f32>(0.0);
        var x = vec2<f32>(0.0);
        for (var i = 0u; i < 8u; i++) {
            let xa = xv(t0 + t, e0 + 4u * i);
            let xb = xv(t0 + t, e0 + 32u + 4u * i);
            a += vec2<f32>(dot(lo[i], xa), dot(hi[i], xb));
            x += vec2<f32>(hsum(xa), hsum(xb));
        }
        (*acc)[t] += dm.x * (s0.x * a.x + s1.x * a.y) - dm.y * (s0.y * x.x + s1.y * x.y);
    }
}
#endif

#ifdef Q5_K
// As Q4_K, with the fifth bits of sub-blocks 2j and 2j + 1 in bits 2j and 2j + 1 of the 32
// high-bit bytes.
fn mv_units() -> u32 {
    return p.k / 64u;
}

fn mv_unit(row: u32, u: u32, t0: u32, nt: u32, acc: ptr<function, array<f32, 8>>) {
    let j = u % 4u;
    let bo = row * p.rs + (u / 4u) * 176u;
    let dm = unpack2x16float(wword(bo));
    let s0 = kscale_min(bo, 2u * j);
    let s1 = kscale_min(bo, 2u * j + 1u);
    var lo: array<vec4<f32>, 8>;
    var hi: array<vec4<f32>, 8>;
    for (var i = 0u; i < 8u; i++) {
        let w = wword(bo + 48u + 32u * j + 4u * i);
        let h = bytes4(wword(bo + 16u + 4u * i));
        lo[i] = nib4(w, 0u) + 16.0 * vec4<f32>((h >> vec4<u32>(2u * j)) & vec4<u32>(1u));
        hi[i] = nib4(w, 4u) + 16.0 * vec4<f32>((h >> vec4<u32>(2u * j + 1u)) & vec4<u32>(1u));
    }
    let e0 = 64u * u;
    for (var t = 0u; t < nt; t++) {
        var a = vec2<f32>(0.0);
        var x = vec2<f32>(0.0);
        for (var i = 0u; i < 8u; i++) {
            let xa = xv(t0 + t, e0 + 4u * i);
            let xb = xv(t0 + t, e0 + 32u + 4u * i);
            a += vec2<f32>(dot(lo[i], xa), dot(hi[i], xb));
            x += vec2<f32>(hsum(xa), hsum(xb));
        }
        (*acc)[t] += dm.x * (s0.x * a.x + s1.x * a.y) - dm.y * (s0.y * x.x + s1.y * x.y);
    }
}
#endif

#ifdef Q6_K
// Unit u: block u / 4, half h = (u / 2) % 2, positions l0..l0 + 15 (l0 = 16 (u % 2)) of its
// four 32-element groups k: elements 128h + 32k + l, whose scales are 8h + 2k + l0 / 16.
fn mv_units() -> u32 {
    return p.k / 64u;
}

fn mv_unit(row: u32, u: u32, t0: u32, nt: u32, acc: ptr<function, array<f32, 8>>) {
    let b = u / 4u;
    let h = (u / 2u) % 2u;
    let l0 = 16u * (u % 2u);
    let bo = row * p.rs + b * 212u;
    let d = wf16(bo + 208u);
    let sw = bitcast<i32>(wword(bo + 192u + 8u * h));
    let sw2 = bitcast<i32>(wword(bo + 196u + 8u * h));
    // scale bytes 2k + l0 / 16 of this half
    let sh = select(0u, 8u, l0 != 0u);
    let sc = vec4<f32>(f32((sw << (24u - sh)) >> 24u), f32((sw << (8u - sh)) >> 24u),
                       f32((sw2 << (24u - sh)) >> 24u), f32((sw2 << (8u - sh)) >> 24u));
    var q: array<vec4<f32>, 16>; // [4k + i]
    for (var i = 0u; i < 4u; i++) {
        let l = l0 + 4u * i;
        let a = wword(bo + 64u * h + l);
        let c = wword(bo + 64u * h + 32u + l);
        let hb = bytes4(wword(bo + 128u + 32u * h + l));
        var lows = array<vec4<u32>, 4>(bytes4(a) & vec4<u32>(0xfu), bytes4(c) & vec4<u32>(0xfu),
                                       bytes4(a) >> vec4<u32>(4u), bytes4(c) >> vec4<u32>(4u));
        for (var k = 0u; k < 4u; k++) {
            let high = (hb >> vec4<u32>(2u * k)) & vec4<u32>(3u);
            q[4u * k + i] = vec4<f32>(lows[k] | (high << vec4<u32>(4u))) - 32.0;
        }
    }
    let e0 = 256u * b + 128u * h + l0;
    for (var t = 0u; t < nt; t++) {
        var s = vec4<f32>(0.0);
        for (var k = 0u; k < 4u; k++) {
            for (var i = 0u; i < 4u; i++) {
                s[k] += dot(q[4u * k + i], xv(t0 + t, e0 + 32u * k + 4u * i));
            }
        }
        (*acc)[t] += d * dot(sc, s);
    }
}
#endif
