//! The occupancy picture of `sluice pool_get_fsmap`: one band per zone (and
//! one for the pool header area), each cut into equal buckets of blocks, a
//! bucket shown as the first kind of block it holds in the order shared,
//! compressed, data, metadata (every special owner but free), free: a few
//! blocks of volume data in a bucket of free space still show, as on a
//! defragmenter's map. As a PNG
//! (`--picture FILE.png`, encoded by the `png` crate) with zone labels and
//! a legend drawn in a small built-in pixel font, or as text (`--map`),
//! a character per bucket.
//!
//! Zones are found from the records themselves (each zone starts with its
//! superblock record), so the CLI needs no knowledge of the pool's layout.

use sluice_engine::fsmap::{FsmapOwner, FsmapRecord, Special};
use std::fmt::Write as _;
use std::io::Write;

/// Kinds of blocks, in the order a bucket holding several shows one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Shared,
    Compressed,
    Data,
    Metadata,
    Free,
}

const KINDS: [Kind; 5] = [
    Kind::Shared,
    Kind::Compressed,
    Kind::Data,
    Kind::Metadata,
    Kind::Free,
];

impl Kind {
    fn of(r: &FsmapRecord) -> Kind {
        match r.owner {
            FsmapOwner::Special(Special::Free) => Kind::Free,
            FsmapOwner::Special(_) => Kind::Metadata,
            _ if r.shared => Kind::Shared,
            _ if r.compressed => Kind::Compressed,
            _ => Kind::Data,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::Shared => "shared",
            Kind::Compressed => "compressed",
            Kind::Data => "data",
            Kind::Metadata => "metadata",
            Kind::Free => "free",
        }
    }
    fn letter(self) -> char {
        match self {
            Kind::Shared => 'S',
            Kind::Compressed => 'C',
            Kind::Data => 'D',
            Kind::Metadata => 'M',
            Kind::Free => '.',
        }
    }
    fn rgb(self) -> [u8; 3] {
        match self {
            Kind::Shared => [0xe8, 0x8a, 0x1a],
            Kind::Compressed => [0x3c, 0xb3, 0x71],
            Kind::Data => [0x3b, 0x7d, 0xd8],
            Kind::Metadata => [0x80, 0x50, 0xa0],
            Kind::Free => [0xe6, 0xe6, 0xe6],
        }
    }
}

/// One band: a label and its buckets (`None` past the band's end).
pub struct Band {
    pub label: String,
    pub buckets: Vec<Option<Kind>>,
}

/// Cut the records (physical order, one walk) into bands of `width`
/// buckets; every band uses the same blocks per bucket.
pub fn bands(recs: &[FsmapRecord], width: usize) -> Vec<Band> {
    let Some(first) = recs.first() else {
        return Vec::new();
    };
    let end = recs
        .iter()
        .map(|r| r.physical + r.length)
        .max()
        .unwrap_or(first.physical);
    // Band starts: the range's start and every superblock record.
    let mut starts: Vec<u64> = vec![first.physical];
    for r in recs {
        if r.owner == FsmapOwner::Special(Special::Superblock) && r.physical > first.physical {
            starts.push(r.physical);
        }
    }
    let header_band =
        first.physical == 0 && first.owner == FsmapOwner::Special(Special::PoolHeader);
    let spans: Vec<(u64, u64)> = starts
        .iter()
        .enumerate()
        .map(|(i, s)| (*s, starts.get(i + 1).copied().unwrap_or(end)))
        .collect();
    let widest = spans.iter().map(|(a, b)| b - a).max().unwrap_or(1);
    let per = widest.div_ceil(width as u64).max(1);
    let mut counts: Vec<Vec<[u64; 5]>> = spans.iter().map(|_| vec![[0; 5]; width]).collect();
    let mut band = 0;
    for r in recs {
        while band + 1 < spans.len() && r.physical >= spans[band + 1].0 {
            band += 1;
        }
        let k = KINDS.iter().position(|k| *k == Kind::of(r)).unwrap_or(0);
        let (bs, be) = spans[band];
        let (a, b) = (
            r.physical.max(bs) - bs,
            (r.physical + r.length).min(be) - bs,
        );
        let mut x = a;
        while x < b {
            let j = (x / per) as usize;
            let next = ((j as u64 + 1) * per).min(b);
            if let Some(c) = counts[band].get_mut(j) {
                c[k] += next - x;
            }
            x = next;
        }
    }
    counts
        .into_iter()
        .enumerate()
        .map(|(i, cs)| Band {
            label: match (header_band, i) {
                (true, 0) => "pool".to_string(),
                (true, i) => format!("z{}", i - 1),
                (false, _) => String::new(),
            },
            buckets: cs
                .iter()
                .map(|c| {
                    // The first kind present.
                    (0..5).find(|&k| c[k] > 0).map(|k| KINDS[k])
                })
                .collect(),
        })
        .collect()
}

