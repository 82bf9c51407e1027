//! `AlignedBuf`: an owned, 4 KiB-aligned I/O buffer.
//!
//! Buffers are moved into an I/O operation and handed back when it completes
//! (monoio style), so memory a device is writing into can never be freed or
//! reused by a dropped future.
//!
//! Every I/O needs one, so their memory is recycled: each thread keeps a
//! small free list per power-of-two size class (4 KiB .. 1 MiB, at most
//! [`RECYCLE_BYTES`] per class), like malloc's per-thread cache but for
//! aligned blocks, which glibc's tcache does not serve. Behind the thread
//! lists there may be a process-wide [`Depot`], which the runtime (the owner
//! of the threads) installs with [`set_depot`]: a buffer that one thread
//! allocates and another frees — a chunk read by the reactor owning its
//! zone, handed to the reactor that asked — overflows the freeing thread's
//! list into the depot and the allocating thread takes it back from there,
//! instead of one calling free and the other malloc for every such I/O.

use std::alloc::{self, Layout};
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;

/// The unit of allocation and of O_DIRECT I/O.
pub const BLOCK_SIZE: usize = 4096;

/// Marks a recycled buffer in `AlignedBuf::cap` (capacities are multiples of 4 KiB).
const RECYCLED_TAG: usize = 1;

pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
}

// SAFETY: AlignedBuf uniquely owns its allocation, like Vec<u8>.
unsafe impl Send for AlignedBuf {}
unsafe impl Sync for AlignedBuf {}

/// Largest recycled capacity.
const MAX_CLASS_SHIFT: u32 = 20;
/// Number of size classes: blocks of [`class_bytes`]`(0..SIZE_CLASSES)`.
pub const SIZE_CLASSES: usize = (MAX_CLASS_SHIFT - 12 + 1) as usize;
/// Bytes each thread keeps per size class.
pub const RECYCLE_BYTES: usize = 2 << 20;

/// Size class of a capacity, if it is a recycled one.
fn class_of(cap: usize) -> Option<usize> {
    (cap.is_power_of_two() && cap <= 1 << MAX_CLASS_SHIFT)
        .then(|| (cap.trailing_zeros() - 12) as usize)
}

struct FreeLists([Vec<NonNull<u8>>; SIZE_CLASSES]);

impl Drop for FreeLists {
    fn drop(&mut self) {
        for (k, list) in self.0.iter_mut().enumerate() {
            let layout =
                Layout::from_size_align(BLOCK_SIZE << k, BLOCK_SIZE).expect("valid layout");
            for p in list.drain(..) {
                // SAFETY: every pointer here was allocated with this layout.
                unsafe { alloc::dealloc(p.as_ptr(), layout) }
            }
        }
    }
}

thread_local! {
    static FREE: std::cell::RefCell<FreeLists> =
        std::cell::RefCell::new(FreeLists(std::array::from_fn(|_| Vec::new())));
}

/// A free block of one size class on its way through the [`Depot`]: owned
/// by whoever holds this value, so it may move between threads like the
/// `AlignedBuf` it came from.
pub struct FreeBlock(NonNull<u8>);
// SAFETY: a free block is owned by whoever holds this value, nobody else.
unsafe impl Send for FreeBlock {}

/// Bytes of a block of size class `class` (4 KiB << class).
pub const fn class_bytes(class: usize) -> usize {
    BLOCK_SIZE << class
}

/// A process-wide store of free blocks behind the per-thread lists.
pub trait Depot: Sync {
    /// Keep `block` (of size class `class`); give it back when full.
    fn put(&self, class: usize, block: FreeBlock) -> Result<(), FreeBlock>;
    /// A kept block of size class `class`, if any.
    fn take(&self, class: usize) -> Option<FreeBlock>;
}

static DEPOT: std::sync::OnceLock<&'static dyn Depot> = std::sync::OnceLock::new();

/// Install the process's depot; the first call wins (false for later ones).
pub fn set_depot(depot: &'static dyn Depot) -> bool {
    DEPOT.set(depot).is_ok()
}

