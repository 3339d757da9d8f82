//! `forge key generate|id` and `forge policy bundle create|show`, `forge policy sign`,
//! `forge policy verify`: signed policy bundles.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::{Args, Subcommand};
use forge_agent::{
    policy::{Diagnostics, PolicySet, Severity},
    sign::{
        Bundle, BundleError, Document, PublicKey, Refusal, SigningKey, TrustConfig, VerifiedBundle,
        bundle::{DOCUMENTS_DIR, MANIFEST_FILE, SIGNATURES_FILE},
        keys,
        signature::{AddOutcome, Rejection},
        state::AppliedBundles,
    },
};
use serde_json::json;

#[derive(Subcommand)]
pub(crate) enum KeyCommand {
    /// Generate an ed25519 signing key pair: DIR/NAME.key (private, mode 0600)
    /// and DIR/NAME.pub (public; list it in a trust file). Never overwrites.
    #[command(long_about = "Generate an ed25519 signing key pair for policy bundles.\n\n\
Writes DIR/NAME.key (the private key, created with mode 0600 and never overwritten) and \
DIR/NAME.pub (the public key: give it to whoever writes the trust file). Prints the key id: \
the first 16 hex characters of the SHA3-256 digest of the public key, which is how reports \
name signers.\n\n\
Example:\n  forge key generate --out ~/.forge --name alice")]
    Generate {
        /// Directory to write the key files into (must exist).
        #[arg(long)]
        out: PathBuf,
        /// Name of the key files (A-Z a-z 0-9 . _ -): NAME.key and NAME.pub.
        #[arg(long)]
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Print the key id of a public (.pub) or private (.key) key file.
    Id {
        /// The key file.
        path: PathBuf,
        /// Print `{"key_id": ..., "public": ...}`.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum BundleSubcommand {
    /// Make an unsigned bundle directory from policy files.
    #[command(
        long_about = "Make an unsigned policy bundle from policy files (or directories of *.yaml).\n\n\
The bundle is a directory:\n  \
MANIFEST     format, kind, bundle name, version, and each document's SHA3-256 digest and size\n  \
SIGNATURES   one line per signature (empty until someone signs)\n  \
documents/   the policy files, by file name\n\n\
The policies are checked first (as `forge policy check` does). The version is the bundle's \
generation in its trust domain: a host refuses a bundle whose version is not greater than the \
last one it applied under any name, so raise it with every release of any bundle. Bundles of \
different names compose on a host: each name's latest bundle stays in force.\n\n\
Example:\n  forge policy bundle create --name prod --version 7 --out prod-7 policies/*.yaml\n  \
forge policy sign prod-7 --key ~/.forge/alice.key"
    )]
    Create {
        /// Bundle name (A-Z a-z 0-9 . _ -); a newer bundle of a name replaces that name's
        /// documents only. Versions are compared across every name.
        #[arg(long)]
        name: String,
        /// The bundle's version (generation), greater than every earlier release of any name.
        #[arg(long)]
        version: u64,
        /// Directory to create (must not exist).
        #[arg(long)]
        out: PathBuf,
        /// Bundle the files even if they do not pass `forge policy check`.
        #[arg(long)]
        no_check: bool,
        /// Print `{"bundle", "name", "version", "documents"}` (sha3-256 and size of each).
        #[arg(long)]
        json: bool,
        /// Policy files or directories of *.yaml / *.yml files.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
    },
    /// Show a bundle's manifest and signers without verifying trust.
    Show {
        /// The bundle directory.
        bundle: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
pub(crate) enum BundleCommand {
    /// Make and inspect signed policy bundles (see `forge policy bundle create --help`).
    Bundle {
        #[command(subcommand)]
        command: BundleSubcommand,
    },
    /// Add your signature to a policy bundle.
    #[command(long_about = "Add your ed25519 signature to a policy bundle.\n\n\
Checks first that every document matches its digest in MANIFEST, then signs the manifest's \
exact bytes (prefixed with the domain `forgeone-manifest-v1\\0`) and writes your line into \
SIGNATURES. Signers sign independently, in any order; signing again with the same key \
replaces your signature instead of adding a second one. Signatures made on copies of the \
bundle can be merged by concatenating their SIGNATURES files.\n\n\
Example:\n  forge policy sign prod-7 --key ~/.forge/alice.key")]
    Sign(SignArgs),
    /// Verify a policy bundle: digests, k-of-n trusted signatures, no replay.
    #[command(long_about = "Verify a policy bundle against a trust file.\n\n\
Accepted only if: at least k valid signatures from distinct trusted keys cover the manifest \
(untrusted signers, bad signatures and repeated keys are reported and not counted); every \
document matches its SHA3-256 digest; and the version is newer than the last applied one \
(--min-version, or --state: the trust domain's version, whatever the bundle's name). Exits 0 when verified, 1 when refused, naming the document, \
signer or version concerned.\n\n\
Trust file (TOML):\n  \
threshold = 2\n  \
[[key]]\n  file = \"keys/alice.pub\"     # relative to the trust file\n  \
[[key]]\n  name = \"bob\"\n  public = \"<64 hex characters>\"\n\n\
Examples:\n  forge policy verify prod-7 --trust /etc/forge/trust.toml --min-version 7\n  \
forge policy verify prod-7 --trust trust.toml --state /var/lib/forge/bundles.json --record --json")]
    Verify(VerifyArgs),
}

