//! The volume catalog: every volume's id, name, size, chunk size and
//! compression, kept in two copies (A/B) with a generation so an interrupted
//! update leaves the previous copy intact.

use crate::buf::BLOCK_SIZE;
use crate::codec::*;
use crate::error::{Error, Result, Structure};

const CAT_MAGIC: &[u8; 8] = b"SLCATLOG";
const HDR: usize = 32;
const ENTRY: usize = 96;
pub const MAX_NAME: usize = 64;

pub const VOL_DELETING: u32 = 1;
pub const VOL_READ_ONLY: u32 = 2;
/// A snapshot or clone whose blocks are still being shared into it: not
/// usable, and deleted at open if a crash left it so.
pub const VOL_CREATING: u32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Lz4,
}

impl Compression {
    pub fn code(self) -> u8 {
        match self {
            Compression::None => 0,
            Compression::Lz4 => 1,
        }
    }
    pub fn from_code(c: u8) -> Option<Self> {
        match c {
            0 => Some(Compression::None),
            1 => Some(Compression::Lz4),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
        }
    }
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "none" => Ok(Compression::None),
            "lz4" => Ok(Compression::Lz4),
            _ => Err(Error::Invalid(format!(
                "unknown compression '{s}' (expected \"lz4\" or \"none\")"
            ))),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeEntry {
    pub id: u32,
    /// Snapshots and clones share their family's placement.
    pub family: u32,
    pub parent: u32,
    pub flags: u32,
    pub size: u64,
    pub chunk_shift: u8,
    pub compression: Compression,
    pub name: String,
}

impl VolumeEntry {
    pub fn chunk_size(&self) -> u32 {
        1 << self.chunk_shift
    }
    pub fn deleting(&self) -> bool {
        self.flags & VOL_DELETING != 0
    }
    pub fn read_only(&self) -> bool {
        self.flags & VOL_READ_ONLY != 0
    }
    pub fn creating(&self) -> bool {
        self.flags & VOL_CREATING != 0
    }
    /// Neither being created nor being deleted: a volume users can see.
    pub fn live(&self) -> bool {
        !self.deleting() && !self.creating()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Catalog {
    pub generation: u64,
    pub next_id: u32,
    pub volumes: Vec<VolumeEntry>,
}

/// Check a volume name: 1..=64 bytes of `[A-Za-z0-9._-]`, not starting with '.' or '-'.
pub fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-')
        && !name.starts_with(['.', '-']);
    if ok {
        Ok(())
    } else {
        Err(Error::Invalid(format!(
            "bad volume name '{name}': use 1-64 of [A-Za-z0-9._-], not starting with '.' or '-'"
        )))
    }
}

impl Catalog {
    pub fn capacity(catalog_blocks: u32) -> usize {
        (catalog_blocks as usize * BLOCK_SIZE - HDR) / ENTRY
    }

    pub fn find(&self, name: &str) -> Option<&VolumeEntry> {
        self.volumes.iter().find(|v| v.name == name)
    }

    pub fn by_id(&self, id: u32) -> Option<&VolumeEntry> {
        self.volumes.iter().find(|v| v.id == id)
    }

    pub fn encode(&self, catalog_blocks: u32) -> Result<Vec<u8>> {
        let len = catalog_blocks as usize * BLOCK_SIZE;
        if self.volumes.len() > Self::capacity(catalog_blocks) {
            return Err(Error::NoSpace(format!(
                "volume catalog is full ({} volumes)",
                Self::capacity(catalog_blocks)
            )));
        }
        let mut b = vec![0u8; len];
        b[0..8].copy_from_slice(CAT_MAGIC);
        put_u64(&mut b, 8, self.generation);
        put_u32(&mut b, 16, self.next_id);
        put_u32(&mut b, 20, self.volumes.len() as u32);
        for (i, v) in self.volumes.iter().enumerate() {
            let o = HDR + i * ENTRY;
            put_u32(&mut b, o, v.id);
            put_u32(&mut b, o + 4, v.family);
            put_u32(&mut b, o + 8, v.parent);
            put_u32(&mut b, o + 12, v.flags);
            put_u64(&mut b, o + 16, v.size);
            b[o + 24] = v.chunk_shift;
            b[o + 25] = v.compression.code();
            b[o + 26] = v.name.len() as u8;
            b[o + 32..o + 32 + v.name.len()].copy_from_slice(v.name.as_bytes());
        }
        let crc = crc_with_hole(&b, 24);
        put_u32(&mut b, 24, crc);
        Ok(b)
    }

