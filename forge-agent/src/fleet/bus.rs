//! The connection to NATS: one task per agent. It watches both buckets
//! (history first, then live updates), publishes the agent's trust
//! records (kept and retried while the bus is away), and reports the
//! connection's ups and downs. It never touches enforcement: everything
//! it receives goes to the daemon as bytes, to be verified there.

use std::{collections::VecDeque, time::Duration};

use async_nats::jetstream::{self, kv};
use futures_util::StreamExt as _;
use tokio::sync::mpsc;

use super::{HISTORY, POLICY_BUCKET, TRUST_BUCKET};

/// What the bus hands to the daemon.
#[derive(Debug)]
pub enum Inbound {
    /// A value of the policy bucket (a packed bundle).
    Bundle {
        key: String,
        revision: u64,
        bytes: Vec<u8>,
    },
    /// A value of the trust bucket (a signed record).
    Record {
        key: String,
        revision: u64,
        bytes: Vec<u8>,
    },
    Connected,
    Disconnected,
    /// Something failed on the bus side (kept for `forge status`).
    Error(String),
}

/// A record to publish under `key` in the trust bucket.
pub type Outbound = (String, Vec<u8>);

/// The running bus task.
pub struct Bus {
    pub outbox: mpsc::UnboundedSender<Outbound>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Bus {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How long one bus operation may take before it counts as failed.
const OP_TIMEOUT: Duration = Duration::from_secs(3);

/// Reconnect backoff: 100 ms doubling up to 2 s.
fn backoff(attempt: usize) -> Duration {
    Duration::from_millis((100u64 << attempt.min(5)).min(2000))
}

/// Connects to `url` (in the background: the agent does not wait for the
/// bus to start enforcing) and starts the task.
pub async fn spawn(url: &str, inbound: mpsc::Sender<Inbound>) -> Result<Bus, async_nats::ConnectError> {
    let (events_tx, events) = mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .max_reconnects(None)
        .reconnect_delay_callback(backoff)
        .connection_timeout(OP_TIMEOUT)
        .event_callback(move |e| {
            let tx = events_tx.clone();
            async move {
                let _ = tx.send(e);
            }
        })
        .connect(url)
        .await?;
    let (outbox, out_rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(client, inbound, events, out_rx));
    Ok(Bus { outbox, task })
}

/// Opens a bucket, creating it if this is the first agent (or publisher).
///
/// The bucket's stream is created directly, with the configuration the
/// key-value API uses (ADR-8), because the client's own bucket creation
/// first reads account fields that nats-server 2.9 does not send.
pub async fn bucket(js: &jetstream::Context, name: &str) -> Result<kv::Store, String> {
    if let Ok(Ok(s)) = tokio::time::timeout(OP_TIMEOUT, js.get_key_value(name)).await {
        return Ok(s);
    }
    let config = jetstream::stream::Config {
        name: format!("KV_{name}"),
        subjects: vec![format!("$KV.{name}.>")],
        max_messages_per_subject: HISTORY,
        max_message_size: -1,
        max_bytes: -1,
        max_messages: -1,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        discard: jetstream::stream::DiscardPolicy::New,
        num_replicas: 1,
        ..jetstream::stream::Config::default()
    };
    let created = tokio::time::timeout(OP_TIMEOUT, js.get_or_create_stream(config)).await;
    if let Ok(Err(e)) = &created {
        return Err(format!("bucket {name}: creating its stream: {e}"));
    }
    match tokio::time::timeout(OP_TIMEOUT, js.get_key_value(name)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) => Err(format!("bucket {name}: {e}")),
        Err(_) => Err(format!("bucket {name}: timed out")),
    }
}

async fn run(
    client: async_nats::Client,
    inbound: mpsc::Sender<Inbound>,
    mut events: mpsc::UnboundedReceiver<async_nats::Event>,
    mut outbox: mpsc::UnboundedReceiver<Outbound>,
) {
    let js = jetstream::new(client);
    let mut pending: VecDeque<Outbound> = VecDeque::new();
    let mut attempt = 0usize;
    loop {
        // A session: open both buckets and watch them from their history.
        let session = async {
            let policy = bucket(&js, POLICY_BUCKET).await?;
            let trust = bucket(&js, TRUST_BUCKET).await?;
            let pw = timeout(policy.watch_with_history(">")).await?;
            let tw = timeout(trust.watch_with_history(">")).await?;
            Ok::<_, String>((trust, pw, tw))
        };
        let (trust, mut pw, mut tw) = tokio::select! {
            r = session => match r {
                Ok(s) => s,
                Err(e) => {
                    let _ = inbound.send(Inbound::Error(e)).await;
                    attempt += 1;
                    wait_or_forward(backoff(attempt), &mut events, &mut outbox, &mut pending, &inbound).await;
                    continue;
                }
            },
            // Connection events and records keep flowing while a session opens.
            Some(e) = events.recv() => { forward_event(e, &inbound).await; continue; }
        };
        attempt = 0;
        let mut retry = tokio::time::interval(Duration::from_secs(1));
        let restart = loop {
            flush(&trust, &mut pending, &inbound).await;
            tokio::select! {
                e = pw.next() => match e {
                    Some(Ok(entry)) => forward_entry(entry, true, &inbound).await,
                    Some(Err(e)) => break format!("watching {POLICY_BUCKET}: {e}"),
                    None => break format!("watching {POLICY_BUCKET}: ended"),
                },
                e = tw.next() => match e {
                    Some(Ok(entry)) => forward_entry(entry, false, &inbound).await,
                    Some(Err(e)) => break format!("watching {TRUST_BUCKET}: {e}"),
                    None => break format!("watching {TRUST_BUCKET}: ended"),
                },
                Some(e) = events.recv() => {
                    let reconnected = matches!(e, async_nats::Event::Connected);
                    forward_event(e, &inbound).await;
                    if reconnected {
                        // Catch up: watch again from the history.
                        break String::new();
                    }
                }
                Some(o) = outbox.recv() => queue(&mut pending, o),
                _ = retry.tick() => {}
            }
        };
        if !restart.is_empty() {
            let _ = inbound.send(Inbound::Error(restart)).await;
            tokio::time::sleep(backoff(1)).await;
        }
    }
}

/// Records kept, in order, while the bus is away; beyond this the oldest
/// are dropped (with a warning): the history loses them, the latest record
/// per identity still goes out.
const MAX_PENDING: usize = 10_000;

fn queue(pending: &mut VecDeque<Outbound>, o: Outbound) {
    if pending.len() >= MAX_PENDING {
        tracing::warn!(max = MAX_PENDING, "fleet: too many records waiting for the bus; dropping the oldest");
        pending.pop_front();
    }
    pending.push_back(o);
}

async fn timeout<T, E: std::fmt::Display>(f: impl Future<Output = Result<T, E>>) -> Result<T, String> {
    match tokio::time::timeout(OP_TIMEOUT, f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

/// Publishes what is pending, in order; stops at the first failure.
async fn flush(trust: &kv::Store, pending: &mut VecDeque<Outbound>, inbound: &mpsc::Sender<Inbound>) {
    while let Some((key, bytes)) = pending.front() {
        match timeout(trust.put(key, bytes.clone().into())).await {
            Ok(_) => {
                pending.pop_front();
            }
            Err(e) => {
                let _ = inbound.send(Inbound::Error(format!("publishing {key}: {e} (kept, retried)"))).await;
                return;
            }
        }
    }
}

async fn wait_or_forward(
    d: Duration,
    events: &mut mpsc::UnboundedReceiver<async_nats::Event>,
    outbox: &mut mpsc::UnboundedReceiver<Outbound>,
    pending: &mut VecDeque<Outbound>,
    inbound: &mpsc::Sender<Inbound>,
) {
    let until = tokio::time::sleep(d);
    tokio::pin!(until);
    loop {
        tokio::select! {
            () = &mut until => return,
            Some(e) = events.recv() => forward_event(e, inbound).await,
            Some(o) = outbox.recv() => queue(pending, o),
        }
    }
}

async fn forward_event(e: async_nats::Event, inbound: &mpsc::Sender<Inbound>) {
    let msg = match e {
        async_nats::Event::Connected => Inbound::Connected,
        async_nats::Event::Disconnected => Inbound::Disconnected,
        other => Inbound::Error(other.to_string()),
    };
    let _ = inbound.send(msg).await;
}

async fn forward_entry(entry: kv::Entry, policy: bool, inbound: &mpsc::Sender<Inbound>) {
    if entry.operation != kv::Operation::Put {
        return;
    }
    let (key, revision, bytes) = (entry.key, entry.revision, entry.value.to_vec());
    let msg = if policy {
        Inbound::Bundle { key, revision, bytes }
    } else {
        Inbound::Record { key, revision, bytes }
    };
    let _ = inbound.send(msg).await;
}
