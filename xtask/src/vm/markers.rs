//! Markers the guest's /init prints on the serial console, and their parsing.
//!
//! Each marker line is `<MARKER> <nonce> <value>`; the nonce is fresh per boot
//! so the binary's own output cannot be taken for a marker. Kernel messages may
//! share a line with a marker, so markers are found anywhere in a line.

/// Boot reached /init; value: `uname -r`.
pub(crate) const START: &str = "FORGE-VM-START";
/// Value: contents of /sys/kernel/security/lsm.
pub(crate) const LSM: &str = "FORGE-VM-LSM";
/// The binary's output follows.
pub(crate) const RUN: &str = "FORGE-VM-RUN";
/// Value: the binary's exit status as the shell saw it (128+n for signal n).
pub(crate) const EXIT: &str = "FORGE-VM-EXIT";

/// What the serial log says about a run.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Parsed {
    /// `uname -r` from the start marker; `Some` once /init ran.
    pub(crate) release: Option<String>,
    pub(crate) lsm: Option<String>,
    pub(crate) exit_code: Option<i32>,
    /// The binary's output: lines between the run and exit markers.
    pub(crate) output: String,
    /// A kernel panic line, if the kernel panicked.
    pub(crate) panic: Option<String>,
}

/// What one boot proved.
#[derive(Debug, PartialEq)]
pub(crate) enum Verdict {
    /// The binary ran to its end.
    Ran { release: String, exit_code: i32 },
    /// /init never started (early panic, QEMU died, boot timeout): boot again.
    NoBoot(String),
    /// The binary started but its end was not seen: a failure, never retried.
    Died(String),
}

/// Judges a boot from its parsed log, the deadline that killed QEMU (if any)
/// and QEMU's exit status.
pub(crate) fn verdict(p: &Parsed, timed_out: Option<&str>, qemu_status: &str) -> Verdict {
    let Some(release) = p.release.clone() else {
        return Verdict::NoBoot(match (&p.panic, timed_out) {
            (Some(panic), _) => format!("kernel panicked before /init: {panic}"),
            (None, Some(t)) => t.to_owned(),
            (None, None) => format!("QEMU exited ({qemu_status}) before /init started"),
        });
    };
    match p.exit_code {
        Some(exit_code) => Verdict::Ran { release, exit_code },
        None => Verdict::Died(match (&p.panic, timed_out) {
            (Some(panic), _) => format!("kernel panicked: {panic}"),
            (None, Some(t)) => t.to_owned(),
            (None, None) => format!("QEMU exited ({qemu_status})"),
        }),
    }
}

/// The value after `<marker> <nonce>` in `line`, if the line carries it.
pub(crate) fn value<'a>(line: &'a str, marker: &str, nonce: &str) -> Option<&'a str> {
    let tag = format!("{marker} {nonce}");
    let at = line.find(&tag)?;
    let rest = &line[at + tag.len()..];
    // The tag must end at a word boundary: the nonce is not a prefix of another.
    if !(rest.is_empty() || rest.starts_with(' ')) {
        return None;
    }
    Some(rest.trim())
}

/// Parses a whole serial log (lines without `\r`).
pub(crate) fn parse(log: &str, nonce: &str) -> Parsed {
    let mut parsed = Parsed::default();
    let mut output: Option<Vec<&str>> = None;
    for line in log.lines() {
        if parsed.panic.is_none() && line.contains("Kernel panic") {
            parsed.panic = Some(line.trim().to_owned());
        }
        if let Some(v) = value(line, EXIT, nonce) {
            if parsed.exit_code.is_none() && output.is_some() {
                parsed.exit_code = v.parse().ok();
                let lines = output.take().unwrap_or_default();
                parsed.output = join_output(lines);
            }
            continue;
        }
        if let Some(lines) = output.as_mut() {
            lines.push(line);
            continue;
        }
        if parsed.release.is_none() {
            parsed.release = value(line, START, nonce).map(str::to_owned);
        } else if parsed.lsm.is_none() {
            parsed.lsm = value(line, LSM, nonce).map(str::to_owned);
        }
        if parsed.release.is_some() && parsed.exit_code.is_none() && value(line, RUN, nonce).is_some() {
            output = Some(Vec::new());
        }
    }
    // Died mid-run: keep what the binary printed.
    if let Some(lines) = output {
        parsed.output = join_output(lines);
    }
    parsed
}

