//! The fleet policy in etcd: a [`PolicySource`] whose exemptions and relays are the keys under
//! `{prefix}policy/` (see `fleet_keys`), shared by every gateway.
//!
//! A task lists the range once, then watches it from that revision (list + watch); when the
//! revision was compacted meanwhile it lists again, and the difference reaches the kernel
//! maps through the agent's reconcile like any other policy change. What it saw last is kept
//! in the local SQLite store with its revision, so an agent that starts while etcd is
//! unreachable enforces that at once, and one that loses etcd keeps enforcing it.
//!
//! Changes are etcd transactions that compare the key's revision with the one this gateway
//! saw: of two desks changing one prefix at once, one gets "changed meanwhile", never a silent
//! overwrite. An exemption with an expiry is bound to an etcd lease, so it lapses once, for
//! every gateway, when etcd says so. Escalations stay per gateway, in the local store.

use std::{
    collections::BTreeMap,
    future::Future,
    net::IpAddr,
    path::Path,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime},
};

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    KeyValue, PutOptions, SortOrder, SortTarget, TlsOptions, Txn, TxnOp, WatchOptions,
};
use ipnet::IpNet;
use serde::Serialize;
use tokio::sync::Notify;
use tracing::{info, warn};

use super::{
    PolicyResult, PolicySource,
    fleet_keys::{
        FleetAuditEntry, FleetEntry, FleetKeys, encode_exemption, encode_relay,
        encode_subscriber_exemption,
    },
    source::LocalStore,
};
use crate::{
    config::{EtcdConfig, FleetConfig},
    store::{
        AuditAction, CachedKey, EntryKind, Escalation, Exemption, ExemptionUpdate, NewExemption,
        NewRelay, NewSubscriberExemption, RuntimeRelay, Store, StoreError, SubscriberExemption,
    },
};

/// How long one etcd request may take before the change is refused as unreachable.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a change waits for its own event to come back through the watch, so that the
/// view (and with it `exempt list`) holds it when the CLI is answered.
const OWN_EVENT_WAIT: Duration = Duration::from_secs(2);
/// Reconnection backoff: from the first to the longest pause between attempts.
const FIRST_RETRY: Duration = Duration::from_millis(200);
const LONGEST_RETRY: Duration = Duration::from_secs(5);
/// The audit range keeps this many entries; older ones are deleted (etcd is no log store).
pub const FLEET_AUDIT_ENTRIES: i64 = 10_000;

/// What went wrong talking to etcd, naming the servers.
#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("etcd at {endpoints} is unreachable: {cause}; nothing was changed")]
    Unreachable { endpoints: String, cause: String },
    #[error(
        "{kind} {prefix} changed meanwhile on another gateway (this gateway saw it at etcd \
         revision {seen}); nothing was changed: look at `smtpguard {verb} list` and try again"
    )]
    ChangedMeanwhile {
        kind: EntryKind,
        prefix: IpNet,
        seen: i64,
        verb: &'static str,
    },
    #[error(
        "the exemption of subscriber {subscriber:?} changed meanwhile on another gateway (this \
         gateway saw it at etcd revision {seen}); nothing was changed: look at `smtpguard \
         exempt list` and try again"
    )]
    SubscriberChangedMeanwhile { subscriber: String, seen: i64 },
    #[error("cannot read {what} {path}: {source}")]
    Credentials {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
}

/// What `status` and the metrics say about the fleet connection.
#[derive(Clone, Debug, Serialize)]
pub struct FleetStatus {
    pub gateway_id: String,
    pub endpoints: Vec<String>,
    pub connected: bool,
    /// The etcd revision the view is complete at (0: never synced).
    pub revision: i64,
    #[serde(serialize_with = "crate::store::serialize_optional_time")]
    pub last_sync: Option<SystemTime>,
    /// Since when `connected` is what it is.
    #[serde(serialize_with = "crate::store::serialize_time")]
    pub since: SystemTime,
    pub last_error: Option<String>,
    /// Keys under the policy range that did not decode and were never applied.
    pub corrupt_keys: u64,
}

/// One key of the view: the decoded entry, its revision and lease.
#[derive(Clone, Debug)]
struct Held {
    entry: FleetEntry,
    mod_revision: i64,
    lease: i64,
}

