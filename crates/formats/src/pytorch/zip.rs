//! The zip side of PyTorch checkpoints: the `zip` crate reads the central directory and local
//! headers; this module checks every member's range against the file and inflates deflated
//! members as a bounded stream, never trusting a declared size for an allocation.

use std::collections::HashMap;
use std::io::{Cursor, Read};

/// Compression methods this reader understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    Stored,
    Deflated,
}

/// One member of the archive, with its data range already checked to lie inside the file.
#[derive(Clone, Debug)]
pub struct Entry {
    pub name: String,
    pub method: Method,
    pub crc32: u32,
    pub compressed_size: u64,
    pub size: u64,
    /// Offset of the member's (possibly compressed) bytes in the file.
    pub data_start: u64,
}

/// Deflate's best case: a 258-byte match costs at least 2 bits, so one compressed byte yields
/// at most 1032 bytes (plus a little for block headers on tiny inputs).
const MAX_DEFLATE_RATIO: u64 = 1032;
const DEFLATE_SLACK: u64 = 1024;

/// Bytes a deflated member of `compressed` bytes can inflate to at most.
pub fn max_inflated(compressed: u64) -> u64 {
    compressed
        .saturating_mul(MAX_DEFLATE_RATIO)
        .saturating_add(DEFLATE_SLACK)
}

/// Reads the central directory of the zip archive `file` (the whole file's bytes).
pub fn read_directory(file: &[u8]) -> Result<HashMap<String, Entry>, String> {
    let len = file.len() as u64;
    let mut archive = zip::ZipArchive::new(Cursor::new(file))
        .map_err(|e| format!("not a readable zip archive (truncated?): {e}"))?;
    let mut entries = HashMap::with_capacity(archive.len());
    for i in 0..archive.len() {
        let member = archive
            .by_index_raw(i)
            .map_err(|e| format!("zip member {i}: {e}"))?;
        let name = member
            .name()
            .map_err(|e| format!("zip member {i}: bad name: {e}"))?
            .into_owned();
        if member.encrypted() {
            return Err(format!("zip member `{name}` is encrypted"));
        }
        let method = match member.compression() {
            zip::CompressionMethod::Stored => Method::Stored,
            zip::CompressionMethod::Deflated => Method::Deflated,
            m => {
                return Err(format!(
                    "zip member `{name}` uses unsupported compression method {m:?}"
                ))
            }
        };
        let (csize, size) = (member.compressed_size(), member.size());
        if method == Method::Stored && csize != size {
            return Err(format!(
                "zip member `{name}` is stored but its sizes differ ({csize} vs {size})"
            ));
        }
        if method == Method::Deflated && size > max_inflated(csize) {
            return Err(format!(
                "zip member `{name}` declares {size} bytes, more than its {csize} deflated bytes can hold"
            ));
        }
        let data_start = member
            .data_start()
            .ok_or_else(|| format!("zip member `{name}`: no local header"))?;
        if data_start.checked_add(csize).is_none_or(|end| end > len) {
            return Err(format!(
                "zip member `{name}` ({csize} bytes at offset {data_start}) extends past the end of the {len}-byte file (truncated?)"
            ));
        }
        let entry = Entry {
            name: name.clone(),
            method,
            crc32: member.crc32(),
            compressed_size: csize,
            size,
            data_start,
        };
        if entries.insert(name.clone(), entry).is_some() {
            return Err(format!("zip archive has two members named `{name}`"));
        }
    }
    Ok(entries)
}

/// The bytes of a stored member (a borrowed slice of `file`).
pub fn stored_bytes<'a>(file: &'a [u8], e: &Entry) -> &'a [u8] {
    // read_directory checked that this range lies inside the file.
    &file[e.data_start as usize..(e.data_start + e.compressed_size) as usize]
}

/// The decompressed bytes of a member, with its size and CRC checked. `max` bounds the
/// declared size; the output buffer grows only as inflated bytes actually arrive, so a
/// header that lies about the size cannot ask for a huge allocation.
pub fn read_owned(file: &[u8], e: &Entry, max: u64) -> Result<Vec<u8>, String> {
    if e.size > max {
        return Err(format!(
            "zip member `{}` declares {} bytes, more than the {max} expected",
            e.name, e.size
        ));
    }
    let raw = stored_bytes(file, e);
    let out = match e.method {
        Method::Stored => raw.to_vec(),
        Method::Deflated => {
            // Start small and let the vector grow with the data: its capacity stays within
            // twice what the stream really produced, which is at most `e.size + 1`.
            let mut out = Vec::with_capacity(e.size.min(1 << 20) as usize);
            flate2::read::DeflateDecoder::new(raw)
                .take(e.size + 1)
                .read_to_end(&mut out)
                .map_err(|err| format!("zip member `{}`: bad deflate data: {err}", e.name))?;
            if out.len() as u64 != e.size {
                return Err(format!(
                    "zip member `{}` inflates to {} bytes, not the {} its header declares",
                    e.name,
                    out.len(),
                    e.size
                ));
            }
            out
        }
    };
    if crc32fast::hash(&out) != e.crc32 {
        return Err(format!(
            "zip member `{}` fails its CRC-32 check (corrupt file?)",
            e.name
        ));
    }
    Ok(out)
}