/// /init prints an empty line before the exit marker so that a last line
/// without `\n` still ends; drop that one line again.
fn join_output(mut lines: Vec<&str>) -> String {
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let mut s = lines.join("\n");
    if !s.is_empty() {
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: &str = "ab12";

    #[test]
    fn full_run() {
        let log = format!(
            "early noise\n{START} {N} 6.12.117+deb12-cloud-amd64\n{LSM} {N} lockdown,capability,landlock,bpf,ima,evm\n\
             {RUN} {N}\nline one\nline two\n\n{EXIT} {N} 3\n[    9.1] reboot: Power down\n"
        );
        let p = parse(&log, N);
        assert_eq!(p.release.as_deref(), Some("6.12.117+deb12-cloud-amd64"));
        assert_eq!(p.lsm.as_deref(), Some("lockdown,capability,landlock,bpf,ima,evm"));
        assert_eq!(p.exit_code, Some(3));
        assert_eq!(p.output, "line one\nline two\n");
        assert_eq!(p.panic, None);
    }

    #[test]
    fn output_without_trailing_newline_and_empty_output() {
        let log = format!("{START} {N} r\n{LSM} {N} bpf\n{RUN} {N}\npartial\n{EXIT} {N} 0\n");
        assert_eq!(parse(&log, N).output, "partial\n");
        let log = format!("{START} {N} r\n{RUN} {N}\n\n{EXIT} {N} 0\n");
        let p = parse(&log, N);
        assert_eq!(p.output, "");
        assert_eq!(p.exit_code, Some(0));
        assert_eq!(p.lsm, None);
    }

    #[test]
    fn markers_need_the_nonce_and_the_order() {
        // The binary printing a marker with another nonce does not end the run.
        let log = format!(
            "{EXIT} {N} 0\n{START} {N} r\n{RUN} {N}\n{EXIT} zz 0\n{EXIT} {N}x 0\nreal\n\n{EXIT} {N} 1\n"
        );
        let p = parse(&log, N);
        assert_eq!(p.exit_code, Some(1));
        assert_eq!(p.output, format!("{EXIT} zz 0\n{EXIT} {N}x 0\nreal\n"));
    }

    #[test]
    fn marker_after_kernel_message_on_same_line() {
        let log = format!("[    1.0] random: crng init done{START} {N} 6.1.0-56-cloud-amd64\n");
        assert_eq!(parse(&log, N).release.as_deref(), Some("6.1.0-56-cloud-amd64"));
    }

    #[test]
    fn early_panic_and_missing_exit() {
        let log = "[    0.5] Kernel panic - not syncing: Attempted to kill the idle task!\n";
        let p = parse(log, N);
        assert_eq!(p.release, None);
        assert_eq!(
            p.panic.as_deref(),
            Some("[    0.5] Kernel panic - not syncing: Attempted to kill the idle task!")
        );
        let log = format!("{START} {N} r\n{RUN} {N}\nstarted\n");
        let p = parse(&log, N);
        assert_eq!(p.exit_code, None);
        assert_eq!(p.output, "started\n");
    }

    #[test]
    fn verdicts() {
        let panic = "[ 0.5] Kernel panic - not syncing: x";
        let p = parse(&format!("{panic}\n"), N);
        assert_eq!(
            verdict(&p, None, "exit status: 0"),
            Verdict::NoBoot(format!("kernel panicked before /init: {panic}"))
        );
        let p = parse("SeaBIOS\n", N);
        assert_eq!(
            verdict(&p, Some("boot timeout"), "signal: 9"),
            Verdict::NoBoot("boot timeout".to_owned())
        );
        assert_eq!(
            verdict(&p, None, "exit status: 1"),
            Verdict::NoBoot("QEMU exited (exit status: 1) before /init started".to_owned())
        );
        let p = parse(&format!("{START} {N} r\n{RUN} {N}\nhalf\n"), N);
        assert_eq!(verdict(&p, Some("run timeout"), "signal: 9"), Verdict::Died("run timeout".to_owned()));
        let p = parse(&format!("{START} {N} r\n{RUN} {N}\n{panic}\n"), N);
        assert_eq!(verdict(&p, None, "exit status: 0"), Verdict::Died(format!("kernel panicked: {panic}")));
        let p = parse(&format!("{START} {N} r\n{RUN} {N}\n{EXIT} {N} 101\n"), N);
        assert_eq!(
            verdict(&p, Some("run timeout"), "signal: 9"),
            Verdict::Ran { release: "r".to_owned(), exit_code: 101 }
        );
    }

    #[test]
    fn bad_exit_value_is_no_exit_code() {
        let log = format!("{START} {N} r\n{RUN} {N}\n{EXIT} {N} x\n");
        assert_eq!(parse(&log, N).exit_code, None);
    }
}
