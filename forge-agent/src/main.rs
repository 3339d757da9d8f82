static OBJ: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/forge-ebpf.o"));
fn main() {
    let _ = OBJ.len();
}