#[derive(Args)]
pub(crate) struct SignArgs {
    /// The bundle directory.
    bundle: PathBuf,
    /// Your private key file (from `forge key generate`; must be mode 0600).
    #[arg(long)]
    key: PathBuf,
    /// Print `{"key_id", "outcome", "signatures", "name", "version"}`.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub(crate) struct VerifyArgs {
    /// The bundle directory.
    bundle: PathBuf,
    /// Trust file: trusted public keys and the threshold k.
    #[arg(long)]
    trust: PathBuf,
    /// Refuse a bundle whose version is below N (e.g. the last applied version + 1).
    #[arg(long, value_name = "N", conflicts_with = "state")]
    min_version: Option<u64>,
    /// The agent's state file (its --state): the trust domain's version and the set of
    /// record. A version not greater than the recorded one is refused as a replay or
    /// rollback, whatever the bundle's name. A missing file means nothing was applied yet;
    /// a file in the old per-name format is read as its highest version.
    #[arg(long, value_name = "FILE")]
    state: Option<PathBuf>,
    /// After a successful verification, record the bundle in --state (the domain's
    /// version and its name's bundle of record).
    #[arg(long, requires = "state")]
    record: bool,
    /// Print the result as JSON on stdout, a refusal too (exit status 1).
    #[arg(long)]
    json: bool,
}

