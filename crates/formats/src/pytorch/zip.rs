//! The little of the zip format that PyTorch checkpoints need: the central directory (with
//! zip64), each member's local header (to find where its bytes start), stored and deflated
//! members. Every size and offset is checked against the file before it is used.

use std::collections::HashMap;
use std::io::Read;

const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;

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

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

fn to_usize(v: u64, what: &str) -> Result<usize, String> {
    usize::try_from(v).map_err(|_| format!("{what} {v} does not fit in memory addresses"))
}

/// Reads the central directory of the zip archive `file` (the whole file's bytes).
pub fn read_directory(file: &[u8]) -> Result<HashMap<String, Entry>, String> {
    let len = file.len();
    if len < 22 {
        return Err(format!("truncated zip archive: {len} bytes is too short"));
    }
    // The end-of-central-directory record is the last 22 bytes plus a comment of at most 64 KiB.
    let lowest = len.saturating_sub(22 + 0xFFFF);
    let mut eocd = None;
    let mut pos = len - 22;
    loop {
        if u32_at(file, pos) == Some(EOCD_SIG) {
            let comment = u16_at(file, pos + 20).unwrap_or(0) as usize;
            if pos + 22 + comment <= len {
                eocd = Some(pos);
                break;
            }
        }
        if pos == lowest {
            break;
        }
        pos -= 1;
    }
    let eocd = eocd.ok_or_else(|| {
        "not a zip archive or truncated: no end-of-central-directory record".to_string()
    })?;
    let disk = u16_at(file, eocd + 4).unwrap_or(0);
    let cd_disk = u16_at(file, eocd + 6).unwrap_or(0);
    let mut n_entries = u16_at(file, eocd + 10).unwrap_or(0) as u64;
    let mut cd_size = u32_at(file, eocd + 12).unwrap_or(0) as u64;
    let mut cd_offset = u32_at(file, eocd + 16).unwrap_or(0) as u64;
    if disk != 0 || cd_disk != 0 {
        return Err("multi-volume zip archives are not supported".into());
    }
    if n_entries == 0xFFFF || cd_size == 0xFFFF_FFFF || cd_offset == 0xFFFF_FFFF {
        // Zip64: a locator just before the record points at the zip64 end record.
        let loc = eocd
            .checked_sub(20)
            .filter(|&l| u32_at(file, l) == Some(ZIP64_LOCATOR_SIG))
            .ok_or("zip64 archive without a zip64 end-of-central-directory locator")?;
        let rec = u64_at(file, loc + 8).ok_or("truncated zip64 locator")?;
        let rec = to_usize(rec, "zip64 record offset")?;
        if rec.checked_add(56).is_none_or(|end| end > loc)
            || u32_at(file, rec) != Some(ZIP64_EOCD_SIG)
        {
            return Err("bad zip64 end-of-central-directory record offset".into());
        }
        n_entries = u64_at(file, rec + 32).ok_or("truncated zip64 record")?;
        cd_size = u64_at(file, rec + 40).ok_or("truncated zip64 record")?;
        cd_offset = u64_at(file, rec + 48).ok_or("truncated zip64 record")?;
    }
    let cd_start = to_usize(cd_offset, "central directory offset")?;
    let cd_len = to_usize(cd_size, "central directory size")?;
    let cd_end = cd_start
        .checked_add(cd_len)
        .filter(|&e| e <= len)
        .ok_or_else(|| {
            format!("central directory ({cd_len} bytes at {cd_start}) lies outside the {len}-byte file (truncated?)")
        })?;
    // Each entry takes at least 46 bytes, which bounds the count before anything is allocated.
    if n_entries > (cd_len / 46) as u64 {
        return Err(format!(
            "zip claims {n_entries} members in a {cd_len}-byte central directory"
        ));
    }
    let cd = &file[cd_start..cd_end];
    let mut entries = HashMap::with_capacity(n_entries as usize);
    let mut at = 0usize;
    for i in 0..n_entries {
        let bad = || format!("truncated or corrupt central directory entry {i}");
        if u32_at(cd, at) != Some(CENTRAL_SIG) {
            return Err(bad());
        }
        let flags = u16_at(cd, at + 8).ok_or_else(bad)?;
        let method = u16_at(cd, at + 10).ok_or_else(bad)?;
        let crc32 = u32_at(cd, at + 16).ok_or_else(bad)?;
        let mut csize = u32_at(cd, at + 20).ok_or_else(bad)? as u64;
        let mut size = u32_at(cd, at + 24).ok_or_else(bad)? as u64;
        let name_len = u16_at(cd, at + 28).ok_or_else(bad)? as usize;
        let extra_len = u16_at(cd, at + 30).ok_or_else(bad)? as usize;
        let comment_len = u16_at(cd, at + 32).ok_or_else(bad)? as usize;
        let mut local = u32_at(cd, at + 42).ok_or_else(bad)? as u64;
        let name_at = at + 46;
        let extra_at = name_at + name_len;
        let next = extra_at + extra_len + comment_len;
        if next > cd.len() {
            return Err(bad());
        }
        let name = std::str::from_utf8(&cd[name_at..extra_at])
            .map_err(|_| format!("zip member {i} has a name that is not UTF-8"))?
            .to_string();
        // Zip64 extended information: 64-bit values for the fields saturated at 0xFFFFFFFF,
        // in this order.
        let extra = &cd[extra_at..extra_at + extra_len];
        let mut e = 0usize;
        while e + 4 <= extra.len() {
            let id = u16_at(extra, e).unwrap_or(0);
            let n = u16_at(extra, e + 2).unwrap_or(0) as usize;
            let body = extra
                .get(e + 4..e + 4 + n)
                .ok_or_else(|| format!("zip member `{name}`: truncated extra field"))?;
            if id == 1 {
                let mut f = 0usize;
                let mut take = |v: &mut u64| -> Result<(), String> {
                    if *v == 0xFFFF_FFFF {
                        *v = u64_at(body, f)
                            .ok_or_else(|| format!("zip member `{name}`: truncated zip64 field"))?;
                        f += 8;
                    }
                    Ok(())
                };
                take(&mut size)?;
                take(&mut csize)?;
                take(&mut local)?;
            }
            e += 4 + n;
        }
        if flags & 1 != 0 {
            return Err(format!("zip member `{name}` is encrypted"));
        }
        let method = match method {
            0 => Method::Stored,
            8 => Method::Deflated,
            m => {
                return Err(format!(
                    "zip member `{name}` uses unsupported compression method {m}"
                ))
            }
        };
        if method == Method::Stored && csize != size {
            return Err(format!(
                "zip member `{name}` is stored but its sizes differ ({csize} vs {size})"
            ));
        }
        // The local header repeats the name and has its own extra field (PyTorch uses it to
        // pad data to 64-byte alignment), so the data starts after both.
        let lh = to_usize(local, "local header offset")?;
        if u32_at(file, lh) != Some(LOCAL_SIG) {
            return Err(format!(
                "zip member `{name}`: no local header at offset {lh}"
            ));
        }
        let lname = u16_at(file, lh + 26).ok_or_else(bad)? as u64;
        let lextra = u16_at(file, lh + 28).ok_or_else(bad)? as u64;
        let data_start = local + 30 + lname + lextra;
        let data_end = data_start.checked_add(csize);
        if data_end.is_none_or(|end| end > len as u64) {
            return Err(format!(
                "zip member `{name}` ({csize} bytes at offset {data_start}) extends past the end of the {len}-byte file (truncated?)"
            ));
        }
        let entry = Entry {
            name: name.clone(),
            method,
            crc32,
            compressed_size: csize,
            size,
            data_start,
        };
        if entries.insert(name.clone(), entry).is_some() {
            return Err(format!("zip archive has two members named `{name}`"));
        }
        at = next;
    }
    Ok(entries)
}

/// The bytes of a stored member (a borrowed slice of `file`).
pub fn stored_bytes<'a>(file: &'a [u8], e: &Entry) -> &'a [u8] {
    // read_directory checked that this range lies inside the file.
    &file[e.data_start as usize..(e.data_start + e.compressed_size) as usize]
}

/// The decompressed bytes of a member, with its size and CRC checked. `max` bounds the
/// declared size, so a corrupt header cannot ask for a huge allocation.
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
            let mut out = Vec::with_capacity(e.size as usize);
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