/// Buckets per line of `--map`.
pub const MAP_WIDTH: usize = 64;

/// `--map`: a line per band, a character per bucket, then the legend.
pub fn text_map(recs: &[FsmapRecord]) -> String {
    let mut out = String::new();
    for b in bands(recs, MAP_WIDTH) {
        let cells: String = b
            .buckets
            .iter()
            .map(|k| k.map_or(' ', Kind::letter))
            .collect();
        let _ = writeln!(out, "{:>5} |{cells}|", b.label);
    }
    let legend: Vec<String> = KINDS
        .iter()
        .map(|k| format!("{} {}", k.letter(), k.name()))
        .collect();
    let _ = writeln!(
        out,
        "legend: {} (a cell shows the first of these its blocks hold)",
        legend.join(", ")
    );
    out
}

/// Buckets (pixels) per band of the PNG.
pub const PNG_WIDTH: usize = 512;
const MARGIN: usize = 8;
const LABEL_W: usize = 40;
const BAND_H: usize = 10;
const GAP: usize = 3;
const SCALE: usize = 2;
const LEGEND_H: usize = 5 * SCALE + 2 * MARGIN;

/// The PNG's size for `nbands` bands: (width, height) in pixels.
pub fn png_size(nbands: usize) -> (u32, u32) {
    let w = MARGIN + LABEL_W + PNG_WIDTH + MARGIN;
    let h = MARGIN + nbands * (BAND_H + GAP) + LEGEND_H;
    (w as u32, h as u32)
}

