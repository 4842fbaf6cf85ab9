//! Crafted Meta checkpoints whose zip headers lie about sizes: each is refused with a clear
//! error before any allocation the file cannot back (issue 20: a 620 KB .pth asked for 1 TiB).

use std::io::Write;

use kiln_formats::pytorch::PthFile;

struct Member<'a> {
    name: &'a str,
    data: &'a [u8],
    deflate: bool,
    /// The uncompressed size written into the headers (the truth when `None`).
    declared: Option<u64>,
}

fn deflate(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// A zip archive with zip64 extra fields (sizes saturated in the 32-bit fields), written by
/// hand so the headers can say anything.
fn zip(members: &[Member]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut central = Vec::new();
    for m in members {
        let body = if m.deflate {
            deflate(m.data)
        } else {
            m.data.to_vec()
        };
        let size = m.declared.unwrap_or(m.data.len() as u64);
        let crc = crc32fast::hash(m.data);
        let method: u16 = if m.deflate { 8 } else { 0 };
        let mut extra = Vec::new();
        extra.extend(1u16.to_le_bytes());
        extra.extend(16u16.to_le_bytes());
        extra.extend(size.to_le_bytes());
        extra.extend((body.len() as u64).to_le_bytes());
        let offset = out.len() as u32;
        let header = |sig: u32, central: bool| {
            let mut h = Vec::new();
            h.extend(sig.to_le_bytes());
            if central {
                h.extend(45u16.to_le_bytes());
            }
            h.extend(45u16.to_le_bytes());
            h.extend(0u16.to_le_bytes());
            h.extend(method.to_le_bytes());
            h.extend(0u32.to_le_bytes());
            h.extend(crc.to_le_bytes());
            h.extend(u32::MAX.to_le_bytes());
            h.extend(u32::MAX.to_le_bytes());
            h.extend((m.name.len() as u16).to_le_bytes());
            h.extend((extra.len() as u16).to_le_bytes());
            if central {
                h.extend([0u8; 6]);
                h.extend(0u32.to_le_bytes());
                h.extend(offset.to_le_bytes());
            }
            h.extend(m.name.as_bytes());
            h.extend(&extra);
            h
        };
        out.extend(header(0x0403_4b50, false));
        out.extend(&body);
        central.extend(header(0x0201_4b50, true));
    }
    let cd_offset = out.len() as u32;
    out.extend(&central);
    out.extend(0x0605_4b50u32.to_le_bytes());
    out.extend([0u8; 4]);
    out.extend((members.len() as u16).to_le_bytes());
    out.extend((members.len() as u16).to_le_bytes());
    out.extend((central.len() as u32).to_le_bytes());
    out.extend(cd_offset.to_le_bytes());
    out.extend(0u16.to_le_bytes());
    out
}

/// `{"w": _rebuild_tensor_v2(storage("0", FloatStorage, numel), 0, (numel,), (1,))}`.
fn state_dict_pickle(numel: u64) -> Vec<u8> {
    let long = |v: u64| {
        let mut b = vec![0x8a, 8];
        b.extend(v.to_le_bytes());
        b
    };
    let s = |v: &str| {
        let mut b = vec![b'X'];
        b.extend((v.len() as u32).to_le_bytes());
        b.extend(v.as_bytes());
        b
    };
    let mut p = vec![0x80, 2, b'}'];
    p.extend(s("w"));
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    p.push(b'(');
    p.extend(s("storage"));
    p.extend(b"ctorch\nFloatStorage\n");
    p.extend(s("0"));
    p.extend(s("cpu"));
    p.extend(long(numel));
    p.extend(b"tQ");
    p.extend([b'K', 0]);
    p.extend(long(numel));
    p.push(0x85);
    p.extend([b'K', 1, 0x85, 0x89]);
    p.extend(b"ccollections\nOrderedDict\n)R");
    p.extend(b"tRs.");
    p
}

fn open(bytes: &[u8]) -> Result<usize, String> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("hostile.pth");
    std::fs::write(&p, bytes).unwrap();
    let f = PthFile::open(&p).map_err(|e| e.to_string())?;
    let names: Vec<String> = f.tensors().keys().cloned().collect();
    for n in &names {
        f.tensor(n).map_err(|e| e.to_string())?;
    }
    Ok(names.len())
}

fn checkpoint(numel: u64, data: &[u8], deflate: bool, declared: Option<u64>) -> Vec<u8> {
    let pkl = state_dict_pickle(numel);
    zip(&[
        Member {
            name: "archive/data.pkl",
            data: &pkl,
            deflate: false,
            declared: None,
        },
        Member {
            name: "archive/data/0",
            data,
            deflate,
            declared,
        },
    ])
}

#[test]
fn honest_crafted_checkpoints_load() {
    // The writer and pickle above are right: told the truth, the reader loads them.
    let data: Vec<u8> = (0..4096u32)
        .flat_map(|i| (i as f32).to_le_bytes())
        .collect();
    assert_eq!(open(&checkpoint(4096, &data, false, None)), Ok(1));
    assert_eq!(open(&checkpoint(4096, &data, true, None)), Ok(1));
}

#[test]
fn a_zip64_size_of_a_tebibyte_is_refused() {
    // 1 MiB of zeros deflates to about 1 KB; the headers and the pickle both claim 1 TiB.
    let zeros = vec![0u8; 1 << 20];
    let tib = 1u64 << 40;
    let bytes = checkpoint(tib / 4, &zeros, true, Some(tib));
    assert!(bytes.len() < 1 << 20);
    let e = open(&bytes).unwrap_err();
    assert!(e.contains("deflated bytes can hold"), "{e}");
}

#[test]
fn a_deflated_member_that_inflates_to_less_or_more_is_refused() {
    let zeros = vec![0u8; 1 << 20];
    // Plausible for its compressed size (about 1 KB × 1032), but the stream holds 1 MiB.
    let claimed = (1 << 20) + 8192;
    let e = open(&checkpoint(claimed / 4, &zeros, true, Some(claimed))).unwrap_err();
    assert!(e.contains("inflates to 1048576 bytes"), "{e}");
    let e = open(&checkpoint(1 << 17, &zeros, true, Some(1 << 19))).unwrap_err();
    assert!(e.contains("inflates to"), "{e}");
}

#[test]
fn a_stored_member_cannot_claim_more_than_the_file() {
    let data = vec![0u8; 4096];
    let e = open(&checkpoint(1 << 30, &data, false, Some(4 << 30))).unwrap_err();
    assert!(
        e.contains("sizes differ") || e.contains("past the end"),
        "{e}"
    );
}
