//! Descriptors, preopens and directory listings. Paths go through the
//! preview1 host's code: resolved from the descriptor, gated as the
//! absolute path they name, opened without following symlinks.
//!
//! Not provided (answered `unsupported`): links, symlinks, renames and
//! setting times; they would let a capsule make one path stand for another.

use std::os::unix::fs::FileExt as _;

use serde_json::{Value, json};
use wasmtime::component::Resource;

use super::{
    Stream, code, fs_result,
    io::gated_file,
    wasi::{
        filesystem::{
            preopens,
            types::{
                self, Advice, Descriptor, DescriptorFlags, DescriptorStat, DescriptorType, DirectoryEntry,
                DirectoryEntryStream, ErrorCode, Filesize, MetadataHashValue, NewTimestamp, OpenFlags,
                PathFlags,
            },
        },
        io::{
            error::Error,
            streams::{InputStream, OutputStream},
        },
    },
};
use crate::wasm::{
    gate::Facility,
    host::{
        Ctx, answer, bytes_of, errno,
        fds::{Fd, filetype},
        field,
        fs::{
            OFLAG_CREAT, OFLAG_DIRECTORY, OFLAG_EXCL, OFLAG_TRUNC, change_path, entries, filestat,
            listable_dir, open_path, path_from, stat_path,
        },
    },
};

/// The preopened root's descriptor number.
const ROOT: u32 = 3;
/// Largest `read` served in one call.
const MAX_IO: u64 = 1 << 20;

type FsResult<T> = wasmtime::Result<Result<T, ErrorCode>>;

fn kind(ft: u64) -> DescriptorType {
    match ft as u8 {
        filetype::DIRECTORY => DescriptorType::Directory,
        filetype::REGULAR_FILE => DescriptorType::RegularFile,
        filetype::CHARACTER_DEVICE => DescriptorType::CharacterDevice,
        filetype::SOCKET_STREAM => DescriptorType::Socket,
        _ => DescriptorType::Unknown,
    }
}

fn datetime(ns: u64) -> Option<types::Datetime> {
    Some(types::Datetime { seconds: ns / 1_000_000_000, nanoseconds: (ns % 1_000_000_000) as u32 })
}

fn stat_of(r: &Value) -> DescriptorStat {
    DescriptorStat {
        type_: kind(field(r, "filetype")),
        link_count: field(r, "nlink"),
        size: field(r, "size"),
        data_access_timestamp: datetime(field(r, "atim")),
        data_modification_timestamp: datetime(field(r, "mtim")),
        status_change_timestamp: datetime(field(r, "ctim")),
    }
}

fn hash_of(r: &Value) -> MetadataHashValue {
    MetadataHashValue { lower: field(r, "dev"), upper: field(r, "ino") }
}

fn fd(d: &Resource<Descriptor>) -> i32 {
    d.rep() as i32
}

impl Ctx {
    /// A descriptor call whose answer is a plain errno.
    fn fs_call(
        &mut self,
        name: &str,
        args: Value,
        perform: impl FnOnce(&mut crate::wasm::host::Live) -> Value,
    ) -> FsResult<Value> {
        Ok(fs_result(self.call(name, args, perform)?))
    }

    fn file_stream(&mut self, name: &str, d: &Resource<Descriptor>, offset: Option<u64>) -> FsResult<u32> {
        let n = fd(d);
        let r = self.fs_call(name, json!({"fd": n, "offset": offset}), |live| match live.fds.get(n) {
            Ok(Fd::File { .. }) => json!({"errno": 0}),
            Ok(Fd::Root | Fd::Dir { .. }) => answer(errno::ISDIR),
            Ok(_) => answer(errno::BADF),
            Err(e) => answer(e),
        })?;
        Ok(r.map(|_| {
            let h = self.p2.handle();
            self.p2.streams.insert(h, Stream::File { fd: n, offset });
            h
        }))
    }

