//! One QEMU boot: software emulation only, serial console streamed to a log
//! file (each line stamped with the seconds since QEMU started) and to
//! stdout, wall-clock deadlines, QEMU killed when one passes.
//! Host directories reach the guest through vhost-user-fs devices (one per
//! running virtiofsd), which need the guest's memory in a shared memfd.

use std::{
    fs::File,
    io::{BufRead as _, BufReader, BufWriter, Read, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::Context as _;

use super::markers;

/// Kernel command line before the `lsm=` choice: on panic, reboot at once,
/// which `-no-reboot` turns into QEMU exiting.
pub(crate) const APPEND: &str = "console=ttyS0 panic=-1 quiet";

pub(crate) struct Boot<'a> {
    pub(crate) label: &'a str,
    pub(crate) vmlinuz: &'a Path,
    pub(crate) initrd: &'a Path,
    /// The whole kernel command line.
    pub(crate) append: &'a str,
    pub(crate) cpu: &'a str,
    /// Guest memory in MiB.
    pub(crate) mem_mib: u64,
    /// (virtiofs tag, vhost-user socket) per share.
    pub(crate) shares: &'a [(String, PathBuf)],
    pub(crate) nonce: &'a str,
    pub(crate) log: &'a Path,
    /// The start marker must appear within this.
    pub(crate) boot_timeout: Duration,
    /// The whole boot, run and power-off must fit in this.
    pub(crate) timeout: Duration,
    pub(crate) echo: Echo,
}

/// What of the guest's console reaches stdout while it runs.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Echo {
    /// Nothing (the log file has everything).
    Nothing,
    /// Every console line, prefixed with the guest's label.
    Console,
    /// Only the command's output, as it printed it.
    Command,
}

/// How one boot ended.
pub(crate) struct BootResult {
    /// The serial log (and QEMU's stderr), `\r` removed.
    pub(crate) log: String,
    pub(crate) parsed: markers::Parsed,
    /// Seconds from QEMU start to the start marker.
    pub(crate) boot_seconds: Option<f64>,
    pub(crate) seconds: f64,
    /// Which deadline killed QEMU, if one did.
    pub(crate) timed_out: Option<&'static str>,
    /// QEMU's exit status as text.
    pub(crate) qemu_status: String,
}

enum Line {
    Out(String),
    Err(String),
}

pub(crate) fn boot(b: &Boot<'_>) -> anyhow::Result<BootResult> {
    let mut cmd = Command::new("qemu-system-x86_64");
    // Never KVM: it is a nested software hypervisor here and QEMU hangs when
    // the guest faults under it.
    cmd.args(["-accel", "tcg", "-cpu", b.cpu])
        .args(["-m", &format!("{}M", b.mem_mib), "-smp", "2", "-nographic", "-no-reboot"])
        // vhost-user devices need guest memory the daemons can map.
        .args(["-object", &format!("memory-backend-memfd,id=mem,size={}M,share=on", b.mem_mib)])
        .args(["-machine", "memory-backend=mem"])
        // No NIC: the guest needs only loopback, and skipping the iPXE ROM saves boot time.
        .args(["-nic", "none"])
        .arg("-kernel")
        .arg(b.vmlinuz)
        .arg("-initrd")
        .arg(b.initrd)
        .args(["-append", b.append]);
    for (i, (tag, socket)) in b.shares.iter().enumerate() {
        cmd.arg("-chardev")
            .arg(format!("socket,id=fs{i},path={}", socket.display()))
            .args(["-device", &format!("vhost-user-fs-pci,chardev=fs{i},tag={tag}")]);
    }
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = cmd.spawn().context("starting qemu-system-x86_64")?;

    let (tx, rx) = mpsc::channel();
    let stdout = child.stdout.take().context("qemu stdout")?;
    let stderr = child.stderr.take().context("qemu stderr")?;
    let tx_err = tx.clone();
    let readers = [
        thread::spawn(move || forward(stdout, &tx, Line::Out)),
        thread::spawn(move || forward(stderr, &tx_err, Line::Err)),
    ];

    let mut log_file =
        BufWriter::new(File::create(b.log).with_context(|| format!("creating {}", b.log.display()))?);
    let mut log = String::new();
    let start_tag = format!("{} {}", markers::START, b.nonce);
    let mut command_echo = CommandEcho::default();
    let mut boot_seconds = None;
    let mut timed_out = None;
    let mut status = None;
    let mut out = std::io::stdout();
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(line) => {
                let (text, stream) = match line {
                    Line::Out(t) => (t, ""),
                    Line::Err(t) => (t, "qemu: "),
                };
                if boot_seconds.is_none() && text.contains(&start_tag) {
                    boot_seconds = Some(start.elapsed().as_secs_f64());
                }
                // Seconds since QEMU started, so slow steps show in the log.
                let _ = writeln!(log_file, "{:8.2} {stream}{text}", start.elapsed().as_secs_f64());
                match b.echo {
                    Echo::Nothing => {}
                    Echo::Console => {
                        let _ = writeln!(out, "[{}] {stream}{text}", b.label);
                    }
                    Echo::Command if stream.is_empty() => {
                        if let Some(lines) = command_echo.line(&text, b.nonce) {
                            lines.iter().for_each(|l| drop(writeln!(out, "{l}")));
                        }
                    }
                    Echo::Command => {
                        let _ = writeln!(std::io::stderr(), "qemu: {text}");
                    }
                }
                log.push_str(stream);
                log.push_str(&text);
                log.push('\n');
            }
            // Both pipes closed: QEMU is gone (or closed them); reap it below.
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                status = Some(child.wait().context("waiting for qemu")?);
                break;
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if status.is_none() {
            // Once QEMU exited, keep draining until the readers see EOF.
            status = child.try_wait().context("polling qemu")?;
        }
        let elapsed = start.elapsed();
        let deadline = if boot_seconds.is_none() && elapsed > b.boot_timeout {
            Some("boot timeout (no start marker)")
        } else if elapsed > b.timeout {
            Some("run timeout")
        } else {
            None
        };
        if let (Some(why), None) = (deadline, status.as_ref()) {
            timed_out = Some(why);
            // Our own child, by its handle: SIGKILL, then reap.
            let _ = child.kill();
            status = Some(child.wait().context("waiting for killed qemu")?);
        }
    }
    for r in readers {
        let _ = r.join();
    }
    let _ = log_file.flush();
    let seconds = start.elapsed().as_secs_f64();
    let parsed = markers::parse(&log, b.nonce);
    Ok(BootResult {
        log,
        parsed,
        boot_seconds,
        seconds,
        timed_out,
        qemu_status: status.map_or_else(|| "unknown".to_owned(), |s| s.to_string()),
    })
}