/// The fleet policy as this gateway last saw it, shared by the watch task and the source.
#[derive(Debug)]
struct View {
    keys: BTreeMap<String, Held>,
    status: FleetStatus,
}

/// What the watch task, the source and the agent share.
struct Shared {
    keys: FleetKeys,
    config: EtcdConfig,
    view: Mutex<View>,
    /// The local store's cache of the view (its own connection).
    cache: Mutex<Store>,
    client: tokio::sync::Mutex<Option<Client>>,
    /// Woken on every change of the view: the agent reconciles.
    changed: Arc<Notify>,
    audit_sequence: AtomicU64,
    /// The runtime the client lives on (owned by [`EtcdSource`]).
    runtime: tokio::runtime::Handle,
}

/// The agent's handle on the fleet connection: its status, its changes, its audit.
#[derive(Clone)]
pub struct FleetHandle {
    shared: Arc<Shared>,
}

/// The fleet policy source: etcd for exemptions and relays, the local store for escalations.
pub struct EtcdSource {
    shared: Arc<Shared>,
    local: LocalStore,
    gateway: String,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for EtcdSource {
    fn drop(&mut self) {
        // Dropped on the agent's way out, maybe inside its runtime: never block there.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl EtcdSource {
    /// Loads the cached view from the local store and starts following etcd. Never waits for
    /// etcd: an unreachable cluster is retried in the background and shown in `status`.
    pub fn start(
        fleet: &FleetConfig,
        etcd: &EtcdConfig,
        state_dir: &Path,
    ) -> anyhow::Result<(Self, FleetHandle)> {
        use anyhow::Context as _;
        let local = LocalStore::open(state_dir)?;
        let cache = Store::open(state_dir)?;
        let keys = FleetKeys::new(&etcd.prefix);
        let mut view = View {
            keys: BTreeMap::new(),
            status: FleetStatus {
                gateway_id: fleet.gateway_id.clone(),
                endpoints: etcd.endpoints.clone(),
                connected: false,
                revision: 0,
                last_sync: None,
                since: SystemTime::now(),
                last_error: None,
                corrupt_keys: 0,
            },
        };
        let cached = cache.fleet_cache()?;
        for key in &cached.keys {
            view.put(&keys, key.key.as_bytes(), &key.value, key.mod_revision, 0);
        }
        view.status.revision = cached.revision;
        view.status.last_sync = cached.synced;
        if cached.revision > 0 {
            info!(
                revision = cached.revision,
                entries = view.keys.len(),
                "enforcing the cached fleet policy until etcd answers"
            );
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("smtpguard-etcd")
            .enable_all()
            .build()
            .context("starting the etcd client's runtime")?;
        let shared = Arc::new(Shared {
            keys,
            config: etcd.clone(),
            view: Mutex::new(view),
            cache: Mutex::new(cache),
            client: tokio::sync::Mutex::new(None),
            changed: Arc::new(Notify::new()),
            audit_sequence: AtomicU64::new(0),
            runtime: runtime.handle().clone(),
        });
        runtime.spawn(follow(shared.clone()));
        Ok((
            Self {
                shared: shared.clone(),
                local,
                gateway: fleet.gateway_id.clone(),
                runtime: Some(runtime),
            },
            FleetHandle { shared },
        ))
    }

    /// Commits `txn`, which compares `key` at `seen`; refuses with "changed meanwhile" when
    /// the comparison failed. Waits until the watch brought the change into the view.
    fn commit(
        &mut self,
        txn: TxnParts,
        changed_meanwhile: FleetError,
        audit: FleetAuditEntry,
    ) -> PolicyResult<()> {
        let shared = self.shared.clone();
        let audit_key = shared.keys.audit_entry(
            audit.at_ms,
            &self.gateway,
            shared.audit_sequence.fetch_add(1, Ordering::Relaxed),
        );
        let audit_value = serde_json::to_vec(&audit).expect("plain fields serialize");
        let txn = txn.and_then_also(TxnOp::put(audit_key, audit_value, None));
        let committed = self.shared.wait(async move {
            let mut client = shared.client().await?;
            let response = client
                .txn(txn.build())
                .await
                .map_err(|error| shared.unreachable(error))?;
            let revision = response.header().map_or(0, |h| h.revision());
            Ok((response.succeeded(), revision))
        })?;
        match committed {
            (false, _) => Err(changed_meanwhile.into()),
            (true, revision) => {
                self.shared.wait_for_revision(revision);
                let shared = self.shared.clone();
                self.shared
                    .runtime
                    .spawn(async move { shared.prune_audit().await });
                Ok(())
            }
        }
    }

    fn held(&self, key: &str) -> Option<Held> {
        self.shared.view().keys.get(key).cloned()
    }

    /// Creates `key` with `value` (on `lease`, 0: none) unless this gateway sees it already;
    /// a key created meanwhile elsewhere fails the transaction.
    fn create(
        &mut self,
        kind: EntryKind,
        prefix: IpNet,
        value: Vec<u8>,
        lease: impl FnOnce(&Self) -> PolicyResult<i64>,
        who: &str,
        now: SystemTime,
    ) -> PolicyResult<()> {
        let key = self.shared.keys.of(kind, prefix);
        if self.held(&key).is_some() {
            return Err(StoreError::Duplicate { kind, prefix }.into());
        }
        let lease = lease(self)?;
        let action = match kind {
            EntryKind::Exemption => AuditAction::ExemptionAdded,
            EntryKind::Relay => AuditAction::RelayAdded,
        };
        let audit = FleetAuditEntry::new(
            now,
            action,
            &prefix.to_string(),
            who,
            &self.gateway,
            String::from_utf8_lossy(&value).into_owned(),
        )?;
        let txn = TxnParts::on_revision(&key, 0, Self::put_op(&key, value, lease));
        self.commit(txn, changed_meanwhile(kind, prefix, 0), audit)
    }

    /// Deletes the key of `prefix` as this gateway saw it; returns what it held, as
    /// `entry` takes it out of its [`FleetEntry`].
    fn delete<T>(
        &mut self,
        kind: EntryKind,
        prefix: IpNet,
        entry: impl FnOnce(FleetEntry) -> Option<T>,
        who: &str,
        now: SystemTime,
    ) -> PolicyResult<T> {
        let key = self.shared.keys.of(kind, prefix);
        let not_found = || StoreError::NotFound { kind, prefix };
        let held = self.held(&key).ok_or_else(not_found)?;
        let made_on = held.entry.gateway();
        let action = match kind {
            EntryKind::Exemption => AuditAction::ExemptionRemoved,
            EntryKind::Relay => AuditAction::RelayRemoved,
        };
        let audit = FleetAuditEntry::new(
            now,
            action,
            &prefix.to_string(),
            who,
            &self.gateway,
            format!("made on {}", made_on.as_deref().unwrap_or("?")),
        )?;
        let txn = TxnParts::on_revision(&key, held.mod_revision, TxnOp::delete(key.clone(), None));
        self.commit(
            txn,
            changed_meanwhile(kind, prefix, held.mod_revision),
            audit,
        )?;
        Ok(entry(held.entry).ok_or_else(not_found)?)
    }

    /// A lease that ends at `expires` (whole seconds, rounded up), or none.
    fn lease_until(&self, expires: Option<SystemTime>, now: SystemTime) -> PolicyResult<i64> {
        let Some(expires) = expires else {
            return Ok(0);
        };
        let ttl = expires
            .duration_since(now)
            .unwrap_or_default()
            .as_millis()
            .div_ceil(1000)
            .max(1) as i64;
        let shared = self.shared.clone();
        Ok(self.shared.wait(async move {
            let mut client = shared.client().await?;
            let lease = client
                .lease_grant(ttl, None)
                .await
                .map_err(|error| shared.unreachable(error))?;
            Ok(lease.id())
        })?)
    }
}

fn changed_meanwhile(kind: EntryKind, prefix: IpNet, seen: i64) -> FleetError {
    FleetError::ChangedMeanwhile {
        kind,
        prefix,
        seen,
        verb: match kind {
            EntryKind::Exemption => "exempt",
            EntryKind::Relay => "relay",
        },
    }
}

/// A transaction under construction: compares, then operations.
struct TxnParts {
    compares: Vec<Compare>,
    operations: Vec<TxnOp>,
}

impl TxnParts {
    fn and_then_also(mut self, operation: TxnOp) -> Self {
        self.operations.push(operation);
        self
    }

    /// Compares `key`'s revision with `seen` (0: absent).
    fn on_revision(key: &str, seen: i64, operation: TxnOp) -> Self {
        Self {
            compares: vec![Compare::mod_revision(key, CompareOp::Equal, seen)],
            operations: vec![operation],
        }
    }

    fn build(self) -> Txn {
        Txn::new().when(self.compares).and_then(self.operations)
    }
}

impl EtcdSource {
    fn put_op(key: &str, value: Vec<u8>, lease: i64) -> TxnOp {
        let options = (lease != 0).then(|| PutOptions::new().with_lease(lease));
        TxnOp::put(key, value, options)
    }
}

impl PolicySource for EtcdSource {
    fn exemptions(&self) -> PolicyResult<Vec<Exemption>> {
        Ok(self.shared.view().exemptions())
    }

    fn add_exemption(&mut self, new: &NewExemption, now: SystemTime) -> PolicyResult<Exemption> {
        let mut exemption = new.checked(now)?;
        exemption.gateway = Some(self.gateway.clone());
        let value = encode_exemption(&exemption, &self.gateway)?;
        let expires = exemption.expires;
        self.create(
            EntryKind::Exemption,
            new.prefix,
            value,
            |source| source.lease_until(expires, now),
            &new.who,
            now,
        )?;
        Ok(exemption)
    }

    fn remove_exemption(
        &mut self,
        prefix: IpNet,
        who: &str,
        now: SystemTime,
    ) -> PolicyResult<Exemption> {
        let exemption = |entry| match entry {
            FleetEntry::Exemption(exemption) => Some(exemption),
            _ => None,
        };
        self.delete(EntryKind::Exemption, prefix, exemption, who, now)
    }

    fn update_exemption(
        &mut self,
        prefix: IpNet,
        update: &ExemptionUpdate,
        who: &str,
        now: SystemTime,
    ) -> PolicyResult<(Exemption, Exemption)> {
        update.check(prefix, who, now)?;
        let key = self.shared.keys.of(EntryKind::Exemption, prefix);
        let Some(Held {
            entry: FleetEntry::Exemption(old),
            mod_revision,
            lease,
        }) = self.held(&key)
        else {
            return Err(StoreError::NotFound {
                kind: EntryKind::Exemption,
                prefix,
            }
            .into());
        };
        let new = update.applied_to(&old);
        let lease = match update.expires {
            None => lease,
            Some(expires) => self.lease_until(expires, now)?,
        };
        let value = encode_exemption(&new, &self.gateway)?;
        let audit = FleetAuditEntry::new(
            now,
            AuditAction::ExemptionUpdated,
            &prefix.to_string(),
            who,
            &self.gateway,
            String::from_utf8_lossy(&value).into_owned(),
        )?;
        let txn = TxnParts::on_revision(&key, mod_revision, Self::put_op(&key, value, lease));
        let meanwhile = changed_meanwhile(EntryKind::Exemption, prefix, mod_revision);
        self.commit(txn, meanwhile, audit)?;
        Ok((old, new))
    }

    /// Expiry is etcd's: a lease ends and every gateway sees the deletion as an event.
    fn expire_exemptions(&mut self, _now: SystemTime) -> PolicyResult<Vec<Exemption>> {
        Ok(Vec::new())
    }

    /// As `expire_exemptions`: the lease's.
    fn expire_subscriber_exemptions(
        &mut self,
        _now: SystemTime,
    ) -> PolicyResult<Vec<SubscriberExemption>> {
        Ok(Vec::new())
    }

    fn next_exemption_expiry(&self) -> PolicyResult<Option<SystemTime>> {
        Ok(None)
    }

    fn relays(&self) -> PolicyResult<Vec<RuntimeRelay>> {
        Ok(self.shared.view().relays())
    }

    fn add_relay(&mut self, new: &NewRelay, now: SystemTime) -> PolicyResult<RuntimeRelay> {
        let mut relay = new.checked(now)?;
        relay.gateway = Some(self.gateway.clone());
        let value = encode_relay(&relay, &self.gateway)?;
        self.create(
            EntryKind::Relay,
            new.prefix,
            value,
            |_| Ok(0),
            &new.who,
            now,
        )?;
        Ok(relay)
    }

    fn remove_relay(
        &mut self,
        prefix: IpNet,
        who: &str,
        now: SystemTime,
    ) -> PolicyResult<RuntimeRelay> {
        let relay = |entry| match entry {
            FleetEntry::Relay(relay) => Some(relay),
            _ => None,
        };
        self.delete(EntryKind::Relay, prefix, relay, who, now)
    }

    // Fleet-wide like address exemptions; the bindings they apply to stay each gateway's.
    fn subscriber_exemptions(&self) -> PolicyResult<Vec<SubscriberExemption>> {
        Ok(self.shared.view().subscriber_exemptions())
    }

    fn add_subscriber_exemption(
        &mut self,
        new: &NewSubscriberExemption,
        now: SystemTime,
    ) -> PolicyResult<SubscriberExemption> {
        let mut exemption = new.checked(now)?;
        exemption.gateway = Some(self.gateway.clone());
        let key = self.shared.keys.of_subscriber(&exemption.subscriber);
        if self.held(&key).is_some() {
            return Err(StoreError::DuplicateSubscriber {
                subscriber: exemption.subscriber,
            }
            .into());
        }
        let value = encode_subscriber_exemption(&exemption, &self.gateway)?;
        let lease = self.lease_until(exemption.expires, now)?;
        let audit = FleetAuditEntry::new(
            now,
            AuditAction::SubscriberExempted,
            &exemption.subscriber,
            &new.who,
            &self.gateway,
            String::from_utf8_lossy(&value).into_owned(),
        )?;
        let txn = TxnParts::on_revision(&key, 0, Self::put_op(&key, value, lease));
        let changed = FleetError::SubscriberChangedMeanwhile {
            subscriber: exemption.subscriber.clone(),
            seen: 0,
        };
        self.commit(txn, changed, audit)?;
        Ok(exemption)
    }

    fn remove_subscriber_exemption(
        &mut self,
        subscriber: &str,
        who: &str,
        now: SystemTime,
    ) -> PolicyResult<SubscriberExemption> {
        let key = self.shared.keys.of_subscriber(subscriber);
        let not_found = || StoreError::NoSubscriberExemption {
            subscriber: subscriber.to_owned(),
        };
        let held = self.held(&key).ok_or_else(not_found)?;
        let FleetEntry::Subscriber(exemption) = held.entry else {
            return Err(not_found().into());
        };
        let audit = FleetAuditEntry::new(
            now,
            AuditAction::SubscriberExemptionRemoved,
            subscriber,
            who,
            &self.gateway,
            format!("made on {}", exemption.gateway.as_deref().unwrap_or("?")),
        )?;
        let txn = TxnParts::on_revision(&key, held.mod_revision, TxnOp::delete(key.clone(), None));
        let changed = FleetError::SubscriberChangedMeanwhile {
            subscriber: subscriber.to_owned(),
            seen: held.mod_revision,
        };
        self.commit(txn, changed, audit)?;
        Ok(exemption)
    }

    fn active_escalations(&self) -> PolicyResult<Vec<Escalation>> {
        self.local.active_escalations()
    }

    fn escalations_in(&self, prefix: IpNet) -> PolicyResult<Vec<Escalation>> {
        self.local.escalations_in(prefix)
    }

    fn escalate(
        &mut self,
        host: IpAddr,
        level: u32,
        now: SystemTime,
        until: SystemTime,
        reason: &str,
    ) -> PolicyResult<Escalation> {
        self.local.escalate(host, level, now, until, reason)
    }

    fn end_escalation(
        &mut self,
        host: IpAddr,
        who: &str,
        expired: bool,
        now: SystemTime,
    ) -> PolicyResult<Escalation> {
        self.local.end_escalation(host, who, expired, now)
    }

    fn next_escalation_end(&self) -> PolicyResult<Option<SystemTime>> {
        self.local.next_escalation_end()
    }
}

impl View {
    /// Applies a key written at `mod_revision`; a corrupt one is counted, logged and dropped
    /// (an earlier good value of it too: it is no longer what etcd holds).
    fn put(&mut self, keys: &FleetKeys, key: &[u8], value: &[u8], mod_revision: i64, lease: i64) {
        let name = String::from_utf8_lossy(key).into_owned();
        match keys.decode(key, value) {
            Ok(entry) => {
                self.keys.insert(
                    name,
                    Held {
                        entry,
                        mod_revision,
                        lease,
                    },
                );
            }
            Err(cause) => {
                self.status.corrupt_keys += 1;
                warn!(key = name, %cause, "skipping a corrupt fleet key; it is not applied");
                self.keys.remove(&name);
            }
        }
    }

    /// The entries `pick` takes, in prefix order.
    fn entries<T>(
        &self,
        pick: impl Fn(&FleetEntry) -> Option<&T>,
        prefix: impl Fn(&T) -> IpNet,
    ) -> Vec<T>
    where
        T: Clone,
    {
        let mut list: Vec<T> = self
            .keys
            .values()
            .filter_map(|held| pick(&held.entry).cloned())
            .collect();
        list.sort_by_key(|entry| prefix(entry));
        list
    }

    fn exemptions(&self) -> Vec<Exemption> {
        self.entries(
            |entry| match entry {
                FleetEntry::Exemption(exemption) => Some(exemption),
                _ => None,
            },
            |exemption| exemption.prefix,
        )
    }

    fn relays(&self) -> Vec<RuntimeRelay> {
        self.entries(
            |entry| match entry {
                FleetEntry::Relay(relay) => Some(relay),
                _ => None,
            },
            |relay| relay.prefix,
        )
    }

    fn subscriber_exemptions(&self) -> Vec<SubscriberExemption> {
        let mut list: Vec<SubscriberExemption> = self
            .keys
            .values()
            .filter_map(|held| match &held.entry {
                FleetEntry::Subscriber(exemption) => Some(exemption.clone()),
                _ => None,
            })
            .collect();
        list.sort_by(|a, b| a.subscriber.cmp(&b.subscriber));
        list
    }
}

impl Shared {
    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `future` on the etcd client's runtime and waits for it (the verbs are
    /// synchronous, and run outside that runtime).
    fn wait<T: Send + 'static>(
        &self,
        future: impl Future<Output = Result<T, FleetError>> + Send + 'static,
    ) -> Result<T, FleetError> {
        let (sender, receiver) = std::sync::mpsc::sync_channel(1);
        self.runtime.spawn(async move {
            let outcome = tokio::time::timeout(REQUEST_TIMEOUT, future).await;
            let _ = sender.send(outcome);
        });
        match receiver.recv() {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(self.unreachable("no answer within 3 s")),
            Err(_) => Err(self.unreachable("the etcd client stopped")),
        }
    }

    fn unreachable(&self, cause: impl std::fmt::Display) -> FleetError {
        FleetError::Unreachable {
            endpoints: self.config.endpoints.join(", "),
            cause: cause.to_string(),
        }
    }

    /// The client, connected (and authenticated) on first use.
    async fn client(&self) -> Result<Client, FleetError> {
        let mut client = self.client.lock().await;
        if let Some(client) = client.as_ref() {
            return Ok(client.clone());
        }
        let options = connect_options(&self.config)?;
        let connected = Client::connect(&self.config.endpoints, Some(options))
            .await
            .map_err(|error| self.unreachable(error))?;
        *client = Some(connected.clone());
        Ok(connected)
    }

    fn set_connected(&self, connected: bool, error: Option<String>) {
        let mut view = self.view();
        if view.status.connected != connected {
            view.status.since = SystemTime::now();
            if connected {
                info!(endpoints = self.config.endpoints.join(", "), "etcd reached");
            }
        }
        if !connected && view.status.connected | view.status.last_error.is_none() {
            warn!(
                endpoints = self.config.endpoints.join(", "),
                error = error.as_deref().unwrap_or(""),
                "etcd unreachable; enforcing the last fleet policy seen"
            );
        }
        view.status.connected = connected;
        view.status.last_error = error;
        drop(view);
        self.changed.notify_one();
    }

    /// Replaces the view with a fresh list taken at `revision`.
    fn relist(&self, kvs: &[KeyValue], revision: i64) {
        let now = SystemTime::now();
        let mut view = self.view();
        view.keys.clear();
        for kv in kvs {
            view.put(
                &self.keys,
                kv.key(),
                kv.value(),
                kv.mod_revision(),
                kv.lease(),
            );
        }
        view.status.revision = revision;
        view.status.last_sync = Some(now);
        drop(view);
        let upserts: Vec<CachedKey> = kvs.iter().map(cached).collect();
        self.save(true, &upserts, &[], revision, now);
        self.set_connected(true, None);
    }

    /// Applies a watch response's events, complete at `revision`.
    fn apply(&self, events: &[etcd_client::Event], revision: i64) {
        let now = SystemTime::now();
        let mut upserts = Vec::new();
        let mut deletes = Vec::new();
        let mut view = self.view();
        for event in events {
            let Some(kv) = event.kv() else { continue };
            match event.event_type() {
                EventType::Put => {
                    view.put(
                        &self.keys,
                        kv.key(),
                        kv.value(),
                        kv.mod_revision(),
                        kv.lease(),
                    );
                    upserts.push(cached(kv));
                }
                EventType::Delete => {
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    view.keys.remove(&key);
                    deletes.push(key);
                }
            }
        }
        view.status.revision = view.status.revision.max(revision);
        view.status.last_sync = Some(now);
        drop(view);
        self.save(false, &upserts, &deletes, revision, now);
        self.changed.notify_one();
    }

    fn save(
        &self,
        replace: bool,
        upserts: &[CachedKey],
        deletes: &[String],
        revision: i64,
        now: SystemTime,
    ) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(error) = cache.save_fleet_cache(replace, upserts, deletes, revision, now) {
            // The kernel maps follow etcd all the same; only a restart without etcd is worse.
            warn!(%error, "caching the fleet policy in the local store failed");
        }
    }

    /// Waits (briefly) until the view has seen `revision`.
    fn wait_for_revision(&self, revision: i64) {
        let deadline = Instant::now() + OWN_EVENT_WAIT;
        while self.view().status.revision < revision && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Keeps the audit range at [`FLEET_AUDIT_ENTRIES`]: the oldest entries go.
    async fn prune_audit(&self) {
        let Ok(mut client) = self.client().await else {
            return;
        };
        let range = self.keys.audit();
        let count = client
            .get(
                range.clone(),
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .map_or(0, |r| r.count());
        let excess = count - FLEET_AUDIT_ENTRIES;
        if excess <= 0 {
            return;
        }
        let oldest = client
            .get(
                range,
                Some(
                    GetOptions::new()
                        .with_prefix()
                        .with_keys_only()
                        .with_sort(SortTarget::Key, SortOrder::Ascend)
                        .with_limit(excess),
                ),
            )
            .await;
        if let Ok(oldest) = oldest
            && let (Some(first), Some(last)) = (oldest.kvs().first(), oldest.kvs().last())
        {
            let mut end = last.key().to_vec();
            end.push(0);
            let _ = client
                .delete(
                    first.key().to_vec(),
                    Some(etcd_client::DeleteOptions::new().with_range(end)),
                )
                .await;
        }
    }
}

fn cached(kv: &KeyValue) -> CachedKey {
    CachedKey {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        value: kv.value().to_vec(),
        mod_revision: kv.mod_revision(),
    }
}

/// TLS, authentication and the timeouts that let a dead connection be noticed.
pub fn connect_options(config: &EtcdConfig) -> Result<ConnectOptions, FleetError> {
    let read = |what: &'static str, path: &Path| {
        std::fs::read(path).map_err(|source| FleetError::Credentials {
            what,
            path: path.display().to_string(),
            source,
        })
    };
    let mut options = ConnectOptions::new()
        .with_connect_timeout(REQUEST_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
        .with_keep_alive_while_idle(true);
    if let Some(tls) = &config.tls {
        let mut tls_options =
            TlsOptions::new().ca_certificate(Certificate::from_pem(read("etcd_ca", &tls.ca)?));
        if let Some((cert, key)) = &tls.identity {
            tls_options = tls_options.identity(Identity::from_pem(
                read("etcd_cert", cert)?,
                read("etcd_key", key)?,
            ));
        }
        options = options.with_tls(tls_options);
    }
    if let Some(auth) = &config.auth {
        let password = read("etcd_password_file", &auth.password_file)?;
        let password = String::from_utf8_lossy(&password);
        let password = password.lines().next().unwrap_or_default().to_owned();
        options = options.with_user(auth.user.clone(), password);
    }
    Ok(options)
}

/// Follows etcd for as long as the source lives: list, watch, and again after a compaction
/// or a lost connection.
async fn follow(shared: Arc<Shared>) {
    let mut pause = FIRST_RETRY;
    loop {
        match session(&shared).await {
            Ok(()) => pause = FIRST_RETRY,
            Err(error) => {
                shared.set_connected(false, Some(error.to_string()));
                // A client that failed to authenticate is made again next time.
                if matches!(error, FleetError::Credentials { .. }) {
                    *shared.client.lock().await = None;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(LONGEST_RETRY);
            }
        }
    }
}

/// One list + watch; `Ok` when the watch's revision was compacted and a relist is due.
async fn session(shared: &Shared) -> Result<(), FleetError> {
    let mut client = shared.client().await?;
    let range = shared.keys.policy();
    let list = client
        .get(range.clone(), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|error| shared.unreachable(error))?;
    let revision = list.header().map_or(0, |h| h.revision());
    shared.relist(list.kvs(), revision);
    let mut stream = client
        .watch(
            range,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1)
                    .with_progress_notify(),
            ),
        )
        .await
        .map_err(|error| shared.unreachable(error))?;
    loop {
        let Some(response) = stream
            .message()
            .await
            .map_err(|error| shared.unreachable(error))?
        else {
            return Err(shared.unreachable("the watch stream ended"));
        };
        if response.compact_revision() > 0 {
            warn!(
                compacted = response.compact_revision(),
                "the fleet revision this gateway watched from was compacted; listing again"
            );
            return Ok(());
        }
        if response.canceled() {
            return Err(shared.unreachable(format!(
                "the watch was canceled: {}",
                response.cancel_reason()
            )));
        }
        let revision = response.header().map_or(0, |h| h.revision());
        shared.apply(response.events(), revision);
    }
}

impl FleetHandle {
    pub fn status(&self) -> FleetStatus {
        self.shared.view().status.clone()
    }

    /// Woken whenever the fleet policy or the connection changed.
    pub fn changed(&self) -> Arc<Notify> {
        self.shared.changed.clone()
    }

    /// The fleet's audit entries at or after `since`, oldest first.
    pub fn audit(&self, since: Option<SystemTime>) -> Result<Vec<FleetAuditEntry>, FleetError> {
        let shared = self.shared.clone();
        self.shared
            .wait(async move { read_audit(&shared, since).await })
    }
}

async fn read_audit(
    shared: &Shared,
    since: Option<SystemTime>,
) -> Result<Vec<FleetAuditEntry>, FleetError> {
    {
        let mut client = shared.client().await?;
        let range = shared.keys.audit();
        let from = match since {
            Some(since) => {
                shared
                    .keys
                    .audit_entry(crate::store::to_millis("since", since).unwrap_or(0), "", 0)
            }
            None => range.clone(),
        };
        let mut end = range.clone().into_bytes();
        *end.last_mut().expect("the range ends with '/'") += 1;
        let response = client
            .get(
                from,
                Some(
                    GetOptions::new()
                        .with_range(end)
                        .with_sort(SortTarget::Key, SortOrder::Ascend),
                ),
            )
            .await
            .map_err(|error| shared.unreachable(error))?;
        Ok(response
            .kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice(kv.value()).ok())
            .collect())
    }
}

/// `config check --connect`: reaches the cluster as the agent would and says what answered.
pub fn probe(config: &EtcdConfig) -> Result<String, FleetError> {
    let unreachable = |cause: String| FleetError::Unreachable {
        endpoints: config.endpoints.join(", "),
        cause,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| unreachable(error.to_string()))?;
    runtime.block_on(async {
        let options = connect_options(config)?;
        let probe = async {
            let mut client = Client::connect(&config.endpoints, Some(options)).await?;
            let status = client.status().await?;
            let keys = client
                .get(
                    FleetKeys::new(&config.prefix).policy(),
                    Some(GetOptions::new().with_prefix().with_count_only()),
                )
                .await?;
            Ok::<_, etcd_client::Error>(format!(
                "etcd {} reached: version {}, revision {}, {} policy keys under {}",
                config.endpoints.join(", "),
                status.version(),
                status.header().map_or(0, |h| h.revision()),
                keys.count(),
                config.prefix
            ))
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, probe).await {
            Ok(Ok(line)) => Ok(line),
            Ok(Err(error)) => Err(unreachable(error.to_string())),
            Err(_) => Err(unreachable("no answer within 3 s".to_owned())),
        }
    })
}