    /// A change to one path, gated as a write.
    fn change(
        &mut self,
        name: &str,
        d: &Resource<Descriptor>,
        path: &str,
        op: fn(&str) -> std::io::Result<()>,
    ) -> FsResult<()> {
        let n = fd(d);
        let r = self.fs_call(name, json!({"fd": n, "path": path}), |live| change_path(live, n, path, op))?;
        Ok(r.map(|_| ()))
    }

    fn unsupported(&mut self, name: &str, args: Value) -> FsResult<()> {
        Ok(self.fs_call(name, args, |_| answer(errno::NOSYS))?.map(|_| ()))
    }
}

impl types::Host for Ctx {
    fn filesystem_error_code(&mut self, e: Resource<Error>) -> wasmtime::Result<Option<ErrorCode>> {
        let errno = self.p2.errors.get(&e.rep()).map(|(_, n)| *n);
        self.call(
            "filesystem-error-code",
            json!({"error": e.rep()}),
            |_| json!({"errno": 0, "code": errno}),
        )?;
        Ok(errno.map(code))
    }
}

impl types::HostDescriptor for Ctx {
    fn read_via_stream(
        &mut self,
        d: Resource<Descriptor>,
        offset: Filesize,
    ) -> FsResult<Resource<InputStream>> {
        Ok(self.file_stream("descriptor.read-via-stream", &d, Some(offset))?.map(Resource::new_own))
    }

    fn write_via_stream(
        &mut self,
        d: Resource<Descriptor>,
        offset: Filesize,
    ) -> FsResult<Resource<OutputStream>> {
        Ok(self.file_stream("descriptor.write-via-stream", &d, Some(offset))?.map(Resource::new_own))
    }

    fn append_via_stream(&mut self, d: Resource<Descriptor>) -> FsResult<Resource<OutputStream>> {
        Ok(self.file_stream("descriptor.append-via-stream", &d, None)?.map(Resource::new_own))
    }

    fn advise(
        &mut self,
        d: Resource<Descriptor>,
        offset: Filesize,
        len: Filesize,
        _a: Advice,
    ) -> FsResult<()> {
        let n = fd(&d);
        let args = json!({"fd": n, "offset": offset, "len": len});
        Ok(self
            .fs_call("descriptor.advise", args, |live| answer(live.fds.get(n).err().unwrap_or(0)))?
            .map(|_| ()))
    }

    fn sync_data(&mut self, d: Resource<Descriptor>) -> FsResult<()> {
        self.sync(d)
    }

    fn get_flags(&mut self, d: Resource<Descriptor>) -> FsResult<DescriptorFlags> {
        let n = fd(&d);
        let r = self.fs_call("descriptor.get-flags", json!({"fd": n}), |live| match live.fds.get(n) {
            Ok(Fd::File { read, write, .. }) => json!({"errno": 0, "read": read, "write": write}),
            // Directories: what is done in them is decided per path by the gate.
            Ok(f) if f.dir_path().is_some() => json!({"errno": 0, "read": true, "mutate": true}),
            Ok(_) => json!({"errno": 0, "read": true, "write": true}),
            Err(e) => answer(e),
        })?;
        let flag = |r: &Value, name: &str| r.get(name).and_then(Value::as_bool).unwrap_or(false);
        Ok(r.map(|r| {
            let mut f = DescriptorFlags::empty();
            for (name, bit) in [
                ("read", DescriptorFlags::READ),
                ("write", DescriptorFlags::WRITE),
                ("mutate", DescriptorFlags::MUTATE_DIRECTORY),
            ] {
                if flag(&r, name) {
                    f |= bit;
                }
            }
            f
        }))
    }

    fn get_type(&mut self, d: Resource<Descriptor>) -> FsResult<DescriptorType> {
        let n = fd(&d);
        let r = self.fs_call("descriptor.get-type", json!({"fd": n}), |live| match live.fds.get(n) {
            Ok(f) => json!({"errno": 0, "filetype": f.filetype()}),
            Err(e) => answer(e),
        })?;
        Ok(r.map(|r| kind(field(&r, "filetype"))))
    }

