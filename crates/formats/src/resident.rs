//! How a weight file's bytes are held in memory: mapped from the page cache, or read once into
//! anonymous memory that Linux may back with 2 MiB pages.
//!
//! Why: decoding one token streams every weight byte once, so it runs at the machine's read
//! bandwidth. On the 2-core EPYC this project measures on, two threads read 4 KiB page-cache
//! pages at about 16 GB/s and 2 MiB transparent huge pages at about 22 GB/s (fewer TLB misses
//! on the page walks of a streaming read). Page-cache pages of a mapped file are never huge, so
//! a model that fits in memory is read into a huge-page-backed buffer instead. A model that does
//! not fit comfortably stays mapped, and `LoadOptions::residency` can force either form.
//!
//! Invariant: both forms hold exactly the file's bytes; which one is used never changes a
//! result, only speed.

use crate::{io_err, Result};
use kiln_kernels::Storage;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;

const HUGE_PAGE: usize = 2 << 20;

/// Where a weight file's bytes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Residency {
    /// Memory-mapped from the file: pages load on first touch and may be evicted.
    Mapped,
    /// Read once into anonymous memory, 2 MiB-aligned and advised for huge pages.
    Resident,
}

impl Residency {
    /// The choice for a file of `len` bytes: resident when it fits in half of the memory the
    /// system reports available, else mapped.
    pub fn for_len(len: u64) -> Residency {
        match mem_available() {
            Some(avail) if len <= avail / 2 => Residency::Resident,
            _ => Residency::Mapped,
        }
    }
}

/// Bytes of memory the kernel says are available (`MemAvailable` in /proc/meminfo).
fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Memory-maps a whole file (read-only).
pub fn map_file(path: &Path) -> Result<Storage> {
    let file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    // SAFETY: the mapping is read-only; kiln never writes model files while they are mapped
    // (its writers write a temporary file and rename it over the old one).
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io_err(path, e))?;
    Ok(Storage::new(Arc::new(mmap)))
}

/// An anonymous mapping and the 2 MiB-aligned window of it that holds the data.
struct AlignedAnon {
    map: memmap2::MmapMut,
    start: usize,
    len: usize,
}

impl AsRef<[u8]> for AlignedAnon {
    fn as_ref(&self) -> &[u8] {
        &self.map[self.start..self.start + self.len]
    }
}

impl AsMut<[u8]> for AlignedAnon {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.map[self.start..self.start + self.len]
    }
}

/// Reads a whole file into huge-page-advised anonymous memory. The file is read through, not
/// mapped, so its page-cache copy does not count against the process. The storage is writable
/// until shared, so a loader may rearrange weights in place (see `GgufFile::interleave`).
pub fn read_file_resident(path: &Path) -> Result<Storage> {
    let mut file = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    let len = file.metadata().map_err(|e| io_err(path, e))?.len();
    let len = usize::try_from(len).map_err(|_| {
        io_err(
            path,
            std::io::Error::other("file larger than the address space"),
        )
    })?;
    // Over-allocate by one huge page so the data can start on a 2 MiB boundary: the kernel
    // only backs whole aligned 2 MiB ranges with huge pages.
    let mut map =
        memmap2::MmapMut::map_anon(len.max(1) + HUGE_PAGE).map_err(|e| io_err(path, e))?;
    #[cfg(target_os = "linux")]
    {
        // Advice only; a kernel without transparent huge pages keeps 4 KiB pages.
        let _ = map.advise(memmap2::Advice::HugePage);
    }
    let start = map.as_ptr().align_offset(HUGE_PAGE).min(HUGE_PAGE);
    let window = &mut map[start..start + len];
    file.read_exact(window).map_err(|e| io_err(path, e))?;
    // The file may have grown since its length was read; the bytes read are what we hold.
    Ok(Storage::writable(Arc::new(AlignedAnon { map, start, len })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_and_mapped_hold_the_same_bytes() {
        let dir = std::env::temp_dir().join(format!("kiln-resident-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for len in [0usize, 1, 4095, 4096, 3 * (1 << 20) + 17] {
            let path = dir.join(format!("f{len}"));
            let bytes: Vec<u8> = (0..len).map(|i| (i * 31 + i / 7) as u8).collect();
            std::fs::write(&path, &bytes).unwrap();
            let resident = read_file_resident(&path).unwrap();
            assert_eq!(resident.bytes(), &bytes[..], "len {len}");
            if len > 0 {
                assert_eq!(resident.bytes().as_ptr() as usize % HUGE_PAGE, 0);
                assert_eq!(map_file(&path).unwrap().bytes(), &bytes[..]);
            }
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_file_is_an_error_naming_it() {
        let err = read_file_resident(Path::new("/nonexistent/kiln/model.gguf")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/kiln/model.gguf"),
            "{err}"
        );
    }
}
