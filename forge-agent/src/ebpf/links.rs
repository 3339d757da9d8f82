//! The links the agent holds open.
//!
//! A pinned link stays attached only while its pin or some file descriptor
//! refers to it. The agent keeps a descriptor on every link it attached or
//! adopted, so removing a pin (by mistake, or by a process that should not)
//! does not detach anything while the agent runs; and it pins the link again
//! from that descriptor when it notices ([`HeldLink::repin`]). These are thin
//! wrappers over the `bpf(2)` commands aya 0.14 does not expose for links:
//! get a pinned object, pin a descriptor, read a link's info (program and,
//! for cgroup links, the cgroup it is attached to).

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use serde::Serialize;

use super::sys::bpf;

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
/// `BPF_LINK_TYPE_CGROUP`.
const LINK_TYPE_CGROUP: u32 = 3;

/// `bpf_attr` for `BPF_OBJ_PIN` and `BPF_OBJ_GET`.
#[repr(C)]
#[derive(Default)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

/// `bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The head of `struct bpf_link_info` and its `cgroup` member (the union
/// starts at byte 16); room for the rest of the union.
#[repr(C)]
#[derive(Default)]
struct RawLinkInfo {
    ty: u32,
    id: u32,
    prog_id: u32,
    _pad: u32,
    cgroup_id: u64,
    rest: [u64; 6],
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))
}

/// Opens the object pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let name = c_path(path)?;
    let mut attr = ObjAttr { pathname: name.as_ptr() as u64, ..ObjAttr::default() };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Pins the object behind `fd` at `path`.
pub fn obj_pin(fd: &OwnedFd, path: &Path) -> io::Result<()> {
    let name = c_path(path)?;
    let mut attr =
        ObjAttr { pathname: name.as_ptr() as u64, bpf_fd: fd.as_raw_fd() as u32, ..ObjAttr::default() };
    bpf(BPF_OBJ_PIN, &mut attr).map(drop)
}

/// What the kernel says about a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LinkInfo {
    pub id: u32,
    pub prog_id: u32,
    /// For cgroup links, the cgroup attached to (0: detached).
    pub cgroup_id: Option<u64>,
}

impl LinkInfo {
    /// Whether the link still attaches a program (a cgroup link detached
    /// with `BPF_LINK_DETACH` has no cgroup any more).
    pub fn attached(&self) -> bool {
        self.prog_id != 0 && self.cgroup_id != Some(0)
    }
}

/// Reads the info of the link behind `fd`.
pub fn link_info(fd: &OwnedFd) -> io::Result<LinkInfo> {
    let mut info = RawLinkInfo::default();
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of::<RawLinkInfo>() as u32,
        info: (&raw mut info) as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(LinkInfo {
        id: info.id,
        prog_id: info.prog_id,
        cgroup_id: (info.ty == LINK_TYPE_CGROUP).then_some(info.cgroup_id),
    })
}

/// A link the agent holds by descriptor, with the place it is pinned at.
#[derive(Debug)]
pub struct HeldLink {
    pub name: String,
    pub pin: PathBuf,
    fd: OwnedFd,
}

impl HeldLink {
    /// Holds the link pinned at `pin`.
    pub fn open(name: impl Into<String>, pin: &Path) -> io::Result<Self> {
        Ok(Self { name: name.into(), pin: pin.to_path_buf(), fd: obj_get(pin)? })
    }

    pub fn info(&self) -> io::Result<LinkInfo> {
        link_info(&self.fd)
    }

    /// Pins the link again if its pin is gone; `true` if it had to.
    pub fn repin(&self) -> io::Result<bool> {
        if self.pin.exists() {
            return Ok(false);
        }
        if let Some(dir) = self.pin.parent() {
            std::fs::create_dir_all(dir)?;
        }
        obj_pin(&self.fd, &self.pin)?;
        Ok(true)
    }

    /// Stops holding the link and removes its pin: it detaches now unless
    /// something else still refers to it.
    pub fn release(self) -> io::Result<()> {
        match std::fs::remove_file(&self.pin) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

/// One expected link as found under the pin root.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LinkState {
    pub name: String,
    pub pin: PathBuf,
    /// `None`: the pin is missing or does not open as a link.
    pub info: Option<LinkInfo>,
    /// Why it does not count as attached, if it does not.
    pub problem: Option<String>,
}

impl LinkState {
    /// Opens the pin at `pin` and reads the link's state.
    pub fn of(name: &str, pin: &Path) -> Self {
        let (info, problem) = match obj_get(pin).and_then(|fd| link_info(&fd)) {
            Ok(info) if info.attached() => (Some(info), None),
            Ok(info) => (Some(info), Some("pinned but detached".to_string())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => (None, Some("pin missing".to_string())),
            Err(e) => (None, Some(format!("unreadable: {e}"))),
        };
        Self { name: name.to_string(), pin: pin.to_path_buf(), info, problem }
    }

    pub fn ok(&self) -> bool {
        self.problem.is_none()
    }
}
