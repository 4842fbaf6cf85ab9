// Weight readers, one per block type. The host prepends (or appends) zero bytes so that every
// block starts on a 4-byte boundary (see `upload.rs`); `p.rs` is a row's stride in bytes.
// `dq4(row, q)` returns elements 4q..4q+3 of `row`, dequantized exactly as the CPU's scalar
// reference (`kiln_kernels::quant`) does, element by element.

fn wword(o: u32) -> u32 {
    return W[o >> 2u];
}

fn wbyte(o: u32) -> u32 {
    return (W[o >> 2u] >> ((o & 3u) * 8u)) & 0xffu;
}

// The f16 at even byte offset `o`.
fn wf16(o: u32) -> f32 {
    let pair = unpack2x16float(W[o >> 2u]);
    return select(pair.x, pair.y, (o & 2u) != 0u);
}

// The four bytes of a word as unsigned values.
fn bytes4(w: u32) -> vec4<u32> {
    return vec4<u32>(w & 0xffu, (w >> 8u) & 0xffu, (w >> 16u) & 0xffu, w >> 24u);
}

// The four bytes of a word as signed values.
fn sbytes4(w: u32) -> vec4<f32> {
    let i = bitcast<i32>(w);
    return vec4<f32>(vec4<i32>((i << 24u) >> 24u, (i << 16u) >> 24u, (i << 8u) >> 24u, i >> 24u));
}

fn nib4(w: u32, shift: u32) -> vec4<f32> {
    let x = w >> shift;
    return vec4<f32>(vec4<u32>(x & 0xfu, (x >> 8u) & 0xfu, (x >> 16u) & 0xfu, (x >> 24u) & 0xfu));
}

#ifdef F32
fn dq4(row: u32, q: u32) -> vec4<f32> {
    let base = row * p.rs / 4u + 4u * q;
    var v = vec4<f32>(0.0);
    for (var i = 0u; i < 4u; i++) {
        if (4u * q + i < p.k) {
            v[i] = bitcast<f32>(W[base + i]);
        }
    }
    return v;
}
#endif

#ifdef F16
fn dq4(row: u32, q: u32) -> vec4<f32> {
    let base = row * p.rs / 4u + 2u * q;
    let v = vec4<f32>(unpack2x16float(W[base]), unpack2x16float(W[base + 1u]));
    let e = 4u * q + vec4<u32>(0u, 1u, 2u, 3u);
    return select(vec4<f32>(0.0), v, e < vec4<u32>(p.k));
}
#endif

#ifdef BF16
fn dq4(row: u32, q: u32) -> vec4<f32> {
    let base = row * p.rs / 4u + 2u * q;
    let a = W[base];
    let b = W[base + 1u];
    let v = vec4<f32>(bitcast<f32>(a << 16u), bitcast<f32>(a & 0xffff0000u),
                      bitcast<f32>(b << 16u), bitcast<f32>(b & 0xffff0000u));
    let e = 4u * q + vec4<u32>(0u, 1u, 2u, 3u);
    return select(vec4<f32>(0.0), v, e < vec4<u32>(p.k));
}
#endif

#ifdef Q8_0
// 36 bytes: 2 pad, d, 32 × i8.
fn dq4(row: u32, q: u32) -> vec4<f32> {
    let bo = row * p.rs + (q / 8u) * 36u;
    let d = wf16(bo + 2u);
    return d * sbytes4(wword(bo + 4u + 4u * (q % 8u)));
}
#endif

#ifdef Q4_0
// 20 bytes: 2 pad, d, 16 bytes (element l in the low nibble of byte l, l + 16 in the high).
fn dq4(row: u32, q: u32) -> vec4<f32> {
    let bo = row * p.rs + (q / 8u) * 20u;
    let j = q % 8u;
    let d = wf16(bo + 2u);
    let w = wword(bo + 4u + 4u * (j % 4u));
    return d * (nib4(w, 4u * (j / 4u)) - 8.0);
}
#endif

#ifdef Q4_1
// 20 bytes: d, m, 16 bytes.
fn dq4(row: u32, q: u32) -> vec4<f32> {
    let bo = row * p.rs + (q / 8u) * 20u;
    let j = q % 8u;
    let dm = unpack2x16float(wword(bo));
    let w = wword(bo + 4u + 4u * (j % 4u));
    return dm.x * nib4(w, 4u * (j / 4u)) + dm.y;
}
#endif