    fn set_size(&mut self, d: Resource<Descriptor>, size: Filesize) -> FsResult<()> {
        let n = fd(&d);
        let r =
            self.fs_call("descriptor.set-size", json!({"fd": n, "size": size}), |live| {
                match gated_file(live, n, true).and_then(|f| f.set_len(size).map_err(|e| errno::from_io(&e)))
                {
                    Ok(()) => answer(0),
                    Err(e) => answer(e),
                }
            })?;
        Ok(r.map(|_| ()))
    }

    fn set_times(&mut self, d: Resource<Descriptor>, _a: NewTimestamp, _m: NewTimestamp) -> FsResult<()> {
        self.unsupported("descriptor.set-times", json!({"fd": fd(&d)}))
    }

    fn read(
        &mut self,
        d: Resource<Descriptor>,
        len: Filesize,
        offset: Filesize,
    ) -> FsResult<(Vec<u8>, bool)> {
        let n = fd(&d);
        let len = len.min(MAX_IO);
        let r = self.fs_call("descriptor.read", json!({"fd": n, "len": len, "offset": offset}), |live| {
            let mut buf = vec![0u8; len as usize];
            match gated_file(live, n, false)
                .and_then(|f| f.read_at(&mut buf, offset).map_err(|e| errno::from_io(&e)))
            {
                Ok(got) => json!({"errno": 0, "data": hex::encode(&buf[..got]), "eof": got < len as usize}),
                Err(e) => answer(e),
            }
        })?;
        Ok(r.map(|r| (bytes_of(&r, "data"), r.get("eof").and_then(Value::as_bool).unwrap_or(true))))
    }

    fn write(&mut self, d: Resource<Descriptor>, buffer: Vec<u8>, offset: Filesize) -> FsResult<Filesize> {
        let n = fd(&d);
        let args = json!({"fd": n, "offset": offset, "len": buffer.len(),
                          "sha3": crate::sign::sha3_256(&buffer).to_hex()});
        let r = self.fs_call("descriptor.write", args, |live| {
            match gated_file(live, n, true)
                .and_then(|f| f.write_at(&buffer, offset).map_err(|e| errno::from_io(&e)))
            {
                Ok(wrote) => json!({"errno": 0, "n": wrote}),
                Err(e) => answer(e),
            }
        })?;
        Ok(r.map(|r| field(&r, "n")))
    }