/// Draw the picture and encode it as PNG into `out`; returns its size.
pub fn write_png(recs: &[FsmapRecord], out: impl Write) -> Result<(u32, u32), png::EncodingError> {
    let bands = bands(recs, PNG_WIDTH);
    let (w, h) = png_size(bands.len());
    let mut c = Canvas {
        w: w as usize,
        px: vec![0xff; w as usize * h as usize * 3],
    };
    for (i, b) in bands.iter().enumerate() {
        let y = MARGIN + i * (BAND_H + GAP);
        c.text(MARGIN, y + (BAND_H - 5 * SCALE) / 2, &b.label);
        for (x, k) in b.buckets.iter().enumerate() {
            if let Some(k) = k {
                c.rect(MARGIN + LABEL_W + x, y, 1, BAND_H, k.rgb());
            }
        }
    }
    let mut x = MARGIN + LABEL_W;
    let y = h as usize - LEGEND_H + MARGIN;
    for k in KINDS {
        c.rect(x, y, 5 * SCALE, 5 * SCALE, k.rgb());
        x = c.text(x + 5 * SCALE + 4, y, k.name()) + 12;
    }
    let mut enc = png::Encoder::new(out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut wr = enc.write_header()?;
    wr.write_image_data(&c.px)?;
    wr.finish()?;
    Ok((w, h))
}

struct Canvas {
    w: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn rect(&mut self, x: usize, y: usize, w: usize, h: usize, rgb: [u8; 3]) {
        for yy in y..y + h {
            for xx in x..(x + w).min(self.w) {
                let i = (yy * self.w + xx) * 3;
                if let Some(p) = self.px.get_mut(i..i + 3) {
                    p.copy_from_slice(&rgb);
                }
            }
        }
    }

    /// Draw `s` at (x, y); returns the x after it.
    fn text(&mut self, mut x: usize, y: usize, s: &str) -> usize {
        for ch in s.chars() {
            let g = glyph(ch);
            for (row, bits) in g.iter().enumerate() {
                for (col, b) in bits.bytes().enumerate() {
                    if b == b'#' {
                        let (px, py) = (x + col * SCALE, y + row * SCALE);
                        self.rect(px, py, SCALE, SCALE, [0x20, 0x20, 0x20]);
                    }
                }
            }
            x += 4 * SCALE;
        }
        x
    }
}

/// A 3x5 pixel glyph for the characters the labels and legend use.
fn glyph(c: char) -> [&'static str; 5] {
    match c {
        '0' => ["###", "#.#", "#.#", "#.#", "###"],
        '1' => [".#.", "##.", ".#.", ".#.", "###"],
        '2' => ["###", "..#", "###", "#..", "###"],
        '3' => ["###", "..#", ".##", "..#", "###"],
        '4' => ["#.#", "#.#", "###", "..#", "..#"],
        '5' => ["###", "#..", "###", "..#", "###"],
        '6' => ["###", "#..", "###", "#.#", "###"],
        '7' => ["###", "..#", ".#.", ".#.", ".#."],
        '8' => ["###", "#.#", "###", "#.#", "###"],
        '9' => ["###", "#.#", "###", "..#", "###"],
        'a' => [".#.", "#.#", "###", "#.#", "#.#"],
        'c' => [".##", "#..", "#..", "#..", ".##"],
        'd' => ["##.", "#.#", "#.#", "#.#", "##."],
        'e' => ["###", "#..", "##.", "#..", "###"],
        'f' => ["###", "#..", "##.", "#..", "#.."],
        'h' => ["#.#", "#.#", "###", "#.#", "#.#"],
        'l' => ["#..", "#..", "#..", "#..", "###"],
        'm' => ["#.#", "###", "###", "#.#", "#.#"],
        'n' => ["##.", "#.#", "#.#", "#.#", "#.#"],
        'o' => [".#.", "#.#", "#.#", "#.#", ".#."],
        'p' => ["##.", "#.#", "##.", "#..", "#.."],
        'r' => ["##.", "#.#", "##.", "#.#", "#.#"],
        's' => [".##", "#..", ".#.", "..#", "##."],
        't' => ["###", ".#.", ".#.", ".#.", ".#."],
        'z' => ["###", "..#", ".#.", "#..", "###"],
        _ => ["...", "...", "...", "...", "..."],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(p: u64, l: u64, owner: FsmapOwner, compressed: bool) -> FsmapRecord {
        FsmapRecord {
            physical: p * 4096,
            length: l * 4096,
            owner,
            shared: false,
            compressed,
        }
    }

    #[test]
    fn bands_follow_superblocks_and_buckets_show_the_first_kind_present() {
        let sp = FsmapOwner::Special;
        let vol = FsmapOwner::Volume {
            name: "v".into(),
            offset: 0,
        };
        let recs = [
            rec(0, 2, sp(Special::PoolHeader), false),
            rec(2, 64, sp(Special::Superblock), false),
            rec(66, 32, vol.clone(), true),
            rec(98, 32, sp(Special::Free), false),
            rec(130, 64, sp(Special::Superblock), false),
            rec(194, 64, vol, false),
        ];
        let b = bands(&recs, 4);
        assert_eq!(b.len(), 3);
        assert_eq!(
            (
                b[0].label.as_str(),
                b[1].label.as_str(),
                b[2].label.as_str()
            ),
            ("pool", "z0", "z1")
        );
        // 32 blocks per bucket (the widest band is 128 blocks).
        assert_eq!(b[0].buckets, vec![Some(Kind::Metadata), None, None, None]);
        assert_eq!(
            b[1].buckets,
            vec![
                Some(Kind::Metadata),
                Some(Kind::Metadata),
                Some(Kind::Compressed),
                Some(Kind::Free)
            ]
        );
        assert_eq!(b[2].buckets[2], Some(Kind::Data));
        // One data block among free ones shows as data.
        let mixed = [
            rec(0, 2, sp(Special::PoolHeader), false),
            rec(2, 10, sp(Special::Free), false),
            rec(
                12,
                1,
                FsmapOwner::Volume {
                    name: "v".into(),
                    offset: 0,
                },
                false,
            ),
            rec(13, 19, sp(Special::Free), false),
        ];
        assert_eq!(bands(&mixed, 1)[0].buckets, vec![Some(Kind::Data)]);
        let m = text_map(&recs);
        let z0 = format!(
            "   z0 |{}{}{}|",
            "M".repeat(32),
            "C".repeat(16),
            ".".repeat(16)
        );
        assert!(m.contains(&z0), "{m}");
        assert!(m.contains("legend: S shared, C compressed, D data, M metadata, . free"));
        let mut png_bytes = Vec::new();
        let (w, h) = write_png(&recs, &mut png_bytes).unwrap();
        assert_eq!((w, h), png_size(3));
        assert_eq!(&png_bytes[..8], b"\x89PNG\r\n\x1a\n");
    }
}