pub(crate) fn run_key(cmd: &KeyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeyCommand::Generate { out, name, json } => {
            let g = keys::generate_files(out, name).map_err(plain)?;
            if *json {
                super::print_json(&json!({
                    "key_id": g.key_id,
                    "private_key": g.private_path,
                    "public_key": g.public_path,
                }))?;
            } else {
                println!("key id {}", g.key_id);
                println!("private key: {} (mode 0600; keep it secret)", g.private_path.display());
                println!("public key:  {} (list it in a trust file)", g.public_path.display());
            }
        }
        KeyCommand::Id { path, json } => {
            let key = match PublicKey::load(path) {
                Ok(k) => k,
                Err(public_err) => {
                    SigningKey::load(path).map(|k| k.public_key()).map_err(|_| plain(public_err))?
                }
            };
            if *json {
                super::print_json(&json!({"key_id": key.id().to_string(), "public": key.to_hex()}))?;
            } else {
                println!("{}", key.id());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn run_bundle(cmd: &BundleCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BundleCommand::Bundle {
            command: BundleSubcommand::Create { name, version, out, no_check, json, paths },
        } => create(name, *version, out, *no_check, paths, *json),
        BundleCommand::Bundle { command: BundleSubcommand::Show { bundle, json } } => show(bundle, *json),
        BundleCommand::Sign(a) => sign(a),
        BundleCommand::Verify(a) => verify(a),
    }
}

fn create(
    name: &str,
    version: u64,
    out: &Path,
    no_check: bool,
    paths: &[PathBuf],
    json: bool,
) -> anyhow::Result<ExitCode> {
    let files = policy_files(paths)?;
    if !no_check {
        let findings = match PolicySet::load(&files) {
            Ok(set) => set.check(),
            Err(e) => e.0.0,
        };
        if !findings.is_empty() {
            eprintln!("{}", Diagnostics(findings.clone()));
        }
        if findings.iter().any(|d| d.severity == Severity::Error) {
            eprintln!("forge: refusing to bundle policies with errors (--no-check to bundle them anyway)");
            return Ok(ExitCode::FAILURE);
        }
    }
    let mut documents: Vec<Document> = Vec::with_capacity(files.len());
    for f in &files {
        let doc_name = f
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| anyhow::anyhow!("{}: not a file name", f.display()))?;
        if documents.iter().any(|d| d.name == doc_name) {
            anyhow::bail!(
                "two files are named {doc_name:?}; document names in a bundle are file names and must differ"
            );
        }
        let bytes = std::fs::read(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        documents.push(Document { name: doc_name.to_string(), bytes });
    }
    let bundle = Bundle::create(out, name, version, documents).map_err(plain)?;
    if json {
        super::print_json(
            &json!({"bundle": out, "name": name, "version": version, "documents": documents_json(&bundle)}),
        )?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "created unsigned bundle {} version {} at {} with {} document(s); next: forge policy sign {} --key KEY",
        name,
        version,
        out.display(),
        bundle.documents().len(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Files as given, directories expanded to their *.yaml / *.yml files (sorted).
fn policy_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for p in paths {
        if p.is_dir() {
            let mut in_dir: Vec<PathBuf> = std::fs::read_dir(p)
                .map_err(|e| anyhow::anyhow!("{}: {e}", p.display()))?
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|f| f.is_file() && f.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            in_dir.sort();
            files.extend(in_dir);
        } else {
            files.push(p.clone());
        }
    }
    Ok(files)
}

fn show(path: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let b = Bundle::load(path).map_err(plain)?;
    let m = b.manifest();
    let signers: Vec<_> = b.signatures().entries().iter().map(|e| e.key.id()).collect();
    if json {
        super::print_json(&json!({
            "bundle": path,
            "kind": m.kind(),
            "name": m.name(),
            "version": m.version(),
            "documents": documents_json(&b),
            "signatures_from": signers,
            "digests_match": b.check_digests().is_ok(),
        }))?;
    } else {
        println!("bundle {} version {} ({}), not verified", m.name(), m.version(), path.display());
        for e in m.entries() {
            println!("  {DOCUMENTS_DIR}/{}  sha3-256 {}  {} bytes", e.name, e.digest, e.size);
        }
        match b.check_digests() {
            Ok(()) => println!("documents match {MANIFEST_FILE}"),
            Err(e) => println!("documents do not match {MANIFEST_FILE}: {e}"),
        }
        if signers.is_empty() {
            println!("no signatures in {SIGNATURES_FILE}");
        }
        for s in signers {
            println!("  signature from key {s}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn documents_json(b: &Bundle) -> Vec<serde_json::Value> {
    b.manifest()
        .entries()
        .iter()
        .map(|e| json!({"name": e.name, "sha3_256": e.digest.to_hex(), "size": e.size}))
        .collect()
}

fn sign(a: &SignArgs) -> anyhow::Result<ExitCode> {
    let key = SigningKey::load(&a.key).map_err(plain)?;
    let (bundle, report) = match Bundle::sign(&a.bundle, &key) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("forge: refusing to sign: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    let m = bundle.manifest();
    let what = match report.outcome {
        AddOutcome::Added => "signed",
        AddOutcome::Replaced => "replaced the earlier signature of",
        AddOutcome::Unchanged => "had already signed",
    };
    if a.json {
        super::print_json(&json!({
            "key_id": report.key_id.to_string(),
            "outcome": format!("{:?}", report.outcome).to_lowercase(),
            "signatures": report.signatures,
            "name": m.name(),
            "version": m.version(),
        }))?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{} {what} bundle {} version {}; {} signature(s) in {}",
        report.key_id,
        m.name(),
        m.version(),
        report.signatures,
        a.bundle.join(SIGNATURES_FILE).display()
    );
    Ok(ExitCode::SUCCESS)
}

fn verify(a: &VerifyArgs) -> anyhow::Result<ExitCode> {
    let trust = TrustConfig::load(&a.trust).map_err(plain)?;
    let mut state = match &a.state {
        Some(p) => Some(AppliedBundles::load(p).map_err(plain)?),
        None => None,
    };
    let bundle = match Bundle::load(&a.bundle) {
        Ok(b) => b,
        Err(e) => return refused(a, &e),
    };
    let v = match bundle.verify(&trust, a.min_version.and_then(|m| m.checked_sub(1))) {
        Ok(v) => v,
        Err(e) => return refused(a, &e),
    };
    let replay_check = match (&state, a.min_version) {
        (Some(s), _) => {
            if let Err(e) = s.admit(&v, false) {
                return refused(a, &e);
            }
            let file = display(a.state.as_deref());
            Some(match s.newest() {
                _ if s.version == 0 => format!("no earlier version recorded in {file}"),
                Some(n) => {
                    format!("newer than the last applied version {} (bundle {n:?}, from {file})", s.version)
                }
                None => format!("newer than the last applied version {} (from {file})", s.version),
            })
        }
        (None, Some(min)) => Some(format!("at least the minimum version {min}")),
        (None, None) => None,
    };
    let mut recorded = false;
    if a.record
        && let (Some(s), Some(path)) = (state.as_mut(), a.state.as_deref())
    {
        s.record(path, &v).map_err(plain)?;
        recorded = true;
    }
    if a.json {
        super::print_json(&json!({
            "ok": true,
            "bundle": a.bundle,
            "name": v.name,
            "version": v.version,
            "threshold": v.threshold,
            "signers": v.signers,
            "not_counted": rejected_json(&v.rejected),
            "documents": documents_json(&bundle),
            "replay_check": replay_check,
            "recorded": recorded,
        }))?;
    } else {
        print_verified(&v, replay_check.as_deref(), recorded, a);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_verified(v: &VerifiedBundle, replay_check: Option<&str>, recorded: bool, a: &VerifyArgs) {
    println!("verified: bundle {} version {} ({})", v.name, v.version, v.path.display());
    let signers: Vec<String> = v.signers.iter().map(ToString::to_string).collect();
    println!("  {} of {} required trusted signatures: {}", v.signers.len(), v.threshold, signers.join(", "));
    for r in &v.rejected {
        println!("  not counted: {r}");
    }
    for d in &v.documents {
        println!("  document {} ({} bytes): digest matches", d.name, d.bytes.len());
    }
    match replay_check {
        Some(how) => println!("  replay check: {how}"),
        None => println!("  replay check: none (pass --state FILE or --min-version N)"),
    }
    if recorded {
        println!("  recorded version {} in {}", v.version, display(a.state.as_deref()));
    }
}

/// Reports a refusal (or a bundle that cannot be read) and exits 1.
fn refused(a: &VerifyArgs, e: &BundleError) -> anyhow::Result<ExitCode> {
    if a.json {
        let mut out = json!({
            "ok": false,
            "bundle": a.bundle,
            "error": {"code": e.code(), "message": e.to_string()},
        });
        if let Some(Refusal::TooFewSignatures { valid, required, counted, rejected }) = e.refusal() {
            out["error"]["valid"] = json!(valid);
            out["error"]["required"] = json!(required);
            out["error"]["signers"] = json!(counted);
            out["error"]["not_counted"] = json!(rejected_json(rejected));
        }
        super::print_json(&out)?;
    } else {
        eprintln!("forge: refused: {e}");
    }
    Ok(ExitCode::FAILURE)
}

fn rejected_json(rejected: &[Rejection]) -> Vec<serde_json::Value> {
    rejected
        .iter()
        .map(|r| json!({"key_id": r.key_id(), "reason": r.code(), "message": r.to_string()}))
        .collect()
}

fn display(p: Option<&Path>) -> String {
    p.map(|p| p.display().to_string()).unwrap_or_default()
}

/// The error's own message, without repeating its sources (they are in it).
fn plain(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}