    fn read_directory(&mut self, d: Resource<Descriptor>) -> FsResult<Resource<DirectoryEntryStream>> {
        let n = fd(&d);
        let r = self.fs_call("descriptor.read-directory", json!({"fd": n}), |live| {
            let path = match listable_dir(live, n) {
                Ok(p) => p,
                Err(e) => return answer(e),
            };
            match entries(&path) {
                Ok(list) => {
                    let list: Vec<Value> = list.into_iter().map(|(name, ft, _)| json!([name, ft])).collect();
                    json!({"errno": 0, "entries": list})
                }
                Err(e) => answer(e),
            }
        })?;
        Ok(r.map(|r| {
            let list = r
                .get("entries")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|e| Some((e.get(0)?.as_str()?.to_string(), e.get(1)?.as_u64()? as u8)))
                        .collect()
                })
                .unwrap_or_default();
            let h = self.p2.handle();
            self.p2.listings.insert(h, list);
            Resource::new_own(h)
        }))
    }

    fn sync(&mut self, d: Resource<Descriptor>) -> FsResult<()> {
        let n = fd(&d);
        let r = self.fs_call("descriptor.sync", json!({"fd": n}), |live| match live.fds.get(n) {
            Ok(Fd::File { file, .. }) => answer(file.sync_all().err().map_or(0, |e| errno::from_io(&e))),
            Ok(_) => answer(0),
            Err(e) => answer(e),
        })?;
        Ok(r.map(|_| ()))
    }

    fn create_directory_at(&mut self, d: Resource<Descriptor>, path: String) -> FsResult<()> {
        self.change("descriptor.create-directory-at", &d, &path, |p| std::fs::create_dir(p))
    }

    fn stat(&mut self, d: Resource<Descriptor>) -> FsResult<DescriptorStat> {
        Ok(self.stat_raw("descriptor.stat", &d)?.map(|r| stat_of(&r)))
    }

    fn stat_at(&mut self, d: Resource<Descriptor>, _pf: PathFlags, path: String) -> FsResult<DescriptorStat> {
        let n = fd(&d);
        let r = self.fs_call("descriptor.stat-at", json!({"fd": n, "path": path}), |live| {
            stat_path(live, n, &path)
        })?;
        Ok(r.map(|r| stat_of(&r)))
    }

    fn set_times_at(
        &mut self,
        d: Resource<Descriptor>,
        _pf: PathFlags,
        path: String,
        _a: NewTimestamp,
        _m: NewTimestamp,
    ) -> FsResult<()> {
        self.unsupported("descriptor.set-times-at", json!({"fd": fd(&d), "path": path}))
    }

    fn link_at(
        &mut self,
        d: Resource<Descriptor>,
        _pf: PathFlags,
        old_path: String,
        _new: Resource<Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        self.unsupported("descriptor.link-at", json!({"fd": fd(&d), "old": old_path, "new": new_path}))
    }

    fn open_at(
        &mut self,
        d: Resource<Descriptor>,
        _pf: PathFlags,
        path: String,
        of: OpenFlags,
        flags: DescriptorFlags,
    ) -> FsResult<Resource<Descriptor>> {
        let n = fd(&d);
        let mut oflags = 0;
        for (bit, flag) in [
            (OFLAG_CREAT, OpenFlags::CREATE),
            (OFLAG_DIRECTORY, OpenFlags::DIRECTORY),
            (OFLAG_EXCL, OpenFlags::EXCLUSIVE),
            (OFLAG_TRUNC, OpenFlags::TRUNCATE),
        ] {
            if of.contains(flag) {
                oflags |= bit;
            }
        }
        let read = flags.contains(DescriptorFlags::READ) || of.contains(OpenFlags::DIRECTORY);
        let write = flags.contains(DescriptorFlags::WRITE) || oflags & (OFLAG_CREAT | OFLAG_TRUNC) != 0;
        let args = json!({"fd": n, "path": path, "oflags": oflags, "read": read, "write": write});
        let r = self
            .fs_call("descriptor.open-at", args, |live| open_path(live, n, &path, read, write, oflags, 0))?;
        Ok(r.map(|r| Resource::new_own(field(&r, "fd") as u32)))
    }

    fn readlink_at(&mut self, d: Resource<Descriptor>, path: String) -> FsResult<String> {
        let n = fd(&d);
        let r = self.fs_call("descriptor.readlink-at", json!({"fd": n, "path": path}), |live| {
            let abs = match path_from(live, n, &path) {
                Ok(p) => p,
                Err(e) => return answer(e),
            };
            if !live.allow(&Facility::FileRead(&abs)) {
                return json!({"errno": errno::ACCES, "path": abs});
            }
            match std::fs::read_link(&abs) {
                Ok(t) => json!({"errno": 0, "target": t.to_string_lossy()}),
                Err(e) => answer(errno::from_io(&e)),
            }
        })?;
        Ok(r.map(|r| r.get("target").and_then(Value::as_str).unwrap_or_default().to_string()))
    }

    fn remove_directory_at(&mut self, d: Resource<Descriptor>, path: String) -> FsResult<()> {
        self.change("descriptor.remove-directory-at", &d, &path, |p| std::fs::remove_dir(p))
    }

    fn rename_at(
        &mut self,
        d: Resource<Descriptor>,
        old_path: String,
        _new: Resource<Descriptor>,
        new_path: String,
    ) -> FsResult<()> {
        self.unsupported("descriptor.rename-at", json!({"fd": fd(&d), "old": old_path, "new": new_path}))
    }

    fn symlink_at(&mut self, d: Resource<Descriptor>, old_path: String, new_path: String) -> FsResult<()> {
        self.unsupported("descriptor.symlink-at", json!({"fd": fd(&d), "old": old_path, "new": new_path}))
    }

    fn unlink_file_at(&mut self, d: Resource<Descriptor>, path: String) -> FsResult<()> {
        self.change("descriptor.unlink-file-at", &d, &path, |p| std::fs::remove_file(p))
    }

    fn is_same_object(
        &mut self,
        d: Resource<Descriptor>,
        other: Resource<Descriptor>,
    ) -> wasmtime::Result<bool> {
        let (a, b) = (fd(&d), fd(&other));
        let r = self.call("descriptor.is-same-object", json!({"fd": a, "other": b}), |live| {
            let same = match (live.fds.get(a), live.fds.get(b)) {
                (Ok(Fd::File { path: p, .. }), Ok(Fd::File { path: q, .. })) => p == q,
                (Ok(x), Ok(y)) => x.dir_path().is_some() && x.dir_path() == y.dir_path(),
                _ => false,
            };
            json!({"errno": 0, "same": same})
        })?;
        Ok(r.get("same").and_then(Value::as_bool).unwrap_or(false))
    }

    fn metadata_hash(&mut self, d: Resource<Descriptor>) -> FsResult<MetadataHashValue> {
        Ok(self.stat_raw("descriptor.metadata-hash", &d)?.map(|r| hash_of(&r)))
    }

    fn metadata_hash_at(
        &mut self,
        d: Resource<Descriptor>,
        _pf: PathFlags,
        path: String,
    ) -> FsResult<MetadataHashValue> {
        let n = fd(&d);
        let r = self.fs_call("descriptor.metadata-hash-at", json!({"fd": n, "path": path}), |live| {
            stat_path(live, n, &path)
        })?;
        Ok(r.map(|r| hash_of(&r)))
    }

    fn drop(&mut self, d: Resource<Descriptor>) -> wasmtime::Result<()> {
        let n = fd(&d);
        if d.rep() == ROOT {
            // The preopen stays: every get-directories hands it out again.
            return Ok(());
        }
        self.call("descriptor.drop", json!({"fd": n}), |live| answer(live.fds.remove(n).err().unwrap_or(0)))?;
        Ok(())
    }
}

