//! A volume as an NBD export backend: requests go to `PoolHost`, which
//! splits them by chunk and forwards pieces to the reactors owning them.
//!
//! A connection keeps the size it was opened with. After a shrink the
//! zones refuse what lies past the new end (see the engine's
//! `zone::bounds`); such a request fails like one past the announced size
//! would: `ENOSPC` for WRITE and WRITE_ZEROES, `EINVAL` for the rest, as
//! the NBD spec asks. New connections get the new size.

use crate::iostat::{self, OpKind};
use crate::nbd::{
    BackendError, Errno, ExportBackend, ReadSeg, ReadSegs, StatusExtent, STATE_HOLE, STATE_ZERO,
};
use crate::pool_host::PoolHost;
use sluice_engine::volume::VolInfo;
use sluice_engine::{AlignedBuf, Error};
use std::sync::Arc;
use std::time::Instant;

pub struct VolumeBackend {
    host: Arc<PoolHost>,
    vol: VolInfo,
    read_only: bool,
}

impl VolumeBackend {
    /// A volume made read-only after the connection opened: its writes
    /// fail with EPERM from then on.
    fn check_writable(&self) -> Result<(), BackendError> {
        if self.host.volume_read_only(self.vol.id) {
            return Err(BackendError {
                errno: Errno::Perm,
                message: "volume is read-only".into(),
            });
        }
        Ok(())
    }

    pub fn new(host: Arc<PoolHost>, vol: VolInfo, read_only: bool) -> Self {
        VolumeBackend {
            host,
            vol,
            read_only,
        }
    }

    /// Count the request and map its error; `past_end` is the errno for a
    /// range a shrink has cut off.
    fn done<T>(
        &self,
        kind: OpKind,
        bytes: u64,
        t: Instant,
        r: Result<T, Error>,
        past_end: Errno,
    ) -> Result<T, BackendError> {
        iostat::record(
            &self.host.name,
            self.vol.id,
            kind,
            bytes,
            t.elapsed(),
            r.is_ok(),
        );
        r.map_err(|e| match e {
            Error::OutOfRange(_) => BackendError {
                errno: past_end,
                message: e.to_string(),
            },
            e => to_backend(e),
        })
    }
}

/// Engine errors as NBD errnos with their message.
pub fn to_backend(e: Error) -> BackendError {
    let errno = Errno::from_code(e.errno() as u32).unwrap_or(Errno::Io);
    BackendError {
        errno,
        message: e.to_string(),
    }
}

impl ExportBackend for VolumeBackend {
    fn size(&self) -> u64 {
        self.vol.size
    }

    fn read_only(&self) -> bool {
        self.read_only || self.host.volume_read_only(self.vol.id)
    }

    async fn read(&self, offset: u64, len: u32) -> Result<ReadSegs, BackendError> {
        let t = Instant::now();
        let r = self.host.read(&self.vol, offset, len).await.map(|parts| {
            let mut segs = ReadSegs::new();
            for (s, data) in parts {
                let off = offset + s.buf_off as u64;
                match data {
                    Some(buf) => segs.push(ReadSeg::Data { offset: off, buf }),
                    None => match segs.last_mut() {
                        Some(ReadSeg::Hole { len: l, .. }) => *l += s.len as u32,
                        _ => segs.push(ReadSeg::Hole {
                            offset: off,
                            len: s.len as u32,
                        }),
                    },
                }
            }
            segs
        });
        self.done(OpKind::Read, len as u64, t, r, Errno::Inval)
    }

    async fn write(&self, offset: u64, data: AlignedBuf, fua: bool) -> Result<(), BackendError> {
        self.check_writable()?;
        let t = Instant::now();
        let n = data.len() as u64;
        let mut r = self.host.write(&self.vol, offset, data).await;
        if r.is_ok() && fua {
            r = self.host.flush().await;
        }
        self.done(OpKind::Write, n, t, r, Errno::NoSpc)
    }

    async fn flush(&self) -> Result<(), BackendError> {
        let t = Instant::now();
        let r = self.host.flush().await;
        self.done(OpKind::Flush, 0, t, r, Errno::Inval)
    }

    async fn trim(&self, offset: u64, len: u32) -> Result<(), BackendError> {
        self.check_writable()?;
        let t = Instant::now();
        let r = self.host.write_zeroes(&self.vol, offset, len).await;
        self.done(OpKind::Trim, len as u64, t, r, Errno::Inval)
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        _may_trim: bool,
    ) -> Result<(), BackendError> {
        self.check_writable()?;
        // Zeroed whole chunks become holes either way: a hole reads as zeros
        // and costs no space, which is what NO_HOLE's callers need too.
        let t = Instant::now();
        let r = self.host.write_zeroes(&self.vol, offset, len).await;
        self.done(OpKind::Trim, len as u64, t, r, Errno::NoSpc)
    }

    async fn block_status(&self, offset: u64, len: u32) -> Result<Vec<StatusExtent>, BackendError> {
        let runs = self
            .host
            .block_status(&self.vol, offset, len)
            .await
            .map_err(to_backend)?;
        Ok(runs
            .into_iter()
            .map(|(_, l, mapped)| StatusExtent {
                length: l as u32,
                flags: if mapped { 0 } else { STATE_HOLE | STATE_ZERO },
            })
            .collect())
    }
}