/// Picks the command's output out of the console as it arrives: the lines
/// between the run and exit markers, less the empty line /init prints
/// before the exit marker.
#[derive(Default)]
struct CommandEcho {
    running: bool,
    done: bool,
    /// An empty line held back: it may be the one before the exit marker.
    held_empty: bool,
}

impl CommandEcho {
    /// The lines to print now for console line `text`.
    fn line(&mut self, text: &str, nonce: &str) -> Option<Vec<String>> {
        if self.done {
            return None;
        }
        if !self.running {
            self.running = markers::value(text, markers::RUN, nonce).is_some();
            return None;
        }
        if markers::value(text, markers::EXIT, nonce).is_some() {
            self.done = true;
            return None;
        }
        let mut lines = Vec::new();
        if std::mem::take(&mut self.held_empty) {
            lines.push(String::new());
        }
        if text.is_empty() {
            self.held_empty = true;
        } else {
            lines.push(text.to_owned());
        }
        Some(lines)
    }
}

/// Sends each line of `r` (lossy UTF-8, `\r` removed) until EOF.
fn forward(r: impl Read, tx: &mpsc::Sender<Line>, wrap: fn(String) -> Line) {
    let mut r = BufReader::new(r);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match r.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {
                let text = printable(&String::from_utf8_lossy(&buf));
                if tx.send(wrap(text)).is_err() {
                    return;
                }
            }
        }
    }
}

/// `line` without terminal escape sequences and control characters (the
/// firmware clears the screen; echoing that would clear the user's terminal).
pub(super) fn printable(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => match chars.next() {
                // CSI: parameters and intermediates up to a final byte @..~.
                Some('[') => {
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC: up to BEL or ESC \.
                Some(']') => {
                    while let Some(c) = chars.next() {
                        if c == '\u{7}' || (c == '\u{1b}' && chars.next_if_eq(&'\\').is_some()) {
                            break;
                        }
                    }
                }
                // Two-character sequences (ESC c, ESC 7, ...).
                _ => {}
            },
            '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
    }
    out.trim_end().to_owned()
}

/// The last `n` lines of `log`, for error messages.
pub(crate) fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `target/vm/runs/<label>/` style helper: the log path of an attempt.
pub(crate) fn log_path(dir: &Path, attempt: u32) -> PathBuf {
    dir.join(format!("serial-{attempt}.log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_strips_escapes_and_controls() {
        assert_eq!(
            printable("\u{1b}c\u{1b}[?7l\u{1b}[2J\u{1b}[0mSeaBIOS (version 1.16)\r\n"),
            "SeaBIOS (version 1.16)"
        );
        assert_eq!(printable("a\tb \u{1b}]0;title\u{7}c\u{0}"), "a\tb c");
        assert_eq!(printable("x\u{1b}]2;t\u{1b}\\y"), "xy");
        assert_eq!(printable("FORGE-VM-EXIT n 0   \r"), "FORGE-VM-EXIT n 0");
    }

    #[test]
    fn command_echo_prints_only_the_command_output() {
        let n = "ab";
        let console = [
            "[    1.0] booting",
            "FORGE-VM-START ab 6.12",
            "FORGE-VM-RUN ab",
            "hello",
            "",
            "world",
            "",
            "FORGE-VM-EXIT ab 0",
            "[    9.0] reboot: Power down",
        ];
        let mut e = CommandEcho::default();
        let printed: Vec<String> = console.iter().filter_map(|l| e.line(l, n)).flatten().collect();
        assert_eq!(printed, ["hello", "", "world"]);
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