    /// Decode one copy; `block` is its first block, for error messages.
    pub fn decode(b: &[u8], block: u64) -> Result<Self> {
        let bad = |d: String| Error::corrupt(Structure::Catalog, block, d);
        if b.len() < HDR || &b[0..8] != CAT_MAGIC {
            return Err(bad("bad magic".into()));
        }
        if get_u32(b, 24) != crc_with_hole(b, 24) {
            return Err(bad("checksum mismatch".into()));
        }
        let n = get_u32(b, 20) as usize;
        if n > (b.len() - HDR) / ENTRY {
            return Err(bad(format!("{n} entries do not fit")));
        }
        let mut volumes = Vec::with_capacity(n);
        for i in 0..n {
            let o = HDR + i * ENTRY;
            let name_len = b[o + 26] as usize;
            if name_len > MAX_NAME {
                return Err(bad(format!("entry {i}: name length {name_len}")));
            }
            let name = std::str::from_utf8(&b[o + 32..o + 32 + name_len])
                .map_err(|_| bad(format!("entry {i}: name is not UTF-8")))?
                .to_string();
            let chunk_shift = b[o + 24];
            if !(12..=20).contains(&chunk_shift) {
                return Err(bad(format!("entry {i}: chunk shift {chunk_shift}")));
            }
            let compression = Compression::from_code(b[o + 25])
                .ok_or_else(|| bad(format!("entry {i}: compression code {}", b[o + 25])))?;
            let id = get_u32(b, o);
            if id == 0 || id >= get_u32(b, 16) {
                // Ids are handed out from next_id and never reused.
                return Err(bad(format!("entry {i}: volume id {id} not below next id")));
            }
            volumes.push(VolumeEntry {
                id,
                family: get_u32(b, o + 4),
                parent: get_u32(b, o + 8),
                flags: get_u32(b, o + 12),
                size: get_u64(b, o + 16),
                chunk_shift,
                compression,
                name,
            });
        }
        Ok(Catalog {
            generation: get_u64(b, 8),
            next_id: get_u32(b, 16),
            volumes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Catalog {
        Catalog {
            generation: 5,
            next_id: 3,
            volumes: vec![VolumeEntry {
                id: 1,
                family: 1,
                parent: 0,
                flags: 0,
                size: 1 << 30,
                chunk_shift: 16,
                compression: Compression::Lz4,
                name: "vol0".into(),
            }],
        }
    }

    #[test]
    fn round_trip_and_corruption() {
        let c = sample();
        let b = c.encode(16).unwrap();
        assert_eq!(Catalog::decode(&b, 1).unwrap(), c);
        let mut x = b.clone();
        x[HDR + 40] ^= 1;
        let e = Catalog::decode(&x, 1).unwrap_err().to_string();
        assert!(e.contains("volume catalog") && e.contains("block 1"), "{e}");
    }

    #[test]
    fn names() {
        assert!(validate_name("vol-0.a_b").is_ok());
        for bad in ["", ".x", "-x", "a b", "a/b", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(2);
        let good = sample().encode(16).unwrap();
        for _ in 0..2000 {
            let mut b = good.clone();
            for _ in 0..rng.gen_range(1..8) {
                let i = rng.gen_range(0..b.len());
                b[i] = rng.gen();
            }
            // fix the crc sometimes so decoding goes past the checksum
            if rng.gen_bool(0.5) {
                let crc = crc_with_hole(&b, 24);
                put_u32(&mut b, 24, crc);
            }
            let _ = Catalog::decode(&b, 1);
        }
    }
}
