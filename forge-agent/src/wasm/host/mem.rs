//! Bounds-checked access to a capsule's linear memory. An out-of-bounds
//! pointer is the capsule's error (`EFAULT`), never the host's.

use super::errno::{Errno, FAULT};

pub fn slice(mem: &[u8], ptr: i32, len: u32) -> Result<&[u8], Errno> {
    let start = ptr as u32 as usize;
    let end = start.checked_add(len as usize).ok_or(FAULT)?;
    mem.get(start..end).ok_or(FAULT)
}

pub fn slice_mut(mem: &mut [u8], ptr: i32, len: u32) -> Result<&mut [u8], Errno> {
    let start = ptr as u32 as usize;
    let end = start.checked_add(len as usize).ok_or(FAULT)?;
    mem.get_mut(start..end).ok_or(FAULT)
}

pub fn u32_at(mem: &[u8], ptr: i32) -> Result<u32, Errno> {
    let b = slice(mem, ptr, 4)?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

pub fn put(mem: &mut [u8], ptr: i32, bytes: &[u8]) -> Result<(), Errno> {
    slice_mut(mem, ptr, bytes.len() as u32)?.copy_from_slice(bytes);
    Ok(())
}

pub fn put_u32(mem: &mut [u8], ptr: i32, v: u32) -> Result<(), Errno> {
    put(mem, ptr, &v.to_le_bytes())
}

pub fn put_u64(mem: &mut [u8], ptr: i32, v: u64) -> Result<(), Errno> {
    put(mem, ptr, &v.to_le_bytes())
}

/// A UTF-8 string the capsule passed (a path, an address).
pub fn str_at(mem: &[u8], ptr: i32, len: i32) -> Result<&str, Errno> {
    std::str::from_utf8(slice(mem, ptr, len as u32)?).map_err(|_| super::errno::INVAL)
}

/// The `(ptr, len)` pairs of an iovec array.
pub fn iovecs(mem: &[u8], iovs: i32, count: i32) -> Result<Vec<(i32, u32)>, Errno> {
    if !(0..=1024).contains(&count) {
        return Err(super::errno::INVAL);
    }
    (0..count)
        .map(|i| {
            let at = iovs.wrapping_add(i * 8);
            Ok((u32_at(mem, at)? as i32, u32_at(mem, at.wrapping_add(4))?))
        })
        .collect()
}

/// The bytes of an iovec array, concatenated.
pub fn gather(mem: &[u8], iovs: i32, count: i32) -> Result<Vec<u8>, Errno> {
    let mut out = Vec::new();
    for (ptr, len) in iovecs(mem, iovs, count)? {
        out.extend_from_slice(slice(mem, ptr, len)?);
    }
    Ok(out)
}

/// Copies `data` into an iovec array, in order.
pub fn scatter(mem: &mut [u8], iovs: &[(i32, u32)], mut data: &[u8]) -> Result<(), Errno> {
    for (ptr, len) in iovs {
        if data.is_empty() {
            break;
        }
        let n = (*len as usize).min(data.len());
        put(mem, *ptr, &data[..n])?;
        data = &data[n..];
    }
    Ok(())
}