impl Ctx {
    /// The host status of a descriptor (device and inode for metadata hashes).
    fn stat_raw(&mut self, name: &str, d: &Resource<Descriptor>) -> FsResult<Value> {
        let n = fd(d);
        self.fs_call(name, json!({"fd": n}), |live| match live.fds.get(n) {
            Ok(Fd::File { file, .. }) => {
                file.metadata().map_or_else(|e| answer(errno::from_io(&e)), |m| filestat(&m))
            }
            Ok(f) => match f.dir_path().map(std::fs::metadata) {
                Some(Ok(m)) => filestat(&m),
                Some(Err(e)) => answer(errno::from_io(&e)),
                None => json!({"errno": 0, "filetype": f.filetype()}),
            },
            Err(e) => answer(e),
        })
    }
}

impl types::HostDirectoryEntryStream for Ctx {
    fn read_directory_entry(
        &mut self,
        s: Resource<DirectoryEntryStream>,
    ) -> FsResult<Option<DirectoryEntry>> {
        // The listing was read (and recorded) by read-directory; this hands
        // out its entries one by one, each call recorded with its entry.
        let h = s.rep();
        let Some(list) = self.p2.listings.get_mut(&h) else {
            return Ok(Err(ErrorCode::BadDescriptor));
        };
        let entry = list.pop_front();
        self.call(
            "directory-entry-stream.read-directory-entry",
            json!({"listing": h}),
            |_| json!({"errno": 0, "entry": entry}),
        )?;
        Ok(Ok(entry.map(|(name, ft)| DirectoryEntry { type_: kind(u64::from(ft)), name })))
    }

    fn drop(&mut self, s: Resource<DirectoryEntryStream>) -> wasmtime::Result<()> {
        self.p2.listings.remove(&s.rep());
        Ok(())
    }
}

impl preopens::Host for Ctx {
    fn get_directories(&mut self) -> wasmtime::Result<Vec<(Resource<Descriptor>, String)>> {
        self.call("get-directories", json!({}), |_| json!({"errno": 0}))?;
        Ok(vec![(Resource::new_own(ROOT), "/".to_string())])
    }
}