impl AlignedBuf {
    /// A zeroed buffer of `len` bytes; capacity is rounded up to whole blocks.
    pub fn zeroed(len: usize) -> Self {
        let mut b = Self::filled_later(len);
        if b.recycled() {
            // SAFETY: ptr is valid for cap bytes.
            unsafe { std::ptr::write_bytes(b.ptr.as_ptr(), 0, b.cap_bytes()) };
        }
        b.len = len;
        b
    }

    /// A buffer of `len` bytes whose contents are unspecified (zeros or an
    /// earlier buffer's bytes): for data that is about to be overwritten
    /// whole, such as a read's destination or a copy.
    pub fn filled_later(len: usize) -> Self {
        let cap = len.div_ceil(BLOCK_SIZE).max(1) * BLOCK_SIZE;
        if let Some(k) = class_of(cap) {
            let got = FREE
                .try_with(|f| f.borrow_mut().0[k].pop())
                .ok()
                .flatten()
                .or_else(|| DEPOT.get()?.take(k).map(|b| b.0));
            if let Some(ptr) = got {
                return AlignedBuf {
                    ptr,
                    len,
                    cap: cap | RECYCLED_TAG,
                };
            }
        }
        let layout = Layout::from_size_align(cap, BLOCK_SIZE).expect("valid layout");
        // SAFETY: layout has non-zero size.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len, cap }
    }

    /// Whether this buffer came off a free list (so is not known zero). The
    /// tag rides in the low bits of `cap`, which are always zero otherwise.
    pub fn recycled(&self) -> bool {
        self.cap & RECYCLED_TAG != 0
    }

    fn cap_bytes(&self) -> usize {
        self.cap & !RECYCLED_TAG
    }

    pub fn from_slice(data: &[u8]) -> Self {
        let mut b = Self::filled_later(data.len());
        b.copy_from_slice(data);
        b
    }

    pub fn capacity(&self) -> usize {
        self.cap_bytes()
    }

    /// Change the visible length within capacity; new bytes are whatever was
    /// there (zero for a fresh buffer).
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.cap_bytes(),
            "AlignedBuf::set_len beyond capacity"
        );
        self.len = len;
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        let cap = self.cap_bytes();
        if let Some(k) = class_of(cap) {
            let ptr = self.ptr;
            let kept = FREE
                .try_with(|f| {
                    let mut f = f.borrow_mut();
                    let list = &mut f.0[k];
                    if list.len() * cap < RECYCLE_BYTES {
                        list.push(ptr);
                        true
                    } else {
                        false
                    }
                })
                .unwrap_or(false);
            let kept = kept
                || DEPOT
                    .get()
                    .is_some_and(|d| d.put(k, FreeBlock(ptr)).is_ok());
            if kept {
                return;
            }
        }
        let layout = Layout::from_size_align(cap, BLOCK_SIZE).expect("valid layout");
        // SAFETY: allocated in `filled_later` with this layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for cap >= len bytes, initialised (zeroed at
        // first allocation, and only ever written with initialised bytes).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and we hold &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Clone for AlignedBuf {
    fn clone(&self) -> Self {
        Self::from_slice(self)
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AlignedBuf({} bytes)", self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_and_zeroed() {
        let b = AlignedBuf::zeroed(10_000);
        assert_eq!(b.as_ptr() as usize % BLOCK_SIZE, 0);
        assert_eq!(b.len(), 10_000);
        assert_eq!(b.capacity(), 12_288);
        assert!(b.iter().all(|&x| x == 0));
    }

    #[test]
    fn recycled_buffers_come_back_zeroed_when_asked() {
        let mut a = AlignedBuf::zeroed(8192);
        a.fill(0xAB);
        let p = a.as_ptr();
        drop(a);
        let b = AlignedBuf::filled_later(8192);
        assert_eq!(b.as_ptr(), p, "same thread, same class: reused");
        assert_eq!(b.capacity(), 8192);
        drop(b);
        let c = AlignedBuf::zeroed(5000);
        assert_eq!(c.as_ptr(), p);
        assert_eq!(c.capacity(), 8192);
        assert!(c.iter().all(|&x| x == 0));
        assert_eq!(c.as_ptr() as usize % BLOCK_SIZE, 0);
    }
}