#ifdef Q5_0
// 24 bytes: 2 pad, d, qh (32 high bits), 16 bytes.
fn dq4(row: u32, q: u32) -> vec4<f32> {
    let bo = row * p.rs + (q / 8u) * 24u;
    let j = q % 8u;
    let d = wf16(bo + 2u);
    let qh = wword(bo + 4u);
    let w = wword(bo + 8u + 4u * (j % 4u));
    let hb = (vec4<u32>(qh) >> (4u * j + vec4<u32>(0u, 1u, 2u, 3u))) & vec4<u32>(1u);
    return d * (nib4(w, 4u * (j / 4u)) + 16.0 * vec4<f32>(hb) - 16.0);
}
#endif

#ifdef Q5_1
// 24 bytes: d, m, qh, 16 bytes.
fn dq4(row: u32, q: u32) -> vec4<f32> {
    let bo = row * p.rs + (q / 8u) * 24u;
    let j = q % 8u;
    let dm = unpack2x16float(wword(bo));
    let qh = wword(bo + 4u);
    let w = wword(bo + 8u + 4u * (j % 4u));
    let hb = (vec4<u32>(qh) >> (4u * j + vec4<u32>(0u, 1u, 2u, 3u))) & vec4<u32>(1u);
    return dm.x * (nib4(w, 4u * (j / 4u)) + 16.0 * vec4<f32>(hb)) + dm.y;
}
#endif

#ifdef KSCALES
// The 6-bit scale and min of sub-block `is` (0..8) of a Q4_K/Q5_K block at byte `bo`.
fn kscale_min(bo: u32, is: u32) -> vec2<f32> {
    if (is < 4u) {
        return vec2<f32>(f32(wbyte(bo + 4u + is) & 63u), f32(wbyte(bo + 8u + is) & 63u));
    }
    let a = wbyte(bo + 8u + is);
    let sc = (a & 0xfu) | ((wbyte(bo + is) >> 6u) << 4u);
    let mn = (a >> 4u) | ((wbyte(bo + 4u + is) >> 6u) << 4u);
    return vec2<f32>(f32(sc), f32(mn));
}
#endif

#ifdef Q4_K
// 144 bytes: d, dmin, 12 scale bytes, 128 bytes of nibbles.
fn dq4(row: u32, q: u32) -> vec4<f32> {
    let bo = row * p.rs + (q / 64u) * 144u;
    let e = 4u * (q % 64u);
    let j = e / 64u;
    let hi = (e % 64u) / 32u;
    let l = e % 32u;
    let dm = unpack2x16float(wword(bo));
    let sm = kscale_min(bo, 2u * j + hi);
    let w = wword(bo + 16u + 32u * j + l);
    return dm.x * sm.x * nib4(w, 4u * hi) - dm.y * sm.y;
}
#endif

#ifdef Q5_K
// 176 bytes: d, dmin, 12 scale bytes, 32 bytes of high bits, 128 bytes of nibbles.
fn dq4(row: u32, q: u32) -> vec4<f32> {
    let bo = row * p.rs + (q / 64u) * 176u;
    let e = 4u * (q % 64u);
    let j = e / 64u;
    let hi = (e % 64u) / 32u;
    let l = e % 32u;
    let dm = unpack2x16float(wword(bo));
    let sm = kscale_min(bo, 2u * j + hi);
    let w = wword(bo + 48u + 32u * j + l);
    let h = (bytes4(wword(bo + 16u + l)) >> vec4<u32>(2u * j + hi)) & vec4<u32>(1u);
    return dm.x * sm.x * (nib4(w, 4u * hi) + 16.0 * vec4<f32>(h)) - dm.y * sm.y;
}
#endif

#ifdef Q6_K
// 212 bytes: 128 bytes low nibbles, 64 bytes high bits, 16 i8 scales, d, 2 pad.
fn dq4(row: u32, q: u32) -> vec4<f32> {
    let bo = row * p.rs + (q / 64u) * 212u;
    let e = 4u * (q % 64u);
    let h = e / 128u;
    let k = (e % 128u) / 32u;
    let l = e % 32u;
    let lw = wword(bo + 64u * h + 32u * (k & 1u) + l);
    let low = bytes4(lw >> (4u * (k / 2u))) & vec4<u32>(0xfu);
    let high = (bytes4(wword(bo + 128u + 32u * h + l)) >> vec4<u32>(2u * k)) & vec4<u32>(3u);
    let qv = vec4<f32>(low | (high << vec4<u32>(4u))) - 32.0;
    let so = bo + 192u + 8u * h + 2u * k + l / 16u;
    let sc = f32((bitcast<i32>(wbyte(so)) << 24u) >> 24u);
    let d = wf16(bo + 208u);
    return d * sc * qv;
}
#endif
